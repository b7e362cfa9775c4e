#!/usr/bin/env bash
# H200, 2026-12-02: lsh with 64 x 64 forward tiles on Hopper (attentions/lsh_flex.py tiles) and
# the backward's page lists from its layout op. Everything lands in $OUT/<first step>.tgz.
#   OUT=/some/dir BUDGET_S=540 bash results/reference/h200/records/2026-12-02_lsh_tiles.sh gpu_tests_lsh kernels_lsh
# Steps:
#   gpu_tests_lsh   lsh's GPU-only tests (causal in value on CUDA, flex equals the matmul path, ...)
#   kernels_lsh     the kernel benchmark, lsh and baseline, T = 1024, 2048, 4096, 131,072 tokens
#   full_test_lsh   full_test, gpt2, lsh, compiled, batch 32
set -uo pipefail
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-out}
WORK=${WORK:-/tmp/ab_$1}
mkdir -p "$OUT"
source benchmarks/gpu_steps.sh
record_env "$WORK/env.txt"
K="python3 benchmarks/attention_kernels.py --tokens 131072 --seq-lens 1024,2048,4096"
for s in "$@"; do
  case $s in
    gpu_tests_lsh) step gpu_tests_lsh 240 python3 -m pytest -q -rs -p no:cacheprovider tests/test_lsh.py -k cuda ;;
    kernels_lsh) step kernels_lsh 120 $K --mechanisms baseline,lsh --out "$WORK/kernels_lsh" ;;
    full_test_lsh) step full_test_lsh 200 python3 main.py --offline --out "$WORK/results" --preset full_test \
                     --attention lsh --batch-size 32 ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
tar czf "$OUT/$1.tgz" --exclude='.runs' --exclude='*.pt' -C "$WORK" .
