#!/usr/bin/env bash
# Sets up what the test suite needs on a fresh CPU machine, then runs it.
# torch is installed first, pinned (2.13.0), when none is there; for the CPU wheel on an ordinary
# machine install it from https://download.pytorch.org/whl/cpu beforehand (README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[dev]"
PYTHON="$PY" bash scripts/install_sglang_cpu.sh
log=$(mktemp)
set +e
"$PY" -m pytest -q "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# SGLang's native dependencies print reference-leak notices when the interpreter exits, after
# pytest's summary: repeat the summary so that it is the closing line.
echo
grep -E '^[0-9]+ (passed|failed|error)' "$log" | tail -n 1 || true
rm -f "$log"
exit "$rc"
