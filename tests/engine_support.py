"""Engine helpers shared by the engine, prefetch and policy tests; the ``make_engine`` and
``module_engines`` fixtures in ``conftest.py`` build on them. Real engines only: tiny-llama on the
CPU, the real loop thread."""

from __future__ import annotations

import time
from typing import Any

from context_forge.config import ServerConfig
from context_forge.engine.engine import Engine

PS = 4
ENGINE_DEFAULTS: dict[str, Any] = {
    "model_path": "tiny-llama", "page_size": PS, "max_total_tokens": 1024, "chunked_prefill_size": 64,
    "max_prefill_tokens": 256, "radix_eviction_policy": "lru", "memory_monitor": "none"}
"""What every test engine starts from; a test module's ``ENGINE_CONFIG`` dict overrides it."""


def prompt(seed: int, length: int) -> list[int]:
    """``length`` token ids below 256 (the byte tokenizer's vocabulary), one fixed sequence per seed."""
    return [(seed * 131 + i * 7919) % 256 for i in range(length)]


def start_engine(**config: Any) -> Engine:
    engine = Engine(ServerConfig(**{**ENGINE_DEFAULTS, **config}))
    engine.start()
    return engine


def settle(engine: Engine) -> None:
    """Wait until the loop has processed everything (aborts included), then check page accounting:
    nothing in use, nothing locked, free + cached + in use == total."""
    deadline = time.monotonic() + 10
    while engine.scheduler.has_work or engine._inbox or engine._aborts:
        assert time.monotonic() < deadline, "engine did not go idle"
        time.sleep(0.005)
    engine.check_invariants()
    assert engine.kv.in_use == 0 and engine.kv.locked_pages == 0


class EngineFactory:
    """``factory(**overrides)`` starts an engine from ``ENGINE_DEFAULTS`` + the module's
    ``ENGINE_CONFIG`` + ``overrides``; ``close()`` shuts every engine it started down and then
    checks that each one gave all its pages back."""

    def __init__(self, module_config: dict[str, Any]) -> None:
        self.module_config = module_config
        self.engines: list[Engine] = []

    def __call__(self, **overrides: Any) -> Engine:
        engine = start_engine(**{**self.module_config, **overrides})
        self.engines.append(engine)
        return engine

    def close(self) -> None:
        for engine in self.engines:
            engine.shutdown()
        for engine in self.engines:
            engine.check_invariants()
            assert engine.kv.in_use == 0 and engine.kv.locked_pages == 0, \
                f"engine left {engine.kv.in_use} pages in use, {engine.kv.locked_pages} locked after shutdown"
        self.engines.clear()
