#!/usr/bin/env bash
# H200, call 2: the full_test preset for gpt2, all nine attentions, compiled, offline data and
# random init (the device has no hub), batch 32 (the batch size for the MFU figure), timed.
#   OUT=/some/dir bash results/reference/h200/records/2026-11-29_full_test_gpt2_sizes.sh
set -uo pipefail
OUT=${OUT:-out}
W=$OUT/w
mkdir -p "$W"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
start=$(date +%s)
timeout 560 python3 main.py --preset full_test --offline --model gpt2 --batch-size 32 --out "$W/full_test" 2>&1 \
  | tee "$W/full_test.log" | grep -v "^    step"
echo "full_test wall: $(( $(date +%s) - start )) s" | tee -a "$W/full_test.log"
tar czf "$OUT/run2.tgz" -C "$W" .
