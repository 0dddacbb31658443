"""Turns validated OpenAI request bodies into what the engine takes: prompt ids, sampling, workflow.

Everything here raises `APIError` (400) with the offending parameter named; nothing touches the
engine's memory, so a rejected request never holds pages.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import ValidationError

from context_forge.engine.request import SamplingParams
from context_forge.server.errors import APIError, bad_request, validation_error
from context_forge.server.protocol import ChatCompletionRequest, CompletionRequest, WorkflowMeta, SamplingFields

DEFAULT_COMPLETION_MAX_TOKENS = 16
"""OpenAI's default `max_tokens` for `/v1/completions`; chat defaults to the rest of the context."""


class TokenizerLike(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str: ...


def workflow_meta(body: SamplingFields) -> tuple[WorkflowMeta | None, str]:
    """Reads `workflow` (or SGLang-style `custom_params`) metadata and the field it came from;
    when both are present they must agree."""
    from_workflow = _parse_meta(body.workflow, "workflow", strict=True)
    from_custom = _parse_meta(body.custom_params, "custom_params", strict=False)
    if from_workflow and from_custom and from_workflow != from_custom:
        raise bad_request(
            "'workflow' and 'custom_params' name different workflow_id/agent_id; send one of them",
            "custom_params",
        )
    if from_workflow:
        return from_workflow, "workflow"
    return from_custom, "custom_params"


def _parse_meta(value: Any, field: str, strict: bool) -> WorkflowMeta | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(
            f"'{field}' must be an object like {{\"workflow_id\": \"...\", \"agent_id\": \"...\"}}, "
            f"got {type(value).__name__}",
            field,
        )
    if not strict:
        value = {k: v for k, v in value.items() if k in ("workflow_id", "agent_id")}
        if not value:
            return None
    try:
        return WorkflowMeta.model_validate(value)
    except ValidationError as e:
        raise validation_error(e, prefix=(field,)) from None


def reject_unsupported(body: SamplingFields) -> None:
    """Fields that would change the output but that the engine does not implement are a 400."""
    if body.n != 1:
        raise bad_request(f"only n=1 is supported, got n={body.n}", "n")
    if body.presence_penalty or body.frequency_penalty:
        param = "presence_penalty" if body.presence_penalty else "frequency_penalty"
        raise bad_request(f"'{param}' is not supported; leave it at 0", param)
    if body.logit_bias:
        raise bad_request("'logit_bias' is not supported", "logit_bias")
    if body.logprobs not in (None, False, 0):
        raise bad_request("'logprobs' is not supported", "logprobs")
    if isinstance(body, ChatCompletionRequest):
        if body.tools and body.tool_choice != "none":
            raise bad_request("tool calling is not supported ('tools')", "tools")
        if body.response_format and body.response_format.get("type", "text") != "text":
            raise bad_request("only response_format {'type': 'text'} is supported", "response_format")
        if body.top_logprobs:
            raise bad_request("'top_logprobs' is not supported", "top_logprobs")
    if isinstance(body, CompletionRequest):
        if body.best_of not in (None, 1):
            raise bad_request(f"only best_of=1 is supported, got {body.best_of}", "best_of")
        if body.suffix:
            raise bad_request("'suffix' is not supported", "suffix")


def chat_prompt(body: ChatCompletionRequest, tokenizer: TokenizerLike) -> list[int]:
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return list(tokenizer.encode(text))


def completion_prompt(body: CompletionRequest, tokenizer: TokenizerLike) -> tuple[list[int], str]:
    """Prompt ids and prompt text (the text is what `echo` repeats)."""
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise bad_request(
                f"batched prompts are not supported (got {len(prompt)}); send one request per prompt",
                "prompt",
            )
        prompt = prompt[0]
    if isinstance(prompt, str):
        return list(tokenizer.encode(prompt)), prompt
    ids = list(prompt)  # type: ignore[arg-type]
    if not ids:
        raise bad_request("'prompt' is empty", "prompt")
    bad = next((t for t in ids if t < 0), None)
    if bad is not None:
        raise bad_request(f"'prompt' has a negative token id ({bad})", "prompt")
    return ids, tokenizer.decode(ids)


def sampling_params(
    body: SamplingFields, prompt_len: int, context_len: int, default_max_tokens: int | None
) -> SamplingParams:
    """Sampling for the engine; checks that prompt plus completion fit in the context."""
    if prompt_len == 0:
        raise bad_request("the prompt is empty (0 tokens)", "prompt")
    param = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
    if prompt_len >= context_len:
        raise APIError(
            400,
            f"this model's maximum context length is {context_len} tokens, but the prompt has "
            f"{prompt_len} tokens (at least one token must be left for the completion)",
            param,
            "context_length_exceeded",
        )
    max_tokens = body.max_tokens
    if isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        max_tokens = body.max_completion_tokens
    if max_tokens is None:
        room = context_len - prompt_len
        max_tokens = room if default_max_tokens is None else min(default_max_tokens, room)
    elif prompt_len + max_tokens > context_len:
        raise APIError(
            400,
            f"this model's maximum context length is {context_len} tokens, but {prompt_len + max_tokens} "
            f"were requested ({prompt_len} in the prompt, {max_tokens} for the completion)",
            "max_tokens",
            "context_length_exceeded",
        )
    if body.top_k < -1:
        raise bad_request(f"'top_k' must be -1 (disabled) or positive, got {body.top_k}", "top_k")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(s == "" for s in stop):
        raise bad_request("'stop' strings must not be empty", "stop")
    stop_ids = list(body.stop_token_ids or [])
    if any(t < 0 for t in stop_ids):
        raise bad_request("'stop_token_ids' must be non-negative", "stop_token_ids")
    return SamplingParams(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=-1 if body.top_k == 0 else body.top_k,
        max_tokens=max_tokens,
        stop=stop,
        stop_token_ids=stop_ids,
        ignore_eos=body.ignore_eos,
        seed=body.seed,
    )
