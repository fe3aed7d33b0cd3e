#!/usr/bin/env bash
# airlock vs nginx vs HAProxy, same machine, same run, same load (airlock-bench) and the
# same WebSocket echo upstream. Each proxy's own CPU time and memory are read from /proc.
#
#   bash bench/compare.sh [seconds per run] [repetitions] [idle tunnels]
#
# Installs nginx and HAProxy from Debian packages when they are missing. Figures are
# the median of the repetitions. Not done yet: the paced (open-loop) workload and the
# chart; see docs/benchmarks.md.
set -euo pipefail
secs=${1:-5}
reps=${2:-3}
idle_n=${3:-5000}
source bench/common.sh

need_packages nginx haproxy
upstream=127.0.0.1:18400
build_and_start_upstream "$upstream"

# fill TEMPLATE PORT: the config with its placeholders filled in.
fill() { sed -e "s|@WORK@|$work|g" -e "s|@PORT@|$2|g" -e "s|@UPSTREAM@|$upstream|g" "$root/bench/configs/$1"; }

# The process and its children (nginx's workers).
pids_of() { echo "$1" $(pgrep -P "$1" || true); }
cpu_all() { local t=0 p; for p in $(pids_of "$1"); do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }
rss_kib() { local t=0 p; for p in $(pids_of "$1"); do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }
median() { sort -g | awk '{v[NR] = $1} END { if (NR == 0) print "–"; else print v[int((NR + 1) / 2)] }'; }
start_proxy() { # NAME PORT -> $pid (0 for direct)
  case $1 in
    direct) pid=0 ;;
    airlock) fill airlock.toml "$2" > "$work/airlock.toml"; "$bin" --log warn run --config "$work/airlock.toml" & pid=$! ;;
    nginx) fill nginx.conf "$2" > "$work/nginx.conf"; nginx -c "$work/nginx.conf" & pid=$! ;;
    haproxy) fill haproxy.cfg "$2" > "$work/haproxy.cfg"; haproxy -db -f "$work/haproxy.cfg" & pid=$! ;;
  esac
  [ "$1" = direct ] || wait_port "$2"
}

# record NAME METRIC VALUE
record() { echo "$3" >> "$work/$1.$2"; }

proxies=(direct airlock nginx haproxy)
for i in "${!proxies[@]}"; do
  name=${proxies[$i]}
  port=$((18410 + i))
  start_proxy "$name" "$port"
  [ "$name" = direct ] && url="ws://$upstream/ws" || url="ws://127.0.0.1:$port/ws"
  "$bench" pingpong --url "$url" --duration 1s > /dev/null # warm-up
  for rep in $(seq "$reps"); do
    for size in 1024 16384; do
      [ "$pid" = 0 ] || t0=$(cpu_all "$pid")
      out=$("$bench" pingpong --url "$url" --size "$size" --duration "${secs}s")
      rt=$(field round_trips "$out")
      record "$name" "msgs_$size" "$(awk -v r="$(field per_second "$out")" 'BEGIN { print 2 * r }')"
      record "$name" "p50_$size" "$(field p50_us "$out")"
      record "$name" "p99_$size" "$(field p99_us "$out")"
      [ "$pid" = 0 ] || record "$name" "cpu_$size" "$(cpu_us_per $(( $(cpu_all "$pid") - t0 )) $((2 * rt)))"
    done
    [ "$pid" = 0 ] || t0=$(cpu_all "$pid")
    out=$("$bench" handshakes --url "$url" --connections 16 --duration "${secs}s")
    record "$name" hs_rate "$(field per_second "$out")"
    record "$name" hs_p99 "$(field p99_us "$out")"
    [ "$pid" = 0 ] || record "$name" hs_cpu "$(cpu_us_per $(( $(cpu_all "$pid") - t0 )) "$(field handshakes "$out")")"
  done
  if [ "$pid" != 0 ]; then
    sleep 1
    rss0=$(rss_kib "$pid")
    "$bench" idle --url "$url" --connections "$idle_n" --hold 3s > "$work/idle.out" &
    idle_pid=$!
    for _ in $(seq 600); do grep -q '^open' "$work/idle.out" 2>/dev/null && break; sleep 0.1; done
    rss1=$(rss_kib "$pid")
    wait "$idle_pid"
    record "$name" idle_kib "$(awk -v a="$rss0" -v b="$rss1" -v n="$idle_n" 'BEGIN { printf "%.2f", (b - a) / n }')"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  fi
done

get() { median < "$work/$1.$2" 2>/dev/null || echo "–"; }
row() { # LABEL METRIC
  printf '| %s |' "$1"
  for name in "${proxies[@]}"; do printf ' %s |' "$( [ -f "$work/$name.$2" ] && get "$name" "$2" || echo –)"; done
  echo
}
echo "Median of $reps runs of ${secs}s; idle memory at $idle_n tunnels."
echo
echo "| | direct | airlock | nginx | HAProxy |"
echo "|---|---|---|---|---|"
row "proxy CPU µs per relayed 1 KiB message" cpu_1024
row "proxy CPU µs per relayed 16 KiB message" cpu_16384
row "relayed 1 KiB messages/s" msgs_1024
row "relayed 16 KiB messages/s" msgs_16384
row "1 KiB round trip p50 µs" p50_1024
row "1 KiB round trip p99 µs" p99_1024
row "16 KiB round trip p99 µs" p99_16384
row "proxy CPU µs per handshake" hs_cpu
row "handshakes/s" hs_rate
row "handshake p99 µs" hs_p99
row "proxy memory KiB per idle tunnel" idle_kib
