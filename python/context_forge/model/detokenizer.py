"""Streaming detokenisation that never emits a partial UTF-8 character.

Decoding tokens one at a time is wrong twice over: a character may span several byte tokens, and
some tokenizers drop or add a leading space depending on where decoding starts. So each step decodes
a short window twice, from the same starting token: once up to the last fully emitted token and once
including the new tokens; the difference is the delta. When the new text ends in U+FFFD (an
unfinished character) only the text before it is emitted, the token offsets stay put and the window
grows until the character completes.
"""
from __future__ import annotations

from typing import Iterable, Protocol, Sequence


class Decoder(Protocol):
    """What the detokenizer needs of a tokenizer (``model.tokenizer.Tokenizer`` is one)."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Feed generated ids with ``add``; each call returns the newly completed text. ``flush`` returns
    whatever is still held back (e.g. a truly invalid byte) when generation ends."""

    def __init__(self, tokenizer: Decoder, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self._prefix_start = 0
        self._emitted_end = 0
        self._held_emitted = 0
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _delta(self, final: bool) -> str:
        before = self._decode(self.ids[self._prefix_start: self._emitted_end])
        after = self._decode(self.ids[self._prefix_start:])
        done = len(before) + self._held_emitted
        if after.endswith(_REPLACEMENT) and not final:
            delta = after.rstrip(_REPLACEMENT)[done:]
            self._held_emitted += len(delta)
        else:
            delta = after[done:]
            self._prefix_start, self._emitted_end = self._emitted_end, len(self.ids)
            self._held_emitted = 0
        self.text += delta
        return delta

    def add(self, token_ids: Iterable[int] | int) -> str:
        """Append ``token_ids`` (one id or several); return the text they complete."""
        if isinstance(token_ids, int):
            self.ids.append(token_ids)
        else:
            self.ids.extend(int(t) for t in token_ids)
        if len(self.ids) == self._emitted_end:
            return ""
        return self._delta(final=False)

    def flush(self) -> str:
        """The remaining text, incomplete characters included (as U+FFFD)."""
        if len(self.ids) == self._emitted_end:
            return ""
        return self._delta(final=True)
