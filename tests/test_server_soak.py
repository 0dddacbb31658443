"""A bounded soak on 127.0.0.1: a few hundred mixed requests from several threads (chat and
completions, plain and streamed, clients that hang up mid-stream or mid-request) with workflow
declarations and events in between. Afterwards no request is stuck, every page a request held is
back (in_use == 0), page accounting holds and the server still answers."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest

from context_forge.server.testing import MODEL, Server, running_server, wait_until

THREADS = 6
OPS_PER_THREAD = 50
DEADLINE_S = 60.0
"""A hard stop for the request loop; the soak normally takes a few seconds."""
SYSTEM = "You are one agent of a team; keep answers short. " * 2


@pytest.fixture(scope="module")
def soak_server() -> Iterator[Server]:
    # A small device pool with a host tier and prefetch: eviction, write-back and loads all run.
    with running_server(max_total_tokens=2048, enable_hierarchical_cache=True, enable_prefetch=True) as s:
        yield s


class Worker:
    """One client thread: its own keep-alive connection, a seeded mix of operations."""

    def __init__(self, server: Server, index: int, counts: Counter[str], errors: list[str]) -> None:
        self.server = server
        self.index = index
        self.rng = random.Random(index)
        self.http = httpx.Client(base_url=server.base_url, timeout=30)
        self.counts = counts
        self.errors = errors
        self.ops: list[tuple[str, Callable[[], None]]] = [
            ("chat", self.chat), ("completion", self.completion), ("stream_full", self.stream_full),
            ("stream_hangup", self.stream_hangup), ("plain_hangup", self.plain_hangup),
            ("workflow", self.workflow),
        ]

    def body(self, endpoint: str, max_tokens: int, **extra: object) -> dict[str, object]:
        text = f"{SYSTEM} task {self.rng.randrange(40)}"
        if endpoint == "chat":
            return {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM},
                                                 {"role": "user", "content": text}], "max_tokens": max_tokens, **extra}
        return {"model": MODEL, "prompt": text, "max_tokens": max_tokens, **extra}

    def path(self, endpoint: str) -> str:
        return "/chat/completions" if endpoint == "chat" else "/completions"

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.errors.append(f"worker {self.index}: {what}")

    def chat(self) -> None:
        r = self.http.post("/chat/completions", json=self.body("chat", self.rng.randint(1, 6)))
        self.expect(r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length"), r.text)

    def completion(self) -> None:
        r = self.http.post("/completions", json=self.body("completions", self.rng.randint(1, 6)))
        self.expect(r.status_code == 200, r.text)

    def stream_full(self) -> None:
        endpoint = self.rng.choice(["chat", "completions"])
        body = self.body(endpoint, self.rng.randint(1, 6), stream=True, stream_options={"include_usage": True})
        with self.http.stream("POST", self.path(endpoint), json=body) as r:
            lines = [line for line in r.iter_lines() if line]
        self.expect(r.status_code == 200 and lines[-1] == "data: [DONE]", f"stream ended {lines[-1:]}")

    def stream_hangup(self) -> None:
        """Reads a few events of a long stream, then closes the connection."""
        endpoint = self.rng.choice(["chat", "completions"])
        body = self.body(endpoint, 200, stream=True, ignore_eos=True)
        with httpx.Client(base_url=self.server.base_url, timeout=30) as own:
            with own.stream("POST", self.path(endpoint), json=body) as r:
                self.expect(r.status_code == 200, f"stream status {r.status_code}")
                for i, _ in enumerate(r.iter_lines()):
                    if i >= self.rng.randint(1, 6):
                        break

    def plain_hangup(self) -> None:
        """A plain request whose client gives up (read timeout) while the server generates."""
        body = self.body(self.rng.choice(["chat", "completions"]), 200, ignore_eos=True)
        endpoint = "chat" if "messages" in body else "completions"
        with httpx.Client(base_url=self.server.base_url, timeout=httpx.Timeout(30, read=0.05)) as own:
            try:
                own.post(self.path(endpoint), json=body)
            except httpx.ReadTimeout:
                return
        self.counts["plain_hangup_finished_first"] += 1

    def workflow(self) -> None:
        wid = f"soak-{self.index}-{self.counts['workflow_ids']}-{self.rng.randrange(10**6)}"
        self.counts["workflow_ids"] += 1
        repeat = self.rng.random() < 0.5
        agents = [{"agent_id": "plan"}, {"agent_id": "code", "depends_on": ["plan"]},
                  {"agent_id": "review", "depends_on": ["code"], "optional": True}]
        r = self.http.post("/workflows", json={"workflow_id": wid, "agents": agents, "repeat": repeat})
        self.expect(r.status_code == 201, r.text)
        for agent in ("plan", "code"):
            endpoint = self.rng.choice(["chat", "completions"])
            body = self.body(endpoint, self.rng.randint(1, 4), workflow={"workflow_id": wid, "agent_id": agent})
            self.expect(self.http.post(self.path(endpoint), json=body).status_code == 200, f"{wid} {agent}")
        events = f"/workflows/{wid}/events"
        skip = self.http.post(events, json={"event": "agent_finished", "agent_id": "review"}).json()
        again = self.http.post(events, json={"event": "agent_finished", "agent_id": "review"}).json()
        seen = self.http.post(events, json={"event": "agent_finished", "agent_id": "code"}).json()
        self.expect(skip["applied"] and not again["applied"] and not seen["applied"], f"{skip} {again} {seen}")
        self.expect(self.http.post(events, json={"event": "workflow_finished"}).status_code == 200, wid)

    def run(self, stop_at: float) -> None:
        try:
            for _ in range(OPS_PER_THREAD):
                if time.monotonic() > stop_at:
                    self.errors.append(f"worker {self.index}: deadline reached")
                    return
                name, op = self.rng.choice(self.ops)
                op()
                self.counts[name] += 1
        except Exception as e:  # reported by the test, with the worker that hit it
            self.errors.append(f"worker {self.index}: {type(e).__name__}: {e}")
        finally:
            self.http.close()


def test_soak_mixed_traffic_returns_every_page(soak_server: Server) -> None:
    server = soak_server
    counts: Counter[str] = Counter()
    errors: list[str] = []
    aborted_before = server.metric("context_forge_aborted_requests_total")
    t0 = time.monotonic()
    workers = [Worker(server, i, counts, errors) for i in range(THREADS)]
    threads = [threading.Thread(target=w.run, args=(t0 + DEADLINE_S,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S + 30)
    elapsed = time.monotonic() - t0
    print(f"\nsoak: {sum(counts[n] for n, _ in workers[0].ops)} operations in {elapsed:.1f}s: {dict(counts)}")
    assert not any(t.is_alive() for t in threads), "a worker thread is stuck"
    assert not errors, errors[:5]
    assert sum(counts[n] for n, _ in workers[0].ops) == THREADS * OPS_PER_THREAD
    assert counts["stream_hangup"] and counts["plain_hangup"] and counts["workflow"]

    # No request is stuck: the engine drains, knows no live request, and the gauges agree.
    wait_until(server.engine_idle, timeout=30, what="engine idle after the soak")
    wait_until(lambda: server.engine.live_requests == 0, timeout=10, what="no live request ids")
    m = server.metrics()
    assert m["context_forge_running_requests"] == 0 and m["context_forge_waiting_requests"] == 0
    assert m["context_forge_aborted_requests_total"] > aborted_before  # the hang-ups were aborted
    server.check_pages()  # free + cached + in_use + loading == capacity, in_use == 0
    assert not [w for w in httpx.get(server.base_url + "/workflows").json()["data"] if w.startswith("soak-")]

    r = httpx.post(server.base_url + "/chat/completions", timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": "still there?"}], "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    server.check_pages()
