"""Request conversion without a server: context-length arithmetic, prompts, metadata, error params."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_forge.model.tokenizer import ByteTokenizer
from context_forge.server import convert
from context_forge.server.errors import APIError, parse_body
from context_forge.server.protocol import ChatCompletionRequest, CompletionRequest


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "x", **fields})


@settings(max_examples=200, deadline=None)
@given(
    prompt_len=st.integers(0, 600),
    context=st.integers(1, 512),
    max_tokens=st.one_of(st.none(), st.integers(1, 1000)),
    chat=st.booleans(),
)
def test_accepted_requests_always_fit_the_context(
    prompt_len: int, context: int, max_tokens: int | None, chat: bool
) -> None:
    fields: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
    if chat:
        body: Any = ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}
        )
        default = None
    else:
        body, default = completion(**fields), convert.DEFAULT_COMPLETION_MAX_TOKENS
    try:
        sp = convert.sampling_params(body, prompt_len, context, default)
    except APIError as e:
        assert e.status == 400
        assert prompt_len == 0 or prompt_len >= context or prompt_len + (max_tokens or 0) > context
        return
    assert 0 < prompt_len < context
    assert 1 <= sp.max_tokens and prompt_len + sp.max_tokens <= context
    if max_tokens is not None:
        assert sp.max_tokens == max_tokens
    elif chat:
        assert sp.max_tokens == context - prompt_len
    sp.validate()


def test_sampling_fields_are_passed_through() -> None:
    body = completion(temperature=0.5, top_p=0.8, top_k=0, stop="END", seed=3, ignore_eos=True, stop_token_ids=[7])
    sp = convert.sampling_params(body, 4, 64, 16)
    assert (sp.temperature, sp.top_p, sp.top_k, sp.stop, sp.seed, sp.ignore_eos) == (0.5, 0.8, -1, ["END"], 3, True)
    assert sp.stop_token_ids == [7] and sp.max_tokens == 16
    chat = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 9, "max_completion_tokens": 5}
    )
    assert convert.sampling_params(chat, 4, 64, None).max_tokens == 5


def test_prompts() -> None:
    tok = ByteTokenizer()
    ids, text = convert.completion_prompt(completion(prompt=[[104, 105]]), tok)
    assert ids == [104, 105] and text == "hi"
    ids, text = convert.completion_prompt(completion(prompt=["hi"]), tok)
    assert text == "hi" and ids == tok.encode("hi")
    chat = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "system", "content": "s"},
                                    {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                 {"type": "text", "text": "b"}]}]}
    )
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "ab"}]
    expected = tok.encode(tok.apply_chat_template(messages))
    assert convert.chat_prompt(chat, tok) == expected


def test_workflow_metadata_sources() -> None:
    meta, field = convert.workflow_meta(completion(workflow={"workflow_id": "w", "agent_id": "a"}))
    assert (meta.workflow_id, meta.agent_id, field) == ("w", "a", "workflow")
    meta, field = convert.workflow_meta(completion(custom_params={"workflow_id": "w", "lora": 1}))
    assert (meta.workflow_id, meta.agent_id, field) == ("w", None, "custom_params")
    assert convert.workflow_meta(completion(custom_params={"unrelated": 1}))[0] is None
    same = {"workflow_id": "w", "agent_id": "a"}
    assert convert.workflow_meta(completion(workflow=same, custom_params=same))[0].workflow_id == "w"


@pytest.mark.parametrize(
    "raw, param, needle",
    [
        (b'{"model": "m", "prompt": {"a": 1}}', "prompt", "expected one of str, list[int]"),
        (b'{"model": "m", "prompt": "x", "stop": 5}', "stop", "expected one of str, list[str]"),
        (b'{"model": "m", "prompt": "x", "max_tokens": "5"}', "max_tokens", "valid integer"),
        (b'{"model": "m", "prompt": "x", "stream": "yes"}', "stream", "valid boolean"),
        (b'{"model": "m", "prompt": "x", "seed": 99999999999999999999}', "seed", "less than"),
        (b'{"prompt": "x"}', "model", "missing required field 'model'"),
        (b'{"model": "m", "prompt": "x",}', None, "line 1 column 30"),
    ],
)
def test_parse_errors_name_the_field(raw: bytes, param: str | None, needle: str) -> None:
    with pytest.raises(APIError) as e:
        parse_body(raw, CompletionRequest)
    assert e.value.status == 400 and e.value.param == param and needle in e.value.message
