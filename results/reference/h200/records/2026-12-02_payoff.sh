#!/usr/bin/env bash
# H200, 2026-12-02: the payoff results of the quality issue, each compile-time command from
# emptied torch.compile caches (benchmarks/compile_budget.py): full_test against its 4 min target,
# the compiled scaling sweep in three shards against its 20 min target, the GPU-only tests of the
# overlap, and the MQAR recall probe (its training budget calibrated on sdpa, then the table).
# Steps named on the command line run in order within BUDGET_S seconds (benchmarks/gpu_steps.sh);
# everything but the caches lands in $OUT/<first step>.tgz.
#   OUT=/some/dir BUDGET_S=570 bash results/reference/h200/records/2026-12-02_payoff.sh full_test scaling_3
# Steps:
#   full_test                 the full_test preset (gpt2, all nine, T = 1024, compiled), target 4 min
#   scaling_1 .. scaling_3    the scaling preset (compiled, T = 512 ... 16384), shard k/3 from its
#                             own cold cache; the three summed against the 20 min target
#   gpu_tests                 the GPU-only tests of tests/test_sweep.py and tests/test_overlap.py
#   mqar_calib                sdpa on the recall preset with 3000 steps, lr 3e-3 (T 256, 1024; 8 and
#                             32 pairs) and lr 1e-3 (T 256, 32 pairs): the budget exact attention needs
#   mqar_table                the recall preset, all nine, with MQAR_STEPS steps at lr MQAR_LR
set -uo pipefail
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-out} WORK=${WORK:-/tmp/ab_$1}
source benchmarks/gpu_steps.sh
record_begin "$1"
B="python3 benchmarks/compile_budget.py run --out $WORK/budget"
R="python3 main.py --preset recall --offline --out $WORK/recall"
for s in "$@"; do
  case $s in
    full_test) step full_test 200 $B --group full_test --target-min 4 -- --preset full_test --offline ;;
    scaling_[123]) step $s 200 $B --group scaling --target-min 20 -- --preset scaling --offline --shard ${s#scaling_}/3 ;;
    gpu_tests) step gpu_tests 60 python3 -m pytest -q -rs -p no:cacheprovider tests/test_overlap.py tests/test_sweep.py -k "gpu or pause" ;;
    mqar_calib) step mqar_calib_3e-3 60 $R --attention sdpa --seq-len 256,1024 --recall-pairs 8,32 --steps 3000 --lr 3e-3
                step mqar_calib_1e-3 30 $R --attention sdpa --seq-len 256 --recall-pairs 32 --steps 3000 --lr 1e-3 ;;
    mqar_table) step mqar_table 120 $R --steps "${MQAR_STEPS:?}" --lr "${MQAR_LR:?}" ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
[ -d "$WORK/budget" ] && python3 benchmarks/compile_budget.py summary "$WORK/budget" > "$WORK/budget/summary.md" 2>&1
record_end "$1"
