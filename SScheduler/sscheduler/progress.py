"""Progress bar (tqdm on stderr) for long runs, and fail-fast task groups."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

__all__ = ["Progress", "bounded_map", "wait_all"]


class Progress:
    """A tqdm bar, or nothing. `enabled=None` shows it only when stderr is a terminal."""

    def __init__(self, total: int | None, description: str, enabled: bool | None = None, unit: str = "it") -> None:
        show = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = tqdm(total=total, desc=description, unit=unit, file=sys.stderr) if show else None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def wait_all(tasks: list[asyncio.Task[T]]) -> list[T]:
    """Results of `tasks` in order; on the first failure the others are cancelled and it is raised."""
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return [task.result() for task in tasks]
    finally:
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def bounded_map(
    jobs: Iterable[Callable[[], Awaitable[T]]], concurrency: int, on_done: Callable[[], None] | None = None
) -> list[T]:
    """Runs the jobs with at most `concurrency` at a time (taken from the iterable lazily, in order);
    returns their results in order. The first failure cancels the rest and is raised."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    source = enumerate(jobs)
    results: dict[int, T] = {}

    async def worker() -> None:
        for index, job in source:
            results[index] = await job()
            if on_done is not None:
                on_done()

    await wait_all([asyncio.ensure_future(worker()) for _ in range(concurrency)])
    return [results[i] for i in range(len(results))]
