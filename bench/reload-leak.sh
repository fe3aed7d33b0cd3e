#!/usr/bin/env bash
# Does reloading leak? airlock runs a route with the origin-allowlist plugin under traffic
# (a closed loop of WebSocket handshakes through the plugin, and paced messages over
# long-lived tunnels opened before the first reload) while it is reloaded RELOADS times,
# each reload changing the plugin's config (so each compiles the plugin's instances
# again and leaves the previous ones to be freed). airlock's RSS, open file descriptors
# and threads are printed every STEP reloads, then again once the traffic has stopped
# and the old tunnels have closed.
#
# Run from the repository root:
#   bash bench/reload-leak.sh [reloads] [step]
set -euo pipefail
reloads=${1:-200}
step=${2:-50}
source bench/common.sh

upstream=127.0.0.1:18600
build_and_start_upstream "$upstream"
port=18610
admin=18611

# leak_config N: the config of reload N (the plugin's allowlist grows by one origin).
leak_config() {
  local allow='"https://app.example.com"' i
  for i in $(seq "$1"); do allow="$allow, \"https://n$i.example\""; done
  cat <<CONF
worker_threads = 2
shutdown_grace = "1s"
plugin_cache_dir = "$work/cache"
[admin]
bind = "127.0.0.1:$admin"
[[listener]]
name = "bench"
bind = "127.0.0.1:$port"
[[route]]
name = "paced"
path_prefix = "/paced"
upstream = "target"
[[route]]
name = "chat"
path_prefix = "/"
upstream = "target"
plugins = ["origin"]
[upstream.target]
servers = ["$upstream"]
[plugin.origin]
wasm = "$wasm/origin_allowlist.wasm"
config = { allow = [$allow] }
CONF
}

fds() { ls "/proc/$1/fd" | wc -l; }
threads() { ls "/proc/$1/task" | wc -l; }
row() { echo "| $1 | $(rss_kib "$pid") | $(fds "$pid") | $(threads "$pid") |"; }

leak_config 0 > "$work/airlock.toml"
start_airlock "$work/airlock.toml" "$port"
"$bench" paced --url "ws://127.0.0.1:$port/paced" --connections 100 --rate 1000 \
  --duration 3600s > /dev/null &
paced=$!
# Handshakes in 2-second runs, one JSON line each, until stopped.
(
  while :; do
    "$bench" handshakes --url "ws://127.0.0.1:$port/ws" --connections 4 --duration 2s \
      -H "Origin: https://app.example.com"
  done
) > "$work/handshakes.jsonl" &
load=$!
sleep 2

echo "| after reload | RSS KiB | open fds | threads |"
echo "|---|---|---|---|"
row 0
for n in $(seq "$reloads"); do
  leak_config "$n" > "$work/airlock.toml"
  code=$(curl -s -o "$work/reload.out" -w '%{http_code}' -X POST "http://127.0.0.1:$admin/reload")
  if [ "$code" != 200 ]; then
    echo "reload $n refused ($code): $(cat "$work/reload.out")" >&2
    exit 1
  fi
  if [ $((n % step)) = 0 ]; then row "$n"; fi
done
pkill -P "$load" 2>/dev/null || true
kill "$load" 2>/dev/null || true
wait "$load" 2>/dev/null || true
kill "$paced" 2>/dev/null || true
wait "$paced" 2>/dev/null || true
# Old instances' epoch threads end within a second of their last user; idle keep-alive
# connections time out; the tunnels of the paced run are closed.
sleep 3
row "$reloads, traffic stopped"
generation=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^airlock_config_generation / {print $2}')
echo
sum() { local t=0 line; while read -r line; do t=$((t + $(field "$1" "$line"))); done < "$work/handshakes.jsonl"; echo "$t"; }
echo "generation $generation; handshakes through the plugin during the reloads: $(sum handshakes), failed: $(sum errors)"
