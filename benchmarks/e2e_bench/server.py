"""A Context Forge server in a subprocess: start, wait for ``/health``, warm up, stop.

The server is ``python -m context_forge.launch_server --config FILE --KEY VALUE ...`` run with the
interpreter running the benchmark, with the repository's ``python/`` and ``SScheduler/`` put in
front of ``PYTHONPATH`` (so it works from a plain checkout, e.g. on a GPU machine where the
package is not installed and extra wheels sit on ``PYTHONPATH``). Its output goes to a log file
whose tail every startup error shows.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = (REPO / "python", REPO / "SScheduler")


class ServerStartError(RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(p) for p in SOURCE_DIRS]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class ServerProcess:
    """One server subprocess. ``overrides`` are ``ServerConfig`` keys (``radix_eviction_policy``)
    passed as ``--radix-eviction-policy VALUE`` after ``--config``."""

    config_path: Path
    overrides: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "context_forge.launch_server", "--config", str(self.config_path),
               "--host", "127.0.0.1", "--port", str(self.port)]
        for key, value in self.overrides.items():
            cmd += ["--" + key.replace("_", "-"), value]
        return cmd

    def start(self, timeout_s: float) -> float:
        """Starts the process and waits until ``/health`` answers 200; returns the seconds taken.
        Raises ``ServerStartError`` (with the log tail) if it exits or does not answer in time."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as log:
            log.write((" ".join(self.command) + "\n").encode())
            log.flush()
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=server_env(),
                                         cwd=str(REPO), stdin=subprocess.DEVNULL)
        deadline = t0 + timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ServerStartError(f"server exited with status {code} before /health answered "
                                       f"(log {self.log_path}):\n{self.log_tail()}")
            if _healthy(self.url):
                return time.perf_counter() - t0
            if time.perf_counter() > deadline:
                self.stop()
                raise ServerStartError(f"server did not answer /health within {timeout_s:g} s "
                                       f"(log {self.log_path}):\n{self.log_tail()}")
            time.sleep(0.25)

    def warm_up(self, prompt_tokens: int, timeout_s: float = 120.0) -> float:
        """One short completion outside any workflow (first-call kernel and allocator setup, so the
        first replayed request does not pay for it); returns the seconds it took."""
        t0 = time.perf_counter()
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            model = client.get(self.url + "/v1/models").json()["data"][0]
            n = max(1, min(prompt_tokens, int(model.get("max_model_len") or prompt_tokens) // 2))
            body = {"model": model["id"], "prompt": [(7 * i + 3) % 200 for i in range(n)], "max_tokens": 4,
                    "temperature": 0, "ignore_eos": True}
            response = client.post(self.url + "/v1/completions", json=body)
        if response.status_code != 200:
            raise ServerStartError(f"warm-up request failed with HTTP {response.status_code}: {response.text[:500]}")
        return time.perf_counter() - t0

    def prefill(self, prompts: list[list[int]], timeout_s: float = 120.0) -> None:
        """One-token completions of ``prompts`` (token ids) in turn, outside any workflow: their
        KV lands in the cache (the measured replay's system prompts, computed before it starts)."""
        deadline = time.perf_counter() + timeout_s
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            model = client.get(self.url + "/v1/models").json()["data"][0]["id"]
            for ids in prompts:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise TimeoutError(f"warm-up prefill did not finish within {timeout_s:.0f} s")
                body = {"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0, "ignore_eos": True}
                response = client.post(self.url + "/v1/completions", json=body, timeout=left)
                if response.status_code != 200:
                    raise RuntimeError(f"warm-up prefill failed with HTTP {response.status_code}: "
                                       f"{response.text[:500]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> float:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the seconds taken."""
        t0 = time.perf_counter()
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        return time.perf_counter() - t0

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False
