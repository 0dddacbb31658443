"""Trace replay (`sscheduler replay` and `replay_trace`) against the real server on 127.0.0.1
(tiny-llama, random weights, CPU), in real time with delays of a few tenths of a second."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from context_forge.server.testing import Server, running_server
from context_forge.trace.reader import load_trace
from sscheduler import ReplayResult, replay_trace
from sscheduler.cli import main

REQUIRED_KEYS = {
    "makespan_s", "mean_latency_s", "p50_latency_s", "p99_latency_s", "mean_ttft_s", "prompt_tokens", "cached_tokens",
}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server() as s:
        yield s


def write_trace(path: Path, p: str, vocab_size: int = 256) -> Path:
    """Three workflows named `<p>-a` (declared; its planner runs twice, so it repeats), `<p>-b`
    (dynamic, one request waits on `<p>-a` too) and `<p>-c` (declared fan-out: two workers in
    parallel, then an aggregator). Every prompt starts with the 64-token `sys/planner` segment."""

    def req(rid: str, wf: str, agent: str, segments: list[tuple[str, int]], out: int, **kw: Any) -> dict[str, Any]:
        prompt = [{"segment": "sys/planner", "tokens": 64}]
        prompt += [{"segment": f"{p}/{n}", "tokens": t} for n, t in segments]
        return {"type": "request", "id": f"{p}/{rid}", "workflow_id": f"{p}-{wf}", "agent_id": agent,
                "prompt": prompt, "output_tokens": out, **kw}

    records = [
        {"type": "meta", "version": 1, "name": f"tiny-{p}", "vocab_size": vocab_size},
        {"type": "workflow", "workflow_id": f"{p}-a",
         "agents": [{"agent_id": "planner"}, {"agent_id": "coder", "depends_on": ["planner"]}]},
        {"type": "workflow", "workflow_id": f"{p}-c",
         "agents": [{"agent_id": "plan"}, {"agent_id": "w1", "depends_on": ["plan"]},
                    {"agent_id": "w2", "depends_on": ["plan"]}, {"agent_id": "agg", "depends_on": ["w1", "w2"]}]},
        req("a0", "a", "planner", [("a/in0", 10)], 4, arrival_s=0.0),
        req("a1", "a", "coder", [("a/in1", 12)], 3, after=[f"{p}/a0"], delay_s=0.2),
        req("a2", "a", "planner", [("a/in0", 10), ("a/in2", 8)], 4, after=[f"{p}/a1"], delay_s=0.1),
        req("c0", "c", "plan", [("c/in", 30)], 2, arrival_s=0.1),
        req("c1", "c", "w1", [("c/w", 20), ("c/1", 5)], 3, after=[f"{p}/c0"], delay_s=0.05),
        req("c2", "c", "w2", [("c/w", 20), ("c/2", 5)], 3, after=[f"{p}/c0"], delay_s=0.05),
        req("c3", "c", "agg", [("c/agg", 40)], 2, after=[f"{p}/c1", f"{p}/c2"]),
        req("b0", "b", "x", [("b/in", 20)], 0, arrival_s=0.3),
        req("b1", "b", "y", [("b/in2", 20)], 2, after=[f"{p}/b0", f"{p}/a1"], delay_s=0.05),
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def wf_requests(server: Server, workflow_id: str) -> float:
    return server.metric(f'context_forge_workflow_requests_total{{workflow_id="{workflow_id}"}}')


def live(server: Server) -> list[str]:
    return httpx.get(server.base_url + "/workflows", timeout=10).json()["data"]


class Watcher:
    """Polls `GET /v1/workflows/{id}` in a thread while a replay runs; keeps what it saw."""

    def __init__(self, server: Server, ids: list[str]) -> None:
        self.seen: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(server, ids), daemon=True)

    def _poll(self, server: Server, ids: list[str]) -> None:
        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set():
                for wid in ids:
                    r = http.get(f"{server.base_url}/workflows/{wid}")
                    if r.status_code == 200:
                        self.seen.setdefault(wid, r.json())
                self._stop.wait(0.02)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def test_replay_honours_the_trace(server: Server, tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.jsonl", "r1")
    trace = load_trace(path)
    with Watcher(server, ["r1-a", "r1-c"]) as watcher:
        result: ReplayResult = asyncio.run(replay_trace(path, server.url, progress=False))

    assert [r.request_id for r in result.records] == [r.id for r in trace.requests]
    for req in trace.requests:
        rec = result.record(req.id)
        if req.after:
            expected_due = max(result.record(d).finished_s for d in req.after) + req.delay_s
        else:
            expected_due = req.arrival_s
        assert rec.due_s == pytest.approx(expected_due, abs=1e-6)
        assert rec.due_s - 1e-3 <= rec.sent_s <= rec.due_s + 0.5, (req.id, rec)
        assert rec.prompt_tokens == req.prompt_len  # the exact token ids were sent
        assert rec.completion_tokens == max(1, req.output_tokens)  # ignore_eos: always the full length
        assert rec.ttft_s is not None and 0 < rec.ttft_s <= rec.latency_s
    assert result.record("r1/a2").cached_tokens >= 64  # sys/planner, 4 pages of 16
    assert result.makespan_s == max(r.finished_s for r in result.records)

    assert watcher.seen["r1-a"]["repeat"] is True  # the planner runs twice in r1-a
    assert watcher.seen["r1-c"]["repeat"] is False
    for wid, count in (("r1-a", 3), ("r1-b", 2), ("r1-c", 4)):
        assert wf_requests(server, wid) == count
    assert not {"r1-a", "r1-b", "r1-c"} & set(live(server))  # each finished after its last request
    server.check_no_leak()


def test_concurrency_limit_serializes_requests(server: Server, tmp_path: Path) -> None:
    path = write_trace(tmp_path / "t.jsonl", "r2")
    result = asyncio.run(replay_trace(path, server.url + "/v1", concurrency=1, progress=False))
    spans = sorted((r.sent_s, r.finished_s) for r in result.records)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end
    assert result.summary().requests == 9


def test_cli_json_summary(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_trace(tmp_path / "t.jsonl", "r3")
    code = main([
        "replay", "--trace", str(path), "--base-url", server.url, "--concurrency", "4", "--json", "--no-progress",
    ])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads(out)
    assert REQUIRED_KEYS <= set(summary)
    assert summary["prompt_tokens"] == sum(r.prompt_len for r in load_trace(path).requests)
    assert 0 < summary["cached_tokens"] < summary["prompt_tokens"]
    assert 0 < summary["mean_ttft_s"] <= summary["mean_latency_s"]
    assert summary["p50_latency_s"] <= summary["p99_latency_s"] <= summary["makespan_s"]
    assert summary["makespan_s"] >= 0.35  # r3/a2 is due 0.3 s after two requests at the earliest
    assert wf_requests(server, "r3-c") == 4


@pytest.mark.parametrize("target", ["openai", "sglang"])
def test_cli_targets(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str) -> None:
    p = f"r4{target}"
    path = write_trace(tmp_path / "t.jsonl", p)
    before_plain = wf_requests(server, "")
    code = main(["replay", "--trace", str(path), "--base-url", server.url, "--target", target, "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "p99 latency (s)" in out and "cached tokens" in out
    if target == "openai":
        assert wf_requests(server, "") == before_plain + 9 and wf_requests(server, f"{p}-a") == 0
    else:
        assert wf_requests(server, f"{p}-a") == 3 and wf_requests(server, "") == before_plain


def test_cli_errors(server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["replay", "--base-url", server.url, "--no-progress", "--trace"]
    assert main(base + [str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot load trace" in capsys.readouterr().err

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "meta", "version": 1}\n{"type": "request", "id": "x"}\n')
    assert main(base + [str(bad)]) == 2
    assert "line 2" in capsys.readouterr().err

    big_vocab = write_trace(tmp_path / "big.jsonl", "r5", vocab_size=32000)
    assert main(base + [str(big_vocab)]) == 1
    err = capsys.readouterr().err
    assert "request 'r5/" in err and "vocabulary" in err
    assert not {"r5-a", "r5-c"} & set(live(server))  # started workflows are finished after the failure

    assert main(["replay", "--trace", str(big_vocab), "--base-url", "http://127.0.0.1:9", "--no-progress"]) == 1
    assert "APIConnectionError" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(base + [str(big_vocab), "--concurrency", "0"])
    assert exit_info.value.code == 2 and "integer >= 1" in capsys.readouterr().err
