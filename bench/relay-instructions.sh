#!/usr/bin/env bash
# User-space instructions airlock executes per relayed WebSocket message (1 KiB and 16 KiB,
# echoed: every round trip relays two), on a plain route (frame boundaries followed) and
# on a frame-aware one (`websocket = { max_message = "1MiB", message_rate = ... }`:
# every header checked), counted by valgrind's callgrind. CPU time on a
# shared VM varies by more than a few percent between runs; these counts repeat to about
# 0.1%, so they show what a change to the tunnel costs.
#
#   bash bench/relay-instructions.sh [seconds counted per size]
#
# Needs valgrind (Debian package valgrind). The dumps are kept as
# callgrind.relay-ROUTE-SIZE.out in the directory named at the end.
set -euo pipefail
secs=${1:-10}
source bench/common.sh

upstream=127.0.0.1:18600
prepare_callgrind "$upstream"

port=18610
# No plugin tables: only the relay is counted (and valgrind cannot host Wasm's reservations).
airlock_config "$port" "$upstream" 0 "$work/cache" | sed '/^\[plugin\./,$d' > "$work/plain.toml"
sed '/^upstream = "target"/a websocket = { max_message = "1MiB", message_rate = "1000000/s" }' \
  "$work/plain.toml" > "$work/frames.toml"
echo "| route | message | messages relayed | instructions per message |"
echo "|---|---|---|---|"
for route in plain frames; do
  for size in 1024 16384; do
    dump=$out_dir/callgrind.relay-$route-$size.out
    load() { "$bench" pingpong --url "ws://127.0.0.1:$port/ws" --size "$size" --duration "$1"; }
    callgrind_run "$dump" "$work/$route.toml" "$port" "$secs"
    messages=$((2 * $(field round_trips "$result")))
    if [ "$messages" -eq 0 ]; then
      echo "no messages relayed: $result" >&2
      exit 1
    fi
    echo "| $route | $size B | $messages | $((total / messages)) |"
  done
done
echo
echo "callgrind dumps: $out_dir/callgrind.relay-{plain,frames}-{1024,16384}.out"
