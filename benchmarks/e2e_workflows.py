"""End-to-end workflow benchmark: every eviction policy against the same traces on a real server.

    python benchmarks/e2e_workflows.py --config configs/llama3-8b-h100.yaml --out DIR
        [--policies lru,kvflow,pbkv] [--traces peer,concurrent,dynamic] [--time-budget-s 540]
        [--server-per replay|policy] [--max-total-tokens N] [--hicache-ratio R] [--device-fraction F]
        [--work-dir DIR] [--server-arg KEY=VALUE ...] [--<trace size> N ...] [--smoke] [--dry-run]
    python benchmarks/e2e_workflows.py --plot-only DIR

For each policy (hierarchical cache on; lru without prefetch, kvflow and pbkv with it) a server is
started as a subprocess, the seeded traces (one PEER workflow with large prompts, 16 concurrent
declared workflows, dynamic undeclared workflows) are replayed with SScheduler's ``replay_trace``,
and ``/metrics`` is scraped around each replay. Writes ``DIR/e2e_results.{json,md,png}``; traces
and server logs go to ``--work-dir`` (default DIR). ``--smoke`` runs tiny-llama on CPU with tiny
traces (configs/tiny-cpu.yaml unless --config is given). docs/benchmarks.md explains the method.

Exit status: 0 every replay finished; 1 some replay failed or was skipped (recorded in the
results); 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent / "python", _HERE.parent / "SScheduler"):
    if str(_path) not in sys.path:
        sys.path.insert(0 if _path == _HERE else len(sys.path), str(_path))

from e2e_bench.plan import FULL, SMOKE, TRACE_KINDS, TraceSizes
from e2e_bench.run import POLICY_ARGS, RESULTS_JSON, SERVER_PER, Bench, Settings, write_reports

SMOKE_CONFIG = _HERE.parent / "configs" / "tiny-cpu.yaml"


def _names(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(known)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{what} listed twice in {text!r}")
    return names


def _server_arg(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"--server-arg takes KEY=VALUE, got {text!r}")
    return key.strip().replace("-", "_"), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2e_workflows.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, help="server YAML config (default with --smoke: configs/tiny-cpu.yaml)")
    parser.add_argument("--out", type=Path, help="results directory")
    parser.add_argument("--work-dir", type=Path, help="traces and server logs (default: --out)")
    parser.add_argument("--plot-only", type=Path, metavar="DIR", help=f"rebuild md + png from DIR/{RESULTS_JSON}")
    parser.add_argument("--policies", type=lambda t: _names(t, list(POLICY_ARGS), "policy"),
                        default=list(POLICY_ARGS), help="comma-separated")
    parser.add_argument("--traces", type=lambda t: _names(t, TRACE_KINDS, "trace"), default=list(TRACE_KINDS),
                        help="comma-separated")
    parser.add_argument("--time-budget-s", type=float, default=540.0, help="whole run, generation to report")
    parser.add_argument("--server-per", choices=list(SERVER_PER), default="replay",
                        help="; ".join(f"{k}: {v}" for k, v in SERVER_PER.items()))
    parser.add_argument("--max-total-tokens", type=int, help="device KV pool (tokens) instead of the sizing rule")
    parser.add_argument("--hicache-ratio", type=float, help="host pool / device pool (default: the config's)")
    parser.add_argument("--device-fraction", type=float, default=0.4,
                        help="device pool as a fraction of the largest working set (at least 2x the largest request)")
    parser.add_argument("--server-timeout-s", type=float, default=240.0, help="wait this long for /health")
    parser.add_argument("--replay-timeout-s", type=float, default=120.0,
                        help="give up on one replay after this long (recorded as failed; the run goes on)")
    parser.add_argument("--replay-concurrency", type=int, help="cap on requests in flight (default: none)")
    parser.add_argument("--server-arg", type=_server_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="extra ServerConfig key for every server (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="tiny-llama on CPU, tiny traces (< 60 s)")
    parser.add_argument("--dry-run", action="store_true", help="generate the traces and print the sizing; start no server")
    sizes = parser.add_argument_group("trace sizes (default: the full profile, or the smoke one with --smoke)")
    for f in dataclasses.fields(TraceSizes):
        kind = float if f.name.endswith("_s") else int
        sizes.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                           help=f"{f.metadata['help']} (full {getattr(FULL, f.name)}, smoke {getattr(SMOKE, f.name)})")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    config = args.config or (SMOKE_CONFIG if args.smoke else None)
    if config is None:
        raise ValueError("--config is required (or --smoke, or --plot-only DIR)")
    if not config.is_file():
        raise ValueError(f"--config {config}: no such file")
    if args.out is None:
        raise ValueError("--out DIR is required")
    for flag in ("time_budget_s", "server_timeout_s", "replay_timeout_s"):
        if getattr(args, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0, got {getattr(args, flag)}")
    if args.replay_concurrency is not None and args.replay_concurrency < 1:
        raise ValueError(f"--replay-concurrency must be >= 1, got {args.replay_concurrency}")
    if args.hicache_ratio is not None and args.hicache_ratio <= 1:
        raise ValueError(f"--hicache-ratio must be > 1 (the host tier must be larger than the device pool), "
                         f"got {args.hicache_ratio}")
    if args.max_total_tokens is not None and args.max_total_tokens < 1:
        raise ValueError(f"--max-total-tokens must be >= 1, got {args.max_total_tokens}")
    profile = SMOKE if args.smoke else FULL
    sizes = profile.replace(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TraceSizes)})
    return Settings(
        config_path=config, out=args.out, work_dir=args.work_dir or args.out, policies=args.policies,
        traces=args.traces, sizes=sizes, time_budget_s=args.time_budget_s, server_per=args.server_per,
        max_total_tokens=args.max_total_tokens, hicache_ratio=args.hicache_ratio,
        device_fraction=args.device_fraction, server_timeout_s=args.server_timeout_s,
        replay_timeout_s=args.replay_timeout_s,
        replay_concurrency=args.replay_concurrency, server_args=dict(args.server_arg), smoke=args.smoke,
        dry_run=args.dry_run,
    )


def plot_only(directory: Path) -> int:
    path = directory / RESULTS_JSON
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    write_reports(results, directory)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.plot_only is not None:
        return plot_only(args.plot_only)
    try:
        settings = settings_from(args)
        bench = Bench(settings, [str(Path(__file__)), *argv])
        return bench.run()
    except (ValueError, FileNotFoundError) as exc:  # ConfigError, trace sizes, pool sizing, model dir
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
