"""Copy timings without host syncs: per-unit bytes and seconds of loads, and their overlap with decode.

The copier brackets every unit it issues with two marks on the stream that runs the copy
(:meth:`TransferMeter.start` / :meth:`TransferMeter.stop`); the engine brackets every forward pass
that decodes with two marks on the compute stream (:meth:`TransferMeter.decode_begin` /
:meth:`TransferMeter.decode_end`). On a GPU a mark is a timing event recorded on the current
stream; on the CPU it is ``time.perf_counter()``. Nothing waits on a mark: :meth:`poll` (called
by the prefetch worker after each load and by the engine's stats once per step) resolves the
marks that have completed (``event.query()``), converting each to seconds since an origin event,
and adds to :class:`~context_forge.prefetch.ledger.PrefetchStats`:

- ``demand_bytes`` / ``demand_seconds``: on-demand loads (the load-back bandwidth);
- ``copy_seconds``: prefetches (their bytes are ``PrefetchStats.bytes``);
- ``decode_bytes`` / ``decode_seconds``: the part of each prefetch unit that ran while a decode
  step did (bytes in proportion to the overlap), so ``decode_bytes / decode_seconds`` is the
  prefetch bandwidth during decode.

Units of one copy stream run one after another, so their seconds add up to the copy stream's busy
time. Thread-safe (one lock).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from .ledger import PrefetchStats

__all__ = ["TransferMeter"]

_MAX_PENDING = 4096
"""Unresolved marks kept at most (older ones are dropped, uncounted, if polling stalls)."""
_KEEP_S = 5.0
"""Resolved decode windows are kept this long before the start of the last counted copy (a unit
in flight is queued only once it was issued)."""


@dataclass
class _Copy:
    kind: str
    nbytes: int
    start: Any
    stop: Any


class TransferMeter:
    """Resolves copy and decode marks into ``PrefetchStats`` timings (see the module docstring)."""

    def __init__(self, stats: PrefetchStats, device: torch.device | None = None) -> None:
        self.stats = stats
        self.gpu = device is not None and device.type == "cuda"
        self.device = device
        self._lock = threading.Lock()
        self._copies: deque[_Copy] = deque()
        self._decodes: deque[tuple[Any, Any]] = deque()
        self._windows: deque[tuple[float, float]] = deque()
        self._open: Any = None
        self._last = 0.0
        self._origin: Any = None
        if self.gpu:
            self._origin = torch.cuda.Event(enable_timing=True)
            self._origin.record(torch.cuda.current_stream(device))

    # ---------------------------------------------------------------- marks
    def mark(self) -> Any:
        """A timestamp of the current stream (GPU: a recorded event; CPU: now)."""
        if self.gpu:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> Any:
        """*Copier.* Before a unit is issued (on the copy stream)."""
        return self.mark()

    def stop(self, start: Any, nbytes: int, kind: str, stop: Any = None) -> None:
        """*Copier.* After a unit of ``nbytes`` of a ``kind`` (``demand``/``prefetch``) load;
        ``stop``: its end mark (default: a mark on the current stream now)."""
        copy = _Copy(kind, nbytes, start, self.mark() if stop is None else stop)
        with self._lock:
            self._copies.append(copy)
            if len(self._copies) > _MAX_PENDING:
                self._copies.popleft()

    def decode_begin(self) -> None:
        """*Engine.* A forward pass with decodes is about to be queued (on the compute stream)."""
        self._open = self.mark()

    def decode_end(self) -> None:
        """*Engine.* That forward pass was queued."""
        if self._open is None:
            return
        window = (self._open, self.mark())
        self._open = None
        with self._lock:
            self._decodes.append(window)
            if len(self._decodes) > _MAX_PENDING:
                self._decodes.popleft()

    # ---------------------------------------------------------------- resolution
    def _done(self, mark: Any) -> bool:
        return not self.gpu or mark.query()

    def _seconds(self, mark: Any) -> float:
        if self.gpu:
            return self._origin.elapsed_time(mark) / 1e3
        return float(mark)

    def poll(self) -> None:
        """Count every copy whose marks (and the decode windows it may overlap) have completed."""
        with self._lock:
            while self._decodes and self._done(self._decodes[0][1]):
                begin, end = self._decodes.popleft()
                self._windows.append((self._seconds(begin), self._seconds(end)))
            while self._copies and self._done(self._copies[0].stop):
                copy = self._copies[0]
                t0, t1 = self._seconds(copy.start), self._seconds(copy.stop)
                if any(self._began_before(m, t1) for m in self._pending_decodes()):
                    break  # a decode that may overlap it has not finished yet
                self._copies.popleft()
                self._count(copy, t0, t1)
                self._last = t0
            while self._windows and self._windows[0][1] < self._last - _KEEP_S:
                self._windows.popleft()

    def _pending_decodes(self) -> list[Any]:
        marks = [begin for begin, _ in self._decodes]
        if self._open is not None:
            marks.append(self._open)
        return marks

    def _began_before(self, mark: Any, t: float) -> bool:
        return self._done(mark) and self._seconds(mark) < t

    def _count(self, copy: _Copy, t0: float, t1: float) -> None:
        s = self.stats
        seconds = max(0.0, t1 - t0)
        if copy.kind == "demand":
            s.demand_bytes += copy.nbytes
            s.demand_seconds += seconds
            return
        s.copy_seconds += seconds
        overlap = sum(max(0.0, min(t1, e) - max(t0, b)) for b, e in self._windows)
        overlap = min(overlap, seconds)
        if overlap > 0 and seconds > 0:
            s.decode_seconds += overlap
            s.decode_bytes += copy.nbytes * overlap / seconds
