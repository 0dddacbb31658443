"""Checks a ``GenerateRequest`` against the engine's limits before anything is allocated for it."""

from __future__ import annotations

from dataclasses import dataclass

from context_forge.workflow.live import LiveWorkflows

from .errors import InvalidRequest
from .request import GenerateRequest, SamplingParams


@dataclass(frozen=True)
class Limits:
    vocab_size: int
    context_len: int
    page_size: int
    device_pages: int


def validate_request(req: GenerateRequest, limits: Limits, workflows: LiveWorkflows) -> None:
    """Raise :class:`InvalidRequest` naming the first problem; return quietly when ``req`` is servable."""
    if not isinstance(req, GenerateRequest):
        raise InvalidRequest(f"expected a GenerateRequest, got {type(req).__name__}", None)
    if not isinstance(req.rid, str) or not req.rid:
        raise InvalidRequest(f"rid must be a non-empty string, got {req.rid!r}", "rid")
    _check_prompt(req.prompt_token_ids, limits.vocab_size)
    if not isinstance(req.sampling, SamplingParams):
        raise InvalidRequest(f"sampling must be SamplingParams, got {type(req.sampling).__name__}", "sampling")
    req.sampling.validate()
    bad = [t for t in req.sampling.stop_token_ids if t >= limits.vocab_size]
    if bad:
        raise InvalidRequest(f"stop_token_ids {bad} are outside the vocabulary (size {limits.vocab_size})",
                             "stop_token_ids")
    _check_length(len(req.prompt_token_ids), req.sampling.max_tokens, limits)
    _check_workflow(req, workflows)


def _check_prompt(ids: object, vocab_size: int) -> None:
    if not isinstance(ids, (list, tuple)):
        raise InvalidRequest(f"prompt_token_ids must be a list of token ids, got {type(ids).__name__}", "prompt")
    if not ids:
        raise InvalidRequest("the prompt is empty (it must contain at least one token)", "prompt")
    for i, t in enumerate(ids):
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size:
            raise InvalidRequest(
                f"prompt token {i} is {t!r}, outside the vocabulary [0, {vocab_size})", "prompt")


def _check_length(prompt_len: int, max_tokens: int, limits: Limits) -> None:
    ctx = limits.context_len
    if prompt_len >= ctx:
        raise InvalidRequest(
            f"the prompt has {prompt_len} tokens; the context length is {ctx}, which leaves no room "
            f"to generate (the prompt must be shorter than {ctx} tokens)", "prompt")
    if prompt_len + max_tokens > ctx:
        raise InvalidRequest(
            f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) = {prompt_len + max_tokens} "
            f"exceeds the context length of {ctx}; lower max_tokens to at most {ctx - prompt_len}",
            "max_tokens")
    ps = limits.page_size
    pages = -(-(prompt_len + max_tokens) // ps)
    if pages > limits.device_pages:
        raise InvalidRequest(
            f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) needs {pages} KV pages of "
            f"{ps} tokens but the device KV pool has only {limits.device_pages}; lower max_tokens to "
            f"at most {max(limits.device_pages * ps - prompt_len, 0)}", "max_tokens")


def _check_workflow(req: GenerateRequest, workflows: LiveWorkflows) -> None:
    wid, aid = req.workflow_id, req.agent_id
    for name, value in (("workflow_id", wid), ("agent_id", aid)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise InvalidRequest(f"{name} must be a non-empty string or null, got {value!r}", name)
    if wid is None or wid not in workflows.tracker:
        return
    graph = workflows.tracker.graph_of(wid)
    if aid is None:
        raise InvalidRequest(f"workflow {wid!r} is registered with a graph; agent_id is required", "agent_id")
    if aid not in graph:
        raise InvalidRequest(
            f"unknown agent {aid!r} for workflow {wid!r} (its agents: {', '.join(graph.agent_ids)})", "agent_id")
