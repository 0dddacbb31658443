"""Cost of the radix cache's hot operations at 10^4, 10^5 and 10^6 cached tokens, and of re-ranking
after a workflow event with 10,000 live workflow instances.

    python benchmarks/cache_ops.py [--sizes 10000,100000,1000000] [--page-sizes 16,1]
        [--policies lru,kvflow,pbkv] [--instances 10000] [--rerank-steps 500] [--out DIR]

Policies come from the registry (``serving_policies()`` by default: every policy that can serve;
``--policies`` takes any registered name whose policy needs no next-use oracle) and are built as
the engine builds them, ``build_policy(name, PolicyContext(workflows, evict_pri_level=4))`` over a
real ``LiveWorkflows``.

**Tree operations.** For each page size, tree size and policy, a device-only ``RadixCache`` is
filled with agent-shaped prompts: 64 conversations of 16 registered repeat workflows (4 of 8
agents each), each a 1,024-token system prompt plus a history that every request extends by
16..128 tokens and then ends with its own 16..96-token input (so each request splits the
previous tail and adds a node). Then, timed:

- ``match``: longest-prefix lookup of a cached prompt (touches and re-queues its path);
- ``insert``: caching the next request of a conversation as the engine does (match, allocate
  pages for the uncached rest, insert);
- ``evict``: ``evict_device(1000)`` (1,000 pages; a quarter of the tree when it is smaller) on
  the full tree (refilled, untimed, before each run), priorities unchanged;
- ``evict after event``: a workflow event (an agent runs, so several agents' priorities
  change), then the same eviction: includes re-ranking the changed agents' nodes.

**Re-rank after an event** (``--instances``, default 10,000; page size 16). 10,000 live instances
of four declared templates (a 5-agent chain, a planner -> 3 workers -> reducer -> critic fan-out,
a 3-agent chain and a 4-agent repeat loop of 2-4 rounds; 13 agent names shared across
templates) are registered in ``LiveWorkflows`` and advanced, interleaved, to a random step
part-way through: every request reports ``on_request`` / ``on_request_finished`` and caches its
prompt (shared 64-token preamble + 128-token ``sys/<agent>`` + the instance's 16-token task + its
history, 16 tokens per earlier step + a 16-token input) tagged with its scoped key, so nodes carry
scoped and cross-instance (bare agent) tags and the recurrence clock has learned every agent.
Then ``--rerank-steps`` times, a random live instance runs its next agent; timed, each followed
by the same small eviction ``evict_device(--rerank-pages)`` (8 pages), which drains the policy's
change feed and re-queues the affected nodes before picking victims:

- ``agent starts``: ``on_request(instance, agent)``, then the eviction (the request's prompt is
  then cached, untimed, as the engine does after admission);
- ``agent finishes``: ``on_request_finished``, then the eviction;
- ``workflow finishes`` (when the instance ran its last step): ``finish`` (which also drops the
  instance's tags from the cache through the finish listener), then the eviction;
- ``workflow registered``: a new instance replaces it (``register``), then the eviction;
- ``bare evict``: the same eviction with no event since the last one (after the insert).

The "re-rank" cost of an event is its row minus ``bare evict``. The heap compaction that
``RadixCache._refresh`` runs when stale heap entries pile up (entries > 4 x nodes + 4,096) is a
rare full re-rank; its cost on the same tree is reported separately (one rebuild, as
``_refresh`` does it), with the number of steps in which it ran. ``--profile`` prints a cProfile
summary of the re-rank loop. Target (issue): re-rank after an event in under 1 ms median with
10,000 live instances on this 2-core machine.

``match`` and ``insert`` are medians of at least 50 calls; evictions report the median, 90th
percentile and maximum of ``--repeat`` runs (tree operations) or of every step (re-rank). Cyclic
GC is off inside timed sections (see ``no_gc``). Target (issue 2): evicting 1,000 pages from a
10^6-token tree in under 5 ms. Writes ``cache_ops.{md,json}`` under ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from context_forge.cache import PagePool, PolicyContext, RadixCache, build_policy, policy_class, serving_policies
from context_forge.workflow.graph import AgentSpec, WorkflowGraph
from context_forge.workflow.live import LiveWorkflows
from context_forge.workflow.scope import scope_key
from policy_sweep import machine_info

AGENTS = ("planner", "researcher", "coder", "tester", "writer", "reviewer", "analyst", "designer")
SYSTEM_TOKENS = 1024
EVICT_PAGES = 1000
EVICT_PRI_LEVEL = 4


class Bench:
    """One filled cache plus the workflow state that ranks it."""

    def __init__(self, size: int, page_size: int, policy: str, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.ps = page_size
        self.workflows = LiveWorkflows()
        self._register_workflows(16)
        pol = build_policy(policy, PolicyContext(workflows=self.workflows, evict_pri_level=EVICT_PRI_LEVEL))
        extra = 4 * (EVICT_PAGES + 2048 // page_size) * 8
        self.cache = RadixCache(page_size, PagePool(size // page_size + extra, "device"), None, pol)
        self.systems = {a: self._tokens(SYSTEM_TOKENS) for a in AGENTS}
        wids = sorted(self.order)
        self.convs = []
        for i in range(64):
            wid = wids[i % len(wids)]
            self.convs.append((wid, self.rng.choice(self.order[wid]), list[int]()))
        self.prompts: list[tuple[str, list[int]]] = []
        self.size = size
        self.refill()

    def _tokens(self, n: int) -> list[int]:
        return self.rng.choices(range(32000), k=n)

    def next_prompt(self) -> tuple[str, list[int]]:
        """The next request of a random conversation (its history grows first)."""
        wid, agent, history = self.rng.choice(self.convs)
        history.extend(self._tokens(self.rng.randint(16, 128)))
        tokens = self.systems[agent] + history + self._tokens(self.rng.randint(16, 96))
        return scope_key(wid, agent), tokens

    def refill(self) -> None:
        """Cache new requests' prompts until the tree holds ``size`` tokens again."""
        while self.cache.device_cached_pages * self.ps < self.size:
            self.add(*self.next_prompt())

    def _register_workflows(self, n: int) -> None:
        for w in range(n):
            order = self.rng.sample(AGENTS, 4)
            specs = [AgentSpec(a, (order[i - 1],) if i else ()) for i, a in enumerate(order)]
            wid = f"wf-{w}"
            self.workflows.register(wid, WorkflowGraph(specs, repeat=True))
            for a in order[: self.rng.randint(0, 3)]:
                self.workflows.on_request(wid, a)
                self.workflows.on_request_finished(wid, a)
        self.order = {f"wf-{w}": self.workflows.tracker.graph_of(f"wf-{w}").order for w in range(n)}
        self.pos = {w: 0 for w in self.order}

    def add(self, agent: str, tokens: list[int]) -> None:
        """Cache a request's prompt as the engine does: reuse the cached prefix's pages, allocate
        pages for the rest (evicting if needed), insert."""
        cache = self.cache
        n = len(tokens) // self.ps
        m = cache.match(tokens, agent_id=agent)
        cache.lock(m.last_node)
        new = cache.alloc_device(n - len(m.device_pages))
        if new is None:
            raise RuntimeError(f"no room for {n - len(m.device_pages)} pages")
        pages = m.device_pages + new
        res = cache.insert(tokens[: n * self.ps], pages, agent)
        cache.unlock(m.last_node)
        cache.device_pool.free(res.redundant(pages))
        self.prompts.append((agent, tokens))

    def workflow_event(self) -> None:
        """The next agent of one workflow runs to completion: priorities change."""
        wid = self.rng.choice(sorted(self.order))
        agent = self.order[wid][self.pos[wid] % len(self.order[wid])]
        self.pos[wid] += 1
        self.workflows.on_request(wid, agent)
        self.workflows.on_request_finished(wid, agent)


