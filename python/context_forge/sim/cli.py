"""``context-forge-sim``: replay a workload trace through the cache core under one eviction policy.

    context-forge-sim --trace FILE --policy NAME --device-tokens N --host-tokens M
                      [--page-size P] [--load-ahead-step K] [--cost-model FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from context_forge.cache import available_policies

from .cost_model import CostModel
from .simulator import SimConfig, SimError, simulate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="context-forge-sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--trace", required=True, help="workload trace (JSON Lines, shared trace format v1)")
    p.add_argument("--policy", required=True, help=f"eviction policy: {', '.join(available_policies())}")
    p.add_argument("--device-tokens", type=int, required=True, help="device KV capacity in tokens")
    p.add_argument("--host-tokens", type=int, required=True, help="host KV capacity in tokens (0: no host tier)")
    p.add_argument("--page-size", type=int, default=16, help="tokens per KV page (default 16)")
    p.add_argument("--load-ahead-step", type=int, default=2,
                   help="prefetch agents due within this many steps (kvflow/pbkv; 0 disables; default 2)")
    p.add_argument("--evict-pri-level", type=int, default=4, help="steps beyond this rank alike (default 4)")
    p.add_argument("--blend-weight", type=float, default=0.6, help="pbkv weight of the declared graph (default 0.6)")
    p.add_argument("--write-policy", default="write_back",
                   choices=["write_back", "write_through", "write_through_selective"])
    p.add_argument("--chunked-prefill-size", type=int, default=8192, help="prefill tokens per step (default 8192)")
    p.add_argument("--cost-model", help="JSON/YAML file overriding cost model fields")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from context_forge.trace.reader import load_trace

    try:
        if args.policy not in available_policies():
            raise ValueError(f"unknown policy {args.policy!r}; available: {', '.join(available_policies())}")
        cost = CostModel.from_file(args.cost_model) if args.cost_model else CostModel()
        trace = load_trace(args.trace)
        cfg = SimConfig(policy=args.policy, device_tokens=args.device_tokens, host_tokens=args.host_tokens,
                        page_size=args.page_size, load_ahead_step=args.load_ahead_step,
                        evict_pri_level=args.evict_pri_level, blend_weight=args.blend_weight,
                        write_policy=args.write_policy, chunked_prefill_size=args.chunked_prefill_size)
        result = simulate(trace, cfg, cost)
    except (OSError, ValueError, SimError) as exc:
        print(f"context-forge-sim: error: {exc}", file=sys.stderr)
        return 2
    d = result.to_dict()
    if args.json:
        print(json.dumps(d))
    else:
        width = max(len(k) for k in d)
        for k, v in d.items():
            print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
