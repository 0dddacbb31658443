"""Output streams: stop strings never leak, token-level stops, length limits, text deltas."""

from __future__ import annotations

import pytest
from context_forge.engine.errors import InvalidRequest
from context_forge.engine.output import OutputStream, StopStringFilter
from context_forge.engine.request import SamplingParams
from context_forge.model.tokenizer import ByteTokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

TOK = ByteTokenizer()
EOS = TOK.eos_token_ids[0]


def feed(stream: OutputStream, ids: list[int], prompt_len: int = 5):
    text, reason, n = "", None, 0
    for n, t in enumerate(ids, 1):
        delta, reason = stream.on_token(t, n, prompt_len + n)
        text += delta
        if reason:
            break
    return text, reason, n


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.text(alphabet="abc", max_size=4), max_size=12),
    stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=3), min_size=1, max_size=3),
)
def test_stop_filter_emits_exactly_the_text_before_the_first_stop(pieces, stops):
    f = StopStringFilter(stops)
    emitted, hit = "", False
    for piece in pieces:
        out, hit = f.feed(piece)
        emitted += out
        if hit:
            break
    if not hit:
        emitted += f.flush()
    full = "".join(pieces)
    if not any(s in full for s in stops):
        assert not hit and emitted == full
    else:
        assert hit
        assert not any(s in emitted for s in stops)
        assert full.startswith(emitted)
        assert any(full[len(emitted):].startswith(s) for s in stops)


def test_stop_string_split_across_tokens_is_not_emitted():
    stream = OutputStream(TOK, SamplingParams(max_tokens=50, stop=["END"]), [EOS], 100)
    text, reason, n = feed(stream, list(b"hello EN") + list(b"D and more"))
    assert (text, reason) == ("hello ", "stop")
    assert n == len(b"hello END")


def test_multibyte_characters_are_emitted_whole():
    stream = OutputStream(TOK, SamplingParams(max_tokens=50), [EOS], 100)
    deltas = [stream.on_token(b, i, 5 + i)[0] for i, b in enumerate("héllo €".encode(), 1)]
    assert "".join(deltas) == "héllo €"
    assert all("\ufffd" not in d for d in deltas)


@pytest.mark.parametrize("ignore_eos, expected", [(False, ("ab", "stop", 3)), (True, ("abcd", "length", 5))])
def test_eos_and_ignore_eos(ignore_eos, expected):
    stream = OutputStream(TOK, SamplingParams(max_tokens=5, ignore_eos=ignore_eos), [EOS], 100)
    assert feed(stream, [97, 98, EOS, 99, 100]) == expected


def test_stop_token_ids_and_context_length():
    stream = OutputStream(TOK, SamplingParams(max_tokens=50, stop_token_ids=[120], ignore_eos=True), [EOS], 100)
    assert feed(stream, [97, 120, 98]) == ("a", "stop", 2)
    stream = OutputStream(TOK, SamplingParams(max_tokens=50), [EOS], 8)
    assert feed(stream, [97, 98, 99, 100, 101], prompt_len=5) == ("abc", "length", 3)


def test_finish_flushes_held_text_for_abort():
    stream = OutputStream(TOK, SamplingParams(max_tokens=50, stop=["xyz"]), [EOS], 100)
    assert feed(stream, list(b"abcx")) == ("ab", None, 4)
    assert stream.finish("abort") == ("cx", "abort")
    assert stream.text == "abcx"


@pytest.mark.parametrize("params, field", [
    (SamplingParams(temperature=float("nan")), "temperature"),
    (SamplingParams(top_k=1.5), "top_k"),
    (SamplingParams(max_tokens=True), "max_tokens"),
    (SamplingParams(stop="abc"), "stop"),
    (SamplingParams(stop_token_ids=[-3]), "stop_token_ids"),
    (SamplingParams(ignore_eos="yes"), "ignore_eos"),
    (SamplingParams(seed=1.5), "seed"),
])
def test_sampling_params_validation_names_the_field(params, field):
    with pytest.raises(InvalidRequest) as info:
        params.validate()
    assert info.value.param == field and field in str(info.value)
