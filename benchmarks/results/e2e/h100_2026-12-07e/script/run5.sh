#!/usr/bin/env bash
# One device call: peer-16k-25, lru then kvflow (lru first), after the longer
# per-server warm-up (benchmarks/e2e_bench/run.py).
T0=$(date +%s); WALL=200
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/python || exit
export PYTHONUNBUFFERED=1
set -o pipefail
{ nvidia-smi; echo; python3 -c 'import sys, torch; print("python", sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'; nproc; free -g; } > $OUT/gpu.txt 2>&1
LEFT=$(( WALL - ($(date +%s) - T0) ))
echo "e2e: LEFT=$LEFT s" | tee $OUT/e2e_stdout.txt
timeout $((LEFT-8)) python3 benchmarks/e2e_workflows.py --config configs/llama3-8b-h100.yaml --out $OUT \
    --work-dir /tmp/e2e --time-budget-s $((LEFT-25)) --cells peer-16k-25 --runs lru,kvflow 2>&1 | tee -a $OUT/e2e_stdout.txt
echo "e2e rc=$?" | tee -a $OUT/e2e_stdout.txt
[ -d /tmp/e2e/logs ] && tar czf $OUT/e2e_logs.tgz -C /tmp/e2e logs
echo "[$(( $(date +%s) - T0 )) s] all done"
