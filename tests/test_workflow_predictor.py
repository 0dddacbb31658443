"""MarkovPredictor: distributions, back-off, multi-step queries and persistence."""
from __future__ import annotations

import json
import math

import pytest
from context_forge.workflow import MarkovPredictor, PredictorFormatError, WorkflowError
from hypothesis import given, settings
from hypothesis import strategies as st

AGENTS = st.sampled_from(["a", "b", "c", "d", "e"])
# (workflow, agent) observations interleaving a few workflows
OBSERVATIONS = st.lists(st.tuples(st.sampled_from(["w1", "w2", "w3"]), AGENTS), max_size=40)


def learned(observations: list[tuple[str, str]], **kwargs: float) -> MarkovPredictor:
    p = MarkovPredictor(**kwargs)
    for wf, agent in observations:
        p.observe(wf, agent)
    return p


def test_deterministic_cycle_is_learned_exactly() -> None:
    p = MarkovPredictor(smoothing=0.1)
    cycle = ["a", "b", "c"]
    for _ in range(4):
        for agent in cycle:
            p.observe("w", agent)
    for i in range(6):
        dist = p.next_distribution("w")
        expected = cycle[i % 3]
        assert dist[expected] > 0.97
        assert all(v < 0.02 for a, v in dist.items() if a != expected)
        assert p.expected_steps("w", expected) < 0.05
        p.observe("w", expected)


def test_start_distribution_and_forget() -> None:
    p = MarkovPredictor(smoothing=0.01)
    for run in range(5):
        for agent in ["plan", "code", "test"]:
            p.observe(f"r{run}", agent)
    assert p.next_distribution("brand-new")["plan"] > 0.99
    p.observe("w", "plan")
    assert p.next_distribution("w")["code"] > 0.99
    p.forget("w")
    assert p.next_distribution("w") == p.next_distribution("brand-new")
    assert p.distribution_after(["plan", "code"]) == pytest.approx(
        {"plan": 0.0, "code": 0.0, "test": 1.0}, abs=0.01
    )


def test_backoff_formula_on_small_counts() -> None:
    alpha = 0.5
    p = MarkovPredictor(smoothing=alpha)
    p.observe_sequence(["x", "y"])
    p.observe_sequence(["y", "x"])
    # counts: unigram x=2, y=2 (N=4); first order: start->{x,y}, x->y, y->x; V = 2, B = alpha*V = 1
    p0 = {"x": (2 + alpha) / (4 + 1), "y": (2 + alpha) / (4 + 1)}
    p1_given_x = {k: ((k == "y") + 1 * p0[k]) / (1 + 1) for k in p0}
    # context (start, x) was seen once, followed by y
    p2 = {k: ((k == "y") + 1 * p1_given_x[k]) / (1 + 1) for k in p0}
    assert p.distribution_after(["x"]) == pytest.approx(p2)
    # context (y, x) unseen at second order: backs off to P1(.|x) entirely
    assert p.distribution_after(["y", "x"]) == pytest.approx(p1_given_x)


def test_unseen_agents_join_the_vocabulary() -> None:
    p = MarkovPredictor()
    assert p.next_distribution("w") == {}
    assert p.expected_steps("w", "ghost", horizon=5) == 6.0
    for agent in ["a", "b", "a", "b"]:
        p.observe("w", agent)
    p.observe("w", "newcomer")
    dist = p.next_distribution("w")
    assert set(dist) == {"a", "b", "newcomer"} and math.isclose(sum(dist.values()), 1.0)
    assert p.vocabulary == ("a", "b", "newcomer")
    assert set(p.prob_within("w", 3)) == {"a", "b", "newcomer"}


@settings(max_examples=60, deadline=None)
@given(OBSERVATIONS, st.sampled_from([0.01, 0.1, 1.0]))
def test_distributions_sum_to_one(observations: list[tuple[str, str]], alpha: float) -> None:
    p = learned(observations, smoothing=alpha)
    for wf in ["w1", "w2", "w3", "unseen"]:
        dist = p.next_distribution(wf)
        if p.vocabulary:
            assert math.isclose(sum(dist.values()), 1.0, rel_tol=1e-9)
            assert all(v > 0 for v in dist.values())
        else:
            assert dist == {}


