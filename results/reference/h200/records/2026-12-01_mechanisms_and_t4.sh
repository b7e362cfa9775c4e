#!/usr/bin/env bash
# H200, 2026-12-01: the mechanisms as their names say (lsh causal with duplicate correction,
# flex_sparse as Child et al.'s fixed pattern, the chunked pre-Ampere path), a T4 emulated, and
# the auto batch. Steps named on the command line run in order within BUDGET_S seconds
# (benchmarks/gpu_steps.sh); everything lands in $OUT/<first step>.tgz.
#   OUT=/some/dir BUDGET_S=470 bash results/reference/h200/records/2026-12-01_mechanisms_and_t4.sh gpu_tests kernels_flex
# Steps:
#   gpu_tests      every GPU-only test (pytest -k cuda) of the suite; gpu_tests_lsh: lsh's alone
#   kernels_flex   benchmarks/attention_kernels.py, 131072 tokens, T = 1024..16384: baseline, flex,
#                  flex_sparse, sliding_window on flex_attention; then flex_sparse and sliding_window
#                  forced onto the chunked path (impl=chunked), the pre-Ampere path, on the same GPU
#   kernels_lsh    the same for lsh (flex over pages) and baseline
#   t4_fp16        fast_test, gpt2, all nine, fp16, AB_EMULATE_CAPABILITY=7.5 (a T4's code paths,
#                  not its speed), batch 8 (a T4's 15 GB)
#   auto_bf16      fast_test, gpt2, all nine, bf16, batch auto
#   full_test      full_test, gpt2, sdpa + flex_sparse + lsh, compiled, batch 32
set -uo pipefail
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-out}
WORK=${WORK:-/tmp/ab_$1}
mkdir -p "$OUT"
source benchmarks/gpu_steps.sh
record_env "$WORK/env.txt"
K="python3 benchmarks/attention_kernels.py --tokens 131072 --seq-lens ${SEQ_LENS:-1024,2048,4096,8192,16384}"
for s in "$@"; do
  case $s in
    gpu_tests) step gpu_tests 60 python3 -m pytest -q -rs -p no:cacheprovider tests -k cuda ;;
    gpu_tests_lsh) step gpu_tests_lsh 60 python3 -m pytest -q -rs -p no:cacheprovider tests/test_lsh.py -k cuda ;;
    kernels_flex) step kernels_flex 60 $K --mechanisms baseline,flex,flex_sparse,sliding_window --out "$WORK/kernels_flex"
                  step kernels_chunked 60 $K --mechanisms flex_sparse,sliding_window \
                    --params flex_sparse.impl=chunked,sliding_window.impl=chunked --out "$WORK/kernels_chunked" ;;
    kernels_lsh) step kernels_lsh 60 $K --mechanisms baseline,lsh --out "$WORK/kernels_lsh" ;;
    t4_fp16) step t4_fp16 60 env AB_EMULATE_CAPABILITY=7.5 python3 main.py --preset fast_test --offline \
               --dtype fp16 --batch-size 8 --out "$WORK/results" ;;
    auto_bf16) step auto_bf16 60 python3 main.py --preset fast_test --offline --dtype bf16 --out "$WORK/results" ;;
    full_test) step full_test 120 python3 main.py --preset full_test --offline --attention sdpa,flex_sparse,lsh \
                 --batch-size 32 --out "$WORK/results" ;;
    *) echo "unknown step $s"; exit 2 ;;
  esac
done
find "$WORK" -name '.runs' -prune -o -name '*.pt' -prune -o -print > /dev/null
tar czf "$OUT/$1.tgz" --exclude='.runs' --exclude='*.pt' -C "$WORK" .
