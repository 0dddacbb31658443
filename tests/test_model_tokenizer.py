"""Byte and Hugging Face tokenizers, chat templates and streaming detokenisation.

The Hugging Face tokenizers are trained here on a few sentences with the ``tokenizers`` library: a
byte-level BPE (Llama 3 / GPT-2 style) and a Metaspace BPE with byte fallback (Llama 2 style), whose
decoder strips the leading space, the case where naive token-by-token decoding goes wrong.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from context_forge.model import ByteTokenizer, HFTokenizer, IncrementalDetokenizer, get_tokenizer
from context_forge.model.chat_template import ChatTemplateError

CORPUS = ["Hello world, this is a tiny corpus for a tiny tokenizer.",
          "Héllo wörld, naïve café crème brûlée",
          "日本語のテキスト and emoji 🎉🚀 are multi-byte",
          "the quick brown fox jumps over the lazy dog"] * 4
SPECIALS = ["<|begin|>", "<|end|>", "<|eot|>", "<|start|>"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}"
            "{% if m['role'] not in ['system', 'user', 'assistant'] %}"
            "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
            "<|start|>{{ m['role'] }}\n{{ m['content'] }}<|eot|>{% endfor %}"
            "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}")
MULTIBYTE = "naïve 日本語 🎉 ok é🚀"


def _byte_level_dir(tmp: Path, chat_template: str | None = TEMPLATE) -> Path:
    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    begin = tok.token_to_id("<|begin|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin|> $A", special_tokens=[("<|begin|>", begin)])
    tok.save(str(tmp / "tokenizer.json"))
    config = {"bos_token": {"content": "<|begin|>", "special": True}, "eos_token": "<|eot|>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (tmp / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [tok.token_to_id("<|end|>"), tok.token_to_id("<|eot|>")]}))
    return tmp


def _metaspace_dir(tmp: Path) -> Path:
    """Llama-2 style: unknown characters fall back to ``<0xNN>`` byte tokens."""
    tok = RawTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    ascii_only = [s.encode("ascii", "ignore").decode() for s in CORPUS]
    tok.train_from_iterator(ascii_only, trainers.BpeTrainer(vocab_size=200,
                                                            special_tokens=["<unk>", "<s>", "</s>"]))
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tok = RawTokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    return tmp


def _stream(tokenizer, ids: list[int], step: int = 1) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add(ids[i: i + step]) for i in range(0, len(ids), step)]
    deltas.append(detok.flush())
    return deltas, "".join(deltas)


def test_byte_tokenizer_round_trip_and_specials() -> None:
    tok = ByteTokenizer()
    ids = tok.encode(MULTIBYTE)
    assert ids[0] == tok.bos_token_id == 256 and tok.eos_token_ids == [257] and tok.vocab_size == 259
    assert len(ids) == 1 + len(MULTIBYTE.encode("utf-8"))
    assert tok.decode(ids) == MULTIBYTE
    assert tok.encode("ab", add_special_tokens=False) == [97, 98]
    assert tok.decode([256, 104, 105, 257], skip_special_tokens=False) == "<s>hi</s>"
    assert tok.decode([104, 5000, 105]) == "hi"


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_byte_tokenizer_round_trip_property(text: str) -> None:
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_byte_tokenizer_chat_template() -> None:
    tok = ByteTokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]
    assert tok.apply_chat_template(messages) == (
        "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello\n<|assistant|>\n")
    assert tok.apply_chat_template(messages[:2], add_generation_prompt=False) == (
        "<|system|>\nBe brief.\n<|user|>\nHi\n")
    with pytest.raises(ValueError, match=r"messages\[0\].*role"):
        tok.apply_chat_template([{"content": "no role"}])
    with pytest.raises(ValueError, match="list"):
        tok.apply_chat_template("hello")


def test_hf_tokenizer_specials_and_chat_template(tmp_path: Path) -> None:
    tok = get_tokenizer(_byte_level_dir(tmp_path))
    assert isinstance(tok, HFTokenizer)
    begin, end, eot = (tok._tok.token_to_id(t) for t in ("<|begin|>", "<|end|>", "<|eot|>"))
    assert tok.bos_token == "<|begin|>" and tok.bos_token_id == begin
    assert tok.eos_token_ids == [end, eot]
    text = "Hello wörld 🎉"
    ids = tok.encode(text)
    assert ids[0] == begin and ids.count(begin) == 1
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=False) == "<|begin|>" + text

    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt == "<|begin|><|start|>user\nhi<|eot|><|start|>assistant\n"
    prompt_ids = tok.encode(prompt)
    assert prompt_ids.count(begin) == 1, "BOS from the template is not doubled"
    assert eot in prompt_ids
    with pytest.raises(ChatTemplateError, match="unknown role tool"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_chat_template_is_sandboxed(tmp_path: Path) -> None:
    tok = get_tokenizer(_byte_level_dir(tmp_path, "{{ ''.__class__.__mro__[1].__subclasses__() }}"))
    with pytest.raises(ChatTemplateError):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_sources(tmp_path: Path) -> None:
    listed = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ eos_token }}"}]
    assert get_tokenizer(_byte_level_dir(tmp_path, listed)).apply_chat_template([]) == "D<|eot|>"
    (tmp_path / "chat_template.jinja").write_text("J{{ messages | length }}{{ messages | tojson }}")
    msgs = [{"role": "user", "content": "é"}]
    assert get_tokenizer(tmp_path).apply_chat_template(msgs) == 'J1[{"role": "user", "content": "é"}]'
    (tmp_path / "chat_template.jinja").unlink()
    no_template = tmp_path / "plain"
    no_template.mkdir()
    tok = get_tokenizer(_byte_level_dir(no_template, None))
    assert tok.apply_chat_template(msgs) == "<|user|>\né\n<|assistant|>\n"


def test_get_tokenizer_choices_and_errors(tmp_path: Path) -> None:
    assert isinstance(get_tokenizer(None), ByteTokenizer)
    assert isinstance(get_tokenizer("tiny-llama"), ByteTokenizer)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        get_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        get_tokenizer(tmp_path / "absent")
    _byte_level_dir(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json: invalid JSON"):
        get_tokenizer(tmp_path)


@pytest.mark.parametrize("step", [1, 2, 3])
def test_incremental_detokenizer_bytes(step: int) -> None:
    tok = ByteTokenizer()
    deltas, text = _stream(tok, tok.encode(MULTIBYTE, add_special_tokens=False), step)
    assert text == MULTIBYTE
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas, "bytes of an unfinished character are held back"


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=30), st.integers(1, 4))
def test_incremental_detokenizer_property(text: str, step: int) -> None:
    tok = ByteTokenizer()
    deltas, joined = _stream(tok, tok.encode(text), step)
    assert joined == text
    if "\ufffd" not in text:
        assert all("\ufffd" not in d for d in deltas)


@pytest.mark.parametrize("builder", [_byte_level_dir, _metaspace_dir])
def test_incremental_detokenizer_hf(tmp_path: Path, builder) -> None:
    tok = get_tokenizer(builder(tmp_path))
    text = "Hello wörld, the 日本語 fox 🎉 jumps"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > 10
    whole = tok.decode(ids)
    assert whole == text
    deltas, joined = _stream(tok, ids)
    assert joined == whole
    assert all("\ufffd" not in d for d in deltas)
    assert any(d.startswith(" ") for d in deltas), "word-initial spaces survive streaming"


def test_incremental_detokenizer_flushes_invalid_bytes() -> None:
    detok = IncrementalDetokenizer(ByteTokenizer())
    assert detok.add([104, 0xE6]) == "h"
    assert detok.flush() == "\ufffd"
    assert detok.text == "h\ufffd"
