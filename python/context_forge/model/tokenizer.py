"""Tokenizers: a built-in byte tokenizer and a wrapper around Hugging Face ``tokenizer.json`` files.

``encode(text, add_special_tokens=True)`` adds what the tokenizer adds by default (BOS for Llama-style
tokenizers), except when ``text`` already starts with the BOS token, which is what rendered chat
templates do; so ``encode(apply_chat_template(...))`` never doubles BOS.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping, Sequence

from context_forge.model.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat_template
from context_forge.model.config import PRESETS
from context_forge.model.detokenizer import IncrementalDetokenizer

__all__ = ["ByteTokenizer", "HFTokenizer", "IncrementalDetokenizer", "Tokenizer", "get_tokenizer"]


class Tokenizer(ABC):
    """Text <-> token ids, special ids and the chat template."""

    vocab_size: int
    bos_token: str
    eos_token: str
    bos_token_id: int | None
    eos_token_ids: list[int]
    pad_token_id: int | None
    chat_template: str

    @abstractmethod
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""

    @abstractmethod
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; incomplete UTF-8 at the end shows as U+FFFD (see IncrementalDetokenizer)."""

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                            add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text for ``messages`` (``[{"role": ..., "content": ...}, ...]``)."""
        return render_chat_template(self.chat_template, messages, add_generation_prompt,
                                    bos_token=self.bos_token, eos_token=self.eos_token, **kwargs)


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes are ids 0-255; 256 = BOS, 257 = EOS, 258 = PAD (vocabulary 259, the
    ``tiny-llama`` preset's). Ids outside the vocabulary (a dummy model with a larger vocabulary may
    sample them) decode to nothing."""

    BOS, EOS, PAD = 256, 257, 258
    _NAMES = {BOS: "<s>", EOS: "</s>", PAD: "<pad>"}

    def __init__(self) -> None:
        self.vocab_size = 259
        self.bos_token, self.eos_token = "<s>", "</s>"
        self.bos_token_id, self.eos_token_ids, self.pad_token_id = self.BOS, [self.EOS], self.PAD
        self.chat_template = DEFAULT_CHAT_TEMPLATE

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        ids = list(text.encode("utf-8"))
        return [self.BOS, *ids] if add_special_tokens else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        out: list[str] = []
        run = bytearray()
        for i in ids:
            if 0 <= i < 256:
                run.append(i)
            elif i in self._NAMES and not skip_special_tokens:
                out.append(run.decode("utf-8", errors="replace"))
                run.clear()
                out.append(self._NAMES[i])
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


class HFTokenizer(Tokenizer):
    """A model directory's ``tokenizer.json`` (via the ``tokenizers`` library). BOS/EOS come from
    ``tokenizer_config.json``, ``generation_config.json`` and ``config.json`` (EOS ids: the union);
    the chat template from ``chat_template.jinja`` or ``tokenizer_config.json`` (built-in default
    when there is none)."""

    def __init__(self, model_dir: str | Path) -> None:
        from tokenizers import Tokenizer as _RawTokenizer

        directory = Path(model_dir)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {directory}")
        self._tok = _RawTokenizer.from_file(str(path))
        tcfg = _read_json(directory / "tokenizer_config.json")
        gcfg = _read_json(directory / "generation_config.json")
        mcfg = _read_json(directory / "config.json")
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_token = _token_text(tcfg.get("bos_token"))
        self.eos_token = _token_text(tcfg.get("eos_token"))
        self.bos_token_id = self._id_of(self.bos_token)
        if self.bos_token_id is None:
            self.bos_token_id = _first_int(gcfg.get("bos_token_id"), mcfg.get("bos_token_id"))
        if not self.bos_token and self.bos_token_id is not None:
            self.bos_token = self._tok.id_to_token(self.bos_token_id) or ""
        eos: list[int] = []
        for value in (gcfg.get("eos_token_id"), mcfg.get("eos_token_id"), self._id_of(self.eos_token)):
            for i in value if isinstance(value, list) else [value]:
                if isinstance(i, int) and i not in eos:
                    eos.append(i)
        self.eos_token_ids = eos
        if not self.eos_token and eos:
            self.eos_token = self._tok.id_to_token(eos[0]) or ""
        self.pad_token_id = self._id_of(_token_text(tcfg.get("pad_token")))
        self.chat_template = _chat_template(directory, tcfg)

    def _id_of(self, token: str) -> int | None:
        return self._tok.token_to_id(token) if token else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        if add_special_tokens and self.bos_token and text.startswith(self.bos_token):
            add_special_tokens = False
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def get_tokenizer(model_path: str | Path | None) -> Tokenizer:
    """``HFTokenizer`` for a model directory; ``ByteTokenizer`` for ``None`` or a dummy preset name."""
    if model_path is None:
        return ByteTokenizer()
    path = Path(model_path)
    if not path.is_dir():
        if str(model_path) in PRESETS:
            return ByteTokenizer()
        raise FileNotFoundError(f"model directory not found: {path} (or use a preset: "
                                f"{sorted(PRESETS)})")
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}; only Hugging Face fast-tokenizer "
                                f"files are supported")
    return HFTokenizer(path)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _token_text(value: Any) -> str:
    """Token strings are stored either plainly or as a serialised AddedToken ``{"content": ...}``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _first_int(*values: Any) -> int | None:
    for value in values:
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int):
            return value
    return None


def _chat_template(directory: Path, tcfg: Mapping[str, Any]) -> str:
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = tcfg.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) and template else DEFAULT_CHAT_TEMPLATE
