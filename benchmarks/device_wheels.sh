#!/usr/bin/env bash
# Downloads, for CPython 3.12 on x86-64 Linux (the GPU machine), the wheels that the server and the
# e2e benchmark need and that machine lacks: fastapi, uvicorn, pydantic, the openai client, and
# everything they require (resolved by pip for that platform), plus httpx at the version tested here.
# Versions are the ones installed on this machine, so the GPU run uses what the CPU tests used.
#
#   benchmarks/device_wheels.sh [DEST]        # DEST defaults to .whl (ignored by git)
#
# On the GPU machine (see docs/benchmarks.md):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PYTHON:-python3}

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
PKGS=()
for name in fastapi uvicorn pydantic openai httpx; do
    PKGS+=("$name==$(version "$name")")
done

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$p")
done

mkdir -p "$DEST"
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d "$DEST" "${PKGS[@]}"
echo "wheels for ${PKGS[*]} (and their requirements) in $DEST:"
ls "$DEST"
du -sh "$DEST"
