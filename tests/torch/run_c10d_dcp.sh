#!/usr/bin/env bash
# ckpt::torch::ProcessGroupComm: WORLD processes of c10d_dcp_test over gloo on loopback
# (a FileStore rendezvous). Saves with 3 ranks, loads with 1, 2 and 4, each rank
# checking its region bit for bit.   run_c10d_dcp.sh BIN WORKDIR
set -u
BIN=$1 WORK=$2
rm -rf "$WORK" && mkdir -p "$WORK" || exit 2
run() {  # run MODE WORLD
  local mode=$1 world=$2 store="$WORK/store.$1.$2" pids=() rc=0
  rm -f "$store"
  for ((r = 0; r < world; r++)); do
    timeout 300 "$BIN" "$mode" "$WORK/ckpt" "$r" "$world" "$store" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  return $rc
}
run save 3 || { echo "FAIL: save with 3 gloo ranks"; exit 1; }
[[ -f "$WORK/ckpt/.metadata" ]] || { echo "FAIL: no .metadata"; exit 1; }
for m in 1 2 4; do run load "$m" || { echo "FAIL: saved by 3 gloo ranks, loaded by $m"; exit 1; }; done
echo "ok: c10d gloo save 3 / load 1, 2, 4"
