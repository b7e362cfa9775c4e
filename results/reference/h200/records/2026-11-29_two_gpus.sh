#!/usr/bin/env bash
# H200 x 2, 2026-11-29: the device calls of 2026-11-29 (evening), on the 2-GPU kind
# (nvidia-h200-x2), each within one time budget. Steps run in the order given; "a&b" runs a and b
# side by side (each step pins its own GPU). Work happens in $WORK (it survives between calls
# while the machine stays warm, so a cut-off sweep can be resumed); $OUT gets one .tgz of it.
#   OUT=/some/dir BUDGET_S=570 bash results/reference/h200/records/2026-11-29_two_gpus.sh 'medium0&tests_kernels1'
# The calls made (results/reference/h200/, README "What it measured on an H200"):
#   1. BUDGET_S=560 ... 'medium0&tests_kernels1'   (medium: 514 s; the tests took 8.7 min with the
#      CPUs shared, so the kernel run after them was cut after 4 rows)
#   2. BUDGET_S=565 ... large_pool                 (520 s)
#   3. BUDGET_S=290 ... scaleout, then on GPU 0: python3 benchmarks/attention_kernels.py --tokens 131072
#      --mechanisms sliding_window,flex,linear,flash,lsh,baseline --seq-lens 16384,2048 (162 s);
#      scaleout's last step (torchrun on 2 GPUs) was cut at the budget
#   4. that step alone: python3 -m torch.distributed.run --standalone --nproc_per_node 2 main.py
#      --preset fast_test --offline --model gpt2-medium --attention sdpa --seq-len 1024 --steps 20
#      --epochs 1 --warmup 5 --no-compile --batch-size 16 (41.6 s), then here
#      python benchmarks/scaleout_summary.py results/reference/h200/scaleout_2gpu
# Steps:
#   medium0         full_test preset, gpt2-medium (batch 8, compiled, precompile auto), on GPU 0
#   large_pool      full_test preset, gpt2-large, through the --gpus 0,1 pool (each run alone on
#                   its GPU, two at a time)
#   tests_kernels1  on GPU 1: the GPU-only tests, then benchmarks/attention_kernels.py for all nine
#                   at 131072 tokens per size, T = 256 .. 16384 (the #3 targets)
#   scaleout        benchmarks/scaleout.sh: a 4-run sweep on 1 vs 2 GPUs, torchrun DDP of
#                   gpt2-medium on 1 vs 2 GPUs
#   resume          main.py --resume every unfinished results folder under $WORK
set -uo pipefail
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-out}
WORK=${WORK:-/root/ab_work}
mkdir -p "$WORK" "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # no NVLink multicast here
DEADLINE=$(( $(date +%s) + ${BUDGET_S:-570} ))
{ date -u; nvidia-smi --query-gpu=index,name,uuid,driver_version,power.limit,memory.total --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'gpus', torch.cuda.device_count())"
  nproc; git log -1 --format='commit %H %s' 2>/dev/null || true; git status --short | head -20
} > "$WORK/env_$(date +%H%M%S).txt" 2>&1

left() { echo $(( DEADLINE - $(date +%s) )); }
run_step() {  # run_step NAME: its command with the time left, output to $WORK/NAME.log
  local name=$1 t0 rc
  t0=$(date +%s)
  case $name in
    medium0) CUDA_VISIBLE_DEVICES=0 timeout "$(left)" python3 main.py --preset full_test --offline \
               --model gpt2-medium --out "$WORK/full_test" ;;
    large_pool) timeout "$(left)" python3 main.py --preset full_test --offline --model gpt2-large \
               --gpus 0,1 --out "$WORK/full_test" ;;
    tests_kernels1)
      CUDA_VISIBLE_DEVICES=1 timeout "$(left)" python3 -m pytest -q -rs -p no:cacheprovider \
        tests/test_attentions.py tests/test_metrics.py tests/test_sweep.py > "$WORK/gpu_tests.log" 2>&1
      echo "gpu tests: exit $?; $(tail -1 "$WORK/gpu_tests.log")"
      CUDA_VISIBLE_DEVICES=1 timeout "$(left)" python3 benchmarks/attention_kernels.py --tokens 131072 \
        --mechanisms flash,flex,sliding_window,linear,lsh,baseline,sdpa,gqa,flex_sparse \
        --out "$WORK/kernels_131k_all" ;;
    scaleout) timeout "$(left)" bash benchmarks/scaleout.sh "$WORK/scaleout_2gpu" ;;
    resume) for m in "$WORK"/full_test/*/manifest.json; do
              d=$(dirname "$m")
              python3 -c "import json, sys; sys.exit(bool(json.load(open(sys.argv[1]))['finished']))" "$m" || continue
              timeout "$(left)" python3 main.py --resume "$d"
            done ;;
    *) echo "unknown step $name"; return 2 ;;
  esac > "$WORK/$name.log" 2>&1
  rc=$?
  echo "== $name: exit $rc in $(( $(date +%s) - t0 )) s" | tee -a "$WORK/steps.log"
  grep -v "^    step" "$WORK/$name.log" | tail -20
}

for group in "$@"; do
  IFS='&' read -ra lanes <<< "$group"
  for s in "${lanes[@]}"; do run_step "$s" & done
  wait
done
tar czf "$OUT/two_gpus.tgz" --exclude='*.pt' -C "$WORK" .
