#!/usr/bin/env bash
# H200, 2026-12-02: why lsh fails inside the compiled gpt2 model (full_test, T = 1024, batch 32),
# and where lsh's kernel time goes at T = 2048. Everything lands in $OUT/<first step>.tgz.
#   OUT=/some/dir BUDGET_S=540 bash results/reference/h200/records/2026-12-02_lsh_in_model.sh check
# Steps:
#   check     benchmarks/compiled_check.py, CUDA_LAUNCH_BLOCKING=1: lsh in a 2-layer gpt2-width
#             model; if that fails, the same with dedup off and with impl=matmul (which part
#             breaks); if it passes, the same again from the caches the first filled, then the
#             whole 12-layer gpt2 (the full_test run itself)
#   profile   benchmarks/profile_lsh.py, impl=flex, T = 2048, 131,072 tokens
set -uo pipefail
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-out}
WORK=${WORK:-/tmp/ab_$1}
mkdir -p "$OUT"
source benchmarks/gpu_steps.sh
record_env "$WORK/env.txt"
C="python3 benchmarks/compiled_check.py --attention lsh --batch-size 32 --seq-len 1024 --steps 8"
for s in "$@"; do
  case $s in
    check)
      CUDA_LAUNCH_BLOCKING=1 step check_2layers 60 $C --layers 2
      if grep -q FAILED "$WORK/check_2layers.log"; then
        CUDA_LAUNCH_BLOCKING=1 step check_2layers_nodedup 60 $C --layers 2 --params dedup=false
        CUDA_LAUNCH_BLOCKING=1 step check_2layers_matmul 60 $C --layers 2 --params impl=matmul
        step check_2layers_async 60 $C --layers 2
      else  # the sweep's measured run starts from the caches its precompile process filled
        CUDA_LAUNCH_BLOCKING=1 step check_2layers_warm_cache 40 $C --layers 2
        CUDA_LAUNCH_BLOCKING=1 step check_12layers 200 $C
      fi ;;
    profile) step profile 60 python3 benchmarks/profile_lsh.py --impls flex --T 2048 --rows 30 --out "$WORK/profile" ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
tar czf "$OUT/$1.tgz" -C "$WORK" .
