#!/usr/bin/env bash
# H200, 2026-12-02: lsh with the backward's page lists built in its layout op (not transposed
# inside the compiled graph). Everything lands in $OUT/<first step>.tgz.
#   OUT=/some/dir BUDGET_S=540 bash results/reference/h200/records/2026-12-02_lsh_fix.sh check full_test tiles
# Steps:
#   check       benchmarks/compiled_check.py under CUDA_LAUNCH_BLOCKING=1: lsh in a 2-layer
#               gpt2-width model, T = 1024, batch 32 (before: an illegal memory access in flex's
#               backward kernel at the first step)
#   full_test   full_test, gpt2, sdpa + flex_sparse + lsh, compiled, batch 32
#   tiles       benchmarks/lsh_tiles.py at T = 2048: lsh's fwd+bwd under other flex tiles, beside
#               baseline's
#   gpu_tests_lsh   lsh's GPU-only tests
set -uo pipefail
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-out}
WORK=${WORK:-/tmp/ab_$1}
mkdir -p "$OUT"
source benchmarks/gpu_steps.sh
record_env "$WORK/env.txt"
M="python3 main.py --offline --out $WORK/results"
for s in "$@"; do
  case $s in
    check) CUDA_LAUNCH_BLOCKING=1 step check 60 python3 benchmarks/compiled_check.py --attention lsh \
             --batch-size 32 --seq-len 1024 --steps 8 --layers 2 ;;
    full_test) step full_test 200 $M --preset full_test --attention sdpa,flex_sparse,lsh --batch-size 32 ;;
    tiles) step tiles 90 python3 benchmarks/lsh_tiles.py --seq-lens 2048 --out "$WORK/tiles" ;;
    gpu_tests_lsh) step gpu_tests_lsh 240 python3 -m pytest -q -rs -p no:cacheprovider tests/test_lsh.py -k cuda ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
tar czf "$OUT/$1.tgz" --exclude='.runs' --exclude='*.pt' -C "$WORK" .
