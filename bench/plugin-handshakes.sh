#!/usr/bin/env bash
# CPU time airlock spends per WebSocket handshake with 0, 1 and 2 example plugins.
#
# airlock-bench opens WebSockets closed-loop (connect, handshake, close) through airlock
# (1 worker thread) to airlock-bench's echo upstream; airlock's own user+system CPU time
# is read from /proc before and after each run. A row "direct" runs the same load
# against the upstream alone, for the handshake rate without a proxy.
#
# Run from the repository root:
#   bash bench/plugin-handshakes.sh [seconds per run] [repetitions]
set -euo pipefail
secs=${1:-5}
reps=${2:-3}
source bench/common.sh

build_and_start_upstream 127.0.0.1:18190

path='/socket.io/?EIO=4&transport=websocket&sid=lv_VI97HAXpY6yYWAAAC'
origin='Origin: https://app.example.com'
load() { "$bench" handshakes --url "$1" --connections 16 --duration "$2" -H "$origin"; }

echo "| plugins | handshakes/s | p50 µs | p99 µs | airlock CPU µs per handshake |"
echo "|---|---|---|---|---|"
for rep in $(seq "$reps"); do
  out=$(load "ws://127.0.0.1:18190$path" "${secs}s")
  echo "| direct | $(field per_second "$out") | $(field p50_us "$out") | $(field p99_us "$out") | – |"
  for n in 0 1 2; do
    port=$((18200 + n))
    airlock_config "$port" 127.0.0.1:18190 "$n" "$work/cache" > "$work/airlock-$n.toml"
    handshake_row "$n" "$work/airlock-$n.toml" "$port" "ws://127.0.0.1:$port$path"
  done
done
