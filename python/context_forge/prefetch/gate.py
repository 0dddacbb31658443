"""Per-layer readiness of one host->device load (``prefetch_wait_mode: layer``).

With layer waiting a request whose prefix is still landing is admitted as soon as every layer
of the load has a handle the forward pass can wait on; the model then waits, before each layer,
for that layer's KV only, so its first layers compute while the later ones are still copying.

Roles: the copier ``mark``\\ s layers as it issues them (GPU: with the event recorded after the
copy; CPU: once copied); the engine checks ``issued`` before admitting and sets ``expedite``
(stop pacing this load, a request is waiting for it); the model calls ``wait(layer)``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any


class LoadFailed(RuntimeError):
    """The load a request was waiting on failed; its KV is unusable."""


class LayerGate(ABC):
    """Readiness of each layer of one load."""

    def __init__(self, num_layers: int) -> None:
        if num_layers < 1:
            raise ValueError(f"LayerGate needs num_layers >= 1, got {num_layers}")
        self.num_layers = num_layers
        self.expedite = False
        """Set by the engine when a request waits for this load: the copier stops pacing it."""
        self.on_issued: Callable[[], None] | None = None
        """Called (on the copier's thread) once every layer has a handle."""
        self.failed = False
        self._marked = 0

    @property
    def issued(self) -> bool:
        """Every layer can be waited on (the forward pass may be queued now)."""
        return self._marked >= self.num_layers and not self.failed

    def mark(self, first: int, count: int, handle: Any = None) -> None:
        """*Copier.* Layers ``[first, first + count)`` of every page are issued; ``handle``
        completes when they have landed (``None``: they have landed already)."""
        if first != self._marked or count < 1 or first + count > self.num_layers:
            raise ValueError(f"LayerGate.mark: layers [{first}, {first + count}) out of order "
                             f"(next is {self._marked} of {self.num_layers})")
        self._set(first, count, handle)
        self._marked = first + count
        if self._marked == self.num_layers and self.on_issued is not None:
            self.on_issued()

    def fail(self) -> None:
        """*Copier thread.* The load failed: waiters are released and raise ``LoadFailed``."""
        self.failed = True
        self._release_all()

    @abstractmethod
    def wait(self, layer: int) -> None:
        """*Compute thread.* Make what comes next wait until ``layer``'s KV has landed."""

    @abstractmethod
    def _set(self, first: int, count: int, handle: Any) -> None: ...

    def _release_all(self) -> None:
        """Unblock threads waiting in ``wait``."""


class ThreadGate(LayerGate):
    """CPU loads (the copier thread copies; ``wait`` blocks the compute thread). Issued from the
    start: a waiter simply blocks until the worker has copied its layer."""

    def __init__(self, num_layers: int, timeout: float = 60.0) -> None:
        super().__init__(num_layers)
        self.timeout = timeout
        self._landed = [threading.Event() for _ in range(num_layers)]

    @property
    def issued(self) -> bool:
        return not self.failed

    def _set(self, first: int, count: int, handle: Any) -> None:
        for ev in self._landed[first:first + count]:
            ev.set()

    def _release_all(self) -> None:
        for ev in self._landed:
            ev.set()

    def landed(self, layer: int) -> bool:
        return self._landed[layer].is_set() and not self.failed

    def wait(self, layer: int) -> None:
        if not self._landed[layer].wait(self.timeout):
            raise LoadFailed(f"layer {layer} of a KV load did not land within {self.timeout} s")
        if self.failed:
            raise LoadFailed("the KV load this request was waiting on failed")


class EventGate(LayerGate):
    """GPU loads: one CUDA/HIP event per layer, recorded on the copy stream; ``wait`` makes the
    current stream wait on the GPU (the host never blocks)."""

    def __init__(self, num_layers: int) -> None:
        super().__init__(num_layers)
        self._events: list[Any] = [None] * num_layers

    def _set(self, first: int, count: int, handle: Any) -> None:
        for layer in range(first, first + count):
            self._events[layer] = handle

    def wait(self, layer: int) -> None:
        if self.failed:
            raise LoadFailed("the KV load this request was waiting on failed")
        event = self._events[layer]
        if event is None:
            raise RuntimeError(f"EventGate.wait: layer {layer} was never issued (admitted before `issued`)")
        import torch

        torch.cuda.current_stream().wait_event(event)


def wait_all(gates: list[LayerGate]) -> Callable[[int], None]:
    """A per-layer hook for the model that waits on every gate in ``gates``."""

    def wait(layer: int) -> None:
        for gate in gates:
            gate.wait(layer)

    return wait
