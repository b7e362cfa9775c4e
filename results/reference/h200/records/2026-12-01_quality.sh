#!/usr/bin/env bash
# H200, 2026-12-01: quality beside cost. Steps named on the command line run in order within
# BUDGET_S seconds (benchmarks/gpu_steps.sh); everything lands in $OUT/<first step>.tgz.
#   OUT=/some/dir BUDGET_S=540 bash results/reference/h200/records/2026-12-01_quality.sh full_test recall
# Steps:
#   full_test   full_test, gpt2, sdpa + flex_sparse + lsh, compiled, batch 32 (the in-model rows of
#               the mechanisms as named)
#   recall      the recall preset: MQAR on the 2 x 128 probe model, all nine, T = 256 and 1024,
#               8 and 32 pairs
#   gpu_tests_quality   the GPU-only tests of tests/test_quality.py
#   quality_1, quality_2, quality_3   the quality preset (gpt2, all nine, equal token budget), shard
#               k/3 = seed k-1 of every mechanism (join the shards with main.py merge)
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
    gpu_tests_quality) step gpu_tests_quality 30 python3 -m pytest -q -rs -p no:cacheprovider tests/test_quality.py -k cuda ;;
    full_test) step full_test 120 $M --preset full_test --attention sdpa,flex_sparse,lsh --batch-size 32 ;;
    recall) step recall 120 $M --preset recall ;;
    quality_[123]) step $s 200 $M --preset quality --shard ${s#quality_}/3 ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
tar czf "$OUT/$1.tgz" --exclude='.runs' --exclude='*.pt' -C "$WORK" .
