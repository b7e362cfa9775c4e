for cfg in "full 1024" "nodedup 1024" "eagerlayout 1024" "full 1000" "full 2048"; do
  CUDA_LAUNCH_BLOCKING=1 timeout 90 python3 .diag/lsh_diag.py $cfg 2>&1 | grep -v Warning | tail -4
  echo "== $cfg rc=$?"
done
