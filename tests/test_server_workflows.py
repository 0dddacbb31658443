"""Workflow endpoints and workflow metadata on requests, against the real server and engine (CPU)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from context_forge.server.testing import MODEL, Server, cycle_in, error_of




def register(server: Server, workflow_id: str, agents: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    return httpx.post(server.base_url + "/workflows", json={"workflow_id": workflow_id, "agents": agents, **extra})


def event(server: Server, workflow_id: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}/workflows/{workflow_id}/events", json=body)


def live(server: Server) -> list[str]:
    return httpx.get(server.base_url + "/workflows").json()["data"]


PIPELINE = [
    {"agent_id": "planner"},
    {"agent_id": "coder", "depends_on": ["planner"]},
    {"agent_id": "reviewer", "depends_on": ["coder"], "optional": True},
]


def test_register_use_and_finish_a_workflow(server: Server, client: openai.OpenAI) -> None:
    r = register(server, "wf-main", PIPELINE)
    assert r.status_code == 201, r.text
    assert r.json()["workflow_id"] == "wf-main" and [a["agent_id"] for a in r.json()["agents"]] == [
        "planner", "coder", "reviewer"
    ]
    assert "wf-main" in live(server)
    assert httpx.get(server.base_url + "/workflows/wf-main").json()["agents"][2]["optional"] is True
    assert server.engine.workflows.tracker.instance_steps("wf-main", "coder") == 1

    before = server.metric('context_forge_workflow_requests_total{workflow_id="wf-main"}')
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "plan"}], max_tokens=3,
        extra_body={"workflow": {"workflow_id": "wf-main", "agent_id": "planner"}},
    )
    assert out.usage.completion_tokens <= 3
    assert server.metric('context_forge_workflow_requests_total{workflow_id="wf-main"}') == before + 1

    r = event(server, "wf-main", event="agent_finished", agent_id="planner")
    assert r.status_code == 200 and r.json()["applied"] is True
    assert server.engine.workflows.tracker.instance_steps("wf-main", "coder") == 0
    # SGLang-style custom_params carry the same metadata.
    client.completions.create(
        model=MODEL, prompt="code", max_tokens=2,
        extra_body={"custom_params": {"workflow_id": "wf-main", "agent_id": "coder", "other": 1}},
    )
    assert server.metric('context_forge_workflow_requests_total{workflow_id="wf-main"}') == before + 2
    # A skipped optional agent is reported finished without ever sending a request.
    assert event(server, "wf-main", event="agent_finished", agent_id="reviewer").status_code == 200

    assert event(server, "wf-main", event="workflow_finished").status_code == 200
    assert "wf-main" not in live(server)
    assert event(server, "wf-main", event="workflow_finished").status_code == 404


def test_cyclic_graph_is_400_with_the_cycle_path(server: Server) -> None:
    agents = [
        {"agent_id": "a", "depends_on": ["c"]},
        {"agent_id": "b", "depends_on": ["a"]},
        {"agent_id": "c", "depends_on": ["b"]},
    ]
    r = register(server, "wf-cycle", agents)
    assert r.status_code == 400
    err = error_of(r)
    assert err["code"] == "workflow_cycle"
    path = cycle_in(err["message"])
    assert path[0] == path[-1] and set(path) == {"a", "b", "c"}
    assert "wf-cycle" not in live(server)


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"workflow_id": "w", "agents": [{"agent_id": "a", "depends_on": ["zzz"]}]}, "zzz"),
        ({"workflow_id": "w", "agents": [{"agent_id": "a"}, {"agent_id": "a"}]}, "duplicate"),
        ({"workflow_id": "w", "agents": []}, "agents"),
        ({"workflow_id": "w", "agents": [{"agent_id": "a", "depends_on": "b"}]}, "depends_on"),
        ({"agents": [{"agent_id": "a"}]}, "workflow_id"),
        ({"workflow_id": "w", "agents": [{"agent_id": "a"}], "repeat": "yes"}, "repeat"),
    ],
)
def test_bad_graphs_are_400(server: Server, body: dict[str, Any], needle: str) -> None:
    r = httpx.post(server.base_url + "/workflows", json=body)
    assert r.status_code == 400, r.text
    assert needle in error_of(r)["message"] + str(error_of(r)["param"])


def test_duplicate_registration_is_409(server: Server) -> None:
    assert register(server, "wf-dup", PIPELINE).status_code == 201
    r = register(server, "wf-dup", PIPELINE)
    assert r.status_code == 409 and error_of(r)["code"] == "workflow_exists"
    assert event(server, "wf-dup", event="workflow_finished").status_code == 200


def test_unknown_agent_for_a_declared_workflow_is_400(server: Server, client: openai.OpenAI) -> None:
    assert register(server, "wf-strict", PIPELINE, repeat=True).status_code == 201
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1,
            extra_body={"workflow": {"workflow_id": "wf-strict", "agent_id": "ghost"}},
        )
    assert e.value.body["param"] == "workflow.agent_id" and "ghost" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1,
            extra_body={"workflow": {"workflow_id": "wf-strict"}},
        )
    r = event(server, "wf-strict", event="agent_finished", agent_id="ghost")
    assert r.status_code == 400 and "ghost" in error_of(r)["message"]
    server.check_no_leak()
    assert event(server, "wf-strict", event="workflow_finished").status_code == 200


def test_bad_events(server: Server) -> None:
    assert register(server, "wf-ev", PIPELINE).status_code == 201
    assert event(server, "wf-ev", event="agent_started", agent_id="planner").status_code == 400
    assert event(server, "wf-ev", event="agent_finished").status_code == 400
    assert event(server, "wf-ev", event="workflow_finished", agent_id="planner").status_code == 400
    assert event(server, "nope", event="agent_finished", agent_id="planner").status_code == 404
    r = httpx.post(f"{server.base_url}/workflows/wf-ev/events", content=b"{oops")
    assert r.status_code == 400 and "not valid JSON" in error_of(r)["message"]
    assert event(server, "wf-ev", event="workflow_finished").status_code == 200


def test_dynamic_workflow_from_request_metadata(server: Server, client: openai.OpenAI) -> None:
    client.completions.create(
        model=MODEL, prompt="dyn", max_tokens=2,
        extra_body={"workflow": {"workflow_id": "wf-dyn", "agent_id": "solo"}},
    )
    assert "wf-dyn" in live(server)
    assert httpx.get(server.base_url + "/workflows/wf-dyn").status_code == 404  # no declared graph
    r = event(server, "wf-dyn", event="agent_finished", agent_id="solo")
    assert r.status_code == 200 and r.json()["applied"] is False
    assert event(server, "wf-dyn", event="workflow_finished").status_code == 200
    assert "wf-dyn" not in live(server)