class no_gc:
    """Cyclic GC off inside a timed call, as ``timeit`` does (a pending collection runs first,
    untimed): the figures are the operations' own cost, not whole-process GC pauses."""

    def __enter__(self) -> None:
        gc.collect()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        gc.enable()


def timed(fn: Callable[[], Any], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        with no_gc():
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def measure(size: int, page_size: int, policy: str, repeat: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    b = Bench(size, page_size, policy)
    build_s = time.perf_counter() - t0
    cache = b.cache
    out: dict[str, Any] = {"cached_tokens": cache.device_cached_pages * page_size, "nodes": cache.num_nodes,
                           "page_size": page_size, "policy": policy, "build_s": round(build_s, 2)}

    def do_match() -> None:
        agent, tokens = b.rng.choice(b.prompts)
        cache.match(tokens, agent_id=agent)

    def insert_samples() -> float:
        samples = []
        for _ in range(max(repeat, 50)):
            agent, tokens = b.next_prompt()
            with no_gc():
                t1 = time.perf_counter()
                b.add(agent, tokens)
                samples.append(time.perf_counter() - t1)
        return statistics.median(samples)

    pages = min(EVICT_PAGES, cache.device_cached_pages // 4)
    out["evict_pages"] = pages

    def evict_samples(event: bool) -> list[float]:
        samples = []
        for _ in range(repeat):
            b.refill()
            with no_gc():
                if event:
                    b.workflow_event()
                t1 = time.perf_counter()
                freed = cache.evict_device(pages)
                samples.append(time.perf_counter() - t1)
            assert freed >= pages, f"evicted only {freed} of {pages} pages"
        return samples

    out["match_us"] = round(1e6 * timed(do_match, max(repeat, 50)), 1)
    out["insert_us"] = round(1e6 * insert_samples(), 1)
    for name, event in (("evict", False), ("evict_after_event", True)):
        ms = sorted(1e3 * x for x in evict_samples(event))
        out[f"{name}_ms"] = {"median": round(statistics.median(ms), 3),
                             "p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 3), "max": round(ms[-1], 3)}
    cache.check()
    return out


def _chain(names: list[str], repeat: bool = False) -> WorkflowGraph:
    return WorkflowGraph([AgentSpec(a, (names[i - 1],) if i else ()) for i, a in enumerate(names)], repeat=repeat)


TEMPLATES = {
    "chain": _chain(["planner", "researcher", "coder", "tester", "writer"]),
    "fanout": WorkflowGraph([AgentSpec("planner"), AgentSpec("worker-a", ("planner",)),
                             AgentSpec("worker-b", ("planner",)), AgentSpec("worker-c", ("planner",)),
                             AgentSpec("reducer", ("worker-a", "worker-b", "worker-c")),
                             AgentSpec("critic", ("reducer",))]),
    "review": _chain(["coder", "tester", "reviewer"]),
    "loop": _chain(["planner", "executor", "expresser", "reviewer"], repeat=True),
}
"""Declared templates of the re-rank case; agent names are shared across templates."""
RERANK_PAGE_SIZE = 16
RERANK_EVENTS = ("agent_starts", "agent_finishes", "workflow_finishes", "workflow_registered", "bare_evict")


class _Instance:
    __slots__ = ("id", "graph", "order", "pos", "steps", "task", "history")

    def __init__(self, instance_id: str, graph: WorkflowGraph, rng: random.Random, task: list[int]) -> None:
        self.id, self.graph, self.order, self.pos = instance_id, graph, graph.order, 0
        self.steps = len(graph.order) * (rng.randint(2, 4) if graph.repeat else 1)
        self.task, self.history = task, list[int]()

    @property
    def agent(self) -> str:
        return self.order[self.pos % len(self.order)]


class RerankBench:
    """``instances`` live declared workflow instances with cached prompts, each part-way through."""

    def __init__(self, instances: int, policy: str, seed: int = 0, page_size: int = RERANK_PAGE_SIZE) -> None:
        self.rng = random.Random(seed)
        self.ps = page_size
        self.workflows = LiveWorkflows()
        pol = build_policy(policy, PolicyContext(workflows=self.workflows, evict_pri_level=EVICT_PRI_LEVEL))
        # Room for the whole tree: the timed evictions are the only ones.
        pages = instances * 40 + 4096
        self.cache = RadixCache(page_size, PagePool(pages, "device"), None, pol)
        self.workflows.add_finish_listener(self.cache.forget_workflow)
        self.preamble = self._tokens(64)
        agents = sorted({a for g in TEMPLATES.values() for a in g.order})
        self.systems = {a: self._tokens(128) for a in agents}
        self._next_id = 0
        self.live: list[_Instance] = [self.new_instance() for _ in range(instances)]
        todo = [k for k, inst in enumerate(self.live) for _ in range(self.rng.randint(1, inst.steps - 1))]
        self.rng.shuffle(todo)
        for k in todo:
            inst = self.live[k]
            self.workflows.on_request(inst.id, inst.agent)
            self.cache_prompt(inst)
            self.workflows.on_request_finished(inst.id, inst.agent)
            self.advance(inst)

    def _tokens(self, n: int) -> list[int]:
        return self.rng.choices(range(32000), k=n)

    def new_instance(self) -> _Instance:
        name = self.rng.choice(sorted(TEMPLATES))
        inst = _Instance(f"{name}-{self._next_id}", TEMPLATES[name], self.rng, self._tokens(16))
        self._next_id += 1
        self.workflows.register(inst.id, inst.graph)
        return inst

    def cache_prompt(self, inst: _Instance) -> None:
        """The request's prompt joins the cache as the engine caches it (match, allocate, insert)."""
        cache, ps = self.cache, self.ps
        tag = scope_key(inst.id, inst.agent)
        tokens = self.preamble + self.systems[inst.agent] + inst.task + inst.history + self._tokens(16)
        n = len(tokens) // ps
        m = cache.match(tokens, agent_id=tag)
        cache.lock(m.last_node)
        new = cache.alloc_device(n - len(m.device_pages))
        if new is None:
            raise RuntimeError("re-rank bench: device pool too small")
        pages = m.device_pages + new
        res = cache.insert(tokens[: n * ps], pages, tag)
        cache.unlock(m.last_node)
        cache.device_pool.free(res.redundant(pages))

    def advance(self, inst: _Instance) -> None:
        inst.history.extend(self._tokens(16))
        inst.pos += 1

    def compactions_due(self) -> bool:
        """Whether the next ``_refresh`` rebuilds the heaps (``RadixCache._refresh``'s condition)."""
        c = self.cache
        return len(c._dev_heap) + len(c._host_heap) > 4 * c.num_nodes + 4096

    def rebuild_heaps(self) -> None:
        """What ``RadixCache._refresh`` does when it compacts: re-queue every node from scratch."""
        c = self.cache
        c._dev_heap, c._host_heap = [], []
        for node in c.nodes():
            node.queued = None
            c._push(node)


def measure_rerank(instances: int, policy: str, steps: int, pages: int, profile: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    b = RerankBench(instances, policy)
    build_s = time.perf_counter() - t0
    cache, wf = b.cache, b.workflows
    cache.evict_device(1)  # drain what the build left queued
    heap_start = len(cache._dev_heap) + len(cache._host_heap)
    gc.collect()
    gc.freeze()  # the built tree is long-lived: later collections (untimed) only scan new objects
    samples: dict[str, list[float]] = {k: [] for k in RERANK_EVENTS}
    compactions = 0
    clock = time.perf_counter
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    try:
        for _ in range(steps):
            k = b.rng.randrange(len(b.live))
            inst = b.live[k]
            agent = inst.agent
            with no_gc():
                compactions += b.compactions_due()
                t = clock()
                wf.on_request(inst.id, agent)
                cache.evict_device(pages)
                samples["agent_starts"].append(clock() - t)
                b.cache_prompt(inst)
                compactions += b.compactions_due()
                t = clock()
                cache.evict_device(pages)
                samples["bare_evict"].append(clock() - t)
                compactions += b.compactions_due()
                t = clock()
                wf.on_request_finished(inst.id, agent)
                cache.evict_device(pages)
                samples["agent_finishes"].append(clock() - t)
                b.advance(inst)
                if inst.pos >= inst.steps:
                    compactions += b.compactions_due()
                    t = clock()
                    wf.finish(inst.id)
                    cache.evict_device(pages)
                    samples["workflow_finishes"].append(clock() - t)
                    name = b.rng.choice(sorted(TEMPLATES))
                    new = _Instance(f"{name}-{b._next_id}", TEMPLATES[name], b.rng, b._tokens(16))
                    b._next_id += 1
                    compactions += b.compactions_due()
                    t = clock()
                    wf.register(new.id, new.graph)
                    cache.evict_device(pages)
                    samples["workflow_registered"].append(clock() - t)
                    b.live[k] = new
    finally:
        if prof is not None:
            import pstats
            prof.disable()
            print(f"--- cProfile of the re-rank loop ({policy}) ---", file=sys.stderr)
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    heap_end = len(cache._dev_heap) + len(cache._host_heap)
    nodes_end = cache.num_nodes
    rebuild = []
    for _ in range(3):
        with no_gc():
            t = clock()
            b.rebuild_heaps()
            rebuild.append(clock() - t)
    cache.check()
    out: dict[str, Any] = {"policy": policy, "instances": instances, "live": len(wf.tracker), "page_size": b.ps,
                           "nodes": nodes_end, "cached_tokens": cache.device_cached_pages * b.ps,
                           "tagged_keys": len(cache._agent_nodes), "build_s": round(build_s, 2), "steps": steps,
                           "evict_pages": pages, "heap_compactions": compactions,
                           "heap_entries": [heap_start, heap_end], "heap_entries_limit": 4 * nodes_end + 4096,
                           "heap_rebuild_ms": round(1e3 * statistics.median(rebuild), 2)}
    for name, xs in samples.items():
        out[f"{name}_ms"] = _summary(xs) if xs else None
    del b, cache, wf
    gc.unfreeze()
    gc.collect()
    return out


def _summary(seconds: list[float]) -> dict[str, float | int]:
    ms = sorted(1e3 * x for x in seconds)
    return {"n": len(ms), "median": round(statistics.median(ms), 3),
            "p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 3), "max": round(ms[-1], 3)}


def render(meta: dict[str, Any], rows: list[dict[str, Any]], rerank: list[dict[str, Any]]) -> str:
    lines = ["# Radix cache operation cost", "", f"- command: `{meta['command']}`",
             f"- date: {meta['date']}, commit {meta['commit'] or '?'}",
             (f"- machine: {meta['platform']}, {meta['cpu']}, {meta['cpu_count']} cores, Python {meta['python']}; "
             f"load average at start {meta['load_average_at_start']}, at the end {meta.get('load_average_at_end', '?')} "
             "(the machine is shared with other jobs)"),
             f"- wall time of the whole run: {meta.get('wall_s', '?')} s",
             (f"- policies built through the registry: `build_policy(name, PolicyContext(workflows, "
              f"evict_pri_level={EVICT_PRI_LEVEL}))` over a real LiveWorkflows; kvflow and pbkv rank nodes tagged with "
              "workflow-scoped agent keys, as the engine does"),
             "- timed with cyclic GC off (as timeit does; a pending collection runs first, untimed)", ""]

    def ms(d: dict[str, float] | None) -> str:
        return "-" if d is None else f"{d['median']:.3f} / {d['p90']:.3f} / {d['max']:.3f}"

    if rows:
        lines += ["## Tree operations", "",
                  ("- device-only RadixCache over 16 registered repeat workflows of 4 agents (8 agents in all), "
                   "64 conversations"),
                  f"- target: evict {EVICT_PAGES} pages from a 10^6-token tree in under 5 ms", "",
                  ("| page size | policy | cached tokens | nodes | match (us) | insert (us) | "
                   "pages evicted | evict (ms) median / p90 / max | event + evict (ms) median / p90 / max |"),
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['page_size']} | {r['policy']} | {r['cached_tokens']:,} | {r['nodes']:,} | "
                         f"{r['match_us']:.1f} | {r['insert_us']:.1f} | {r['evict_pages']} | {ms(r['evict_ms'])} | "
                         f"{ms(r['evict_after_event_ms'])} |")
        lines.append("")
    if rerank:
        r0 = rerank[0]
        lines += ["## Re-rank after a workflow event, many live instances", "",
                  (f"- {r0['instances']:,} live instances of 4 declared templates ({', '.join(TEMPLATES)}; agent names "
                   "shared across templates), each advanced to a random step, every request's prompt cached with its "
                   f"scoped tag; page size {r0['page_size']}; then {r0['steps']} steps, each a random live instance "
                   "running its next agent"),
                  (f"- each timed cell: the event, then `evict_device({r0['evict_pages']})` (drains the policy's change "
                   "feed, re-queues the changed keys' nodes, pops victims); `bare evict`: the same eviction with no "
                   "event since the last one; re-rank cost of an event = its row minus bare evict"),
                  ("- `workflow finishes` includes `cache.forget_workflow` (finish listener); `workflow registered` is a "
                   "new instance replacing the finished one"),
                  ("- heap rebuild: one full re-queue of every node, which `RadixCache._refresh` runs when heap entries "
                   "exceed 4 x nodes + 4,096 (rebuilds during the steps: column `rebuilds`)"),
                  ("- heap entries (device + host heaps) at the first and last step, against the compaction limit: "
                   + "; ".join(f"{r['policy']} {r['heap_entries'][0]:,} -> {r['heap_entries'][1]:,} of "
                               f"{r['heap_entries_limit']:,}" for r in rerank)),
                  "- target: re-rank after an event in under 1 ms median with 10,000 live instances", "",
                  ("| policy | live | nodes | cached tokens | agent starts + evict | agent finishes + evict | "
                   "workflow finishes + evict | workflow registered + evict | bare evict | rebuilds | heap rebuild (ms) | "
                   "target met |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in rerank:
            events = [r[f"{k}_ms"] for k in RERANK_EVENTS[:-1]]
            met = ("n/a (< 10,000 instances)" if r["instances"] < 10000 else
                   "yes" if all(e is None or e["median"] < 1.0 for e in events) else "**no**")
            lines.append(f"| {r['policy']} | {r['live']:,} | {r['nodes']:,} | {r['cached_tokens']:,} | "
                         + " | ".join(ms(e) for e in events) + f" | {ms(r['bare_evict_ms'])} | {r['heap_compactions']} | "
                         f"{r['heap_rebuild_ms']:.1f} | {met} |")
        lines += ["", "Cells: milliseconds, median / p90 / max over the steps (sample counts in cache_ops.json).", ""]
    return "\n".join(lines)


def _policies(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    for n in names:
        if policy_class(n).needs_oracle:  # unknown names raise, listing the registered ones
            raise SystemExit(f"cache_ops: policy {n!r} needs a next-use oracle (simulator only); "
                             f"choose from {', '.join(serving_policies())}")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="cached tokens of the tree-operation cases ('' skips them)")
    ap.add_argument("--page-sizes", default="16,1")
    ap.add_argument("--policies", default=",".join(serving_policies()),
                    help="registered policy names (default: every serving policy)")
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--instances", type=int, default=10000, help="live instances of the re-rank case (0 skips it)")
    ap.add_argument("--rerank-steps", type=int, default=500)
    ap.add_argument("--rerank-pages", type=int, default=8, help="pages of the small eviction after each event")
    ap.add_argument("--profile", action="store_true", help="print a cProfile summary of each re-rank loop")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    try:
        policies = _policies(args.policies)
    except ValueError as exc:
        ap.error(str(exc))
    meta = machine_info(["python", "benchmarks/cache_ops.py", *(argv if argv is not None else sys.argv[1:])])
    t0 = time.perf_counter()
    rows = []
    sizes = [int(x) for x in args.sizes.split(",") if x]
    for ps in (int(x) for x in args.page_sizes.split(",") if x):
        for size in sizes:
            for policy in policies:
                row = measure(size, ps, policy, args.repeat)
                rows.append(row)
                print(json.dumps(row), flush=True)
    rerank = []
    if args.instances > 0:
        for policy in policies:
            row = measure_rerank(args.instances, policy, args.rerank_steps, args.rerank_pages, args.profile)
            rerank.append(row)
            print(json.dumps(row), flush=True)
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache_ops.json").write_text(json.dumps({"meta": meta, "rows": rows, "rerank": rerank}, indent=1))
    (out / "cache_ops.md").write_text(render(meta, rows, rerank))
    print(render(meta, rows, rerank))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
