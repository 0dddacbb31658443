"""Runs the real HTTP server in-process (tests, benchmarks): real Engine behind real uvicorn.

`running_server(...)` builds and starts an Engine (default: tiny-llama, random weights, CPU) and
serves it with uvicorn on a socket bound to 127.0.0.1:0 (so the port is free by construction) in a
background thread, returning once `/health` answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from context_forge.config import ServerConfig
from context_forge.engine.engine import Engine
from context_forge.server.app import create_app

MODEL = "tiny-llama"


def small_config(**overrides: Any) -> ServerConfig:
    """A CPU config small enough for fast tests: 512-token context, 4096-token device pool."""
    values: dict[str, Any] = dict(
        model_path=MODEL,
        device="cpu",
        context_length=512,
        max_total_tokens=4096,
        page_size=16,
        log_level="warning",
        enable_hierarchical_cache=False,
        enable_prefetch=False,
    )
    values.update(overrides)
    return ServerConfig(**values)


@dataclass
class Server:
    url: str
    engine: Engine
    config: ServerConfig

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def metrics(self) -> dict[str, float]:
        """`/metrics` as {'name{labels}': value}."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        out: dict[str, float] = {}
        for line in text.split("\n"):
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value.replace("+Inf", "inf"))
        return out

    def metric(self, key: str) -> float:
        return self.metrics().get(key, 0.0)

    def engine_idle(self) -> bool:
        with self.engine.parts.lock:
            return not self.engine.scheduler.has_work

    def pages(self) -> dict[str, float]:
        """`context_forge_device_pages` by state, as /metrics shows them, plus `capacity`."""
        m = self.metrics()
        out = {s: m[f'context_forge_device_pages{{state="{s}"}}'] for s in ("free", "cached", "in_use", "loading")}
        out["capacity"] = m['context_forge_pool_capacity_pages{pool="device"}']
        return out

    def check_pages(self) -> None:
        """Once idle: /metrics shows free + cached + in_use + loading == capacity with nothing in
        use, and the engine's own page accounting holds. Every server test ends with this."""
        wait_until(self.engine_idle, what="engine idle")
        pages = self.pages()
        total = pages["free"] + pages["cached"] + pages["in_use"] + pages["loading"]
        assert total == pages["capacity"], f"/metrics device pages {pages} do not sum to the capacity"
        assert pages["in_use"] == 0, f"{pages['in_use']} device pages in use on an idle server: {pages}"
        self.engine.check_invariants()

    def check_no_leak(self) -> None:
        """Once idle, no request holds device pages (cached prefixes may) and page accounting holds."""
        wait_until(self.engine_idle, what="engine idle")
        self.engine.check_invariants()
        with self.engine.parts.lock:
            assert self.engine.kv.in_use == 0, f"{self.engine.kv.in_use} device pages still held by requests"
            assert self.engine.kv.locked_pages == 0, f"{self.engine.kv.locked_pages} cached pages still locked"


@contextlib.contextmanager
def serve_app(engine: Engine, config: ServerConfig) -> Iterator[Server]:
    """uvicorn serving `create_app(engine, config)` in a thread, stopped on exit."""
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; without it every
    # keep-alive response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(engine, config)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url), timeout=30, what="server /health")
        yield Server(url=url, engine=engine, config=config)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def running_server(**overrides: Any) -> Iterator[Server]:
    """A started engine plus its HTTP server; both stopped on exit."""
    config = small_config(**overrides)
    engine = Engine(config)
    engine.start()
    try:
        with serve_app(engine, config) as server:
            yield server
            if engine.is_alive() and config.enable_metrics:
                server.check_pages()
    finally:
        engine.shutdown()


def with_config(server: Server, **changes: Any) -> ServerConfig:
    return dataclasses.replace(server.config, **changes)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object of a response, checking its shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return err


def cycle_in(message: str) -> list[str]:
    """Agent names of an `a -> b -> a` path found in `message`."""
    m = re.search(r"(\w+(?: -> \w+)+)", message)
    assert m, message
    return m.group(1).split(" -> ")
