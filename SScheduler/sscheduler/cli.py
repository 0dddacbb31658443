"""`sscheduler` command line.

    sscheduler replay --trace FILE --base-url URL [--concurrency N] [--json]
                      [--model NAME] [--target context_forge|sglang|openai] [--api-key KEY]
                      [--no-progress] [--timeout SECONDS]

Exit status: 0 done; 1 the replay failed (a request or the server); 2 bad arguments or trace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence

import openai

from context_forge.trace.reader import load_trace
from context_forge.trace.records import TraceError
from sscheduler.calls import describe_error
from sscheduler.errors import SSchedulerError
from sscheduler.replay import replay_trace
from sscheduler.targets import target_names

_LABELS = {
    "requests": "requests",
    "makespan_s": "makespan (s)",
    "mean_latency_s": "mean latency (s)",
    "p50_latency_s": "p50 latency (s)",
    "p99_latency_s": "p99 latency (s)",
    "mean_ttft_s": "mean TTFT (s)",
    "prompt_tokens": "prompt tokens",
    "cached_tokens": "cached tokens",
    "completion_tokens": "completion tokens",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sscheduler", description="Multi-agent workflow client for Context Forge.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    rp = sub.add_parser("replay", help="replay a workload trace against a server and report latency")
    rp.add_argument("--trace", required=True, metavar="FILE", help="workload trace (JSON Lines)")
    rp.add_argument("--base-url", required=True, metavar="URL",
                    help="server, e.g. http://127.0.0.1:30000 (/v1 optional)")
    rp.add_argument("--concurrency", type=_positive_int, default=None, metavar="N",
                    help="at most N requests in flight (default: no limit)")
    rp.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    rp.add_argument("--model", default=None, help="model name (default: the first on /v1/models)")
    rp.add_argument("--target", choices=target_names(), default="context_forge",
                    help="what workflow metadata to send (default: context_forge)")
    rp.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.add_argument("--timeout", type=_positive_float, default=3600.0, metavar="SECONDS",
                    help="per-request timeout (default: 3600)")
    return parser


def _replay(args: argparse.Namespace) -> int:
    try:
        trace = load_trace(args.trace)
    except (OSError, TraceError) as exc:
        print(f"error: cannot load trace {args.trace}: {exc}", file=sys.stderr)
        return 2
    if not trace.requests:
        print(f"error: trace {args.trace} has no requests", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(replay_trace(
            trace, args.base_url, model=args.model, api_key=args.api_key, target=args.target,
            concurrency=args.concurrency, progress=False if args.no_progress else None, timeout_s=args.timeout,
        ))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SSchedulerError as exc:
        print(f"error: replay of {args.trace} against {args.base_url} failed: {exc}", file=sys.stderr)
        return 1
    except openai.APIError as exc:
        print(f"error: replay of {args.trace} against {args.base_url} failed: {describe_error(exc)}", file=sys.stderr)
        return 1
    summary = result.summary().to_dict()
    if args.json:
        print(json.dumps(summary))
    else:
        width = max(len(v) for v in _LABELS.values())
        for key, label in _LABELS.items():
            value = summary[key]
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            print(f"{label:<{width}}  {shown}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.command == "replay":
        return _replay(args)
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
