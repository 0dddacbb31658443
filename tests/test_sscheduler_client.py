"""SScheduler against the real Context Forge server on 127.0.0.1 (tiny-llama, random weights, CPU).

"A server that ignores metadata" is covered twice without any stand-in server: the client in
`openai` mode against our real server (it then sends no metadata and makes no workflow calls),
and the `context_forge` mode against our real server app with its `/v1/workflows` routes removed
(real engine and completion routes; what an older server or another OpenAI-compatible one
looks like to the client): the 404 is logged once and the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.responses import JSONResponse

from context_forge.engine.engine import Engine
from context_forge.server.app import create_app
from context_forge.server.testing import MODEL, Server, running_server, small_config, wait_until
from context_forge.workflow.errors import UnknownAgentError
from sscheduler import AgentReply, SScheduler, SSchedulerError, Workflow, WorkflowInstance

PIPELINE = Workflow.from_yaml("""
name: coding
agents:
  - agent_id: planner
    system_prompt: You plan.
    max_tokens: 4
  - agent_id: coder
    system_prompt: You code.
    depends_on: [planner]
    max_tokens: 3
  - agent_id: reviewer
    system_prompt: You review.
    depends_on: [coder]
    optional: true
""")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server() as s:
        yield s


def wf_requests(server: Server, workflow_id: str) -> float:
    return server.metric(f'context_forge_workflow_requests_total{{workflow_id="{workflow_id}"}}')


def live(server: Server) -> list[str]:
    return httpx.get(server.base_url + "/workflows", timeout=10).json()["data"]


def sched(server_url: str, **kw: Any) -> SScheduler:
    kw.setdefault("progress", False)
    return SScheduler(server_url, **kw)


def test_three_agent_workflow_many_instances(server: Server) -> None:
    tracker = server.engine.workflows.tracker
    lock = server.engine.workflows.lock
    active = 0
    peak = 0
    steps_after_planner: list[float] = []

    async def body(inst: WorkflowInstance) -> tuple[str, AgentReply, AgentReply]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        with lock:
            assert tracker.graph_of(inst.instance_id) == PIPELINE.graph
        plan = await inst.call("planner", "Add two numbers.")
        with lock:
            steps_after_planner.append(tracker.instance_steps(inst.instance_id, "coder"))
        code = await inst.call("coder", [{"role": "user", "content": "Plan: " + plan.text}], temperature=0.0)
        await inst.skip("reviewer")
        active -= 1
        return inst.instance_id, plan, code

    async def main() -> list[tuple[str, AgentReply, AgentReply]]:
        async with sched(server.url, concurrency=2) as s:
            return await s.run(PIPELINE, body, count=4)

    results = asyncio.run(main())
    ids = [r[0] for r in results]
    assert len(set(ids)) == 4 and all(i.startswith("coding-") for i in ids)
    assert peak == 2
    assert steps_after_planner == [0.0] * 4  # agent_finished(planner) reached the server
    for instance_id, plan, code in results:
        assert wf_requests(server, instance_id) == 2
        assert plan.agent_id == "planner" and 1 <= plan.completion_tokens <= 4
        assert code.agent_id == "coder" and 1 <= code.completion_tokens <= 3
        assert plan.prompt_tokens > 0 and plan.ttft_s is not None and 0 < plan.ttft_s <= plan.latency_s
    assert sum(p.cached_tokens for _, p, _ in results) > 0  # same system prompt + task in every instance
    assert not set(ids) & set(live(server))
    server.check_no_leak()


def test_repeat_workflow_is_declared_and_finished(server: Server) -> None:
    loop = Workflow("peer", PIPELINE.agents[:2], repeat=True)

    async def main() -> tuple[dict[str, Any], int]:
        async with sched(server.url, model=MODEL) as s:
            async with s.instance(loop, "peer-manual") as inst:
                async with httpx.AsyncClient(timeout=10) as http:
                    shown = (await http.get(server.base_url + "/workflows/peer-manual")).json()
                for _ in range(2):
                    await inst.call("planner", "next round")
                    await inst.call("coder", "go")
                with server.engine.workflows.lock:
                    rounds = server.engine.workflows.tracker.completed_rounds("peer-manual")
            return shown, rounds

    shown, rounds = asyncio.run(main())
    assert shown["repeat"] is True and [a["agent_id"] for a in shown["agents"]] == ["planner", "coder"]
    assert rounds == 2
    assert wf_requests(server, "peer-manual") == 4 and "peer-manual" not in live(server)


def test_openai_target_sends_no_metadata(server: Server, capfd: pytest.CaptureFixture[str]) -> None:
    before_plain = wf_requests(server, "")
    live_before = live(server)

    async def body(inst: WorkflowInstance) -> str:
        return (await inst.call("planner", "hi")).text

    async def main() -> list[str]:
        async with sched(server.url + "/v1", target="openai", progress=True) as s:
            return await s.run(PIPELINE, body, instance_ids=["plain-1", "plain-2"], description="plain-run")

    assert len(asyncio.run(main())) == 2
    assert "plain-run" in capfd.readouterr().err  # the progress bar
    assert wf_requests(server, "") == before_plain + 2
    assert wf_requests(server, "plain-1") == 0 and live(server) == live_before


def test_sglang_target_metadata_reaches_the_server(server: Server) -> None:
    async def body(inst: WorkflowInstance) -> None:
        await inst.call("planner", "a")
        await inst.complete("coder", [1, 2, 3, 4, 5], max_tokens=2)

    async def main() -> None:
        async with sched(server.url, target="sglang") as s:
            await s.run(PIPELINE, body, instance_ids=["sg-1"])

    asyncio.run(main())
    assert wf_requests(server, "sg-1") == 2
    with server.engine.workflows.lock:
        assert server.engine.workflows.is_dynamic("sg-1")  # custom_params carry ids, no declaration


def test_misuse_and_refusals_raise_clear_errors(server: Server) -> None:
    async def main() -> None:
        async with sched(server.url) as s:
            inst = s.instance(PIPELINE, "dup")
            with pytest.raises(SSchedulerError, match="not started"):
                await inst.call("planner", "x")
            await inst.start()
            with pytest.raises(SSchedulerError, match="already live"):
                await s.start(PIPELINE, "dup")
            with pytest.raises(UnknownAgentError, match="ghost"):
                await inst.call("ghost", "x")
            with pytest.raises(SSchedulerError, match="not optional"):
                await inst.skip("coder")
            with pytest.raises(TypeError, match="message"):
                await inst.call("planner", 42)  # type: ignore[arg-type]
            await inst.finish()
            await inst.finish()
            with pytest.raises(SSchedulerError, match="finished"):
                await inst.call("planner", "x")

            async def failing(i: WorkflowInstance) -> None:
                await i.call("planner", "x")
                raise RuntimeError("agent crashed")

            with pytest.raises(RuntimeError, match="agent crashed"):
                await s.run(PIPELINE, failing, instance_ids=["crash"])

    asyncio.run(main())
    assert "dup" not in live(server) and "crash" not in live(server)
    with pytest.raises(ValueError, match="concurrency"):
        SScheduler(server.url, concurrency=0)
    with pytest.raises(ValueError, match="unknown target"):
        SScheduler(server.url, target="vllm")


@contextlib.contextmanager
def server_without_workflow_api() -> Iterator[tuple[str, Engine]]:
    """Our real engine and app, served by uvicorn on 127.0.0.1, except that `/v1/workflows...` answers
