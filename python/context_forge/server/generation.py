"""Drives one engine request for the HTTP layer: plain or SSE, abort on disconnect, per-request metrics.

Disconnects: while the server waits for output without a response under way (a plain request, or a
streaming one before its first token), a watcher reads the ASGI receive channel and aborts the
engine request when `http.disconnect` arrives. Once an SSE response is streaming, Starlette cancels
the body iterator on disconnect and the iterator's `finally` aborts the request.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import anyio
from starlette.requests import Request

from context_forge.engine.errors import EngineError, InvalidRequest
from context_forge.engine.request import GenerateOutput, GenerateRequest
from context_forge.metrics import Metrics
from context_forge.server.errors import APIError, bad_request, error_type
from context_forge.server.formatting import SSE_DONE, Formatter, sse, usage
from context_forge.server.protocol import ErrorBody, ErrorResponse, Usage

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClientGone(Exception):
    """The client closed the connection before the response was sent."""


class Run:
    """One engine request, from submission to its final output (or abort)."""

    def __init__(self, engine: Any, req: GenerateRequest, endpoint: str, metrics: Metrics, t0: float):
        self.engine = engine
        self.req = req
        self.endpoint = endpoint
        self.metrics = metrics
        self.t0 = t0
        self.finished = False
        self.finish_reason: str | None = None
        self.prompt_tokens = len(req.prompt_token_ids)
        self.cached_tokens = 0
        self.completion_tokens = 0
        self._first_token_seen = False
        self._outputs: AsyncIterator[GenerateOutput] | None = None

    def start(self) -> None:
        """Submits to the engine; `InvalidRequest` becomes a 400 before any output."""
        try:
            self._outputs = aiter(self.engine.generate(self.req))
        except InvalidRequest as e:
            raise _invalid(e) from None
        except EngineError as e:
            raise _unavailable(e) from None
        self.metrics.workflow_requests.inc(workflow_id=self.req.workflow_id or "")

    async def next(self) -> GenerateOutput | None:
        """The next output, or None once the engine's stream ended."""
        assert self._outputs is not None, "start() first"
        if self.finished:
            return None
        try:
            out = await anext(self._outputs)
        except StopAsyncIteration:
            self._finish("abort" if self.finish_reason is None else self.finish_reason)
            return None
        except InvalidRequest as e:
            self.finished = True
            raise _invalid(e) from None
        except EngineError as e:
            self._finish("abort")
            raise _unavailable(e) from None
        self._record(out)
        return out

    def usage(self) -> Usage:
        return usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)

    def _record(self, out: GenerateOutput) -> None:
        self.prompt_tokens = out.prompt_tokens
        self.cached_tokens = out.cached_tokens
        self.completion_tokens = out.completion_tokens
        if out.token_ids and not self._first_token_seen:
            self._first_token_seen = True
            self.metrics.ttft_seconds.observe(time.perf_counter() - self.t0)
        if out.finish_reason is not None:
            self._finish(out.finish_reason)

    def _finish(self, reason: str) -> None:
        self.finished = True
        self.finish_reason = reason
        m = self.metrics
        m.requests.inc(endpoint=self.endpoint, finish_reason=reason)
        m.prompt_tokens.inc(self.prompt_tokens)
        m.cached_prompt_tokens.inc(self.cached_tokens)
        m.completion_tokens.inc(self.completion_tokens)
        if reason == "abort":
            m.aborted_requests.inc()
        else:
            m.e2e_latency_seconds.observe(time.perf_counter() - self.t0)

    async def close(self) -> None:
        """Aborts the engine request if it has not finished; safe inside a cancelled scope."""
        if not self.finished:
            log.info("aborting request %s before it finished", self.req.rid)
            self._finish("abort")
            result = self.engine.abort(self.req.rid)
            if inspect.isawaitable(result):
                with anyio.CancelScope(shield=True):
                    await result
        outputs, self._outputs = self._outputs, None
        aclose = getattr(outputs, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await aclose()
                except Exception:  # the stream is being discarded; its errors no longer matter
                    log.debug("closing output stream of %s failed", self.req.rid, exc_info=True)


def _invalid(e: InvalidRequest) -> APIError:
    return bad_request(e.message, e.param)


def _unavailable(e: EngineError) -> APIError:
    log.error("engine cannot serve: %s", e)
    return APIError(503, f"the engine cannot serve requests now: {e}", code="engine_unavailable")


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Awaits `work`; raises `ClientGone` (after cancelling it) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise ClientGone()
    return task.result()


async def collect(run: Run, request: Request, fmt: Formatter, echo: str = "") -> Any:
    """Runs a plain (non-streaming) request to the end and returns its response model."""

    async def drain() -> str:
        parts = [echo]
        while (out := await run.next()) is not None:
            parts.append(out.text)
        return "".join(parts)

    try:
        text = await unless_disconnected(request, drain())
    finally:
        await run.close()
    return fmt.full(text, run.finish_reason, run.usage())


async def first_output(run: Run, request: Request) -> GenerateOutput | None:
    """Waits for the first output of a streaming request (so input errors still get a 4xx status)."""
    try:
        return await unless_disconnected(request, run.next())
    except BaseException:
        await run.close()
        raise


async def stream(
    run: Run, fmt: Formatter, first: GenerateOutput | None, include_usage: bool, echo: str = ""
) -> AsyncIterator[bytes]:
    """The SSE body: an opening chunk, one chunk per output with text or a finish reason, usage, [DONE]."""
    try:
        opening = fmt.opening()
        if opening is not None:
            yield opening
        if echo:
            yield fmt.chunk(echo, None)
        out = first
        while out is not None:
            if out.text or out.finish_reason is not None:
                yield fmt.chunk(out.text, out.finish_reason)
            out = await run.next()
        if run.finish_reason == "abort" and first is None:
            yield fmt.chunk("", "abort")
        if include_usage:
            yield fmt.usage_chunk(run.usage())
        yield SSE_DONE
    except APIError as e:
        body = ErrorBody(message=e.message, type=e.type or error_type(e.status), param=e.param, code=e.code)
        yield sse(ErrorResponse(error=body))
        yield SSE_DONE
    except Exception as e:
        log.exception("request %s failed while streaming", run.req.rid)
        body = ErrorBody(message=f"internal server error ({type(e).__name__})", type="server_error")
        yield sse(ErrorResponse(error=body))
        yield SSE_DONE
    finally:
        await run.close()
