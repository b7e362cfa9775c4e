#!/usr/bin/env bash
# Scale-out on one host with >= 2 GPUs (written for 2 x H200; about 5 minutes), offline:
#   1. sweep pool: the same 4-run gpt2 plan with --gpus 0 and with --gpus 0,1; wall time and
#      speed-up, and each run's tokens/s both ways (do side-by-side runs slow each other down?).
#   2. DDP: torchrun of gpt2-medium (sdpa, seq 1024) on 1 and 2 GPUs. batch_size is the global
#      batch, so weak scaling = 2 GPUs x 8 rows vs 1 GPU x 8 rows, strong scaling = 16 rows on
#      both; efficiency = tokens/s on 2 GPUs / (2 x tokens/s on 1 GPU). The 16-row loss curves of
#      1 and 2 GPUs must agree (same global batch).
# Everything lands in $OUT (default results/scaleout_<time>): one results folder per command,
# their logs, wall_s.csv, and scaleout.json + scaleout.md with the numbers.
#   bash benchmarks/scaleout.sh [OUT]
#   CPU_CHECK=1 bash benchmarks/scaleout.sh /tmp/so   # the plumbing on a CPU: tiny model, no --gpus
#   ONE_GPU=1 bash benchmarks/scaleout.sh OUT          # a host with one GPU: each path (the --gpus
#                                                      # pool, torchrun DDP) on 1 GPU, no 2-GPU command
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${1:-${OUT:-results/scaleout_$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1   # these hosts forbid NVLink multicast
nvidia-smi --query-gpu=index,name,uuid,driver_version,power.limit --format=csv > "$OUT/gpus.csv" 2>&1 || true
echo "name,wall_s" > "$OUT/wall_s.csv"

timed() {  # timed NAME CMD...: CMD's output to $OUT/NAME.log, its wall seconds to wall_s.csv
  local name=$1 t0 t1
  shift
  t0=$(date +%s.%N)
  if ! "$@" > "$OUT/$name.log" 2>&1; then
    echo "$name failed; the end of $OUT/$name.log:"
    tail -25 "$OUT/$name.log"
    exit 1
  fi
  t1=$(date +%s.%N)
  echo "$name,$(awk "BEGIN {print $t1 - $t0}")" >> "$OUT/wall_s.csv"
  grep -v "^    step" "$OUT/$name.log" | tail -3
}

# 1. One sweep, 1 GPU vs 2 GPUs (the same pool code, so only the GPU count differs).
SWEEP=(--preset fast_test --offline --model gpt2 --attention sdpa,flash,linear,sliding_window
       --seq-len 1024 --batch-size 8 --steps 10 --epochs 1 --warmup 3 --no-compile)
GPUS1=(--gpus 0) GPUS2=(--gpus 0,1)
DDP=(--preset fast_test --offline --model gpt2-medium --attention sdpa --seq-len 1024 --steps 20
     --epochs 1 --warmup 5 --no-compile)
if [[ ${CPU_CHECK:-0} == 1 ]]; then
  SWEEP=(--preset smoke --attention sdpa,linear --seq-len 64 --steps 2 --epochs 1 --warmup 1)
  GPUS1=() GPUS2=()
  DDP=(--preset smoke --attention sdpa --seq-len 64 --steps 3 --epochs 1 --warmup 1 --device cpu)
fi
timed sweep_1gpu "$PY" main.py "${SWEEP[@]}" "${GPUS1[@]}" --out "$OUT/sweep_1gpu"
[[ ${ONE_GPU:-0} == 1 ]] || timed sweep_2gpu "$PY" main.py "${SWEEP[@]}" "${GPUS2[@]}" --out "$OUT/sweep_2gpu"

# 2. DDP of gpt2-medium: torchrun on 1 GPU (the same DDP code path) and on 2 GPUs.
ddp() { "$PY" -m torch.distributed.run --standalone --nproc_per_node "$@"; }  # torchrun, PATH or not
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # torchrun sets 1 only when N > 1: same for 1 and 2 GPUs
timed ddp_1gpu_b8 ddp 1 main.py "${DDP[@]}" --batch-size 8 --out "$OUT/ddp_1gpu_b8"
timed ddp_1gpu_b16 ddp 1 main.py "${DDP[@]}" --batch-size 16 --out "$OUT/ddp_1gpu_b16"
[[ ${ONE_GPU:-0} == 1 ]] || timed ddp_2gpu_b16 ddp 2 main.py "${DDP[@]}" --batch-size 16 --out "$OUT/ddp_2gpu_b16"

"$PY" benchmarks/scaleout_summary.py "$OUT"
