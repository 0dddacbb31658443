#!/usr/bin/env bash
# Installs SGLang's cache layer on a CPU-only machine, for the SGLang plugin tests (tests/test_sglang_*.py).
#
# Not a working SGLang: no model runs on CPU. It installs sglang==0.5.23 without its dependencies
# (a full install is ~4.2 GB of CUDA wheels) plus the few packages its cache modules import, triton
# (its wheel imports on CPU) and nothing else. torch is never touched (--no-deps everywhere; checked
# below). torchvision is not installed: its wheels are CUDA-linked; tests/sglang_support stands in
# for it inside the test process only. Idempotent: returns at once when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

SGLANG="sglang==0.5.23"
# Exactly these versions (what sglang 0.5.23 pins, or what was tested with it).
DEPS=(
    "triton==3.9.0"
    "apache-tvm-ffi==0.1.11"
    "compressed-tensors==0.18.0"
    "sentencepiece==0.2.1"
    "msgspec==0.22.0"
    "pyzmq==27.3.0"
    "psutil==7.2.2"
    "pybase64==1.5.1"
    "dill==0.4.1"
    "loguru==0.7.3"
    "gguf==0.19.0"
    "partial-json-parser==0.2.1.1.post7"
    "aiohttp==3.14.5"
    "aiohappyeyeballs==2.7.1"
    "aiosignal==1.4.0"
    "frozenlist==1.8.0"
    "multidict==7.2.1"
    "propcache==0.5.4"
    "yarl==1.25.1"
)
# Ordinary packages the cache layer also imports (IPython via sglang.utils, scipy via transformers'
# processors, requests, orjson); installed at these versions only when the package is missing.
COMMON=(
    "ipython==8.12.3" "backcall==0.2.0" "decorator==5.2.1" "jedi==0.20.0" "parso==0.8.7"
    "matplotlib-inline==0.2.2" "pexpect==4.8.0" "ptyprocess==0.7.0" "pickleshare==0.7.5"
    "prompt-toolkit==3.0.52" "wcwidth==0.7.0" "pygments==2.20.0" "stack-data==0.6.3"
    "executing==2.2.1" "asttokens==3.0.1" "pure-eval==0.2.3" "traitlets==5.15.0"
    "scipy==1.17.1" "requests==2.34.2" "urllib3==2.7.0" "charset-normalizer==3.4.7"
    "certifi==2026.5.20" "idna==3.20" "orjson==3.8.3" "attrs==26.1.0"
)

# Prints the specs to install: pinned ones whose version differs, common ones that are missing.
to_install() {
    "$PY" - "${#DEPS[@]}" "$SGLANG" "${DEPS[@]}" "${COMMON[@]}" <<'PYEOF'
import sys
from importlib import metadata
pinned = int(sys.argv[1]) + 1
for i, spec in enumerate(sys.argv[2:]):
    name, _, wanted = spec.partition("==")
    try:
        found = metadata.version(name)
    except metadata.PackageNotFoundError:
        found = None
    if found is None or (i < pinned and found != wanted):
        print(spec)
PYEOF
}

mapfile -t MISSING < <(to_install)
if [[ ${#MISSING[@]} -eq 0 ]]; then
    echo "install_sglang_cpu: $SGLANG and its cache-layer dependencies are already installed"
    exit 0
fi

start=$(date +%s)
torch_before=$("$PY" -c "import torch; print(torch.__version__)")
"$PY" -m pip install -q --no-deps "${MISSING[@]}"
torch_after=$("$PY" -c "import torch; print(torch.__version__)")
if [[ "$torch_before" != "$torch_after" ]]; then
    echo "install_sglang_cpu: torch changed from $torch_before to $torch_after; reinstall torch==$torch_before" >&2
    exit 1
fi
PYTHONPATH=tests "$PY" -W ignore -c "import sglang_support" || {
    echo "install_sglang_cpu: SGLang's cache layer does not import after installation (see the error above)" >&2
    exit 1
}
echo "install_sglang_cpu: installed ${#MISSING[@]} package(s) for the $SGLANG cache layer in $(( $(date +%s) - start ))s (torch $torch_after untouched)"
