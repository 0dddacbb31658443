"""launch_server.main: bad configuration exits 2 with a message; ``python -m`` works."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from context_forge.launch_server import main

ROOT = Path(__file__).resolve().parent.parent


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


def test_bad_key_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["--config", str(ROOT / "configs/tiny-cpu.yaml"), "--page-sise", "8"], capsys)
    assert code == 2
    assert "error: unknown option '--page-sise'" in err and "'--page-size'" in err


def test_bad_yaml_key_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("radix_eviction_polcy: lru\n")
    code, err = run_main(["--config", str(path)], capsys)
    assert code == 2 and "unknown key 'radix_eviction_polcy'" in err and "radix_eviction_policy" in err


def test_bad_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["--radix-eviction-policy", "belady"], capsys)
    assert code == 2 and "simulator-only" in err


def test_unavailable_device_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(["--config", str(ROOT / "configs/llama3-8b-h100.yaml")], capsys)
    assert code == 2 and "device: 'cuda'" in err


def test_help_prints_reference(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage:") and "| `page_size` |" in out


def test_module_entry_point() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "context_forge.launch_server", "--port", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "port: must be in 1..65535, got -1" in result.stderr
