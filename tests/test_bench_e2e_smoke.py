"""The e2e sweep end to end on CPU (``--smoke``): tiny-llama servers as subprocesses on 127.0.0.1,
four tiny cells, every run of the registry plus ``unbounded``, traces replayed through SScheduler,
the report written; and how failures are recorded (the run goes on)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench_support import E2E_SCRIPT, ROOT, load_e2e_script, run_main
from e2e_bench.plan import SMOKE, SMOKE_CELLS
from e2e_bench.run import runs_from_registry

e2e_workflows = load_e2e_script("e2e_workflows_smoke")


def main(*args: str) -> int:
    return run_main(e2e_workflows, *args)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, float]:
    out = tmp_path_factory.mktemp("e2e-smoke")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(E2E_SCRIPT), "--smoke", "--out", str(out)], capture_output=True,
                          text=True, timeout=240, cwd=ROOT, check=False)
    return done, out, time.perf_counter() - t0


def test_smoke_sweep_runs_every_cell_with_every_run(smoke: tuple[subprocess.CompletedProcess[str], Path, float]) -> None:
    done, out, wall = smoke
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "e2e_results.json").read_text())
    runs = runs_from_registry()
    assert results["runs_order"] == runs and set(results["cells"]) == set(SMOKE_CELLS)
    got = {(r["run"], r["cell"] or r["trace"]) for r in results["runs"]}
    traces = {results["cells"][c]["trace"] for c in SMOKE_CELLS}
    assert got == {(p, c) for p in runs if p != "unbounded" for c in SMOKE_CELLS} | {("unbounded", t) for t in traces}
    for r in results["runs"]:
        assert r["status"] == "ok", r.get("error")
        summary, trace = r["summary"], results["traces"][r["trace"]]
        assert summary["makespan_s"] > 0 and summary["requests"] == trace["requests"] == len(r["records"])
        # The scrapes around the replay leave out the warm-up and the other replays of the server.
        assert r["metrics"]["delta"]["prompt_tokens_total"] == summary["prompt_tokens"] == trace["prompt_tokens"]
        assert r["cache"]["uncached_prompt_tokens"] == summary["prompt_tokens"] - summary["cached_tokens"]
        assert r["warm_prompts"] >= 1 and r["cache"]["unavoidable_tokens"] == trace["new_tokens"] - trace["warm_tokens"]
        assert r["pool_tokens"] >= trace["max_request_tokens"] and r["host_tokens"] >= trace["working_set_tokens"]
        if r["run"] == "unbounded":  # nothing evicted that the replay needed: only the unavoidable misses
            slack = trace["requests"] * results["page_size"]
            assert trace["new_tokens"] - trace["warm_tokens"] <= r["cache"]["uncached_prompt_tokens"] \
                <= trace["new_tokens"] - trace["warm_tokens"] + slack
            assert r["pool_tokens"] >= trace["working_set_tokens"]
    sessions = results["sessions"]
    assert [s["run"] for s in sessions] == runs, "one server per run: the smoke cells share one pool"
    for s in sessions:
        assert f"--radix-eviction-policy {'lru' if s['run'] == 'unbounded' else s['run']}" in " ".join(s["command"])
        assert "--pressure-thresholds 0.9996,0.9997,0.9998,0.9999" in " ".join(s["command"])
    assert len({r["namespace"] for r in results["runs"]}) == len(results["runs"])
    assert wall < 150, f"the smoke sweep took {wall:.0f} s (meant to stay well under 2 minutes)"


def test_smoke_sweep_writes_the_report(smoke: tuple[subprocess.CompletedProcess[str], Path, float]) -> None:
    _, out, _ = smoke
    text = (out / "e2e_results.md").read_text()
    for heading in ("## Targets", "## Speedup next to the ceiling", "## Loads, prefetches and cache", "## Traces"):
        assert heading in text
    for cell in SMOKE_CELLS:
        assert f"| {cell} | " in text
    for target in SMOKE.targets:
        assert f"| {target} | " in text.split("## Speedup")[0]
    assert "| ceiling over lru |" in text and "captured kvflow" in text
    assert (out / "e2e_results.png").stat().st_size > 1000


def test_plot_only_rebuilds_the_report(smoke: tuple[subprocess.CompletedProcess[str], Path, float],
                                       tmp_path: Path) -> None:
    _, out, _ = smoke
    (tmp_path / "e2e_results.json").write_text((out / "e2e_results.json").read_text())
    assert main("--plot-only", str(tmp_path)) == 0
    assert (tmp_path / "e2e_results.md").read_text() == (out / "e2e_results.md").read_text()
    assert (tmp_path / "e2e_results.png").stat().st_size > 1000


def test_a_failing_replay_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    # Without /metrics a replay cannot be measured: each one fails, and the run goes on to the next.
    assert main("--smoke", "--out", str(tmp_path), "--runs", "lru", "--cells", "peer-128-25,peer-64-50",
                "--server-arg", "enable_metrics=false") == 1
    runs = json.loads((tmp_path / "e2e_results.json").read_text())["runs"]
    assert [(r["cell"], r["status"]) for r in runs] == [("peer-128-25", "failed"), ("peer-64-50", "failed")]
    assert all("404" in r["error"] and "/metrics" in r["error"] for r in runs), runs[0]["error"]
    assert "--- server log tail ---" in runs[0]["error"]
    assert "| peer-64-50 | lru | failed |" in (tmp_path / "e2e_results.md").read_text()


def test_a_replay_cut_off_by_its_timeout_retires_its_server(tmp_path: Path) -> None:
    assert main("--smoke", "--out", str(tmp_path), "--runs", "lru", "--cells", "peer-128-25,peer-64-50",
                "--replay-timeout-s", "0.05") == 1
    runs = json.loads((tmp_path / "e2e_results.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["failed", "skipped"]
    assert runs[0]["timed_out"] and "did not finish within" in runs[0]["error"]
    assert "cut off with requests in flight" in runs[1]["error"]


def test_a_server_that_does_not_come_up_is_recorded_with_its_log(tmp_path: Path) -> None:
    assert main("--smoke", "--out", str(tmp_path), "--runs", "lru", "--cells", "peer-128-25",
                "--server-timeout-s", "0.2") == 1
    (run,) = json.loads((tmp_path / "e2e_results.json").read_text())["runs"]
    assert run["status"] == "failed" and "did not answer /health within 0.2 s" in run["error"]
    assert "context_forge.launch_server --config" in run["error"]  # the log tail starts with the command
    session = json.loads((tmp_path / "e2e_results.json").read_text())["sessions"][0]
    assert session["stop_s"] >= 0


def test_a_prime_server_replays_first_and_stays_out_of_the_results(tmp_path: Path) -> None:
    """``--prime-server``: one throwaway lru server replays the first group's traces before the
    measured ones; its replays go to ``prime``, the measured runs are the same as without it."""
    done = subprocess.run([sys.executable, str(E2E_SCRIPT), "--smoke", "--out", str(tmp_path), "--prime-server",
                           "--cells", SMOKE_CELLS[0], "--runs", "lru,kvflow"], capture_output=True, text=True,
                          timeout=240, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "e2e_results.json").read_text())
    assert [s["run"] for s in results["sessions"]] == ["prime-lru", "lru", "kvflow"]
    trace = results["cells"][SMOKE_CELLS[0]]["trace"]
    assert [(r["run"], r["trace"], r["status"]) for r in results["prime"]] == [("lru", trace, "ok")]
    assert sorted((r["run"], r["cell"]) for r in results["runs"]) == [("kvflow", SMOKE_CELLS[0]), ("lru", SMOKE_CELLS[0])]
    assert all(r["status"] == "ok" for r in results["runs"])
    report = (tmp_path / "e2e_results.md").read_text()
    assert "prime-lru" not in report.split("## Servers")[0] and "prime-lru" in report  # listed as a server only
