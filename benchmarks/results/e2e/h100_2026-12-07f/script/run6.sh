#!/usr/bin/env bash
# One device call: the e2e target cells in the default order after a throwaway priming server, to tell
# whether --prime-server removes the first server's cold cost (compare h100_2026-12-07d).
T0=$(date +%s); WALL=520
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/python || exit
export PYTHONUNBUFFERED=1
set -o pipefail
{ nvidia-smi; echo; python3 -c 'import sys, torch; print("python", sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'; nproc; free -g; } > $OUT/gpu.txt 2>&1
LEFT=$(( WALL - ($(date +%s) - T0) ))
echo "e2e: LEFT=$LEFT s" | tee $OUT/e2e_stdout.txt
timeout $((LEFT-8)) python3 benchmarks/e2e_workflows.py --config configs/llama3-8b-h100.yaml --out $OUT \
    --work-dir /tmp/e2e --time-budget-s $((LEFT-25)) --cells targets --prime-server 2>&1 | tee -a $OUT/e2e_stdout.txt
echo "e2e rc=$?" | tee -a $OUT/e2e_stdout.txt
[ -d /tmp/e2e/logs ] && tar czf $OUT/e2e_logs.tgz -C /tmp/e2e logs
echo "[$(( $(date +%s) - T0 )) s] all done"
