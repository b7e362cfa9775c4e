#!/usr/bin/env bash
# H200, call 1: the GPU-only tests, the kernel benchmark, the metrics-overhead benchmark and a
# short compiled gpt2 sweep, all offline (the device has no hub). Everything lands in $OUT/run1.tgz.
#   OUT=/some/dir bash results/reference/h200/records/2026-11-29_validate.sh
# (run 1 on 2026-11-29 compared --compile-scope model|blocks; blocks ran 2x slower and was removed)
set -uo pipefail
OUT=${OUT:-out}
W=$OUT/w
mkdir -p "$W"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
{ nvidia-smi --query-gpu=name,driver_version,power.limit,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$W/env.txt"
timeout 100 python3 -m pytest -q -x -p no:cacheprovider tests/test_attentions.py tests/test_metrics.py 2>&1 \
  | tail -40 | tee "$W/gpu_tests.log"
timeout 200 python3 benchmarks/attention_kernels.py --out "$W/kernels" 2>&1 | tee "$W/kernels.log" | tail -45
timeout 80 python3 benchmarks/metrics_overhead.py --out "$W/metrics_overhead.json" 2>&1 | tee "$W/overhead.log" | tail -15
for scope in model blocks; do  # whole-model vs regional compilation: compile time and step time
  att=sdpa; [ $scope = blocks ] && att=sdpa,flex
  timeout 100 python3 main.py --offline --model gpt2 --attention $att --seq-len 1024 --batch-size 16 \
    --steps 12 --epochs 1 --warmup 4 --compile --compile-scope $scope --out "$W/sweep_$scope" 2>&1 \
    | tee "$W/sweep_$scope.log" | grep -v "^    step" | tail -12
done
tar czf "$OUT/run1.tgz" -C "$W" .
