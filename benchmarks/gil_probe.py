"""Does a thread that waits for the GPU hold Python's GIL? (diagnostic for docs/prefetch.md)

    PYTHONPATH=python python benchmarks/gil_probe.py        # needs a GPU

One thread counts in a Python loop while the main thread waits about 100 ms for the GPU in each
of the ways the engine and benchmarks wait (``tolist``, ``item``, ``cpu``, ``synchronize``, an
event); a waiter that holds the GIL would stall the counter. Prints the counter's rate for each,
and for a plain ``time.sleep`` as the reference.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import torch


def rate_while(fn: Callable[[], None]) -> tuple[float, float]:
    """(seconds ``fn`` took, million loop iterations per second of the other thread meanwhile)."""
    counter, stop = [0], threading.Event()

    def spin() -> None:
        while not stop.is_set():
            counter[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    time.sleep(0.05)
    c0, t0 = counter[0], time.perf_counter()
    fn()
    dt, c1 = time.perf_counter() - t0, counter[0]
    stop.set()
    t.join()
    return dt, (c1 - c0) / dt / 1e6


def main() -> int:
    if not torch.cuda.is_available():
        print("error: needs a GPU", file=sys.stderr)
        return 2
    x = torch.zeros(4, device="cuda")
    event = torch.cuda.Event()

    def after_gpu_work(wait: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            torch.cuda._sleep(200_000_000)  # keeps the GPU busy for ~100 ms
            wait()
        return run

    cases: list[tuple[str, Callable[[], None]]] = [
        ("time.sleep (reference)", lambda: time.sleep(0.1)),
        ("tolist", after_gpu_work(x.tolist)),
        ("item", after_gpu_work(lambda: x.sum().item())),
        ("cpu", after_gpu_work(x.cpu)),
        ("torch.cuda.synchronize", after_gpu_work(torch.cuda.synchronize)),
        ("Event.synchronize", after_gpu_work(lambda: (event.record(), event.synchronize()))),
    ]
    torch.cuda.synchronize()
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for name, fn in cases:
        dt, rate = rate_while(fn)
        print(f"{name}: waited {dt * 1e3:.1f} ms, other thread ran {rate:.2f} M iterations/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
