#!/usr/bin/env bash
# User-space instructions airlock executes per WebSocket handshake with 0, 1 and 2 example
# plugins, and with no plugin but one local `[limit]` (a client_ip rate never reached, so
# every handshake pays the check), counted by valgrind's callgrind. Unlike CPU time on a shared VM, the counts
# repeat to within about 0.1% between runs, so they show small changes (and where a
# plugin's cost goes: the dump names every function, Wasm included).
#
#   bash bench/instructions.sh [seconds counted per chain]
#
# Needs valgrind (Debian package valgrind). Each dump is kept as
# callgrind.PLUGINS.out in the directory named at the end; read one with
# `callgrind_annotate --inclusive=yes FILE`.
set -euo pipefail
secs=${1:-10}
source bench/common.sh

need_packages valgrind
upstream=127.0.0.1:18500
build_and_start_upstream "$upstream"
out_dir=${AIRLOCK_CALLGRIND_DIR:-$root/target/callgrind}
mkdir -p "$out_dir"

port=18510
echo "| plugins | handshakes counted | instructions per handshake |"
echo "|---|---|---|"
for n in 0 1 2 0+limit; do
  # One instance per plugin: wasmtime's pooling allocator reserves address space for
  # every instance slot, and the default (16 per plugin) is more than valgrind allows.
  airlock_config "$port" "$upstream" "${n%+limit}" "$work/cache" |
    sed '/^wasm = /a instances = 1' > "$work/airlock-$n.toml"
  if [ "$n" = 0+limit ]; then
    sed -i '/^upstream = "target"/a limits = ["per_ip"]' "$work/airlock-$n.toml"
    printf '[limit.per_ip]\nrate = "1000000/s"\n' >> "$work/airlock-$n.toml"
  fi
  # Compile the plugins natively into the cache first; under valgrind that takes minutes.
  start_airlock "$work/airlock-$n.toml" "$port"
  kill "$pid"; wait "$pid" 2>/dev/null || true

  dump=$out_dir/callgrind.$n.out
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dump" \
    "$bin" --log warn run --config "$work/airlock-$n.toml" 2> "$work/valgrind.log" &
  pid=$!
  for _ in $(seq 600); do
    (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  load() {
    "$bench" --connect "127.0.0.1:$port" handshakes --connections 16 --duration "$1" \
      --url "ws://127.0.0.1:$port$sio_path" -H "Origin: https://app.example.com"
  }
  load 2s > /dev/null # warm-up: instances, buffers and caches reach their steady state
  callgrind_control -i on "$pid" > /dev/null 2>&1
  result=$(load "${secs}s")
  callgrind_control -i off "$pid" > /dev/null 2>&1
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  handshakes=$(field handshakes "$result")
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t { gsub(",", "", $1); t = $1 } END { print t }')
  if [ -z "$total" ] || [ -z "$handshakes" ] || [ "$handshakes" -eq 0 ]; then
    echo "no count for $n plugins; valgrind said:" >&2
    tail -20 "$work/valgrind.log" >&2
    exit 1
  fi
  echo "| $n | $handshakes | $((total / handshakes)) |"
  port=$((port + 1))
done
echo
echo "callgrind dumps: $out_dir/callgrind.{0,1,2,0+limit}.out"
