"""custom_params workflow metadata: the parser, the client-side builder, and the path a real
OpenAI request takes through SGLang's protocol and sampling types to the scheduler's Req."""
from __future__ import annotations

import math
from array import array

import msgspec
import pytest
import sglang_support  # noqa: F401  (imports SGLang's cache layer; fails if SGLang is missing)
from context_forge.sglang.metadata import (
    MAX_ID_LENGTH,
    MetadataError,
    WorkflowMeta,
    parse_custom_params,
    to_custom_params,
)
from hypothesis import given
from hypothesis import strategies as st
from sglang.srt.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
from sglang.srt.managers.schedule_batch import Req
from sglang.srt.sampling.sampling_params import SamplingParams

ids = st.text(min_size=1, max_size=20).filter(lambda s: s.strip())
steps = st.one_of(st.integers(0, 1000), st.floats(0, 1000, allow_nan=False, allow_infinity=False))


def test_full_record_parses() -> None:
    meta = parse_custom_params(
        {"workflow_id": "wf1", "agent_id": "coder", "upcoming": {"reviewer": 1, "tester": 2.5}, "final": True}
    )
    assert meta == WorkflowMeta("wf1", "coder", {"reviewer": 1.0, "tester": 2.5}, True)


@pytest.mark.parametrize("params", [None, {}, {"thinking_budget": 10}, {"__sglang_x": [1, 2]}])
def test_no_workflow_keys_means_no_metadata(params: object) -> None:
    assert parse_custom_params(params) is None


def test_other_keys_are_left_alone() -> None:
    meta = parse_custom_params({"workflow_id": "w", "agent_id": "a", "thinking_budget": 5, "upcoming": None})
    assert meta == WorkflowMeta("w", "a")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([1, 2], "custom_params must be a JSON object, got list"),
        ({"agent_id": "a"}, "custom_params.agent_id was given without custom_params.workflow_id"),
        ({"upcoming": {"a": 1}}, "custom_params.upcoming was given without custom_params.workflow_id"),
        ({"workflow_id": "w"}, "custom_params.agent_id is required"),
        ({"workflow_id": 3, "agent_id": "a"}, "custom_params.workflow_id must be a string, got int 3"),
        ({"workflow_id": " ", "agent_id": "a"}, "custom_params.workflow_id must be a non-empty string"),
        ({"workflow_id": "w" * (MAX_ID_LENGTH + 1), "agent_id": "a"}, "longer than 256"),
        ({"workflow_id": "w", "agent_id": ""}, "custom_params.agent_id must be a non-empty string"),
        ({"workflow_id": "w", "agent_id": "a", "upcoming": [1]}, "custom_params.upcoming must be an object"),
        ({"workflow_id": "w", "agent_id": "a", "upcoming": {"b": -1}}, "custom_params.upcoming['b'] must be a finite number >= 0"),
        ({"workflow_id": "w", "agent_id": "a", "upcoming": {"b": True}}, "custom_params.upcoming['b'] must be a number"),
        ({"workflow_id": "w", "agent_id": "a", "upcoming": {"b": "1"}}, "custom_params.upcoming['b'] must be a number"),
        ({"workflow_id": "w", "agent_id": "a", "upcoming": {"b": math.inf}}, "finite"),
        ({"workflow_id": "w", "agent_id": "a", "upcoming": {"": 1}}, "custom_params.upcoming key ''"),
        ({"workflow_id": "w", "agent_id": "a", "upcoming": {f"a{i}": 1 for i in range(257)}}, "at most 256"),
        ({"workflow_id": "w", "agent_id": "a", "final": "yes"}, "custom_params.final must be true or false"),
    ],
)
def test_bad_metadata_names_the_field(params: object, message: str) -> None:
    with pytest.raises(MetadataError) as info:
        parse_custom_params(params)
    assert message in str(info.value)


@given(ids, ids, st.dictionaries(ids, steps, max_size=8), st.booleans())
def test_builder_round_trips(workflow_id: str, agent_id: str, upcoming: dict[str, float], final: bool) -> None:
    params = to_custom_params(workflow_id, agent_id, upcoming, final)
    meta = parse_custom_params(params)
    assert meta == WorkflowMeta(workflow_id, agent_id, {a: float(s) for a, s in upcoming.items()}, final)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(SamplingParams(custom_params=params)), type=SamplingParams)
    assert parse_custom_params(decoded.custom_params) == meta


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@given(st.dictionaries(st.sampled_from(["workflow_id", "agent_id", "upcoming", "final", "other"]), json_values))
def test_parser_only_raises_metadata_error(params: dict[str, object]) -> None:
    try:
        result = parse_custom_params(params)
    except MetadataError:
        return
    assert result is None or isinstance(result, WorkflowMeta)


def test_builder_rejects_bad_input() -> None:
    with pytest.raises(MetadataError, match="custom_params.upcoming\\['x'\\]"):
        to_custom_params("w", "a", {"x": -2})


def _to_req(sampling: dict[str, object]) -> Req:
    """What SGLang does between the HTTP server and the scheduler: SamplingParams cross the
    process boundary as msgpack of the typed struct, then become part of a Req."""
    params = SamplingParams(**sampling)
    wire = msgspec.msgpack.encode(params)
    received = msgspec.msgpack.decode(wire, type=SamplingParams)
    return Req(rid="r0", origin_input_text="", origin_input_ids=array("q", [1]), sampling_params=received)


def test_openai_chat_request_metadata_reaches_the_req() -> None:
    # extra_body={"custom_params": {...}, "not_a_field": 1} as the OpenAI client merges it into the body.
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "custom_params": to_custom_params("wf-9", "coder", {"reviewer": 1, "tester": 2}),
        "not_a_field": 1,
    }
    request = ChatCompletionRequest(**body)
    assert not hasattr(request, "not_a_field")
    req = _to_req(request.to_sampling_params(stop=[], model_generation_config={}))
    assert parse_custom_params(req.sampling_params.custom_params) == WorkflowMeta(
        "wf-9", "coder", {"reviewer": 1.0, "tester": 2.0}
    )


def test_openai_completion_request_metadata_reaches_the_req() -> None:
    request = CompletionRequest(model="m", prompt="hi", custom_params=to_custom_params("wf", "a", final=True))
    sampling = {"max_new_tokens": 4, "custom_params": request.custom_params}
    assert parse_custom_params(_to_req(sampling).sampling_params.custom_params) == WorkflowMeta("wf", "a", final=True)


def test_sglang_rejects_metadata_nested_deeper_than_two_levels() -> None:
    params = SamplingParams(custom_params={"workflow_id": "w", "agent_id": "a", "upcoming": {"b": {"steps": 1}}})
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode(params), type=SamplingParams)
