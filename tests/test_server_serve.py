"""`python -m context_forge.server` (that is, `serve(config)`) in a real subprocess: it logs its URL
when ready, answers requests, and on SIGINT/SIGTERM stops uvicorn and then the engine cleanly."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from context_forge.server.testing import MODEL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*args: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    cmd = [sys.executable, "-m", "context_forge.server", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def _wait_for(lines: queue.Queue[str], needle: str, timeout: float = 90.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"no line containing {needle!r} within {timeout}s; output:\n{''.join(seen)}")


@pytest.mark.parametrize("sig, returncode", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 0)])
def test_serve_logs_url_serves_and_stops_on_signal(sig: signal.Signals, returncode: int) -> None:
    port = _free_port()
    proc, lines = _launch(
        "--model-path", MODEL, "--device", "cpu", "--port", str(port), "--context-length", "256",
        "--max-total-tokens", "2048", "--log-level", "info",
    )
    try:
        _wait_for(lines, f"ready at http://127.0.0.1:{port}")
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"model": MODEL, "prompt": "hi", "max_tokens": 3, "ignore_eos": True}, timeout=30,
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        proc.send_signal(sig)
        _wait_for(lines, "Context Forge stopped", timeout=30)
        assert proc.wait(timeout=30) == returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_config_exits_2_naming_the_option() -> None:
    proc, lines = _launch("--prot", "8000")
    assert proc.wait(timeout=60) == 2
    out = "".join(_wait_for(lines, "error:", timeout=5))
    assert "--prot" in out and "--port" in out
