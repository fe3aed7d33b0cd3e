#!/usr/bin/env bash
# CPU time airlock spends per WebSocket handshake with each balancer that reads the
# request (consistent_hash, sticky_cookie), beside round_robin. No plugins; the client
# sends no cookie, so sticky_cookie signs and sets one on every 101 (its worst case).
#
# Run from the repository root:
#   bash bench/balance-handshakes.sh [seconds per run] [repetitions]
set -euo pipefail
secs=${1:-5}
reps=${2:-3}
source bench/common.sh

build_and_start_upstream 127.0.0.1:18290

load() { "$bench" handshakes --url "$1" --connections 16 --duration "$2"; }
balancers=(round_robin consistent_hash sticky_cookie)

echo "| balance | handshakes/s | p50 µs | p99 µs | airlock CPU µs per handshake |"
echo "|---|---|---|---|---|"
for rep in $(seq "$reps"); do
  for i in "${!balancers[@]}"; do
    balance=${balancers[$i]}
    port=$((18300 + i))
    airlock_config "$port" 127.0.0.1:18290 0 "$work/cache" |
      sed "s/^servers = \[\"127.0.0.1:18290\"\]$/&\nbalance = \"$balance\"/" > "$work/airlock-$i.toml"
    handshake_row "$balance" "$work/airlock-$i.toml" "$port" "ws://127.0.0.1:$port/ws"
  done
done
