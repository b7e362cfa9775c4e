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

"$PY" - "$OUT" <<'EOF'
"""Read the folders above; write scaleout.json and scaleout.md."""
import json, sys
from pathlib import Path
import pandas as pd

out = Path(sys.argv[1])
wall = pd.read_csv(out / "wall_s.csv").set_index("name")["wall_s"]
folder = lambda name: next(p for p in (out / name).iterdir() if (p / "manifest.json").exists())
summary = lambda name: pd.read_csv(folder(name) / "summary.csv")
tps = lambda name: float(summary(name)["tokens_per_s"].iloc[0])

s1 = summary("sweep_1gpu")
two = "sweep_2gpu" in wall  # ONE_GPU=1 ran only the 1-GPU half
ddp_names = [n for n in ("ddp_1gpu_b8", "ddp_1gpu_b16", "ddp_2gpu_b16") if n in wall]
res = dict(sweep=dict(wall_1gpu_s=wall["sweep_1gpu"], per_run_1gpu=s1[["attention", "status", "tokens_per_s"]]
                      .to_dict("records")),
           ddp=dict(tokens_per_s={n: tps(n) for n in ddp_names}, wall_s={n: wall[n] for n in ddp_names}))
md = ["# Scale-out", ""]
if two:
    s2 = summary("sweep_2gpu")
    per_run = s1[["attention", "status", "tokens_per_s"]].merge(
        s2[[c for c in ("attention", "status", "tokens_per_s", "gpu") if c in s2]], on="attention",
        suffixes=("_1gpu", "_2gpu"))
    per_run["ratio_2gpu_over_1gpu"] = per_run["tokens_per_s_2gpu"] / per_run["tokens_per_s_1gpu"]
    b1, b2 = (pd.read_csv(folder(n) / "batches.csv") for n in ("ddp_1gpu_b16", "ddp_2gpu_b16"))
    loss1, loss2 = b1[b1["rank"] == 0]["loss"].to_numpy(), b2[b2["rank"] == 0]["loss"].to_numpy()
    d2 = json.loads((folder("ddp_2gpu_b16") / "manifest.json").read_text())["runs"][0]
    res["sweep"].update(wall_2gpu_s=wall["sweep_2gpu"], speedup=wall["sweep_1gpu"] / wall["sweep_2gpu"],
                        per_run=per_run.to_dict("records"))
    res["ddp"].update(weak_scaling_efficiency=tps("ddp_2gpu_b16") / (2 * tps("ddp_1gpu_b8")),
                      strong_scaling_efficiency=tps("ddp_2gpu_b16") / (2 * tps("ddp_1gpu_b16")),
                      loss_max_abs_diff_1gpu_vs_2gpu=float(abs(loss1 - loss2).max()),
                      gpu_memory_mb_by_rank_2gpu=d2.get("gpu_memory_mb_by_rank"), nvml_by_rank_2gpu=d2.get("nvml_by_rank"))
    d = res["ddp"]
    md += [f"Sweep of {len(s1)} runs: 1 GPU {wall['sweep_1gpu']:.1f} s, 2 GPUs "
           f"{wall['sweep_2gpu']:.1f} s, speed-up {res['sweep']['speedup']:.2f}x", "",
           per_run.to_string(index=False), "",
           f"DDP gpt2-medium, seq 1024: tokens/s {', '.join(f'{k} {v:,.0f}' for k, v in d['tokens_per_s'].items())}",
           f"weak scaling efficiency {d['weak_scaling_efficiency']:.3f}, strong {d['strong_scaling_efficiency']:.3f}; "
           f"loss 1 vs 2 GPUs max |diff| {d['loss_max_abs_diff_1gpu_vs_2gpu']:.2e}; "
           f"peak memory per rank {d['gpu_memory_mb_by_rank_2gpu']} MB"]
else:
    md += ["One GPU only (ONE_GPU=1): each scale-out path run on 1 GPU; no 2-GPU number.", "",
           f"Sweep of {len(s1)} runs through the --gpus pool on GPU 0: {wall['sweep_1gpu']:.1f} s", "",
           s1[["attention", "status", "tokens_per_s"]].to_string(index=False), "",
           "torchrun DDP, 1 process: tokens/s " + ", ".join(f"{k} {v:,.0f}" for k, v in res["ddp"]["tokens_per_s"].items())]
(out / "scaleout.json").write_text(json.dumps(res, indent=2, default=float))
(out / "scaleout.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
