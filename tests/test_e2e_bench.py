"""benchmarks/e2e_workflows.py: a real ``--smoke`` run (servers as subprocesses on 127.0.0.1 with
tiny-llama on CPU, traces replayed through SScheduler), failure recording, and the pieces it is
built from (pool sizing, /metrics differences, the report)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "e2e_workflows.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

from e2e_bench import prom, report
from e2e_bench.plan import PreparedTrace, size_pool

TRACES = ("peer", "concurrent", "dynamic")
POLICIES = ("lru", "kvflow")


def bench(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, check=False)


def _load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("e2e_workflows", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


e2e_workflows = _load_script()


def main(*args: str) -> int:
    """The script's ``main`` in this process (argparse errors exit 2 through ``SystemExit``)."""
    try:
        return int(e2e_workflows.main(list(args)))
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("e2e")
    # One server per policy keeps the test short and checks that /metrics deltas separate the
    # replays that share a server.
    done = bench("--smoke", "--out", str(out), "--policies", ",".join(POLICIES), "--server-per", "policy")
    return done, out


def test_smoke_run_records_every_trace_and_policy(smoke: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = smoke
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "e2e_results.json").read_text())
    runs = {(r["trace"], r["policy"]): r for r in results["runs"]}
    assert set(runs) == {(t, p) for t in TRACES for p in POLICIES}
    for (trace, policy), run in runs.items():
        assert run["status"] == "ok", run.get("error")
        summary = run["summary"]
        assert summary["makespan_s"] > 0
        assert summary["requests"] == results["traces"][trace]["requests"]
        assert len(run["records"]) == summary["requests"]
        # The scrape just before and just after the replay isolate it from the warm-up and from
        # the other traces replayed on the same server.
        assert run["metrics"]["delta"]["prompt_tokens_total"] == summary["prompt_tokens"]
        assert run["cache"]["cached_prompt_tokens"] == summary["cached_tokens"]
        assert run["cache"]["uncached_prompt_tokens"] == summary["prompt_tokens"] - summary["cached_tokens"]
        assert run["sizing"]["max_total_tokens"] >= 2 * results["traces"][trace]["max_request_tokens"]
        assert f"--radix-eviction-policy {policy}" in " ".join(run["server"]["command"])
    assert results["machine"]["python"] and results["server_per"] == "policy"
    phases = {p["name"] for p in results["phases"]}
    assert phases >= {"generate traces", "replay peer / lru", "start server kvflow-peer+concurrent+dynamic"}
    for trace in TRACES:
        assert Path(results["traces"][trace]["path"]).is_file()


def test_smoke_run_writes_the_markdown_table(smoke: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = smoke
    text = (out / "e2e_results.md").read_text()
    assert "| trace | policy | makespan (s) | vs lru |" in text
    rows = [line for line in text.splitlines() if line.startswith(("| peer |", "| concurrent |", "| dynamic |"))]
    table_rows = {tuple(cell.strip() for cell in row.split("|")[1:3]) for row in rows}
    assert table_rows >= {(t, p) for t in TRACES for p in POLICIES}
    assert "kvflow + prefetch over lru, one PEER workflow" in text


def test_plot_only_rebuilds_the_report_from_the_json(smoke: tuple[subprocess.CompletedProcess[str], Path],
                                                     tmp_path: Path) -> None:
    _, out = smoke
    (tmp_path / "e2e_results.json").write_text((out / "e2e_results.json").read_text())
    assert main("--plot-only", str(tmp_path)) == 0
    assert (tmp_path / "e2e_results.md").read_text() == (out / "e2e_results.md").read_text()
    assert (tmp_path / "e2e_results.png").stat().st_size > 1000


def test_a_failing_replay_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    # Without /metrics a replay cannot be measured: each one fails, and the run goes on to the next.
    assert main("--smoke", "--out", str(tmp_path), "--policies", "lru", "--traces", "peer,dynamic",
                "--server-per", "policy", "--server-arg", "enable_metrics=false") == 1
    runs = json.loads((tmp_path / "e2e_results.json").read_text())["runs"]
    assert [(r["trace"], r["status"]) for r in runs] == [("peer", "failed"), ("dynamic", "failed")]
    assert all("404" in r["error"] and "/metrics" in r["error"] for r in runs), runs[0]["error"]
    assert "--- server log tail ---" in runs[0]["error"]
    assert "failed" in (tmp_path / "e2e_results.md").read_text()


def test_a_replay_cut_off_by_its_timeout_retires_its_server(tmp_path: Path) -> None:
    assert main("--smoke", "--out", str(tmp_path), "--policies", "lru", "--traces", "concurrent,peer",
                "--server-per", "policy", "--replay-timeout-s", "0.3") == 1
    runs = json.loads((tmp_path / "e2e_results.json").read_text())["runs"]
    assert [(r["trace"], r["status"]) for r in runs] == [("concurrent", "failed"), ("peer", "skipped")]
    assert "did not finish within 0.3 s" in runs[0]["error"]
    assert "cut off with requests in flight" in runs[1]["error"]


def test_a_server_that_does_not_come_up_is_recorded_with_its_log(tmp_path: Path) -> None:
    assert main("--smoke", "--out", str(tmp_path), "--policies", "lru", "--traces", "peer",
                "--server-timeout-s", "0.2") == 1
    (run,) = json.loads((tmp_path / "e2e_results.json").read_text())["runs"]
    assert run["status"] == "failed"
    assert "did not answer /health within 0.2 s" in run["error"]
    assert "context_forge.launch_server --config" in run["error"]  # the log tail starts with the command
    assert run["server"]["stop_s"] >= 0


@pytest.mark.parametrize("args, message", [
    (["--smoke", "--policies", "lru,fifo"], "unknown policy fifo"),
    (["--smoke", "--traces", "peer,peer"], "trace listed twice"),
    (["--smoke", "--max-total-tokens", "64"], "smaller than the largest request"),
    (["--smoke", "--vocab-size", "100000"], "exceeds the model's vocabulary"),
    (["--smoke", "--hicache-ratio", "1"], "--hicache-ratio must be > 1"),
    (["--policies", "lru"], "--config is required"),
    (["--smoke", "--server-arg", "page_size=0"], "page_size: must be >= 1"),
    (["--smoke", "--server-arg", "no_such_key=1"], "unknown option '--no-such-key'"),
    (["--smoke", "--server-arg", "model_path=/no/such/model"], "is neither a preset"),
])
def test_bad_arguments_exit_2_naming_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 args: list[str], message: str) -> None:
    assert main(*args, "--out", str(tmp_path), "--dry-run") == 2
    assert message in capsys.readouterr().err


