"""Fuzzing the real server with hypothesis: JSON bodies (valid-looking, broken, with unpaired
surrogates, NaN, huge numbers, odd nesting) for /v1/chat/completions, /v1/completions and the
workflow endpoints. Every answer is below 500 with the OpenAI error shape, the same keep-alive
client's next request succeeds, and once the engine is idle the page accounting holds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from context_forge.server.testing import MODEL, Server, error_of

SURROGATE = st.integers(0xD800, 0xDFFF).map(chr)  # hypothesis' characters() never yields these
TEXT = st.one_of(
    st.text(max_size=12),
    st.lists(st.one_of(st.characters(), SURROGATE), max_size=8).map("".join),
    st.sampled_from(["", " ", "tiny-llama", "\ud800", "a\udfffb", "\U0001f600", "a" * 300]),
)
SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), TEXT
)
JSONV = st.recursive(SCALAR, lambda c: st.lists(c, max_size=4) | st.dictionaries(TEXT, c, max_size=4), max_leaves=10)


def _is_long_run(v: Any) -> bool:  # null or a valid count would let a request decode for long
    return v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 < v < 10**4)


WF_IDS = st.one_of(st.sampled_from(["fz-plain", "fz-loop", "fz-dyn", "fz-gone"]), TEXT)
AGENTS = st.one_of(st.sampled_from(["a", "b", "c"]), TEXT)
PLAIN = st.one_of(st.text(max_size=12), st.sampled_from(["", "hi", "tiny-llama", "\U0001f600"]))


def bodies(wild: bool) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    """Body strategies per endpoint. Tame: every field well-typed with plain text (numbers may be
    out of range), so most requests reach the engine; wild: any field may be any JSON value, and
    text may hold unpaired surrogates."""
    text = TEXT if wild else PLAIN
    wf_ids = WF_IDS if wild else st.sampled_from(["fz-plain", "fz-loop", "fz-dyn", "fz-gone"])
    agents = AGENTS if wild else st.sampled_from(["a", "b", "c", "zz"])

    def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(valid, JSONV) if wild else valid

    short = maybe(st.integers(1, 3)) if not wild else st.one_of(
        st.integers(1, 3), JSONV.filter(lambda v: not _is_long_run(v)))
    meta = maybe(st.fixed_dictionaries({"workflow_id": wf_ids}, optional={"agent_id": agents}))
    sampling = {
        "temperature": maybe(st.floats(0, 2)), "top_p": maybe(st.floats(0.01, 1)),
        "top_k": maybe(st.integers(-2, 50)), "seed": maybe(st.integers(-(2**64), 2**64)),
        "stop": maybe(st.lists(text, max_size=2)), "stop_token_ids": maybe(st.lists(st.integers(-5, 10**6), max_size=3)),
        "stream": maybe(st.booleans()), "stream_options": maybe(st.fixed_dictionaries({"include_usage": st.booleans()})),
        "n": maybe(st.just(1)), "workflow": meta, "custom_params": meta, "ignore_eos": maybe(st.booleans()),
        "logit_bias": maybe(st.none()), "presence_penalty": maybe(st.just(0.0)), "user": maybe(text),
    }
    part = st.fixed_dictionaries({"type": maybe(st.just("text")), "text": text})
    message = st.fixed_dictionaries({
        "role": maybe(st.sampled_from(["system", "user", "assistant", "tool", "developer"])),
        "content": maybe(st.one_of(text, st.lists(part, max_size=2))),
    })
    prompt = maybe(st.one_of(text, st.lists(st.integers(-3, 300), max_size=8), st.lists(text, max_size=2),
                             st.lists(st.lists(st.integers(0, 300), max_size=4), max_size=2)))
    agent = st.fixed_dictionaries(
        {"agent_id": maybe(agents)},
        optional={"depends_on": maybe(st.lists(agents, max_size=2)), "optional": maybe(st.booleans())})
    return {
        "/chat/completions": st.fixed_dictionaries(
            {"model": maybe(st.just(MODEL)), "messages": maybe(st.lists(message, min_size=1, max_size=3)),
             "max_tokens": short},
            optional={**sampling, "max_completion_tokens": short, "tools": maybe(st.none()),
                      "response_format": maybe(st.just({"type": "text"}))}),
        "/completions": st.fixed_dictionaries(
            {"model": maybe(st.just(MODEL)), "prompt": prompt, "max_tokens": short},
            optional={**sampling, "echo": maybe(st.booleans()), "suffix": maybe(st.none()),
                      "best_of": maybe(st.just(1))}),
        "/workflows": st.fixed_dictionaries(
            {"workflow_id": maybe(wf_ids), "agents": maybe(st.lists(agent, min_size=1, max_size=4))},
            optional={"repeat": maybe(st.booleans()), **({"extra": JSONV} if wild else {})}),
        "events": st.fixed_dictionaries(
            {"event": maybe(st.sampled_from(["agent_finished", "workflow_finished"]))},
            optional={"agent_id": maybe(agents)}),
    }


TAME, WILD = bodies(False), bodies(True)


def body_bytes(endpoint: str) -> st.SearchStrategy[bytes]:
    """Tame or wild JSON for the endpoint, or raw bytes."""
    return st.one_of(TAME[endpoint].flatmap(encode), WILD[endpoint].flatmap(encode), RAW)


def encode(body: Any) -> st.SearchStrategy[bytes]:
    """The body as JSON (surrogates as \\u escapes, NaN as NaN), sometimes cut short or padded."""
    text = json.dumps(body, allow_nan=True).encode("ascii")
    return st.one_of(st.just(text), st.integers(0, max(len(text) - 1, 0)).map(lambda n: text[:n]),
                     st.just(b" \n" + text + b"\n"))


RAW = st.one_of(st.binary(max_size=64), st.sampled_from([b"[]", b"null", b"\"\\ud800\"", b"{\"a\": NaN}", b"\xff\xfe"]))


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        c.post("/workflows", json={"workflow_id": "fz-plain", "agents": [
            {"agent_id": "a"}, {"agent_id": "b", "depends_on": ["a"]}, {"agent_id": "c", "optional": True}]})
        c.post("/workflows", json={"workflow_id": "fz-loop", "repeat": True, "agents": [
            {"agent_id": "a"}, {"agent_id": "b", "depends_on": ["a"], "optional": True}]})
        yield c


def check(server: Server, http: httpx.Client, r: httpx.Response) -> None:
    assert r.status_code < 500, r.text
    if r.status_code >= 400:
        error_of(r)
    again = http.get("/models")  # same client, same pooled connection
    assert again.status_code == 200, again.text
    server.check_pages()


FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_fuzz_completion_endpoints(server: Server, http: httpx.Client, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(["/chat/completions", "/completions"]))
    content = data.draw(body_bytes(path))
    r = http.post(path, content=content, headers={"content-type": "application/json"})
    check(server, http, r)


@FUZZ
@given(data=st.data())
def test_fuzz_workflow_endpoints(server: Server, http: httpx.Client, data: st.DataObject) -> None:
    if data.draw(st.booleans()):
        path = "/workflows"
        content = data.draw(body_bytes(path))
    else:
        workflow_id = data.draw(WF_IDS)
        path = f"/workflows/{quote(workflow_id.encode('utf-8', 'surrogatepass'), safe='')}/events"
        content = data.draw(body_bytes("events"))
    r = http.post(path, content=content, headers={"content-type": "application/json"})
    check(server, http, r)
    if r.status_code == 201:  # keep the live set small: finish what the fuzzer registered
        created = r.json()["workflow_id"]
        done = http.post(f"/workflows/{quote(created, safe='')}/events", json={"event": "workflow_finished"})
        assert done.status_code == 200, done.text
