"""`SScheduler`: starts workflow instances against an OpenAI-compatible server and runs many at once.

    async with SScheduler("http://127.0.0.1:30000", concurrency=8) as sched:
        async def body(inst: WorkflowInstance) -> str:
            plan = await inst.call("planner", task)
            return str(await inst.call("coder", plan.text))
        answers = await sched.run(workflow, body, count=100)   # 100 instances, 8 at a time, progress bar

The `target` decides what reaches the server besides the chat requests (see `sscheduler.targets`):
`context_forge` (default) declares instances and attaches `workflow` metadata, `sglang` attaches
`custom_params` with client-side step counts, `openai` sends plain OpenAI requests, so the same
program runs unchanged against vanilla SGLang or vLLM.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import httpx
import openai

from sscheduler.calls import normalize_base_url, resolve_model
from sscheduler.control import WorkflowControl
from sscheduler.instance import WorkflowInstance
from sscheduler.progress import Progress, bounded_map
from sscheduler.targets import Target, make_target
from sscheduler.workflow import Workflow

T = TypeVar("T")

__all__ = ["SScheduler"]


class SScheduler:
    """Client side of a multi-agent run.

    `base_url` is the server (`http://host:port`, with or without `/v1`); `model` defaults to the
    first one the server lists; `api_key` defaults to `$OPENAI_API_KEY`, else "EMPTY".
    `concurrency` bounds the instances `run` / `run_jobs` keep going at once; `progress` shows a
    tqdm bar (None: only on a terminal). `max_retries` is passed to the OpenAI client.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        target: str = "context_forge",
        concurrency: int = 16,
        timeout_s: float = 600.0,
        max_retries: int = 2,
        progress: bool | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.base_url = normalize_base_url(base_url)
        key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.concurrency = concurrency
        self.progress = progress
        self._http = httpx.AsyncClient(timeout=timeout_s)
        self.client = openai.AsyncOpenAI(
            base_url=self.base_url, api_key=key, timeout=timeout_s, max_retries=max_retries
        )
        self.control = WorkflowControl(self.base_url, self._http, api_key=key)
        self.target: Target = make_target(target, self.control)
        self._model = model
        self._model_lock = asyncio.Lock()
        self._serial = itertools.count()

    async def model_name(self) -> str:
        if self._model is None:
            async with self._model_lock:
                if self._model is None:
                    self._model = await resolve_model(self.client)
        return self._model

    def instance(self, workflow: Workflow, instance_id: str | None = None) -> WorkflowInstance:
        """A new, not yet started instance; the default id is `<workflow name>-<serial>-<random>`."""
        if not isinstance(workflow, Workflow):
            raise TypeError(f"workflow must be a Workflow, got {type(workflow).__name__}")
        if instance_id is None:
            instance_id = f"{workflow.name}-{next(self._serial)}-{uuid.uuid4().hex[:8]}"
        return WorkflowInstance(self, workflow, instance_id)

    async def start(self, workflow: Workflow, instance_id: str | None = None) -> WorkflowInstance:
        """A started (declared) instance; call `finish()` on it when done."""
        return await self.instance(workflow, instance_id).start()

    async def run(
        self,
        workflow: Workflow,
        body: Callable[[WorkflowInstance], Awaitable[T]],
        count: int = 1,
        *,
        instance_ids: Sequence[str] | None = None,
        description: str | None = None,
    ) -> list[T]:
        """Runs `body` on `count` instances of `workflow` (or one per id in `instance_ids`), at most
        `concurrency` at once; returns the results in order. Each instance is started before its
        body and finished after it, also when the body raises; the first failure cancels the rest."""
        if instance_ids is not None:
            ids: list[str | None] = list(instance_ids)
        else:
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"count must be an integer >= 0, got {count!r}")
            ids = [None] * count

        def job(instance_id: str | None) -> Callable[[], Awaitable[T]]:
            async def one() -> T:
                async with self.instance(workflow, instance_id) as inst:
                    return await body(inst)

            return one

        return await self.run_jobs([job(i) for i in ids], description=description or workflow.name)

    async def run_jobs(
        self, jobs: Iterable[Callable[[], Awaitable[T]]], *, description: str = "workflows", total: int | None = None
    ) -> list[T]:
        """Runs zero-argument coroutine functions, at most `concurrency` at once, results in order."""
        if total is None and isinstance(jobs, Sequence):
            total = len(jobs)
        with Progress(total, description, self.progress, unit="wf") as bar:
            return await bounded_map(jobs, self.concurrency, bar.update)

    async def aclose(self) -> None:
        await self.client.close()
        await self._http.aclose()

    async def __aenter__(self) -> SScheduler:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"SScheduler(base_url={self.base_url!r}, target={self.target.name!r}, concurrency={self.concurrency})"
