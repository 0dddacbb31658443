"""Prefetch copy bandwidth with and without concurrent decode-like compute, per copier.

    python benchmarks/decode_copy_bw.py [--pages 256] [--loads 8] [--copiers direct,direct-layered,kernel]

Issue 12 asks for prefetch copies during decode at >= 30 GB/s with no SM-hungry kernel on the copy
path. For each copier this runs prefetch-sized loads (``--pages`` pages of a Llama-3-8B KV shape,
host page ids shuffled so runs are short, as after evictions) from a worker thread, as the prefetch
controller does, first alone, then while the main thread keeps the default stream busy with a
decode-like loop (batched GEMV-shaped matmuls, ``--batch`` rows against a ``--hidden`` square
weight). It prints, per copier: GB/s alone, GB/s beside compute (wall clock of the loads and as
the copier's ``TransferMeter`` times them on the copy stream), and the compute loop's step time
alone and beside the copies (the copies' cost to decode). Copiers:

- ``direct``: copy-engine copies of whole pages into a device staging buffer, then a scatter
  (the default, ``hicache_io_backend: direct``);
- ``direct-layered``: the same in 4 layer groups (``prefetch_wait_mode: layer``);
- ``kernel``: the Triton kernel reading pinned host memory (``hicache_io_backend: kernel``).

Each copier's first load (also its warm-up) is checked bit-exact against the host pages; exit
status 1 when one is not. Needs a CUDA or ROCm GPU; on the CPU it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from context_forge.kv.buffer import DeviceKVBuffer, HostKVBuffer
from context_forge.prefetch.copier import (
    DEFAULT_LAYER_GROUPS,
    PageCopier,
    chunk_pages_for,
)
from context_forge.prefetch.ledger import PrefetchStats
from context_forge.prefetch.meter import TransferMeter

COPIERS = ("direct", "direct-layered", "kernel")


def make(name: str, dev: DeviceKVBuffer, host: HostKVBuffer) -> PageCopier:
    from context_forge.prefetch.stream_copier import StreamCopier

    chunk = chunk_pages_for(host.bytes_per_page)
    if name == "direct":
        return StreamCopier(dev, host, chunk)
    if name == "direct-layered":
        return StreamCopier(dev, host, chunk, layers_per_unit=-(-dev.num_layers // DEFAULT_LAYER_GROUPS))
    if name == "kernel":
        from context_forge.prefetch.kernel_copier import KernelCopier, kernel_copy_works

        problem = kernel_copy_works(dev.device)
        if problem is not None:
            raise RuntimeError(problem)
        return KernelCopier(dev, host)
    raise ValueError(f"unknown copier {name!r}; choose from {', '.join(COPIERS)}")


def run_loads(copier: PageCopier, loads: list[tuple[list[int], list[int]]], device: torch.device) -> float:
    """Issue the loads one after another on a worker thread (as the controller does); wall seconds."""
    seconds: list[float] = []

    def work() -> None:
        with torch.cuda.device(device):
            t0 = time.perf_counter()
            for host_pages, device_pages in loads:
                copier.load(host_pages, device_pages)
            torch.cuda.current_stream(device).synchronize()
            seconds.append(time.perf_counter() - t0)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return seconds[0]


def lands_exactly(copier: PageCopier, dev: DeviceKVBuffer, host: HostKVBuffer,
                  load: tuple[list[int], list[int]], device: torch.device) -> bool:
    """Load ``load`` into a zeroed device buffer; True when every page of every layer is bit-exact."""
    host_pages, device_pages = load
    dev.buffer.zero_()
    run_loads(copier, [load], device)
    got = dev.buffer[:, :, torch.tensor(device_pages, device=device)]
    want = host.buffer[torch.tensor(host_pages)].permute(1, 2, 0, 3, 4, 5).to(device)
    return torch.equal(got, want)


def compute_loop(stop: threading.Event, x: torch.Tensor, w: torch.Tensor, steps: list[float]) -> None:
    """Decode-like work on the default stream until ``stop``; appends seconds per step of 16 matmuls."""
    while not stop.is_set():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        y = x
        for _ in range(16):
            y = torch.tanh(y @ w)
        end.record()
        end.synchronize()
        steps.append(start.elapsed_time(end) / 1e3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=256, help="pages per load (2 MiB each for this shape)")
    ap.add_argument("--loads", type=int, default=8, help="loads per measurement")
    ap.add_argument("--copiers", default=",".join(COPIERS))
    ap.add_argument("--batch", type=int, default=64, help="rows of the decode-like matmul")
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    if not torch.cuda.is_available():
        print("decode_copy_bw: needs a CUDA or ROCm GPU (torch.cuda is not available here); nothing measured.")
        return 2
    device = torch.device("cuda", torch.cuda.current_device())
    props = torch.cuda.get_device_properties(device)
    print(f"device: {props.name} ({props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB), "
          f"torch {torch.__version__}, {'HIP ' + torch.version.hip if torch.version.hip else 'CUDA ' + str(torch.version.cuda)}")
    layers, ps, heads, dim, dtype = 32, 16, 8, 128, torch.bfloat16
    n = args.pages * 2
    dev = DeviceKVBuffer(layers, n, ps, heads, dim, dtype, device)
    host = HostKVBuffer(layers, n, ps, heads, dim, dtype, pin_memory=True)
    host.buffer.copy_(torch.randn(host.buffer.shape, generator=torch.Generator().manual_seed(args.seed)).to(dtype))
    rng = random.Random(args.seed)
    loads = []
    for _ in range(args.loads):
        hp, dp = rng.sample(range(n), args.pages), rng.sample(range(n), args.pages)
        loads.append((hp, dp))
    nbytes = args.loads * args.pages * host.bytes_per_page
    x = torch.randn(args.batch, args.hidden, device=device, dtype=dtype)
    w = torch.randn(args.hidden, args.hidden, device=device, dtype=dtype) / args.hidden ** 0.5
    alone_steps: list[float] = []
    stop = threading.Event()
    timer = threading.Timer(2.0, stop.set)
    timer.start()
    compute_loop(stop, x, w, alone_steps)
    step_alone = sorted(alone_steps)[len(alone_steps) // 2]
    print(f"load: {args.loads} x {args.pages} pages x {host.bytes_per_page / 2**20:.1f} MiB = {nbytes / 1e9:.2f} GB; "
          f"compute step alone {step_alone * 1e3:.2f} ms (median)")
    print(f"{'copier':<16} {'alone GB/s':>11} {'w/ compute GB/s':>16} {'meter GB/s':>11} "
          f"{'meter during-decode GB/s':>25} {'compute step w/ copies':>23}  bit-exact")
    failed = False
    for name in [c for c in args.copiers.split(",") if c]:
        try:
            copier = make(name, dev, host)
        except Exception as exc:  # e.g. no Triton for the kernel copier
            print(f"{name:<16} unavailable: {exc}")
            continue
        exact = lands_exactly(copier, dev, host, loads[0], device)  # also the warm-up
        failed |= not exact
        alone = nbytes / run_loads(copier, loads, device) / 1e9
        stats = PrefetchStats()
        meter = copier.meter = TransferMeter(stats, device)
        steps: list[float] = []
        stop = threading.Event()
        worker = threading.Thread(target=compute_loop, args=(stop, x, w, steps))
        meter.decode_begin()
        worker.start()
        time.sleep(0.2)
        beside = nbytes / run_loads(copier, loads, device) / 1e9
        stop.set()
        worker.join()
        meter.decode_end()
        torch.cuda.synchronize(device)
        meter.poll()
        copier.meter = None
        metered = nbytes / stats.copy_seconds / 1e9 if stats.copy_seconds else float("nan")
        during = stats.decode_bytes / stats.decode_seconds / 1e9 if stats.decode_seconds else float("nan")
        step = sorted(steps)[len(steps) // 2] if steps else float("nan")
        print(f"{name:<16} {alone:>11.1f} {beside:>16.1f} {metered:>11.1f} {during:>25.1f} "
              f"{step * 1e3:>19.2f} ms ({step / step_alone:.2f}x)  {'yes' if exact else 'NO'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
