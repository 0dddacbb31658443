"""Bad input against the real server: OpenAI-shaped 4xx errors, and no pages held afterwards."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from context_forge.server.testing import MODEL, Server, error_of, serve_app, with_config




def post(server: Server, path: str, body: Any = None, content: bytes | None = None) -> httpx.Response:
    if content is not None:
        return httpx.post(server.base_url + path, content=content, headers={"content-type": "application/json"})
    return httpx.post(server.base_url + path, json=body)


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    err = e.value.body
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "gpt-17" in err["message"] and MODEL in err["message"]


def test_prompt_over_context_is_400_and_leaks_nothing(server: Server, client: openai.OpenAI) -> None:
    too_long = "x" * (server.engine.context_len + 10)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=too_long, max_tokens=1)
    assert e.value.body["code"] == "context_length_exceeded"
    assert str(server.engine.context_len) in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="short", max_tokens=server.engine.context_len)
    assert e.value.body["param"] == "max_tokens"
    server.check_no_leak()


def test_token_id_prompt_outside_vocab_is_400(server: Server) -> None:
    r = post(server, "/completions", {"model": MODEL, "prompt": [1, 2, 10**9], "max_tokens": 1})
    assert r.status_code == 400
    assert error_of(r)["type"] == "invalid_request_error"
    r = post(server, "/completions", {"model": MODEL, "prompt": [1, -2], "max_tokens": 1})
    assert r.status_code == 400 and "negative" in error_of(r)["message"]
    server.check_no_leak()


@pytest.mark.parametrize(
    "content, needle",
    [(b'{"model": "tiny-llama", "messages": [', "not valid JSON"), (b"", "empty"), (b"[1, 2]", "JSON object")],
)
def test_malformed_json_is_400_not_422(server: Server, content: bytes, needle: str) -> None:
    r = post(server, "/chat/completions", content=content)
    assert r.status_code == 400
    err = error_of(r)
    assert err["type"] == "invalid_request_error" and needle in err["message"]


@pytest.mark.parametrize(
    "body, param",
    [
        (chat(temperature=5), "temperature"),
        (chat(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role"),
        (chat(messages=[]), "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        (chat(n=2), "n"),
        (chat(top_k=-5), "top_k"),
        (chat(stop=[""]), "stop"),
        (chat(presence_penalty=0.5), "presence_penalty"),
        (chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    ],
)
def test_bad_fields_are_400_naming_the_param(server: Server, body: dict[str, Any], param: str) -> None:
    r = post(server, "/chat/completions", body)
    assert r.status_code == 400, r.text
    assert error_of(r)["param"] == param


def test_batched_completion_prompts_are_rejected(server: Server) -> None:
    r = post(server, "/completions", {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 1})
    assert r.status_code == 400 and "batched prompts" in error_of(r)["message"]
    single = post(server, "/completions", {"model": MODEL, "prompt": [[65, 66]], "max_tokens": 1})
    assert single.status_code == 200 and single.json()["usage"]["prompt_tokens"] == 2


@pytest.mark.parametrize(
    "meta, param",
    [
        ({"workflow": "wf-1"}, "workflow"),
        ({"workflow": {"workflow_id": 5}}, "workflow.workflow_id"),
        ({"workflow": {"agent_id": "a"}}, "workflow.workflow_id"),
        ({"workflow": {"workflow_id": "wf", "agent": "a"}}, "workflow.agent"),
        ({"workflow": {"workflow_id": ""}}, "workflow.workflow_id"),
        ({"custom_params": ["wf"]}, "custom_params"),
        ({"custom_params": {"workflow_id": "wf", "agent_id": 3}}, "custom_params.agent_id"),
        ({"workflow": {"workflow_id": "a"}, "custom_params": {"workflow_id": "b"}}, "custom_params"),
    ],
)
def test_malformed_workflow_metadata_is_400(client: openai.OpenAI, meta: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1, extra_body=meta
        )
    assert e.value.body["param"] == param, e.value.body


def test_unknown_route_and_method_keep_the_error_shape(server: Server) -> None:
    r = httpx.get(server.base_url + "/nope")
    assert r.status_code == 404 and error_of(r)["type"] == "not_found_error"
    r = httpx.get(server.base_url + "/chat/completions")
    assert r.status_code == 405
    error_of(r)


def test_api_key_is_required_when_configured(server: Server) -> None:
    with serve_app(server.engine, with_config(server, api_key="sekret")) as guarded:
        no_key = openai.OpenAI(base_url=guarded.base_url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            no_key.models.list()
        assert e.value.body["code"] == "invalid_api_key"
        r = httpx.post(guarded.base_url + "/completions", json={"model": MODEL, "prompt": "x"})
        assert r.status_code == 401
        error_of(r)
        ok = openai.OpenAI(base_url=guarded.base_url, api_key="sekret", max_retries=0)
        assert ok.completions.create(model=MODEL, prompt="x", max_tokens=1).usage.completion_tokens == 1
        assert httpx.get(guarded.url + "/health").status_code == 200
