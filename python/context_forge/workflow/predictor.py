"""Next-agent prediction for dynamic workflows: a smoothed second-order Markov chain learned online."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from context_forge.workflow.errors import WorkflowError

__all__ = ["MarkovPredictor", "PredictorFormatError"]

_START = -1
"""Index of the start-of-workflow marker: a fresh workflow's context is (_START, _START)."""

_Ctx = tuple[int, int]

EVIDENCE_CLASSES = 4
"""Contexts are scored for `MarkovPredictor.trust` by how often they were seen: 0, 1, 2, 3 or more."""

TRUST_PRIOR = 2.0
"""Pseudo-observations of a perfectly calibrated prediction that every evidence class starts with,
so that a class's first few outcomes move its trust only a little."""


class PredictorFormatError(WorkflowError):
    """A saved counts file is malformed; the message names the line and the field."""


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise WorkflowError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _check_count(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise WorkflowError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


class MarkovPredictor:
    """Second-order Markov chain over each workflow's agent sequence, shared by all workflows.

    Every workflow's sequence starts with two start markers, so the first agents are predicted
    from what workflows usually begin with. Counts: c(a,b,x) for x following context (a, b),
    c(b,x) for x following b, c(x) for x overall; c(a,b), c(b), N are their totals. With
    smoothing constant alpha and vocabulary V (agents seen so far), the blend is

        P0(x)     = (c(x)     + alpha)                / (N      + alpha*|V|)
        P1(x|b)   = (c(b,x)   + alpha*|V| * P0(x))    / (c(b)   + alpha*|V|)
        P2(x|a,b) = (c(a,b,x) + alpha*|V| * P1(x|b))  / (c(a,b) + alpha*|V|)

    i.e. additive smoothing with alpha pseudo-counts per agent (alpha*|V| in all), spread along
    the next lower order instead of uniformly; P0 is plain add-alpha (Laplace) smoothing. An unseen
    context backs off entirely (c = 0 gives the lower order). Predictions use P2.

    Multi-step queries propagate the chain over the contexts that carry probability mass. Each
    context's distribution splits into a sparse part (observed second- and first-order successors)
    and a lumped remainder r * P0; lumped mass continues as a unigram "background" (every further
    call drawn from P0). Contexts holding at least `min_context_mass` stay second-order; lighter
    ones are merged by their last agent into at most |V| merged states (see `_merged`), and merged
    states below `prune` join the background. So a step costs the observed successors
    of at most 1/min_context_mass contexts plus the first-order rows, never |V|^2 contexts.
    Step marginals p_t(x) (t = 0 is the next call) follow; first-call probabilities treat calls as
    independent: P(first call at t) = p_t(x) * prod_{s<t} (1 - p_s(x)), exact for deterministic
    sequences.

    Trust: before counting a call, the prediction made for it is scored in the evidence class of
    its context (how often that context was seen, `EVIDENCE_CLASSES`): the probability given to the
    agent that came against the probability a calibrated model expects to give it, ``sum_x P(x)^2``.
    `trust` is their ratio (at most 1) for a workflow's current context. Counts alone say nothing
    of how a backed-off guess fares: on a hidden second-order chain (``tickets`` defaults, 20 %
    pool), the prefetch planner's guesses from a context never seen before came true 0 of 12 times
    although they gave p >= 0.6; on a first-order chain they are as good as any other. Trust
    learns which, online.
    """

    def __init__(
        self, smoothing: float = 0.1, min_context_mass: float = 0.05, prune: float = 1e-4
    ) -> None:
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not (
            0 < smoothing < math.inf
        ):
            raise WorkflowError(f"smoothing must be a positive finite number, got {smoothing!r}")
        if not isinstance(prune, (int, float)) or not (0 <= prune < 1):
            raise WorkflowError(f"prune must be in [0, 1), got {prune!r}")
        if not isinstance(min_context_mass, (int, float)) or not (0 <= min_context_mass <= 1):
            raise WorkflowError(f"min_context_mass must be in [0, 1], got {min_context_mass!r}")
        self.smoothing = float(smoothing)
        self.prune = float(prune)
        self.min_context_mass = float(min_context_mass)
        self._vocab: list[str] = []
        self._index: dict[str, int] = {}
        self._c2: dict[_Ctx, dict[int, int]] = {}
        self._n2: dict[_Ctx, int] = {}
        self._c1: dict[int, dict[int, int]] = {}
        self._n1: dict[int, int] = {}
        self._c0: list[int] = []
        self._n0 = 0
        self._context: dict[str, _Ctx] = {}
        self._trans: dict[_Ctx, tuple[tuple[tuple[int, float], ...], float]] = {}
        self._trans_by_last: dict[int, set[_Ctx]] = {}
        self._trans1: dict[int, tuple[tuple[tuple[int, float], ...], float]] = {}
        self._contexts_ending: dict[int, int] = {}
        self._p0: np.ndarray | None = None
        self._tables: dict[tuple[_Ctx, int], tuple[np.ndarray, np.ndarray]] = {}
        self._p0_sq: float | None = None
        self._scored_hit = [0.0] * EVIDENCE_CLASSES
        self._scored_expected = [0.0] * EVIDENCE_CLASSES

    # ---- learning ------------------------------------------------------------------------

    def observe(self, workflow_id: str, agent_id: str, score: bool = True) -> None:
        """The workflow called `agent_id` next: count it and advance the workflow's context.

        With ``score`` the prediction for this call is scored first (`trust`); callers pass False
        for calls nobody predicts from this model (a declared graph's, whose parallel branches
        interleave in any order). A workflow's first call is never scored: nothing is planned
        for a workflow before its first request."""
        _check_id(workflow_id, "workflow_id")
        _check_id(agent_id, "agent_id")
        ctx = self._context.get(workflow_id, (_START, _START))
        if score and self._vocab and ctx != (_START, _START):
            self._score(ctx, self._index.get(agent_id))
        self._context[workflow_id] = (ctx[1], self._add(ctx, self._intern(agent_id), 1))

    def observe_sequence(self, agent_ids: Sequence[str]) -> None:
        """Learn one whole workflow run without keeping its context."""
        ctx: _Ctx = (_START, _START)
        for agent_id in agent_ids:
            ctx = (ctx[1], self._add(ctx, self._intern(_check_id(agent_id, "agent_id")), 1))

    def forget(self, workflow_id: str) -> None:
        """Drop the workflow's context (the learned counts stay)."""
        self._context.pop(workflow_id, None)

    def _intern(self, agent_id: str) -> int:
        idx = self._index.get(agent_id)
        if idx is None:
            idx = self._index[agent_id] = len(self._vocab)
            self._vocab.append(agent_id)
            self._c0.append(0)
            self._trans.clear()
            self._trans_by_last.clear()
            self._trans1.clear()
        return idx

    def _add(self, ctx: _Ctx, x: int, count: int) -> int:
        row = self._c2.get(ctx)
        if row is None:
            row = self._c2[ctx] = {}
            self._contexts_ending[ctx[1]] = self._contexts_ending.get(ctx[1], 0) + 1
        row[x] = row.get(x, 0) + count
        self._n2[ctx] = self._n2.get(ctx, 0) + count
        b = ctx[1]
        row1 = self._c1.setdefault(b, {})
        row1[x] = row1.get(x, 0) + count
        self._n1[b] = self._n1.get(b, 0) + count
        self._c0[x] += count
        self._n0 += count
        for stale in self._trans_by_last.pop(b, ()):
            self._trans.pop(stale, None)
        self._trans1.pop(b, None)
        self._p0 = None
        self._p0_sq = None
        self._tables.clear()
        return x

    def _evidence(self, ctx: _Ctx) -> int:
        return min(self._n2.get(ctx, 0), EVIDENCE_CLASSES - 1)

    def _score(self, ctx: _Ctx, x: int | None) -> None:
        """Add P(x | ctx) and sum_y P(y | ctx)^2 to ctx's evidence class (x None: an agent the
        model did not know, given nothing)."""
        sparse, rest = self._transition(ctx)
        p0 = self._unigram()
        if self._p0_sq is None:
            self._p0_sq = float(p0 @ p0)
        expected = rest * rest * self._p0_sq
        hit = 0.0 if x is None else rest * float(p0[x])
        for y, share in sparse:
            expected += share * share + 2.0 * share * rest * float(p0[y])
            if y == x:
                hit += share
        c = self._evidence(ctx)
        self._scored_hit[c] += hit
        self._scored_expected[c] += expected

    def trust(self, workflow_id: str) -> float:
        """How far predictions from contexts as well seen as the workflow's current one came true,
        in (0, 1]: the probability they gave the agent that came over the probability a
        calibrated model would have given it, from `TRUST_PRIOR` pseudo-observations at 1."""
        c = self._evidence(self._context.get(workflow_id, (_START, _START)))
        return min(1.0, (self._scored_hit[c] + TRUST_PRIOR) / (self._scored_expected[c] + TRUST_PRIOR))

    # ---- single-step queries -------------------------------------------------------------

    @property
    def vocabulary(self) -> tuple[str, ...]:
        """Agents seen so far, in order of first appearance."""
        return tuple(self._vocab)

    def next_distribution(self, workflow_id: str) -> dict[str, float]:
        """P(next agent) over every known agent for the workflow's current context (sums to 1).

        A workflow with no observation yet gets the start-of-workflow distribution; an empty
        dict means nothing has been learned at all.
        """
        return self._distribution(self._context.get(workflow_id, (_START, _START)))

    def distribution_after(self, history: Sequence[str]) -> dict[str, float]:
        """P(next agent) after a workflow called `history` (only its last two agents matter)."""
        ctx: _Ctx = (_START, _START)
        for agent_id in history:
            idx = self._index.get(agent_id)
            if idx is None:
                raise WorkflowError(f"agent {agent_id!r} in history was never observed")
            ctx = (ctx[1], idx)
        return self._distribution(ctx)

    def _distribution(self, ctx: _Ctx) -> dict[str, float]:
        if not self._vocab:
            return {}
        sparse, rest = self._transition(ctx)
        probs = self._unigram() * rest
        for x, p in sparse:
            probs[x] += p
        return dict(zip(self._vocab, probs.tolist()))

    def _unigram(self) -> np.ndarray:
        if self._p0 is None:
            beta = self.smoothing * len(self._vocab)
            counts = np.asarray(self._c0, dtype=np.float64)
            self._p0 = (counts + self.smoothing) / (self._n0 + beta)
        return self._p0

    def _transition(self, ctx: _Ctx) -> tuple[tuple[tuple[int, float], ...], float]:
        """(sparse successors with their probability share, lumped remainder r) for a context:
        P2(x|ctx) = sparse[x] + r * P0(x)."""
        hit = self._trans.get(ctx)
        if hit is not None:
            return hit
        beta = self.smoothing * len(self._vocab)
        n2 = self._n2.get(ctx, 0)
        n1 = self._n1.get(ctx[1], 0)
        w2 = 1.0 / (n2 + beta)
        r2 = beta * w2
        w1 = r2 / (n1 + beta)
        r1 = beta * w1
        sparse: dict[int, float] = {}
        for x, c in self._c1.get(ctx[1], {}).items():
            sparse[x] = w1 * c
        for x, c in self._c2.get(ctx, {}).items():
            sparse[x] = sparse.get(x, 0.0) + w2 * c
        out = (tuple(sparse.items()), r1)
        self._trans[ctx] = out
        self._trans_by_last.setdefault(ctx[1], set()).add(ctx)
        return out

    def _merged(self, b: int) -> tuple[tuple[tuple[int, float], ...], float]:
        """Transition of merged light contexts ending in b, as (sparse successors, lumped r).

        They are treated as one average context (a, b): n = c(b) / (number of contexts ending
        in b) observations whose second-order counts are proportional to the first-order ones, so
        P(x) = (n / (n + B)) * c(b,x) / c(b) + (B / (n + B)) * P1(x|b) with B = alpha*|V|. This
        keeps the sharpness of second-order rows without walking each of them.
        """
        hit = self._trans1.get(b)
        if hit is not None:
            return hit
        beta = self.smoothing * len(self._vocab)
        n1 = self._n1.get(b, 0)
        if n1 == 0:
            out: tuple[tuple[tuple[int, float], ...], float] = ((), 1.0)
        else:
            n = n1 / self._contexts_ending[b]
            r2 = beta / (n + beta)
            w = (1.0 - r2) / n1 + r2 / (n1 + beta)
            out = (tuple((x, w * c) for x, c in self._c1[b].items()), r2 * beta / (n1 + beta))
        self._trans1[b] = out
        return out

    # ---- multi-step queries --------------------------------------------------------------

    def _table(self, workflow_id: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(p, survive): p[t, x] = P(call t is x) for t < steps; survive[t, x] = P(x not called
        in calls 0..t-1), t = 0..steps, under the independence approximation."""
        start = self._context.get(workflow_id, (_START, _START))
        key = (start, steps)
        hit = self._tables.get(key)
        if hit is not None:
            return hit
        vocab_size = len(self._vocab)
        emit_rows: list[list[float]] = []
        background_emit: list[float] = []
        heavy: dict[_Ctx, float] = {start: 1.0}
        thin: dict[int, float] = {}
        background = 0.0
        split, prune = self.min_context_mass, self.prune
        for _ in range(steps):
            row = [0.0] * vocab_size
            lumped = background
            nxt: dict[_Ctx, float] = {}
            for ctx, mass in heavy.items():
                sparse, rest = self._transition(ctx)
                lumped += mass * rest
                b = ctx[1]
                for x, share in sparse:
                    k = (b, x)
                    nxt[k] = nxt.get(k, 0.0) + mass * share
            for b, mass in thin.items():
                sparse, rest = self._merged(b)
                lumped += mass * rest
                for x, share in sparse:
                    k = (b, x)
                    nxt[k] = nxt.get(k, 0.0) + mass * share
            heavy = {}
            thin = {}
            for k, mass in nxt.items():
                x = k[1]
                row[x] += mass
                if mass >= split:
                    heavy[k] = mass
                else:
                    thin[x] = thin.get(x, 0.0) + mass
            for x in [x for x, mass in thin.items() if mass < prune]:
                lumped += thin.pop(x)
            emit_rows.append(row)
            background_emit.append(lumped)
            background = lumped
        p = np.asarray(emit_rows, dtype=np.float64).reshape(steps, vocab_size)
        p += np.outer(background_emit, self._unigram())
        np.clip(p, 0.0, 1.0, out=p)
        survive = np.ones((steps + 1, vocab_size))
        np.cumprod(1.0 - p, axis=0, out=survive[1:])
        out = (p, survive)
        self._tables[key] = out
        return out

    def prob_within(self, workflow_id: str, k: int) -> dict[str, float]:
        """P(agent is called within the workflow's next k calls), for every known agent.

        k = 1 gives `next_distribution` (up to rounding); values never decrease as k grows.
        """
        _check_count(k, "k", 0)
        if k == 0 or not self._vocab:
            return {a: 0.0 for a in self._vocab}
        _, survive = self._table(workflow_id, k)
        return dict(zip(self._vocab, (1.0 - survive[k]).tolist()))

    def expected_steps_all(self, workflow_id: str, horizon: int = 8) -> dict[str, float]:
        """`expected_steps` of every known agent at once (one propagation)."""
        _check_count(horizon, "horizon", 0)
        if not self._vocab:
            return {}
        p, survive = self._table(workflow_id, horizon + 1)
        first = survive[:-1] * p
        steps = np.arange(horizon + 1, dtype=np.float64) @ first + (horizon + 1) * survive[-1]
        return dict(zip(self._vocab, steps.tolist()))

    def reach_steps_all(self, workflow_id: str, horizon: int = 8) -> dict[str, float]:
        """Per known agent, the distance to its next call weighted by how likely it comes:
        ``(E[T | T <= horizon] + 1) / P(T <= horizon) - 1`` for the step ``T`` of its first call
        (0 = the next call). A sure call at step k gives k; a call that comes only with
        probability p counts ``1/p`` times as far (``math.inf`` when it cannot come within
        ``horizon``), so an unlikely agent ranks beyond a likely later one, as a cache needs."""
        _check_count(horizon, "horizon", 0)
        if not self._vocab:
            return {}
        p, survive = self._table(workflow_id, horizon + 1)
        first = survive[:-1] * p
        reach = first.sum(axis=0)
        mean = np.arange(horizon + 1, dtype=np.float64) @ first
        out = {}
        for agent, r, m in zip(self._vocab, reach.tolist(), mean.tolist()):
            out[agent] = math.inf if r <= 1e-12 else (m / r + 1.0) / r - 1.0
        return out

    def expected_steps(self, workflow_id: str, agent_id: str, horizon: int = 8) -> float:
        """Expected number of calls before `agent_id` is called (the next call is step 0),
        truncated at `horizon`: never reaching it counts as horizon + 1, as does an unknown agent."""
        _check_count(horizon, "horizon", 0)
        idx = self._index.get(agent_id)
        if idx is None:
            return float(horizon + 1)
        return self.expected_steps_all(workflow_id, horizon)[agent_id]

    # ---- persistence ---------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the second-order counts as JSON Lines: {"ctx": [a, b], "next": x, "count": n}.

        A start-of-workflow position in `ctx` is null. Lower-order counts are sums of these, so
        they are rebuilt on load; workflow contexts are not saved.
        """
        names = self._vocab
        with open(path, "w", encoding="utf-8") as f:
            for (a, b), row in self._c2.items():
                ctx = [None if a == _START else names[a], None if b == _START else names[b]]
                f.writelines(json.dumps({"ctx": ctx, "next": names[x], "count": count}) + "\n" for x, count in row.items())

    @classmethod
    def load(cls, path: str | Path, **kwargs: float) -> MarkovPredictor:
        """A new predictor (constructor options from `kwargs`) holding the counts of a `save` file."""
        model = cls(**kwargs)
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    ctx, nxt, count = _parse_record(line)
                except (WorkflowError, json.JSONDecodeError) as exc:
                    raise PredictorFormatError(f"{path}:{lineno}: {exc}") from None
                idx = tuple(_START if a is None else model._intern(a) for a in ctx)
                model._add((idx[0], idx[1]), model._intern(nxt), count)
        return model


def _parse_record(line: str) -> tuple[list[str | None], str, int]:
    record = json.loads(line)
    if not isinstance(record, dict):
        raise WorkflowError("each line must be a JSON object")
    for key in ("ctx", "next", "count"):
        if key not in record:
            raise WorkflowError(f"missing field {key!r}")
    ctx = record["ctx"]
    if not isinstance(ctx, list) or len(ctx) != 2:
        raise WorkflowError(f"field 'ctx' must be a list of two agent ids or nulls, got {ctx!r}")
    if ctx[0] is not None:
        _check_id(ctx[0], "field 'ctx'[0]")
    if ctx[1] is None:
        if ctx[0] is not None:
            raise WorkflowError("field 'ctx': a start marker (null) cannot follow an agent")
    else:
        _check_id(ctx[1], "field 'ctx'[1]")
    nxt = _check_id(record["next"], "field 'next'")
    count = _check_count(record["count"], "field 'count'", 1)
    return ctx, nxt, count
