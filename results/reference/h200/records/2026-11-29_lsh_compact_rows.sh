#!/usr/bin/env bash
# H200, 2026-11-29: lsh's flex path over compact rows (attentions/lsh.py flex_rows), measured end to
# end, in one device call within BUDGET_S seconds. The steps named run in order, each cut at the
# budget; logs, kernel CSVs/plots and profiles go to $WORK, then into one $OUT/lsh_compact_rows.tgz (a
# device call returns at most 8 files).
#   OUT=/some/dir BUDGET_S=570 bash results/reference/h200/records/2026-11-29_lsh_compact_rows.sh flex_tests kernels_flex ...
# The calls made (results/reference/h200/, README "What it measured on an H200"):
#   1. all six steps, with flex_rows finding its key rows by torch.searchsorted: inductor could not
#      lower it (NotImplementedError: View), so kernels_flex and profile failed; the in-model test
#      failed on its own graph break (transformers logs a warning in its loss); mask_loads and
#      kernels_matmul ran (their logs only: the CSVs were past the 8 files)
#   2. after the fix (a cumsum instead): flex_tests kernels_flex profile kernels_matmul gpu_tests;
#      kernels_flex (379 s) and profile ran, the in-model test hit a graph break at lsh.uses_flex's
#      triton check, kernels_matmul was cut at the budget and gpu_tests skipped
#   3. with impl=auto (flex on CUDA) the default, the triton check skipped while compiling:
#      flex_tests gpu_tests inmodel
#   4. scaling (its tar left out every *.json, the results folders' manifest.json too)
#   5. inmodel scaling_lsh: the two runs again, for folders with their manifest.json
#      (scaling_lsh was cut at the budget while writing its report: report.md and plots were
#      then written from the manifest and CSVs with report.make_plots / write_report)
# Steps:
#   1. the GPU tests of the flex path: gradients against the matmul path; the whole model
#      compiled fullgraph with impl=flex trains like impl=matmul
#   2. benchmarks/attention_kernels.py: lsh (impl=flex) and baseline, 131072 tokens, T = 256..16384
#   3. benchmarks/flex_mask_loads.py: flex alone, slot layout (three masks) against compact rows
#   4. benchmarks/profile_lsh.py --impls flex,matmul: where each path's time goes (T = 2048)
#   5. lsh with impl=matmul in the same device call, T = 256..16384, for same-machine ratios
#   6. the rest of the GPU tests of tests/test_attentions.py
#   7. inmodel: main.py, gpt2 at T = 2048, baseline against lsh (impl=auto: flex), model uncompiled
#   8. scaling: the scaling preset (gpt2, 16384 tokens per batch, T = 512..16384) for lsh and sdpa
set -uo pipefail
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-out}
WORK=${WORK:-/tmp/lsh_compact_rows}
mkdir -p "$OUT"
source benchmarks/gpu_steps.sh  # left, record_env, step NAME MIN_SECONDS CMD...
record_env "$WORK/env.txt"
run_step() {
  case $1 in
  flex_tests) step flex_tests 20 python3 -m pytest -q -rs -p no:cacheprovider tests/test_attentions.py \
    -k "lsh_compiled_flex or lsh_flex_path" ;;
  kernels_flex) step kernels_flex 20 python3 benchmarks/attention_kernels.py --tokens 131072 --mechanisms lsh,baseline \
    --params lsh.impl=flex --out "$WORK/kernels_lsh_flex" ;;
  mask_loads) step mask_loads 20 python3 benchmarks/flex_mask_loads.py ;;
  profile) step profile 20 python3 benchmarks/profile_lsh.py --impls flex,matmul --rows 25 --out "$WORK/profile" ;;
  kernels_matmul) step kernels_matmul 20 python3 benchmarks/attention_kernels.py --tokens 131072 --mechanisms lsh \
    --out "$WORK/kernels_lsh_matmul" ;;
  inmodel) step inmodel 20 python3 main.py --preset fast_test --offline --model gpt2 --attention baseline,lsh \
    --seq-len 2048 --batch-size 8 --steps 20 --epochs 1 --warmup 5 --out "$WORK/inmodel" ;;
  scaling) step scaling 20 python3 main.py --preset scaling --offline --attention lsh,sdpa --out "$WORK/scaling" ;;
  scaling_lsh) step scaling_lsh 20 python3 main.py --preset scaling --offline --attention lsh --out "$WORK/scaling" ;;
  gpu_tests) step gpu_tests 20 python3 -m pytest -q -rs -p no:cacheprovider tests/test_attentions.py -k "cuda" ;;
  *) echo "unknown step $1"; return 2 ;;
  esac
}
for s in "$@"; do run_step "$s"; done
tar czf "$OUT/lsh_compact_rows.tgz" --exclude='lsh_*.json' -C "$WORK" .  # not the traces; the manifests
