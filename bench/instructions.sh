#!/usr/bin/env bash
# User-space instructions airlock executes per WebSocket handshake with 0, 1 and 2 example
# plugins, and with no plugin but one local `[limit]` (a client_ip rate never reached, so
# every handshake pays the check), and with no plugin but `[telemetry]` sampling 1% and
# 100% of traces into a local collector stand-in (bench/otlp-sink.py; the exporter's
# thread is counted too), counted by valgrind's callgrind. Unlike CPU time on a shared VM, the counts
# repeat to within about 0.1% between runs, so they show small changes (and where a
# plugin's cost goes: the dump names every function, Wasm included).
#
#   bash bench/instructions.sh [seconds counted per chain] ["variants to run"]
#
# Needs valgrind (Debian package valgrind). Each dump is kept as
# callgrind.PLUGINS.out in the directory named at the end; read one with
# `callgrind_annotate --inclusive=yes FILE`.
set -euo pipefail
secs=${1:-10}
source bench/common.sh

upstream=127.0.0.1:18500
prepare_callgrind "$upstream"

port=18510
sink_port=18590
python3 bench/otlp-sink.py "$sink_port" & # stopped with the other jobs at exit
echo "| plugins | handshakes counted | instructions per handshake |"
echo "|---|---|---|"
for n in ${2:-0 1 2 0+limit 0+trace0.01 0+trace1}; do
  # One instance per plugin: wasmtime's pooling allocator reserves address space for
  # every instance slot, and the default (16 per plugin) is more than valgrind allows.
  airlock_config "$port" "$upstream" "${n%%+*}" "$work/cache" |
    sed '/^wasm = /a instances = 1' > "$work/airlock-$n.toml"
  if [ "$n" = 0+limit ]; then
    sed -i '/^upstream = "target"/a limits = ["per_ip"]' "$work/airlock-$n.toml"
    printf '[limit.per_ip]\nrate = "1000000/s"\n' >> "$work/airlock-$n.toml"
  fi
  if [ "${n#0+trace}" != "$n" ]; then
    printf '[telemetry]\notlp_endpoint = "http://127.0.0.1:%s"\nsample_ratio = %s\nmax_queue = 100000\n' \
      "$sink_port" "${n#0+trace}" >> "$work/airlock-$n.toml"
  fi
  # Compile the plugins natively into the cache first; under valgrind that takes minutes.
  start_airlock "$work/airlock-$n.toml" "$port"
  kill "$pid"; wait "$pid" 2>/dev/null || true

  dump=$out_dir/callgrind.$n.out
  load() {
    "$bench" --connect "127.0.0.1:$port" handshakes --connections 16 --duration "$1" \
      --url "ws://127.0.0.1:$port$sio_path" -H "Origin: https://app.example.com"
  }
  callgrind_run "$dump" "$work/airlock-$n.toml" "$port" "$secs"
  handshakes=$(field handshakes "$result")
  if [ -z "$handshakes" ] || [ "$handshakes" -eq 0 ]; then
    echo "no handshakes counted for $n plugins: $result" >&2
    exit 1
  fi
  echo "| $n | $handshakes | $((total / handshakes)) |"
  port=$((port + 1))
done
echo
echo "callgrind dumps: $out_dir/callgrind.{0,1,2,0+limit,0+trace0.01,0+trace1}.out"
