"""``benchmarks/decode_copy_bw.py`` imports and, without a GPU, says so and exits with status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "decode_copy_bw.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path only")
def test_without_a_gpu_the_benchmark_says_so_and_exits_2() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--pages", "4"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "command:" in done.stdout and "needs a CUDA or ROCm GPU" in done.stdout
