#!/usr/bin/env bash
# H200, 2026-11-29: the device calls of 2026-11-29 (afternoon), steps named on the command line and
# run in that order within one time budget (a step that would start too late is skipped, and said
# so). Everything lands in $OUT/full_test_and_kernels.tgz.
#   OUT=/some/dir BUDGET_S=570 bash results/reference/h200/records/2026-11-29_full_test_and_kernels.sh full_test overhead kernels
# Steps:
#   full_test  the full_test preset, gpt2, all nine attentions, batch 32, compiled, with the
#              precompile phase (auto: CPU cores // 4 processes), wall time measured (target < 10 min)
#   overhead   benchmarks/metrics_overhead.py (gpt2, seq 1024, every sampler on vs none)
#   kernels    the kernel targets at 131072 tokens per size: flex vs SDPA-flash at T = 1024..4096,
#              sliding_window vs flex at T = 16384
#   scaling1, scaling2  the scaling preset, shard 1/2 or 2/2 (merged afterwards with main.py merge)
#   scaleout1  benchmarks/scaleout.sh with ONE_GPU=1: the --gpus pool and torchrun DDP on one GPU
#   full_test_medium, full_test_large  the full_test preset (batch 8, the preset's) for gpt2-medium
#              and gpt2-large; not run yet (device time), about 10 and 13 minutes expected: run each
#              alone, then `main.py --resume` if the call's limit cuts one off
set -uo pipefail
OUT=${OUT:-out}
W=$OUT/w
mkdir -p "$W"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-570} ))
{ nvidia-smi --query-gpu=name,driver_version,power.limit,memory.total,clocks.max.sm --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  nproc; git log -1 --format='commit %H %s' 2>/dev/null || true
} 2>&1 | tee "$W/env.txt"

WORK=$W source benchmarks/gpu_steps.sh  # left, step NAME MIN_SECONDS CMD...

for s in "$@"; do
  case $s in
    full_test) step full_test 300 python3 main.py --preset full_test --offline --model gpt2 --batch-size 32 \
                 --out "$W/full_test" ;;
    overhead) step overhead 80 python3 benchmarks/metrics_overhead.py --out "$W/metrics_overhead/overhead.json" ;;
    kernels) step kernels_flex_vs_flash 60 python3 benchmarks/attention_kernels.py --mechanisms flash,flex \
               --seq-lens 1024,2048,4096 --tokens 131072 --out "$W/kernels_131k_short"
             step kernels_window 40 python3 benchmarks/attention_kernels.py --mechanisms flex,sliding_window \
               --seq-lens 16384 --tokens 131072 --out "$W/kernels_131k_16k" ;;
    scaling1|scaling2) step "$s" 200 python3 main.py --preset scaling --offline --shard "${s#scaling}/2" \
                 --out "$W/scaling" ;;
    scaleout1) step scaleout1 120 env ONE_GPU=1 bash benchmarks/scaleout.sh "$W/scaleout_1gpu" ;;
    full_test_medium|full_test_large) step "$s" 300 python3 main.py --preset full_test --offline \
                 --model "gpt2-${s#full_test_}" --out "$W/full_test" ;;
    *) echo "unknown step $s" ;;
  esac
done
tar czf "$OUT/full_test_and_kernels.tgz" -C "$W" .
