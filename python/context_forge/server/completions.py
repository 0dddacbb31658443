"""`/v1/chat/completions` and `/v1/completions`: parse, convert, run, and answer plain or as SSE."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from context_forge.engine.request import GenerateRequest
from context_forge.server import convert
from context_forge.server.errors import APIError, parse_body
from context_forge.server.formatting import ChatFormatter, CompletionFormatter, Formatter
from context_forge.server.generation import ClientGone, Run, collect, first_output, stream
from context_forge.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, WorkflowMeta
from context_forge.server.state import ServerState

router = APIRouter()

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _check_model(state: ServerState, body: SamplingFields) -> None:
    if body.model not in state.model_names:
        raise APIError(
            404,
            f"the model '{body.model}' does not exist; this server serves '{state.model_names[0]}'",
            "model",
            "model_not_found",
        )


async def _run(
    request: Request,
    body: SamplingFields,
    endpoint: str,
    prompt_ids: list[int],
    fmt: Formatter,
    meta: WorkflowMeta | None,
    meta_field: str,
    t0: float,
    echo: str = "",
) -> Response:
    state: ServerState = request.app.state.cf
    default_max = convert.DEFAULT_COMPLETION_MAX_TOKENS if endpoint == "completions" else None
    sampling = convert.sampling_params(body, len(prompt_ids), state.engine.context_len, default_max)
    req = GenerateRequest(
        rid=fmt.rid,
        prompt_token_ids=prompt_ids,
        sampling=sampling,
        workflow_id=meta.workflow_id if meta else None,
        agent_id=meta.agent_id if meta else None,
        stream=body.stream,
    )
    run = Run(state.engine, req, endpoint, state.metrics, t0)
    try:
        run.start()
    except APIError as e:
        if e.param in ("workflow_id", "agent_id"):
            e.param = f"{meta_field}.{e.param}"
        raise
    try:
        if not body.stream:
            result = await collect(run, request, fmt, echo)
            return JSONResponse(result.model_dump())
        first = await first_output(run, request)
    except ClientGone:
        return Response(status_code=499)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        stream(run, fmt, first, include_usage, echo), media_type="text/event-stream", headers=_SSE_HEADERS
    )


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    t0 = time.perf_counter()
    state: ServerState = request.app.state.cf
    body = parse_body(await request.body(), ChatCompletionRequest)
    _check_model(state, body)
    convert.reject_unsupported(body)
    meta, meta_field = convert.workflow_meta(body)
    prompt_ids = convert.chat_prompt(body, state.engine.tokenizer)
    fmt = ChatFormatter(rid=f"chatcmpl-{uuid.uuid4().hex}", model=body.model)
    return await _run(request, body, "chat", prompt_ids, fmt, meta, meta_field, t0)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    t0 = time.perf_counter()
    state: ServerState = request.app.state.cf
    body = parse_body(await request.body(), CompletionRequest)
    _check_model(state, body)
    convert.reject_unsupported(body)
    meta, meta_field = convert.workflow_meta(body)
    prompt_ids, prompt_text = convert.completion_prompt(body, state.engine.tokenizer)
    fmt = CompletionFormatter(rid=f"cmpl-{uuid.uuid4().hex}", model=body.model)
    echo = prompt_text if body.echo else ""
    return await _run(request, body, "completions", prompt_ids, fmt, meta, meta_field, t0, echo)
