#!/usr/bin/env bash
# What limits cost: handshake CPU with one local limit on the route against none, and
# memory under a flood of distinct keys (bytes per tracked key, RSS after the flood) with
# the default `max_keys` and with a larger one.
#
# The handshake rows run airlock-bench's closed-loop WebSocket handshakes (16 at a time)
# through airlock (1 worker thread) to its echo upstream, as bench/plugin-handshakes.sh
# does, with no limit and with one `client_ip` limit whose rate is never reached (so every
# handshake pays the check and none is refused).
#
# The flood sends KEYS plain GETs, each with its own `X-Key` value, over 8 pipelined
# keep-alive connections (bench/limit-flood.py) to a route with a limit keyed by that
# header; the route's origin-allowlist plugin answers each 403 (limits run before
# plugins), so the flood costs no upstream. airlock's RSS is read before and after, and
# the keys it tracks from the admin API's `GET /limits`.
#
# Run from the repository root:
#   bash bench/limit-flood.sh [seconds per handshake run] [repetitions] [flood keys]
set -euo pipefail
secs=${1:-5}
reps=${2:-3}
keys=${3:-1000000}
source bench/common.sh

build_and_start_upstream 127.0.0.1:18190

load() { "$bench" handshakes --url "$1" --connections 16 --duration "$2"; }

# limit_config PORT ADMIN_PORT LIMIT_TOML ROUTE_EXTRA: a one-route config with a limit.
limit_config() {
  cat <<CONF
worker_threads = 1
shutdown_grace = "1s"
plugin_cache_dir = "$work/cache"
[admin]
bind = "127.0.0.1:$2"
[[listener]]
name = "bench"
bind = "127.0.0.1:$1"
[[route]]
name = "bench"
upstream = "target"
$4
[upstream.target]
servers = ["127.0.0.1:18190"]
[plugin.origin]
wasm = "$wasm/origin_allowlist.wasm"
config = { allow = ["https://app.example.com"] }
$3
CONF
}

echo "| limits | handshakes/s | p50 µs | p99 µs | airlock CPU µs per handshake |"
echo "|---|---|---|---|---|"
# The same config both times (an admin listener, a plugin defined but not on the
# route), so that the limit is the only difference.
limit_config 18210 18215 '' '' > "$work/none.toml"
limit_config 18211 18212 '[limit.per_ip]
rate = "1000000/s"
key = "client_ip"' 'limits = ["per_ip"]' > "$work/one.toml"
for rep in $(seq "$reps"); do
  handshake_row "none" "$work/none.toml" 18210 "ws://127.0.0.1:18210/"
  handshake_row "one local client_ip limit" "$work/one.toml" 18211 "ws://127.0.0.1:18211/"
done

echo
echo "| max_keys | keys sent | seconds | tracked keys | RSS before KiB | RSS after KiB | bytes per tracked key |"
echo "|---|---|---|---|---|---|---|"
for max in 100000 1000000; do
  limit_config 18213 18214 "[limit.flood]
rate = \"1/h\"
key = \"header:X-Key\"
max_keys = $max" 'limits = ["flood"]
plugins = ["origin"]' > "$work/flood.toml"
  start_airlock "$work/flood.toml" 18213
  wait_port 18214
  # One request first, so that the plugin's instances and the limit's table exist.
  python3 bench/limit-flood.py 18213 1 1 1 > /dev/null
  before=$(rss_kib "$pid")
  out=$(python3 bench/limit-flood.py 18213 "$keys")
  after=$(rss_kib "$pid")
  tracked=$(curl -s http://127.0.0.1:18214/limits | python3 -c \
    'import json, sys; print(sum(l["tracked_keys"] for l in json.load(sys.stdin)["limits"]))')
  per=$(awk -v a="$after" -v b="$before" -v k="$tracked" 'BEGIN { printf "%.0f", (a - b) * 1024 / k }')
  echo "| $max | $(field answers "$out") | $(field seconds "$out") | $tracked | $before | $after | $per |"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
