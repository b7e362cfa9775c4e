#!/usr/bin/env bash
# H200, call 3: the metrics-overhead benchmark after moving NVML reads off the training thread,
# the rest of call 2's full_test sweep (--resume, after the block-mask fix), and the kernel
# benchmark with each mechanism compiled, for the long sequences the targets are about.
#   OUT=/some/dir bash results/reference/h200/records/2026-11-29_finish.sh results/h200/<full_test folder>
set -uo pipefail
OUT=${OUT:-out}
W=$OUT/w
mkdir -p "$W"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
timeout 70 python3 benchmarks/metrics_overhead.py --out "$W/metrics_overhead.json" 2>&1 | tail -22
start=$(date +%s)
timeout 330 python3 main.py --resume "$1" 2>&1 | tee "$W/resume.log" | grep -v "^    step"
echo "resume wall: $(( $(date +%s) - start )) s"
cp -r "$1" "$W/full_test"
timeout 150 python3 benchmarks/attention_kernels.py --mechanisms linear,lsh,flash,baseline,sliding_window,flex \
  --min-seq 4096 --out "$W/kernels_compiled" 2>&1 | tee "$W/kernels.log" | tail -30
tar czf "$OUT/run3.tgz" -C "$W" .
