#!/usr/bin/env bash
# H200, 2026-12-07: the MQAR table (nine mechanisms, three seeds, vocabulary 64, 4 pairs, T 64 and 128) beside the GPU-only
# tests of the overlap, then the compiled scaling sweep in three shards against its 20 min target,
# the shards sharing one torch.compile cache that is cold at the first (compile_budget.py
# --shared-cache: as one command would run the sweep). Keep WORK the same over the calls of one
# warm machine: the shards' cache and budget.jsonl live there.
# Steps named on the command line run in order within BUDGET_S seconds (benchmarks/gpu_steps.sh);
# everything but caches lands in $OUT/<first step>.tgz.
#   OUT=/some/dir BUDGET_S=580 WORK=/tmp/ab_0712 bash results/reference/h200/records/2026-12-07_table_and_scaling.sh mqar
#   OUT=/some/dir BUDGET_S=580 WORK=/tmp/ab_0712 bash .../2026-12-07_table_and_scaling.sh scaling_1
# Steps:
#   mqar                 the GPU-only tests in the background; the recall preset at T 64 then
#                        T 128 (4 pairs each), vocabulary 64, 128 rows a step, MQAR_STEPS steps (2000) at
#                        lr 1e-3, seeds 0..2, nine shards side by side (recall is the result; their
#                        step times are not measurements), each length cut at its share of the time
#   mqar_T32_calib       the same table at T 32 (MQAR_STEPS steps), beside sdpa alone at T 128, 4 pairs,
#                        8000 steps, seeds 0..2 (cut at the time left): 3000 steps were too few there
#   mqar_T128            sdpa alone at T 128, 4 pairs, 256 rows a step, lr 3e-3 over a 6000-step schedule
#                        (the one that learnt by step 500 for seed 0), seeds 0..2 side by side, cut at
#                        the time left: whether it learns every time before the nine run at T 128
#   scaling_1..scaling_3 the scaling preset (compiled, T = 512 ... 16384), shard k/3
#   scaling_merge        the three shards joined into one folder with its report ($WORK/merged)
# The packed MQAR results leave out batches.csv and samples.csv (27 MQAR runs of 3000 steps made
# 40 MB, past what one call brings back); summary.csv, eval.csv, the manifests and the logs stay.
# The scaling shards keep theirs: merge needs them. No pack holds the per-metric bar and per-batch
# figures (`main.py show DIR --redraw` draws them from the CSVs).
set -uo pipefail
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-out} WORK=${WORK:-/tmp/ab_$1}
source benchmarks/gpu_steps.sh
record_begin "$1"
R="python3 main.py --preset recall --offline"
B="python3 benchmarks/compile_budget.py run --out $WORK/budget"

side_by_side() {  # side_by_side NAME SECONDS "ARGS" "ARGS" ...: one main.py each, at once, each cut at SECONDS
  local name=$1 limit=$2 i=0 t0=$(date +%s) pids=()
  shift 2
  for args in "$@"; do
    i=$((i + 1))
    { echo "\$ $R $args"; timeout "$limit" $R --out "$WORK/$name/$i" $args; echo "exit $?"; } \
      > "$WORK/${name}_$i.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  echo "== $name: $i side by side in $(( $(date +%s) - t0 )) s" | tee -a "$WORK/steps.log"
  grep -h "eval at step ${MQAR_STEPS:-2000}\|-> \|exit" "$WORK/${name}"_*.log | cut -c1-160
}

mqar_length() {  # mqar_length NAME SECONDS T PAIRS
  local args=() k
  for k in $(seq 1 9); do
    args+=("--seq-len $3 --recall-pairs $4 --recall-vocab 64 --tokens-per-batch $((128 * $3)) --steps ${MQAR_STEPS:-2000}
            --lr 1e-3 --seeds 0,1,2 --eval-every 250 --eval-tokens $((8 * 128 * $3)) --shard $k/9")
  done
  side_by_side "$1" "$2" "${args[@]}"
}

sdpa_seeds() {  # sdpa_seeds NAME SECONDS "ARGS": sdpa alone with ARGS, seeds 0, 1 and 2 side by side
  side_by_side "$1" "$2" "--attention sdpa $3 --seeds 0" "--attention sdpa $3 --seeds 1" "--attention sdpa $3 --seeds 2"
}

for s in "$@"; do
  case $s in
    mqar)
      step gpu_tests 300 python3 -m pytest -q -rs -p no:cacheprovider tests/test_overlap.py tests/test_sweep.py \
        -k "gpu or pause" &
      tests=$!
      mqar_length mqar_T64 "$(( $(left) / 2 ))" 64 4
      mqar_length mqar_T128 "$(( $(left) - 25 ))" 128 4
      wait "$tests" ;;
    mqar_T32_calib)
      sdpa_seeds calib_T128 "$(( $(left) - 25 ))" "--seq-len 128 --recall-pairs 4 --recall-vocab 64 \
        --tokens-per-batch 16384 --steps 8000 --lr 1e-3 --eval-every 500 --eval-tokens 131072" &
      mqar_length mqar_T32 "$(( $(left) - 25 ))" 32 4
      wait ;;
    mqar_T128) sdpa_seeds T128_6000 "$(( $(left) - 25 ))" "--seq-len 128 --recall-pairs 4 --recall-vocab 64 \
                 --tokens-per-batch 32768 --steps 6000 --lr 3e-3 --eval-every 250 --eval-tokens 65536" ;;
    scaling_[123]) step $s 200 $B --group scaling --target-min 20 --shared-cache -- --preset scaling --offline \
                     --shard ${s#scaling_}/3 ;;
    scaling_merge) step scaling_merge 30 python3 main.py merge --out "$WORK/merged" "$WORK"/budget/results/*_scaling_shard* ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
record_end() {  # gpu_steps.sh's, less the MQAR runs' per-batch and per-sample files; says what else is large
  local mqar=() d f
  for d in mqar_ calib_ T128_; do for f in batches.csv samples.csv; do mqar+=(--exclude="$d*/$f"); done; done
  find "$WORK" -type f -size +1M -not -path '*/caches/*' -not -name '*.pt' -not -path '*/.runs/*' \
    -exec ls -la {} + | sort -k5 -n | tail -5
  tar czf "$OUT/$1.tgz" --exclude='.runs' --exclude='*.pt' --exclude='caches' --exclude='bar_*.png' \
    --exclude='batches_*.png' "${mqar[@]}" -C "$WORK" .
}
[ -d "$WORK/budget" ] && python3 benchmarks/compile_budget.py summary "$WORK/budget" > "$WORK/budget/summary.md" 2>&1
record_end "$1"
