"""``context-forge-sim``: the JSON summary, cost-model overrides and every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from context_forge.sim.cli import main
from context_forge.sim.cost_model import CostModel
from context_forge.sim.oracle import ideal_times
from context_forge.trace import dump_trace, load_trace
from context_forge.trace.generators import generate

REQUIRED_KEYS = {
    "policy", "requests", "prompt_tokens", "device_hit_tokens", "host_hit_tokens", "recomputed_tokens",
    "loaded_tokens", "prefetched_tokens", "prefetch_wasted_tokens", "stall_s", "makespan_s",
    "mean_latency_s", "p99_latency_s",
}


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    records = generate("concurrent", workflows=3, rounds=2, system_tokens=256, private_system_tokens=128,
                       input_tokens=64, output_tokens=8, think_s=0.05, stagger_s=0.1, history_limit=1024)
    path = tmp_path_factory.mktemp("sim") / "small.jsonl"
    dump_trace(records, path)
    return path


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("policy", ["lru", "kvflow", "pbkv", "belady"])
def test_json_last_line_has_every_required_key(trace_file: Path, policy: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, "--trace", str(trace_file), "--policy", policy, "--device-tokens", "1024",
                   "--host-tokens", "2048", "--page-size", "16", "--load-ahead-step", "2")
    assert REQUIRED_KEYS <= set(out)
    assert out["policy"] == policy
    trace = load_trace(trace_file)
    assert out["requests"] == len(trace.requests)
    assert out["prompt_tokens"] == sum(r.prompt_len for r in trace.requests)
    assert out["prompt_tokens"] == out["device_hit_tokens"] + out["loaded_tokens"] + out["recomputed_tokens"]
    assert out["makespan_s"] > 0 and out["p99_latency_s"] >= out["mean_latency_s"] * 0.5


def test_plain_output_lists_fields(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--trace", str(trace_file), "--policy", "lru", "--device-tokens", "4096",
                 "--host-tokens", "0"]) == 0
    text = capsys.readouterr().out
    assert "makespan_s" in text and "device_hit_tokens" in text
    assert not text.lstrip().startswith("{")


def test_cli_process_rejects_bad_trace_with_line_number(tmp_path: Path) -> None:
    lines = [
        json.dumps({"type": "meta", "version": 1}),
        json.dumps({"type": "request", "id": "a", "workflow_id": "w", "agent_id": "x",
                    "prompt": [{"segment": "s", "tokens": 32}], "output_tokens": 4}),
        json.dumps({"type": "request", "id": "b", "workflow_id": "w", "agent_id": "x", "after": ["nope"],
                    "prompt": [{"segment": "s", "tokens": 32}], "output_tokens": 4}),
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    proc = subprocess.run([sys.executable, "-m", "context_forge.sim.cli", "--trace", str(bad), "--policy", "lru",
                           "--device-tokens", "1024", "--host-tokens", "0", "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "line 3" in proc.stderr and "after" in proc.stderr
    assert proc.stdout == ""


def test_malformed_json_line_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "meta", "version": 1}\n\n{"type": "request", "id": \n')
    assert main(["--trace", str(bad), "--policy", "lru", "--device-tokens", "64", "--host-tokens", "0"]) != 0
    assert "line 3" in capsys.readouterr().err


def test_missing_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--trace", str(tmp_path / "none.jsonl"), "--policy", "lru", "--device-tokens", "64",
                 "--host-tokens", "0"]) != 0
    assert "none.jsonl" in capsys.readouterr().err


def test_unknown_policy_exits_nonzero(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--trace", str(trace_file), "--policy", "fifo", "--device-tokens", "1024", "--host-tokens", "0"])
    assert code != 0
    err = capsys.readouterr().err
    assert "fifo" in err and "lru" in err and "kvflow" in err


@pytest.mark.parametrize("args, words", [
    (["--device-tokens", "8", "--page-size", "16"], ["device_tokens", "page"]),
    (["--device-tokens", "1024", "--host-tokens", "-1"], ["host_tokens"]),
    (["--device-tokens", "1024", "--load-ahead-step", "-2"], ["load_ahead_step"]),
    (["--device-tokens", "1024", "--page-size", "0"], ["page_size"]),
])
def test_bad_configuration_is_named(trace_file: Path, args: list[str], words: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--trace", str(trace_file), "--policy", "lru", "--host-tokens", "0"]
    assert main(base + args) != 0
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_request_larger_than_device_is_a_clear_error(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = load_trace(trace_file)
    biggest = max(trace.requests, key=lambda r: r.prompt_len + r.output_tokens)
    assert main(["--trace", str(trace_file), "--policy", "lru", "--device-tokens", "256",
                 "--host-tokens", "0"]) != 0
    err = capsys.readouterr().err
    assert "cannot be admitted" in err and "device pages" in err and "the device holds 16" in err
    assert biggest.prompt_len + biggest.output_tokens > 256


def test_cost_model_file_overrides_defaults(trace_file: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--trace", str(trace_file), "--policy", "lru", "--device-tokens", "4096", "--host-tokens", "0"]
    base = run_json(capsys, *args)
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps({"decode_fixed_s": 0.1}))
    slower = run_json(capsys, *args, "--cost-model", str(slow))
    assert slower["makespan_s"] > base["makespan_s"] + 0.5
    free = tmp_path / "free.yaml"
    free.write_text("prefill_fixed_s: 0\nprefill_per_token_s: 0\nprefill_attn_s: 0\n"
                    "decode_fixed_s: 0\ndecode_per_ctx_token_s: 0\n")
    out = run_json(capsys, *args, "--cost-model", str(free))
    assert out["mean_latency_s"] == 0.0 and out["stall_s"] == 0.0
    trace = load_trace(trace_file)
    index = {r.id: i for i, r in enumerate(trace.requests)}
    send = ideal_times([[index[a] for a in r.after] for r in trace.requests], [r.delay_s for r in trace.requests],
                       [r.arrival_s for r in trace.requests], [0.0] * len(trace.requests))
    assert out["makespan_s"] == pytest.approx(max(send), abs=1e-6)  # free compute: arrivals + think times


def test_cost_model_unknown_field_is_an_error(trace_file: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"decode_fixed_s": 0.01, "prefil_per_token_s": 1e-5}))
    code = main(["--trace", str(trace_file), "--policy", "lru", "--device-tokens", "1024", "--host-tokens", "0",
                 "--cost-model", str(bad)])
    assert code != 0
    err = capsys.readouterr().err
    assert "prefil_per_token_s" in err and "unknown" in err
    with pytest.raises(ValueError, match="non-negative"):
        neg = tmp_path / "neg.json"
        neg.write_text(json.dumps({"decode_fixed_s": -1}))
        CostModel.from_file(neg)
    with pytest.raises(ValueError, match="mapping"):
        lst = tmp_path / "list.json"
        lst.write_text("[1, 2]")
        CostModel.from_file(lst)


def test_cost_model_formulas() -> None:
    c = CostModel()
    assert c.prefill_time(0, 100) == 0.0
    assert c.prefill_time(2048, 0) == pytest.approx(0.0455, rel=0.05)
    assert c.prefill_time(8192, 0) == pytest.approx(0.202, rel=0.05)
    assert c.prefill_time(512, 4096) > c.prefill_time(512, 0)
    assert c.decode_step_time(0, 0) == 0.0
    assert c.decode_step_time(64, 64 * 4096) == pytest.approx(0.0178, rel=0.1)
    assert c.load_time(2048) == pytest.approx(2048 * 131072 / 44e9)
    assert c.store_time(1) < c.load_time(1)
