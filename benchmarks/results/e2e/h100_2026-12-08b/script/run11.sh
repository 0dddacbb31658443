#!/usr/bin/env bash
# One device call: GPU pytest (13 files, no -x), then the e2e cells concurrent-8k-25 and dynamic-8k-25 with --prime-server and lru last (as run10.sh).
T0=$(date +%s); WALL=560
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/python || exit
export PYTHONUNBUFFERED=1
set -o pipefail
{ nvidia-smi; echo; python3 -c 'import sys, torch; print("python", sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'; nproc; free -g; } > $OUT/gpu.txt 2>&1
echo "[$(( $(date +%s) - T0 )) s] setup done"

timeout 200 python3 -m pytest -q -o addopts="" -p no:cacheprovider -rfEs --durations=10 \
    tests/test_kv_buffer.py tests/test_prefetch_engine.py tests/test_prefetch_load_back_baseline.py \
    tests/test_prefetch_controller.py tests/test_prefetch_protection.py tests/test_prefetch_guard.py \
    tests/test_prefetch_copy_pieces.py tests/test_engine_generate.py tests/test_engine_wait_locks.py \
    tests/test_engine_pages.py tests/test_prefetch_planner.py tests/test_workflow_arrivals.py tests/test_cache_policy.py 2>&1 | grep -v -e 'leaked ' -e '^nanobind' -e 'skipped remainder' | tee $OUT/gpu_pytest.txt
echo "gpu pytest rc=${PIPESTATUS[0]}" | tee -a $OUT/gpu_pytest.txt
echo "[$(( $(date +%s) - T0 )) s] gpu pytest done"

LEFT=$(( WALL - ($(date +%s) - T0) ))
echo "e2e: LEFT=$LEFT s, --time-budget-s $((LEFT-25))" | tee $OUT/e2e_stdout.txt
timeout $((LEFT-8)) python3 benchmarks/e2e_workflows.py --config configs/llama3-8b-h100.yaml --out $OUT \
    --work-dir /tmp/e2e --time-budget-s $((LEFT-25)) --cells concurrent-8k-25,dynamic-8k-25 --prime-server --runs unbounded,pbkv,kvflow,lru 2>&1 | tee -a $OUT/e2e_stdout.txt
echo "e2e rc=$?" | tee -a $OUT/e2e_stdout.txt
echo "[$(( $(date +%s) - T0 )) s] e2e done"

if [ -d /tmp/e2e/logs ]; then
    tar czf $OUT/e2e_logs.tgz -C /tmp/e2e logs
    if [ "$(stat -c %s $OUT/e2e_logs.tgz)" -gt 15000000 ]; then
        mkdir -p /tmp/e2e/tails && for f in /tmp/e2e/logs/*; do tail -c 2000000 "$f" > /tmp/e2e/tails/$(basename "$f"); done
        tar czf $OUT/e2e_logs.tgz -C /tmp/e2e tails
    fi
fi
ls -la $OUT
echo "[$(( $(date +%s) - T0 )) s] all done"