def _trace(ws: int, biggest: int) -> PreparedTrace:
    return PreparedTrace("peer", Path("x"), {}, None, ws, biggest, ws)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(ws=st.lists(st.integers(1, 10**6), min_size=1, max_size=3), biggest=st.integers(1, 10**4),
       page=st.sampled_from([1, 4, 16]), fraction=st.floats(0.05, 1.0))
def test_pool_sizing_rule(ws: list[int], biggest: int, page: int, fraction: float) -> None:
    traces = [_trace(w, biggest) for w in ws]
    sizing = size_pool(traces, page, 2.0, fraction)
    n = sizing.max_total_tokens
    assert n % page == 0
    assert n >= 2 * biggest and n >= fraction * max(ws)
    assert n - page < max(2 * biggest, fraction * max(ws))  # the smallest page count that satisfies both
    assert sizing.working_set_tokens == max(ws) and sizing.host_tokens == int(n * 2.0)


def test_pool_override_must_hold_the_largest_request() -> None:
    assert size_pool([_trace(1000, 300)], 16, 2.0, override=301).max_total_tokens == 304
    with pytest.raises(ValueError, match="smaller than the largest request"):
        size_pool([_trace(1000, 300)], 16, 2.0, override=299)


def test_metrics_difference_keeps_counter_deltas_and_gauges_after() -> None:
    def text(hits: int, used: int, ttft_count: int) -> str:
        return "\n".join([
            "# TYPE context_forge_device_hit_tokens_total counter", f"context_forge_device_hit_tokens_total {hits}",
            "# TYPE context_forge_pool_used_pages gauge", f'context_forge_pool_used_pages{{pool="device"}} {used}',
            "# TYPE context_forge_ttft_seconds histogram", 'context_forge_ttft_seconds_bucket{le="+Inf"} 9',
            f"context_forge_ttft_seconds_count {ttft_count}", "context_forge_ttft_seconds_sum 1.5",
        ])
    diff = prom.difference(prom.parse(text(10, 5, 2)), prom.parse(text(25, 3, 7)))
    assert diff["delta"] == {"device_hit_tokens_total": 15, "ttft_seconds_count": 5, "ttft_seconds_sum": 0.0}
    assert diff["gauges"] == {'pool_used_pages{pool="device"}': 3}
    assert prom.cache_stats(diff["delta"])["device_hit_tokens"] == 15
    with pytest.raises(ValueError, match="malformed metrics line"):
        prom.parse("lonely_name_without_value")


def test_targets_report_speedups_from_makespans() -> None:
    def run(trace: str, policy: str, span: float) -> dict[str, object]:
        return {"trace": trace, "policy": policy, "status": "ok", "summary": {"makespan_s": span},
                "cache": {"uncached_prompt_tokens": 10, "prefetch_stall_s": 0.5, "host_hit_tokens": 3}}
    results = {"traces": {"peer": {}, "dynamic": {}},
               "runs": [run("peer", "lru", 20.0), run("peer", "kvflow", 10.0), run("dynamic", "kvflow", 5.0),
                        {"trace": "dynamic", "policy": "pbkv", "status": "failed", "error": "boom"}]}
    lines = report.targets_table(results)
    peer = next(line for line in lines if "| peer |" in line)
    assert "| 2.00x | 1.83x | yes |" in peer and "stall 0.50 s, recomputed 10" in peer
    assert "not measured" in next(line for line in lines if "| dynamic |" in line)
    assert "boom" in report.markdown(results)
