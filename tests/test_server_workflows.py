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

    # The server saw the planner's request finish: the coder is next without any event, and a
    # report of that finish changes nothing.
    assert server.engine.workflows.tracker.instance_steps("wf-main", "coder") == 0
    r = event(server, "wf-main", event="agent_finished", agent_id="planner")
    assert r.status_code == 200 and r.json()["applied"] is False and "planner" in r.json()["reason"]
    assert server.engine.workflows.tracker.instance_steps("wf-main", "coder") == 0
    # SGLang-style custom_params carry the same metadata.
    client.completions.create(
        model=MODEL, prompt="code", max_tokens=2,
        extra_body={"custom_params": {"workflow_id": "wf-main", "agent_id": "coder", "other": 1}},
    )
    assert server.metric('context_forge_workflow_requests_total{workflow_id="wf-main"}') == before + 2
    # A skipped optional agent is reported finished without ever sending a request.
    r = event(server, "wf-main", event="agent_finished", agent_id="reviewer")
    assert r.status_code == 200 and r.json()["applied"] is True and "reason" not in r.json()

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
    assert r.status_code == 200 and r.json()["applied"] is False and "dynamic" in r.json()["reason"]
    assert event(server, "wf-dyn", event="workflow_finished").status_code == 200
    assert "wf-dyn" not in live(server)


def graph_state(server: Server, workflow_id: str) -> tuple[dict[str, float], int, int]:
    """Every agent's steps in the instance, its completed rounds and rounds begun."""
    tracker = server.engine.workflows.tracker
    with server.engine.workflows.lock:
        graph = tracker.graph_of(workflow_id)
        steps = {a: tracker.instance_steps(workflow_id, a) for a in graph.agent_ids}
        return steps, tracker.completed_rounds(workflow_id), tracker.rounds_started(workflow_id)


def run_agent(client: openai.OpenAI, workflow_id: str, agent_id: str) -> None:
    client.completions.create(model=MODEL, prompt=f"{agent_id} works", max_tokens=2,
                              extra_body={"workflow": {"workflow_id": workflow_id, "agent_id": agent_id}})


def test_duplicate_events_never_move_the_step_graph_twice(server: Server, client: openai.OpenAI) -> None:
    assert register(server, "wf-idem", PIPELINE).status_code == 201
    run_agent(client, "wf-idem", "planner")
    before = graph_state(server, "wf-idem")
    for _ in range(3):
        r = event(server, "wf-idem", event="agent_finished", agent_id="planner")
        assert r.json()["applied"] is False and "already finished" in r.json()["reason"]
        assert graph_state(server, "wf-idem") == before
    assert event(server, "wf-idem", event="agent_finished", agent_id="coder").json()["applied"] is True
    skipped = graph_state(server, "wf-idem")
    assert skipped[0]["reviewer"] == 0
    assert event(server, "wf-idem", event="agent_finished", agent_id="coder").json()["applied"] is False
    assert graph_state(server, "wf-idem") == skipped
    assert event(server, "wf-idem", event="workflow_finished").status_code == 200


def test_repeated_skip_that_completed_a_round_does_not_finish_the_next(
    server: Server, client: openai.OpenAI
) -> None:
    assert register(server, "wf-loop", PIPELINE, repeat=True).status_code == 201
    run_agent(client, "wf-loop", "planner")
    run_agent(client, "wf-loop", "coder")
    assert event(server, "wf-loop", event="agent_finished", agent_id="reviewer").json()["applied"] is True
    steps, completed, _ = after_round = graph_state(server, "wf-loop")
    assert completed == 1 and steps["planner"] == 0  # the skip completed round 1; round 2 is next
    r = event(server, "wf-loop", event="agent_finished", agent_id="reviewer")
    assert r.json()["applied"] is False and "next round" in r.json()["reason"]
    assert graph_state(server, "wf-loop") == after_round
    # Once round 2 is under way, skipping the reviewer again is a new report, applied once.
    run_agent(client, "wf-loop", "planner")
    run_agent(client, "wf-loop", "coder")
    assert event(server, "wf-loop", event="agent_finished", agent_id="reviewer").json()["applied"] is True
    assert graph_state(server, "wf-loop")[1] == 2
    assert event(server, "wf-loop", event="agent_finished", agent_id="reviewer").json()["applied"] is False
    assert graph_state(server, "wf-loop")[1] == 2
    assert event(server, "wf-loop", event="workflow_finished").status_code == 200


def test_duplicate_skip_in_a_predicted_last_round_changes_nothing(server: Server, client: openai.OpenAI) -> None:
    loop = [{"agent_id": "lead"}, {"agent_id": "helper", "depends_on": ["lead"], "optional": True}]
    for i in range(3):  # ended instances that ran one round each: the rounds model expects one
        wid = f"wf-once-{i}"
        assert register(server, wid, loop, repeat=True).status_code == 201
        run_agent(client, wid, "lead")
        assert event(server, wid, event="workflow_finished").status_code == 200
    assert register(server, "wf-last", loop, repeat=True).status_code == 201
    run_agent(client, "wf-last", "lead")
    # Predicted to be the last round: the lead, done, is not expected again (in a round that is
    # expected to continue it would be due a finite number of steps from now).
    assert graph_state(server, "wf-last")[0]["lead"] == float("inf")
    r = event(server, "wf-last", event="agent_finished", agent_id="helper")
    assert r.json()["applied"] is True
    done = graph_state(server, "wf-last")
    assert done == ({"lead": float("inf"), "helper": float("inf")}, 0, 1)  # nothing is due any more
    for _ in range(2):
        r = event(server, "wf-last", event="agent_finished", agent_id="helper")
        assert r.json()["applied"] is False and "already finished" in r.json()["reason"]
        r = event(server, "wf-last", event="agent_finished", agent_id="lead")
        assert r.json()["applied"] is False
        assert graph_state(server, "wf-last") == done
    assert event(server, "wf-last", event="workflow_finished").status_code == 200


def test_event_for_an_agent_whose_request_is_running_waits_for_that_request(server: Server) -> None:
    assert register(server, "wf-busy", PIPELINE).status_code == 201
    with server.engine.workflows.lock:  # as the engine does when the planner's request starts
        server.engine.workflows.on_request("wf-busy", "planner")
    try:
        r = event(server, "wf-busy", event="agent_finished", agent_id="planner")
        assert r.json()["applied"] is False and "running" in r.json()["reason"]
        assert graph_state(server, "wf-busy")[0]["planner"] == 0  # still running
    finally:
        with server.engine.workflows.lock:
            server.engine.workflows.on_request_finished("wf-busy", "planner")
    assert graph_state(server, "wf-busy")[0]["coder"] == 0
    assert event(server, "wf-busy", event="workflow_finished").status_code == 200
