#!/usr/bin/env bash
# H200, 2026-12-02: the compile-time targets of compiled sweeps, each command from emptied
# torch.compile caches (benchmarks/compile_budget.py), and the GPU-only tests of the overlap
# (runs compile side by side, each measured alone). Steps named on the command line run in order
# within BUDGET_S seconds (benchmarks/gpu_steps.sh); everything but the caches lands in
# $OUT/<first step>.tgz.
#   OUT=/some/dir BUDGET_S=570 bash results/reference/h200/records/2026-12-02_compile_budget.sh full_test scaling_1
# Steps:
#   full_test                 the full_test preset (gpt2, all nine, T = 1024, compiled), target 4 min
#   scaling_1 .. scaling_3    the scaling preset (compiled, T = 512 ... 16384), shard k/3 from its
#                             own cold cache; the three summed against the 20 min target
#   gpu_tests                 the GPU-only tests of tests/test_sweep.py and tests/test_overlap.py
set -uo pipefail
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-out}
WORK=${WORK:-/tmp/ab_$1}
mkdir -p "$OUT"
source benchmarks/gpu_steps.sh
record_env "$WORK/env_$1.txt"
B="python3 benchmarks/compile_budget.py run --out $WORK/budget"
for s in "$@"; do
  case $s in
    full_test) step full_test 200 $B --group full_test --target-min 4 -- --preset full_test --offline ;;
    scaling_[123]) step $s 200 $B --group scaling --target-min 20 -- --preset scaling --offline --shard ${s#scaling_}/3 ;;
    gpu_tests) step gpu_tests 60 python3 -m pytest -q -rs -p no:cacheprovider tests/test_overlap.py tests/test_sweep.py -k "gpu or pause" ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
python3 benchmarks/compile_budget.py summary "$WORK/budget" > "$WORK/budget/summary.md" 2>&1
tar czf "$OUT/$1.tgz" --exclude='.runs' --exclude='*.pt' --exclude='caches' -C "$WORK" .
