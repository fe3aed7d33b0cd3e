#!/usr/bin/env bash
# User-space instructions airlock executes per relayed WebSocket message (1 KiB and 16 KiB,
# echoed: every round trip relays two), counted by valgrind's callgrind. CPU time on a
# shared VM varies by more than a few percent between runs; these counts repeat to about
# 0.1%, so they show what a change to the tunnel costs.
#
#   bash bench/relay-instructions.sh [seconds counted per size]
#
# Needs valgrind (Debian package valgrind). The dumps are kept as
# callgrind.relay-SIZE.out in the directory named at the end.
set -euo pipefail
secs=${1:-10}
source bench/common.sh

need_packages valgrind
upstream=127.0.0.1:18600
build_and_start_upstream "$upstream"
out_dir=${AIRLOCK_CALLGRIND_DIR:-$root/target/callgrind}
mkdir -p "$out_dir"

port=18610
# No plugin tables: only the relay is counted (and valgrind cannot host Wasm's reservations).
airlock_config "$port" "$upstream" 0 "$work/cache" | sed '/^\[plugin\./,$d' > "$work/airlock.toml"
echo "| message | messages relayed | instructions per message |"
echo "|---|---|---|"
for size in 1024 16384; do
  dump=$out_dir/callgrind.relay-$size.out
  load() { "$bench" pingpong --url "ws://127.0.0.1:$port/ws" --size "$size" --duration "$1"; }
  callgrind_run "$dump" "$work/airlock.toml" "$port" "$secs"
  messages=$((2 * $(field round_trips "$result")))
  if [ "$messages" -eq 0 ]; then
    echo "no messages relayed: $result" >&2
    exit 1
  fi
  echo "| $size B | $messages | $((total / messages)) |"
done
echo
echo "callgrind dumps: $out_dir/callgrind.relay-{1024,16384}.out"
