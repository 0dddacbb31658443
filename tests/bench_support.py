"""Shared by the benchmark tests: ``benchmarks/`` on the import path and the e2e sweep's script
loaded as a module, with ``main`` returning the exit status whether it returns or exits."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
E2E_SCRIPT = ROOT / "benchmarks" / "e2e_workflows.py"
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))


def load_e2e_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, E2E_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(module: ModuleType, *args: str) -> int:
    try:
        return int(module.main(list(args)))
    except SystemExit as exc:
        return int(exc.code or 0)
