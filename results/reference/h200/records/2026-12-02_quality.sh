#!/usr/bin/env bash
# H200, 2026-12-02: the quality preset (3 shards, one seed of every mechanism each), the GPU
# regression test of lsh inside the compiled model, and the kernel rows of lsh and baseline at
# T = 8192 and 16384. Steps named on the command line run in order within BUDGET_S seconds
# (benchmarks/gpu_steps.sh); everything lands in $OUT/<first step>.tgz. torch.compile's caches
# live in tmp/ in the checkout, so a later call on the same (still warm) machine reuses them.
#   OUT=/some/dir BUDGET_S=560 bash results/reference/h200/records/2026-12-02_quality.sh quality_1 compiled_check
# Steps:
#   quality_1, quality_2, quality_3   the quality preset (gpt2, all nine, T = 1024, equal token
#                  budget), shard k/3 = seed k-1 of every mechanism; join them with main.py merge
#   compiled_check the GPU-only test of tests/test_compiled_check.py (lsh trains compiled in a
#                  2-layer gpt2 under CUDA_LAUNCH_BLOCKING=1)
#   kernels_long   the kernel benchmark, baseline and lsh, T = 8192 and 16384, 131,072 tokens
set -uo pipefail
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-out}
WORK=${WORK:-/tmp/ab_$1}
mkdir -p "$OUT" tmp
export TORCHINDUCTOR_CACHE_DIR=$PWD/tmp/inductor TRITON_CACHE_DIR=$PWD/tmp/triton
source benchmarks/gpu_steps.sh
record_env "$WORK/env_$1.txt"
M="python3 main.py --offline --out $WORK/results"
K="python3 benchmarks/attention_kernels.py --tokens 131072 --seq-lens 8192,16384"
for s in "$@"; do
  case $s in
    quality_[123]) step $s 240 $M --preset quality --shard ${s#quality_}/3 ;;
    compiled_check) step compiled_check 100 python3 -m pytest -q -rs -p no:cacheprovider tests/test_compiled_check.py -k cuda ;;
    kernels_long) step kernels_long 150 $K --mechanisms baseline,lsh --out "$WORK/kernels_long" ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
tar czf "$OUT/$1.tgz" --exclude='.runs' --exclude='*.pt' -C "$WORK" .
