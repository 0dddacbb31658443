"""Model-runner performance on one GPU: matmul rate, prefill rate, decode tokens/s with and without
CUDA graphs, and correctness of the fast paths. Needs torch (and Triton on a GPU) only.

    PYTHONPATH=python python benchmarks/engine_perf.py --out results/perf

Builds the model through the real loader (dummy weights) and ``ModelRunner``; decode batches run
``runner.forward_tokens`` on scattered pages of a randomly filled KV cache, one step at a time with a
device sync per step (the engine samples on the host every step). Modes: ``sdpa`` (torch_sdpa
backend, eager), ``triton`` (Triton backend, eager), ``graph`` (Triton backend, CUDA graph replay).
Checks: Triton kernels against a float64 reference, and logits of graph vs eager vs SDPA paths
(argmax agreement and max abs diff; exact-ish in fp32 on the tiny model). Writes ``perf.json`` and
``perf.md`` to ``--out``. ``--quick`` runs the tiny model only (works on CPU, as a smoke test).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from context_forge.attention import get_attention_backend
from context_forge.kv.buffer import DeviceKVBuffer
from context_forge.engine.runner import ModelRunner
from context_forge.model import load_model
from context_forge.model.llama import Attention

GPU = torch.cuda.is_available()


def sync() -> None:
    if GPU:
        torch.cuda.synchronize()


def wall_ms(fn: Callable[[], Any], iters: int, warmup: int = 2) -> float:
    """Mean wall time per call, synchronising after each call."""
    for _ in range(warmup):
        fn()
        sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
        sync()
    return (time.perf_counter() - start) / iters * 1e3


def gpu_ms(fn: Callable[[], Any], iters: int, warmup: int = 2) -> float:
    """Mean device time per call (CUDA events around back-to-back calls)."""
    for _ in range(warmup):
        fn()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / iters


def set_backend(model: torch.nn.Module, name: str) -> None:
    backend = get_attention_backend(name)
    model.backend = backend
    for module in model.modules():
        if isinstance(module, Attention):
            module.backend = backend


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    return {"argmax_agree": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            "max_abs_diff": float((a - b).abs().max()), "max_abs_logit": float(b.abs().max())}


def matmul_tflops(size: int, dtype: torch.dtype, device: str) -> float:
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    ms = gpu_ms(lambda: a @ b, 20, 3) if GPU else wall_ms(lambda: a @ b, 3, 1)
    return 2 * size ** 3 / ms / 1e9


def kernel_checks(device: str) -> dict[str, Any]:
    """Triton decode attention and KV store against float64 references on the GPU."""
    from context_forge.attention import triton_kernels as tk

    out: dict[str, Any] = {}
    rng = random.Random(0)
    shapes = [(16, 32, 8, 128, torch.bfloat16), (1, 32, 8, 128, torch.bfloat16),
              (16, 28, 4, 128, torch.float16), (4, 8, 2, 64, torch.float32)]
    for page, heads, kv_heads, dim, dtype in shapes:
        cache = torch.randn(2, 600, page, kv_heads, dim, device=device).to(dtype)
        kv_lens = [0, 1, 17, 300, 1000, rng.randint(1, 2000)]
        width = max(-(-n // page) for n in kv_lens)
        pages = torch.tensor([rng.choices(range(600), k=width) for _ in kv_lens], device=device)
        q = torch.randn(len(kv_lens), heads, dim, device=device).to(dtype)
        ref = torch.zeros(len(kv_lens), heads, dim, dtype=torch.float64, device=device)
        for b, n in enumerate(kv_lens):
            pos = torch.arange(n, device=device)
            slots = pages[b, pos // page] * page + pos % page
            k = cache[0].reshape(-1, kv_heads, dim)[slots].double().repeat_interleave(heads // kv_heads, 1)
            v = cache[1].reshape(-1, kv_heads, dim)[slots].double().repeat_interleave(heads // kv_heads, 1)
            scores = torch.einsum("hd,nhd->hn", q[b].double(), k) / math.sqrt(dim)
            ref[b] = torch.einsum("hn,nhd->hd", scores.softmax(-1), v) if n else 0
        errs = {}
        lens = torch.tensor(kv_lens, device=device)
        for splits in (None, 1, 7):
            got = tk.paged_decode_attention(q, cache[0], cache[1], pages, lens, dim ** -0.5,
                                            num_splits=splits)
            errs[str(splits)] = float((got.double() - ref).abs().max())
        out[f"decode ps{page} h{heads}/{kv_heads} d{dim} {str(dtype)[6:]}"] = errs
    k_cache = torch.zeros(50, 16, 8, 128, dtype=torch.bfloat16, device=device)
    v_cache = torch.zeros_like(k_cache)
    qkv = torch.randn(4, 48, 128, device=device, dtype=torch.bfloat16)
    slots = torch.tensor([5, -1, 799, 100], device=device)
    tk.store_kv(k_cache, v_cache, slots, qkv[:, 32:40], qkv[:, 40:])
    flat_k, flat_v = k_cache.view(-1, 8, 128), v_cache.view(-1, 8, 128)
    ok = all(torch.equal(flat_k[s], qkv[t, 32:40]) and torch.equal(flat_v[s], qkv[t, 40:])
             for t, s in enumerate([5, None, 799, 100]) if s is not None)
    out["store_kv_exact"] = bool(ok and int((flat_k != 0).any(-1).any(-1).sum()) == 3)
    from context_forge.model.config import ModelConfig
    from context_forge.attention.rope import RotaryEmbedding, apply_rotary
    preset = ModelConfig.preset("llama3-8b")
    rot = RotaryEmbedding(preset.head_dim, preset.rope_theta, preset.rope_scaling)
    positions = torch.randint(0, 8192, (300,), device=device)
    for dtype in (torch.bfloat16, torch.float32):
        cos, sin = rot.cos_sin(positions, dtype)
        qkv = torch.randn(300, 48, 128, device=device, dtype=dtype)
        expected = apply_rotary(qkv[:, :40], cos, sin)
        tk.rope_inplace(qkv[:, :40], cos, sin)
        out[f"rope_max_diff_{str(dtype)[6:]}"] = float((qkv[:, :40].float() - expected.float()).abs().max())
    return out


class Decode:
    """``batch`` sequences of ``context`` tokens on scattered pages, stepping one token at a time."""

    def __init__(self, batch: int, context: int, steps: int, page_size: int, pages: list[int],
                 vocab: int) -> None:
        per_seq = -(-(context + steps + 2) // page_size)
        if batch * per_seq > len(pages):
            raise ValueError(f"KV pool too small for batch {batch} x {context}")
        self.tables = [pages[i * per_seq:(i + 1) * per_seq] for i in range(batch)]
        self.batch, self.context, self.vocab = batch, context, vocab
        self.lens = [context] * batch

    def reset(self) -> None:
        self.lens = [self.context] * self.batch

    def step(self, runner: ModelRunner, use_graph: bool) -> torch.Tensor:
        self.lens = [n + 1 for n in self.lens]
        ids = [(7 * n + i) % self.vocab for i, n in enumerate(self.lens)]
        return runner.forward_tokens(ids, [1] * self.batch, self.lens, self.tables, use_graph=use_graph)


def decode_section(runner: ModelRunner, model: torch.nn.Module, shapes: list[tuple[int, int]],
                   steps: int, pages: list[int], page_size: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for batch, context in shapes:
        d = Decode(batch, context, steps + 8, page_size, pages, model.config.vocab_size)
        row: dict[str, Any] = {"batch": batch, "context": context}
        d.reset()
        set_backend(model, "torch_sdpa")
        sdpa = d.step(runner, False)
        set_backend(model, "triton")
        d.reset()
        eager = d.step(runner, False)
        if runner.uses_cuda_graph:
            d.reset()
            graph = d.step(runner, True)
            row["graph_vs_triton"] = compare(graph, eager)
        row["triton_vs_sdpa"] = compare(eager, sdpa)
        modes = [("sdpa", "torch_sdpa", False), ("triton", "triton", False)]
        if runner.uses_cuda_graph:
            modes.append(("graph", "triton", True))
        for mode, backend, use_graph in modes:
            set_backend(model, backend)
            d.reset()
            ms = wall_ms(lambda: d.step(runner, use_graph), steps)
            row[f"{mode}_ms"] = ms
            row[f"{mode}_tok_s"] = batch / ms * 1e3
            if GPU:
                d.reset()
                row[f"{mode}_gpu_ms"] = gpu_ms(lambda: d.step(runner, use_graph), steps)
        set_backend(model, "triton")
        rows[f"b{batch}_ctx{context}"] = row
        print(json.dumps(row), flush=True)
    return rows


def attention_section(kv: DeviceKVBuffer, heads: int, batch: int, context: int,
                      pages: list[int]) -> dict[str, Any]:
    """One layer's decode attention alone: Triton kernel configurations vs gather + SDPA."""
    from context_forge.attention import triton_kernels as tk
    from context_forge.attention.torch_sdpa import _decode

    ps, dev = kv.page_size, kv.device
    per_seq = -(-context // ps)
    pages_t = torch.tensor(pages[: batch * per_seq], device=dev).view(batch, per_seq)
    lens = torch.full((batch,), context, device=dev)
    q = torch.randn(batch, heads, kv.head_dim, device=dev, dtype=kv.dtype)
    bytes_read = batch * context * kv.num_kv_heads * kv.head_dim * 2 * kv.dtype.itemsize
    out: dict[str, Any] = {"batch": batch, "context": context, "kv_bytes": bytes_read}
    mask = (torch.arange(per_seq * ps, device=dev)[None] < lens[:, None])[:, None, None, :]
    ms = gpu_ms(lambda: _decode(q, pages_t, mask, kv.buffer[0]), 20)
    out["sdpa_gather_us"] = ms * 1e3
    for block_n, warps, stages, splits in [(64, 4, 2, None), (32, 4, 2, None), (64, 8, 2, None),
                                           (128, 8, 2, None), (64, 4, 3, None), (64, 4, 2, 8)]:
        key = f"triton_n{block_n}_w{warps}_s{stages}_splits{splits or 'auto'}"
        try:
            ms = gpu_ms(lambda: tk.paged_decode_attention(
                q, kv.k_pages(0), kv.v_pages(0), pages_t, lens, kv.head_dim ** -0.5, splits,
                block_n=block_n, num_warps=warps, num_stages=stages), 20)
            out[key + "_us"] = ms * 1e3
            out[key + "_GBps"] = bytes_read / ms / 1e6
        except Exception as e:  # a configuration the compiler rejects is reported, not fatal
            out[key + "_error"] = repr(e)[:200]
    got = {"triton": tk.paged_decode_attention(q, kv.k_pages(0), kv.v_pages(0), pages_t, lens,
                                               kv.head_dim ** -0.5),
           "sdpa": _decode(q, pages_t, mask, kv.buffer[0])}
    ref = reference_decode(q, kv.buffer[0], pages_t, context)
    for name, t in got.items():
        out[f"{name}_max_err_vs_fp64"] = float((t.double() - ref).abs().max())
    print(json.dumps(out), flush=True)
    return out


def reference_decode(q: torch.Tensor, layer_kv: torch.Tensor, pages: torch.Tensor,
                     context: int) -> torch.Tensor:
    """float64 attention of ``q`` ``[B, heads, dim]`` over the first ``context`` keys of each row."""
    batch, heads, dim = q.shape
    kv_heads, page_size = layer_kv.shape[3], layer_kv.shape[2]
    pos = torch.arange(context, device=q.device)
    slots = pages[:, pos // page_size] * page_size + pos % page_size
    keys = layer_kv[0].reshape(-1, kv_heads, dim)[slots].double()
    values = layer_kv[1].reshape(-1, kv_heads, dim)[slots].double()
    grouped = q.double().view(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.einsum("bhgd,blhd->bhgl", grouped, keys) / math.sqrt(dim)
    return torch.einsum("bhgl,blhd->bhgd", scores.softmax(-1), values).reshape(batch, heads, dim)


def kernel_profile(fn: Callable[[], Any]) -> dict[str, Any]:
    """GPU kernels of one call of ``fn`` (eager), grouped by name, longest first."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0:
            rows.append((e.key[:90], e.count, round(t, 1)))
    rows.sort(key=lambda r: -r[2])
    total = sum(r[2] for r in rows)
    gemm_words = ("gemm", "gemv", "nvjet", "cutlass", "sm90")
    gemm = sum(r[2] for r in rows if any(w in r[0].lower() for w in gemm_words))
    return {"kernel_us": round(total, 1), "gemm_us": round(gemm, 1), "kernels": sum(r[1] for r in rows),
            "top": rows[:14]}


def profile_section(runner: ModelRunner, model: torch.nn.Module, pages: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    vocab = model.config.vocab_size
    for batch, context in ((1, 1024), (32, 4096)):
        d = Decode(batch, context, 8, runner.page_size, pages, vocab)
        out[f"decode_b{batch}_ctx{context}"] = kernel_profile(lambda: (d.reset(), d.step(runner, False)))
    n = 4096
    table = pages[: -(-n // runner.page_size)]
    ids = [(13 * i) % vocab for i in range(n)]
    out["prefill_4096"] = kernel_profile(lambda: runner.forward_tokens(ids, [n], [n], [table]))
    print(json.dumps(out), flush=True)
    return out


def prefill_section(runner: ModelRunner, model: torch.nn.Module, lengths: list[int], pages: list[int],
                    matmul: float) -> dict[str, Any]:
    cfg = model.config
    layer_params = sum(p.numel() for n, p in model.named_parameters() if ".layers." in n)
    out: dict[str, Any] = {"layer_params": layer_params}
    for n in lengths:
        table = pages[: -(-n // runner.page_size)]
        ids = [(13 * i) % cfg.vocab_size for i in range(n)]
        fn = lambda: runner.forward_tokens(ids, [n], [n], [table])  # noqa: E731
        ms = wall_ms(fn, 5)
        attention = 2 * n * n * cfg.num_attention_heads * cfg.head_dim * cfg.num_hidden_layers
        flops = 2 * n * layer_params + attention
        row: dict[str, Any] = {"ms": ms, "tflops": flops / ms / 1e9}
        row["vs_matmul"] = row["tflops"] / matmul if matmul else None
        if GPU:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            try:
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    row["flash_only_ms"] = wall_ms(fn, 3)
                row["flash_path"] = True
            except RuntimeError as e:
                row["flash_path"] = False
                row["flash_error"] = str(e)[:300]
        out[f"prefill_{n}"] = row
        print(json.dumps({f"prefill_{n}": row}), flush=True)
    return out


def tiny_checks(device: str) -> dict[str, Any]:
    """fp32 tiny model: graph and Triton logits against eager SDPA (exact up to float rounding)."""
    model, cfg = load_model(None, "dummy", "float32", device, seed=1, attention_backend="triton")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.mul_(6.0)
    kv = DeviceKVBuffer(cfg.num_hidden_layers, 512, 16, cfg.num_key_value_heads, cfg.head_dim,
                        torch.float32, device)
    kv.buffer.normal_()
    runner = ModelRunner(model, kv, 16, cuda_graph=GPU, graph_max_batch=8)
    pages = list(range(512))
    random.Random(1).shuffle(pages)
    out: dict[str, Any] = {}
    for batch in (1, 3, 8):
        d = Decode(batch, 200 + 37 * batch, 4, 16, pages, cfg.vocab_size)
        set_backend(model, "torch_sdpa")
        sdpa = d.step(runner, False)
        set_backend(model, "triton")
        d.reset()
        row = {"triton_vs_sdpa": compare(d.step(runner, False), sdpa)}
        if runner.uses_cuda_graph:
            d.reset()
            row["graph_vs_sdpa"] = compare(d.step(runner, True), sdpa)
        out[f"b{batch}"] = row
    return out


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# Engine perf ({res['env'].get('device', '?')}, {res['model']})", ""]
    if "matmul_tflops" in res:
        lines.append(f"bf16 matmul 8192^3: {res['matmul_tflops']:.0f} TFLOP/s")
    for key, row in res.get("prefill", {}).items():
        if key.startswith("prefill_"):
            lines.append(f"{key}: {row['ms']:.1f} ms, {row['tflops']:.0f} TFLOP/s "
                         f"({(row['vs_matmul'] or 0) * 100:.0f} % of matmul), "
                         f"flash path {row.get('flash_path')}")
    nan = float("nan")
    cols = ("sdpa_ms", "triton_ms", "graph_ms", "graph_tok_s", "graph_gpu_ms")
    lines += ["", "| batch | context | " + " | ".join(cols) + " | graph argmax agree | graph max diff |",
              "|---" * (len(cols) + 4) + "|"]
    for row in res.get("decode", {}).values():
        g = row.get("graph_vs_triton", {})
        cells = [row["batch"], row["context"], *(f"{row.get(c, nan):.2f}" for c in cols),
                 f"{g.get('argmax_agree', nan):.3f}", f"{g.get('max_abs_diff', nan):.3g}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    for name in ("kernel_checks", "tiny_checks", "attention_b32_4k", "attention_b1_1k", "profile"):
        if name in res:
            lines += ["", f"{name}: `{json.dumps(res[name])}`"]
    if res.get("errors"):
        lines += ["", "errors in sections: " + ", ".join(res["errors"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="llama3-8b")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--long", default="32x4096", help="extra decode shapes BxCONTEXT, comma separated")
    ap.add_argument("--prefill", default="2048,4096")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="tiny model only (CPU smoke test)")
    args = ap.parse_args(argv)
    device = "cuda" if GPU else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"model": "tiny-llama" if args.quick else args.model, "errors": {}}
    res["env"] = {"torch": torch.__version__, "python": platform.python_version(),
                  "device": torch.cuda.get_device_name() if GPU else "cpu"}
    try:
        import triton
        res["env"]["triton"] = triton.__version__
    except ImportError:
        res["env"]["triton"] = None

    def section(name: str, fn: Callable[[], Any]) -> None:
        start = time.perf_counter()
        try:
            res[name] = fn()
        except Exception:  # one failing section must not hide the others' numbers
            res["errors"][name] = traceback.format_exc()[-3000:]
            print(f"section {name} failed:\n{res['errors'][name]}", file=sys.stderr, flush=True)
        res.setdefault("section_s", {})[name] = time.perf_counter() - start
        (args.out / "perf.json").write_text(json.dumps(res, indent=2))

    if GPU:
        section("kernel_checks", lambda: kernel_checks(device))
    section("tiny_checks", lambda: tiny_checks(device))
    if not args.quick:
        section("matmul_tflops", lambda: matmul_tflops(8192, torch.bfloat16, device))
        model, cfg = load_model(args.model, "dummy", "auto", device, attention_backend="triton")
        shapes = [(int(b), args.context) for b in args.batches.split(",")]
        shapes += [tuple(int(x) for x in s.split("x")) for s in args.long.split(",") if s]
        page_size, steps = 16, args.steps
        need = max(b * -(-(c + steps + 10) // page_size) for b, c in shapes)
        need = max(need, -(-max(int(n) for n in args.prefill.split(",")) // page_size))
        kv = DeviceKVBuffer(cfg.num_hidden_layers, need + 64, page_size, cfg.num_key_value_heads,
                            cfg.head_dim, next(model.parameters()).dtype, device)
        kv.buffer.normal_()
        pages = list(range(kv.num_pages))
        random.Random(0).shuffle(pages)
        start = time.perf_counter()
        try:
            runner = ModelRunner(model, kv, page_size, cuda_graph=GPU,
                                 graph_max_batch=max(b for b, _ in shapes))
        except Exception:  # still measure the eager paths
            res["errors"]["graph_capture"] = traceback.format_exc()[-3000:]
            print(res["errors"]["graph_capture"], file=sys.stderr, flush=True)
            runner = ModelRunner(model, kv, page_size, cuda_graph=False)
        res["graph_capture_s"] = time.perf_counter() - start
        matmul = res.get("matmul_tflops") or 0.0
        section("prefill", lambda: prefill_section(runner, model, [int(n) for n in args.prefill.split(",")],
                                                   pages, matmul))
        section("decode", lambda: decode_section(runner, model, shapes, steps, pages, page_size))
        if GPU:
            heads = cfg.num_attention_heads
            section("attention_b32_4k", lambda: attention_section(kv, heads, 32, 4096, pages))
            section("attention_b1_1k", lambda: attention_section(kv, heads, 1, 1024, pages))
            section("profile", lambda: profile_section(runner, model, pages))
    (args.out / "perf.json").write_text(json.dumps(res, indent=2))
    (args.out / "perf.md").write_text(markdown(res))
    print(markdown(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