404 `{"detail": "Not Found"}` as a FastAPI server without those routes (vLLM, SGLang) does."""
    config = small_config()
    engine = Engine(config)
    engine.start()
    full = create_app(engine, config)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/workflows"):
            await JSONResponse({"detail": "Not Found"}, status_code=404)(scope, receive, send)
        else:
            await full(scope, receive, send)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: _healthy(url), timeout=30, what="server /health")
        yield url, engine
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()
        engine.shutdown()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_server_without_workflow_api_is_tolerated(caplog: pytest.LogCaptureFixture) -> None:
    async def body(inst: WorkflowInstance) -> int:
        plan = await inst.call("planner", "x")
        await inst.skip("reviewer")
        return plan.completion_tokens

    async def main(url: str) -> list[int]:
        async with sched(url, concurrency=2) as s:
            return await s.run(PIPELINE, body, instance_ids=["old-1", "old-2", "old-3"])

    with server_without_workflow_api() as (url, _engine):
        assert httpx.post(url + "/v1/workflows", json={}).status_code == 404
        with caplog.at_level(logging.WARNING, logger="sscheduler"):
            tokens = asyncio.run(main(url))
        assert all(1 <= t <= 4 for t in tokens)
        warnings = [r for r in caplog.records if "no workflow API" in r.getMessage()]
        assert len(warnings) == 1
        text = httpx.get(url + "/metrics", timeout=10).text
        assert 'context_forge_workflow_requests_total{workflow_id="old-2"} 1' in text
