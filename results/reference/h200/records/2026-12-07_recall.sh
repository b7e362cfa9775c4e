#!/usr/bin/env bash
# H200, 2026-12-07: the MQAR recall probe's training budget, calibrated on exact attention (sdpa),
# then the table; the GPU-only overlap tests; the quality_t4 preset on the T4's code paths
# (emulated: AB_EMULATE_CAPABILITY=7.5, fp16; the H200's speed, not a T4's).
# Steps named on the command line run in order within BUDGET_S seconds (benchmarks/gpu_steps.sh);
# everything but caches lands in $OUT/<first step>.tgz.
#   OUT=/some/dir BUDGET_S=570 bash results/reference/h200/records/2026-12-07_recall.sh calib gpu_tests
# Steps:
#   calib       sdpa on the recall preset, 6 configurations side by side on the one GPU (their step
#               times are not measurements), 128 rows a step (64 at T 1024), held-out recall every
#               250 steps, each cut at 4 min: T, pairs, vocabulary (64 and 128, as the CPU showed at
#               T 32 and 64, against the preset's 8192), lr
#   gpu_tests   the GPU-only tests of the overlap (tests/test_sweep.py, tests/test_overlap.py)
#   t4_emulated quality_t4, seed 0 (--shard 1/3), the T4's code paths in fp16
#   table       the recall preset, all nine, MQAR_STEPS steps at lr MQAR_LR, MQAR_SHARDS shards
#               side by side (recall is the result; their step times are not measurements)
set -uo pipefail
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-out} WORK=${WORK:-/tmp/ab_$1}
source benchmarks/gpu_steps.sh
record_begin "$1"
R="python3 main.py --preset recall --offline"

side_by_side() {  # side_by_side NAME SECONDS "ARGS" "ARGS" ...: one main.py each, at once, each cut at SECONDS
  local name=$1 limit=$2 i=0 t0=$(date +%s)
  shift 2
  for args in "$@"; do
    i=$((i + 1))
    { echo "\$ $R $args"; timeout "$limit" $R --out "$WORK/$name/$i" $args; echo "exit $?"; } \
      > "$WORK/${name}_$i.log" 2>&1 &
  done
  wait
  echo "== $name: $i side by side in $(( $(date +%s) - t0 )) s" | tee -a "$WORK/steps.log"
  grep -h "eval at\|^\\$\|-> \|exit" "$WORK/${name}"_*.log | cut -c1-160
}

for s in "$@"; do
  case $s in
    calib)
      C="--attention sdpa --steps 6000 --eval-every 250 --eval-tokens 32768 --lr 1e-3"
      side_by_side calib 240 \
        "$C --seq-len 256 --recall-pairs 8 --recall-vocab 64 --tokens-per-batch 32768" \
        "$C --seq-len 256 --recall-pairs 16 --recall-vocab 64 --tokens-per-batch 32768" \
        "$C --seq-len 256 --recall-pairs 8 --recall-vocab 64 --tokens-per-batch 32768 --lr 3e-3" \
        "$C --seq-len 256 --recall-pairs 8 --tokens-per-batch 32768" \
        "$C --seq-len 1024 --recall-pairs 32 --recall-vocab 128 --tokens-per-batch 65536" \
        "$C --seq-len 1024 --recall-pairs 8 --recall-vocab 64 --tokens-per-batch 65536" ;;
    gpu_tests) step gpu_tests 120 python3 -m pytest -q -rs -p no:cacheprovider tests/test_overlap.py tests/test_sweep.py -k "gpu or pause" ;;
    t4_emulated) step t4_emulated 150 env AB_EMULATE_CAPABILITY=7.5 python3 main.py --preset quality_t4 --offline \
                   --dtype fp16 --shard 1/3 --out "$WORK/t4" ;;
    table)
      args=()
      for k in $(seq 1 "${MQAR_SHARDS:?}"); do
        args+=("--steps ${MQAR_STEPS:?} --lr ${MQAR_LR:?} ${MQAR_EXTRA:-} --shard $k/$MQAR_SHARDS")
      done
      side_by_side table "$(( $(left) - 20 ))" "${args[@]}" ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
record_end "$1"