@settings(max_examples=40, deadline=None)
@given(OBSERVATIONS.filter(bool), st.sampled_from([0.0, 0.05, 0.5]))
def test_prob_within_is_monotone_and_bounded(
    observations: list[tuple[str, str]], min_mass: float
) -> None:
    p = learned(observations, min_context_mass=min_mass)
    wf = observations[-1][0]
    previous = dict.fromkeys(p.vocabulary, 0.0)
    assert p.prob_within(wf, 0) == previous
    assert p.prob_within(wf, 1) == pytest.approx(p.next_distribution(wf))
    for k in range(1, 7):
        now = p.prob_within(wf, k)
        for agent, value in now.items():
            assert previous[agent] <= value <= 1.0
        previous = now
    steps = p.expected_steps_all(wf, horizon=4)
    assert all(0.0 <= v <= 5.0 for v in steps.values())


def test_expected_steps_on_cycle_and_branch() -> None:
    p = MarkovPredictor(smoothing=0.001)
    for _ in range(6):
        for agent in ["a", "b", "c", "d"]:
            p.observe("w", agent)
    p.observe("w", "a")
    steps = p.expected_steps_all("w", horizon=8)
    assert steps == pytest.approx({"b": 0.0, "c": 1.0, "d": 2.0, "a": 3.0}, abs=0.01)
    assert p.expected_steps("w", "a", horizon=2) == pytest.approx(3.0, abs=0.01)  # not reached

    branchy = MarkovPredictor(smoothing=0.001)
    for run in range(200):
        branchy.observe_sequence(["s", "left" if run % 2 else "right", "join"])
    branchy.observe("w", "s")
    within = branchy.prob_within("w", 1)
    assert within["left"] == pytest.approx(0.5, abs=0.01) == pytest.approx(within["right"], abs=0.01)
    steps = branchy.expected_steps_all("w", horizon=4)
    assert steps["join"] == pytest.approx(1.0, abs=0.01)
    assert steps["left"] == pytest.approx(steps["right"], abs=0.01)


def test_merged_light_contexts_track_exact_propagation() -> None:
    """A router fanning out to many tools: light contexts are merged; results stay close."""
    tools = [f"tool{i}" for i in range(30)]
    exact = MarkovPredictor(min_context_mass=0.0, prune=0.0)
    merged = MarkovPredictor(min_context_mass=0.05)
    for run in range(120):
        for step in range(6):
            for p in (exact, merged):
                p.observe(f"r{run}", "router")
                p.observe(f"r{run}", tools[(run * 7 + step * 13) % 30])
    a = exact.prob_within("r3", 6)
    b = merged.prob_within("r3", 6)
    assert max(abs(a[k] - b[k]) for k in a) < 0.02


