#!/usr/bin/env bash
# Timed steps for one call on a GPU machine: source it, then `step NAME MIN_SECONDS CMD...`.
# Each step runs with the time left before DEADLINE (BUDGET_S seconds from sourcing, default 570),
# its output in $WORK/NAME.log headed by the command line, one line in $WORK/steps.log with its
# exit code and time; a step that would start with less than MIN_SECONDS left is skipped, and
# says so. record_env FILE writes the date, GPU, driver, torch, transformers and commit.
#   WORK=/tmp/w BUDGET_S=500 source benchmarks/gpu_steps.sh
#   step kernels 60 python3 benchmarks/attention_kernels.py --mechanisms lsh,baseline --out "$WORK/k"
: "${WORK:?set WORK to the folder for the logs}"
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-570} ))

left() { echo $(( DEADLINE - $(date +%s) )); }

record_env() {
  { date -u; nvidia-smi --query-gpu=index,name,driver_version,power.limit,memory.total --format=csv 2>&1
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'gpus', torch.cuda.device_count())"
    nproc; git log -1 --format='commit %H %s' 2>/dev/null || true; git status --short 2>/dev/null | head -20
  } > "$1" 2>&1
}

step() {
  local name=$1 need=$2 t0 rc
  shift 2
  if (( $(left) < need )); then
    echo "== $name skipped: $(left) s left, needs about $need s" | tee -a "$WORK/steps.log"
    return
  fi
  t0=$(date +%s)
  { echo "\$ $*"; timeout "$(left)" "$@"; } > "$WORK/$name.log" 2>&1
  rc=$?
  echo "== $name: exit $rc in $(( $(date +%s) - t0 )) s" | tee -a "$WORK/steps.log"
  grep -v "^    step\|Warning\|warn\|DEBUG" "$WORK/$name.log" | tail -15
}

# A record script's two ends: record_begin NAME after sourcing (the output folder, the machine's
# record); record_end NAME packs $WORK into $OUT/NAME.tgz, less caches, run files, tensors and the
# figures the reference results do not keep (per-metric bars, per-batch lines: a results folder's
# 5-6 MB, which `main.py show DIR --redraw` draws again from the CSVs).
record_begin() {
  mkdir -p "${OUT:?set OUT}"
  record_env "$WORK/env_$1.txt"
}

record_end() {
  tar czf "$OUT/$1.tgz" --exclude='.runs' --exclude='*.pt' --exclude='caches' --exclude='bar_*.png' \
    --exclude='batches_*.png' -C "$WORK" .
}
