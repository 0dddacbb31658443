"""End-to-end sweep: every serving policy and an unbounded cache on the same traces, real servers.

    python benchmarks/e2e_workflows.py --config configs/llama3-8b-h100.yaml --out DIR
        [--cells targets|NAME|GLOB,...] [--runs lru,kvflow,pbkv,unbounded] [--time-budget-s 520]
        [--work-dir DIR] [--server-arg KEY=VALUE ...] [--<profile field> VALUE ...]
        [--no-warm-system-prompts] [--prime-server] [--keep-pressure-modes] [--smoke] [--dry-run]
    python benchmarks/e2e_workflows.py --plot-only DIR

Cells are (workload, system prompt, device pool): {peer, concurrent, dynamic} x {2k, 8k, 16k}
x {25, 50 % of the KV working set}, with the host tier holding it all; named like
``concurrent-8k-25``. Every cell is replayed by each serving policy of the registry (prefetch on
where the policy class says so) and by ``unbounded`` (lru, a pool holding the whole working set):
the ceiling. The target cells run first; cells with the same pool share a server. Writes
``DIR/e2e_results.{json,md,png}``; traces and server logs go to ``--work-dir`` (default DIR).
``--smoke``: tiny-llama on CPU (configs/tiny-cpu.yaml unless --config is given), four tiny cells,
every run, the report. docs/benchmarks.md explains the method.

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

from e2e_bench.plan import FULL, SMOKE, SMOKE_CELLS, Profile
from e2e_bench.run import RESULTS_JSON, Bench, Settings, runs_from_registry, write_reports

SMOKE_CONFIG = _HERE.parent / "configs" / "tiny-cpu.yaml"


def _names(text: str, known: list[str], what: str) -> list[str]:
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


def _profile_type(f: dataclasses.Field) -> object:  # type: ignore[type-arg]
    default = getattr(FULL, f.name)
    if isinstance(default, tuple):
        item = type(default[0])
        def parse(text: str) -> tuple:
            try:
                return tuple(item(x.strip()) for x in text.split(",") if x.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(f"--{f.name.replace('_', '-')}: {text!r} is not a "
                                                 f"comma-separated list of {item.__name__}") from None
        return parse
    return type(default)


def build_parser() -> argparse.ArgumentParser:
    runs = runs_from_registry()
    parser = argparse.ArgumentParser(prog="e2e_workflows.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, help="server YAML config (default with --smoke: configs/tiny-cpu.yaml)")
    parser.add_argument("--out", type=Path, help="results directory")
    parser.add_argument("--work-dir", type=Path, help="traces and server logs (default: --out)")
    parser.add_argument("--plot-only", type=Path, metavar="DIR", help=f"rebuild md + png from DIR/{RESULTS_JSON}")
    parser.add_argument("--runs", type=lambda t: _names(t, runs, "run"), default=runs,
                        help="comma-separated: serving policies of the registry and 'unbounded'")
    parser.add_argument("--cells", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                        help="comma-separated cell names or globs ('targets' = the three target cells); "
                             "default: every cell (with --smoke: " + ",".join(SMOKE_CELLS) + ")")
    parser.add_argument("--time-budget-s", type=float, default=520.0, help="whole run, generation to report")
    parser.add_argument("--server-timeout-s", type=float, default=240.0, help="wait this long for /health")
    parser.add_argument("--replay-timeout-s", type=float, default=120.0,
                        help="give up on one replay after this long (recorded as failed; the run goes on)")
    parser.add_argument("--no-warm-system-prompts", action="store_true",
                        help="replay cold: do not compute the agents' system prompts before each replay")
    parser.add_argument("--prime-server", action="store_true",
                        help="before the measured servers, replay the first group's traces once on a throwaway "
                             "lru server (kept under 'prime' in the JSON, in no table): the first server on a "
                             "fresh machine pays costs the later ones do not")
    parser.add_argument("--keep-pressure-modes", action="store_true",
                        help="keep the config's memory-pressure thresholds (the sweep moves them out of the way)")
    parser.add_argument("--server-arg", type=_server_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="extra ServerConfig key for every server (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="tiny-llama on CPU, tiny cells (well under 2 minutes)")
    parser.add_argument("--dry-run", action="store_true", help="generate the traces, print cells, pools and "
                                                               "servers; start no server")
    prof = parser.add_argument_group("sweep and trace sizes (default: the full profile, or the smoke one with --smoke)")
    for f in dataclasses.fields(Profile):
        def show(v: object) -> str:
            return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
        prof.add_argument("--" + f.name.replace("_", "-"), type=_profile_type(f), default=None,  # type: ignore[arg-type]
                          help=f"{f.metadata['help'].replace('%', '%%')} (full {show(getattr(FULL, f.name))}, smoke "
                               f"{show(getattr(SMOKE, f.name))})")
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
    base = SMOKE if args.smoke else FULL
    profile = base.replace(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Profile)})
    cells = args.cells if args.cells is not None else (list(SMOKE_CELLS) if args.smoke else None)
    return Settings(
        config_path=config, out=args.out, work_dir=args.work_dir or args.out, runs=args.runs, cells=cells,
        profile=profile, time_budget_s=args.time_budget_s, server_timeout_s=args.server_timeout_s,
        replay_timeout_s=args.replay_timeout_s, warm_system_prompts=not args.no_warm_system_prompts,
        keep_pressure_modes=args.keep_pressure_modes, server_args=dict(args.server_arg), smoke=args.smoke,
        dry_run=args.dry_run, prime_server=args.prime_server,
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
    except (ValueError, FileNotFoundError) as exc:  # ConfigError, profile, pools, model dir, cells
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