def test_save_load_round_trip(tmp_path) -> None:
    p = MarkovPredictor(smoothing=0.2)
    for run in range(4):
        p.observe_sequence(["plan", "code", "test", "code", "test", "review"][: 3 + run])
    path = tmp_path / "counts.jsonl"
    p.save(path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert {"ctx": [None, None], "next": "plan", "count": 4} in lines
    q = MarkovPredictor.load(path, smoothing=0.2)
    histories = [[], ["plan"], ["plan", "code"], ["code", "test"], ["test", "code"], ["review"]]
    for history in histories:
        assert q.distribution_after(history) == p.distribution_after(history)
    for model in (p, q):
        for agent in ["plan", "code"]:
            model.observe("live", agent)
    assert q.next_distribution("live") == p.next_distribution("live")
    assert q.expected_steps_all("live") == p.expected_steps_all("live")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", "JSON object"),
        ('{"ctx": ["a", "b"], "count": 1}', "'next'"),
        ('{"ctx": ["a"], "next": "b", "count": 1}', "'ctx'"),
        ('{"ctx": ["a", null], "next": "b", "count": 1}', "start marker"),
        ('{"ctx": [null, 3], "next": "b", "count": 1}', r"'ctx'\[1\]"),
        ('{"ctx": [null, null], "next": "", "count": 1}', "'next'"),
        ('{"ctx": [null, null], "next": "b", "count": 0}', "'count'"),
        ('{"ctx": [null, null], "next": "b", "count": 1.5}', "'count'"),
        ("{not json", ":2:"),
    ],
)
def test_load_rejects_malformed_lines(tmp_path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ctx": [null, null], "next": "a", "count": 2}\n' + line + "\n")
    with pytest.raises(PredictorFormatError, match=message) as err:
        MarkovPredictor.load(path)
    assert ":2:" in str(err.value)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(WorkflowError, match="smoothing"):
        MarkovPredictor(smoothing=0)
    with pytest.raises(WorkflowError, match="min_context_mass"):
        MarkovPredictor(min_context_mass=2)
    p = MarkovPredictor()
    with pytest.raises(WorkflowError, match="agent_id"):
        p.observe("w", "")
    with pytest.raises(WorkflowError, match="workflow_id"):
        p.observe(3, "a")  # type: ignore[arg-type]
    p.observe("w", "a")
    with pytest.raises(WorkflowError, match="k must be"):
        p.prob_within("w", -1)
    with pytest.raises(WorkflowError, match="horizon"):
        p.expected_steps("w", "a", horizon=-2)
    with pytest.raises(WorkflowError, match="never observed"):
        p.distribution_after(["zzz"])


def _chain_then_guesses(come_true: bool) -> MarkovPredictor:
    """Ten runs of A -> router -> x, then twenty workflows that reach router from a context never
    seen before (callerN, router), where the first-order guess says x: it comes true, or each of
    them calls a new agent instead."""
    p = MarkovPredictor()
    for i in range(10):
        for agent in ("A", "router", "x"):
            p.observe(f"a{i}", agent)
    for i in range(20):
        for agent in (f"caller{i}", "router", "x" if come_true else f"new{i}"):
            p.observe(f"c{i}", agent)
    return p


def _probe(p: MarkovPredictor) -> str:
    p.observe("probe", "caller-new")
    p.observe("probe", "router")  # context (caller-new, router): never seen, backs off
    return "probe"


def test_trust_is_full_where_predictions_came_true() -> None:
    p = _chain_then_guesses(come_true=True)
    p.observe("fresh", "A")
    p.observe("fresh", "router")
    assert p.next_distribution("fresh")["x"] > 0.9
    assert p.trust("fresh") > 0.95
    assert p.trust(_probe(p)) > 0.9


def test_trust_falls_for_a_class_of_contexts_whose_guesses_failed() -> None:
    p = _chain_then_guesses(come_true=False)
    wid = _probe(p)
    dist = p.next_distribution(wid)
    assert max(dist, key=dist.get) == "x"
    assert p.trust(wid) < 0.7  # 1.0 where they came true (the test above)
    p.observe("fresh", "A")
    p.observe("fresh", "router")  # the well-seen context (A, router): its guesses came true
    assert p.trust("fresh") > 0.95


def test_unscored_calls_leave_trust_as_it_was() -> None:
    p = _chain_then_guesses(come_true=True)
    wid = _probe(p)
    before = p.trust(wid)
    for i in range(20):
        for agent in (f"other{i}", "router", f"new{i}"):
            p.observe(f"u{i}", agent, score=False)
    assert p.trust(wid) == before


def test_an_unknown_next_agent_scores_as_a_miss() -> None:
    p = MarkovPredictor()
    for i in range(4):
        p.observe(f"w{i}", "start")
        p.observe(f"w{i}", "a")
    p.observe("probe", "start")
    before = p.trust("probe")
    for i in range(4, 10):
        p.observe(f"w{i}", "start")
        p.observe(f"w{i}", f"unseen{i}")
    assert p.trust("probe") < 0.6 * before


def test_a_workflows_first_call_is_not_scored() -> None:
    p = MarkovPredictor()
    for i in range(10):
        p.observe(f"w{i}", "a")
        p.observe(f"w{i}", "b")
    p.observe("probe", "a")
    before = p.trust("probe")
    for i in range(10):
        p.observe(f"n{i}", f"fresh-start{i}")  # every first call a surprise
    assert p.trust("probe") == before
