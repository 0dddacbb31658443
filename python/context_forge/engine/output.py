"""Per-request output stream: finish conditions, stop strings and text deltas."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from context_forge.model.detokenizer import IncrementalDetokenizer
from context_forge.model.tokenizer import Tokenizer

from .request import FinishReason, SamplingParams


class StopStringFilter:
    """Holds back just enough text to never emit part of a stop string.

    ``feed(delta)`` returns ``(text_to_emit, hit)``; on a hit the text ends right before the
    earliest stop string and everything after it is dropped.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        if not self.stops:
            return delta, False
        text = self._pending + delta
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._pending = ""
            return text[:min(hits)], True
        cut = max(len(text) - self._hold, 0)
        self._pending = text[cut:]
        return text[:cut], False

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text


class OutputStream:
    """Turns each sampled token into ``(text_delta, finish_reason)`` for one request.

    Token-level stops (EOS unless ``ignore_eos``, ``stop_token_ids``) end the request and add
    no text; the stop token still counts as a completion token. ``max_tokens`` and the context
    length end it with ``"length"``.
    """

    def __init__(self, tokenizer: Tokenizer, params: SamplingParams, eos_ids: Collection[int],
                 context_len: int) -> None:
        self.params = params
        self._stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            self._stop_ids.update(eos_ids)
        self._detok = IncrementalDetokenizer(tokenizer)
        self._stops = StopStringFilter(params.stop)
        self._max_len = context_len
        self.text = ""

    def on_token(self, token: int, num_output: int, total_len: int) -> tuple[str, FinishReason]:
        """``num_output`` / ``total_len``: output and prompt+output lengths including ``token``."""
        if token in self._stop_ids:
            return self.finish("stop")
        delta, hit = self._stops.feed(self._detok.add(token))
        if hit:
            self.text += delta
            return delta, "stop"
        if num_output >= self.params.max_tokens or total_len >= self._max_len:
            rest, reason = self.finish("length")
            return delta + rest, reason
        self.text += delta
        return delta, None

    def finish(self, reason: FinishReason) -> tuple[str, FinishReason]:
        """End the stream: release held-back text (a stop string found in it wins over ``reason``)."""
        delta, hit = self._stops.feed(self._detok.flush())
        if hit:
            reason = "stop" if reason != "abort" else reason
        else:
            delta += self._stops.flush()
        self.text += delta
        return delta, reason
