#!/usr/bin/env bash
# airlock vs nginx vs HAProxy, same machine, same run, same load (airlock-bench) and the
# same WebSocket echo upstream. Each proxy's own CPU time and memory are read from /proc.
#
#   bash bench/compare.sh [seconds per run] [repetitions] [idle tunnels]
#
# Installs nginx and HAProxy from Debian packages when they are missing. Figures are
# the median of the repetitions. Two more airlock instances with `[telemetry]` sampling
# 1% and 100% of traces (into bench/otlp-sink.py, a collector stand-in) give the cost of
# tracing per handshake and per 1 KiB message. Prints a markdown table, and writes the medians to
# bench/results.tsv and a chart of them to docs/benchmarks.svg.
set -euo pipefail
secs=${1:-5}
reps=${2:-5}
idle_n=${3:-5000}
source bench/common.sh

need_packages nginx haproxy
upstream=127.0.0.1:18400
build_and_start_upstream "$upstream"

median() { sort -g | awk '{v[NR] = $1} END { if (NR == 0) print "–"; else print v[int((NR + 1) / 2)] }'; }

# record NAME METRIC VALUE
record() { echo "$3" >> "$work/$1.$2"; }

# One repetition of every workload against one proxy (or the upstream directly), which
# is running: NAME PID ADDR.
run_workloads() {
  local name=$1 pid=$2 addr=$3
  local url=ws://$addr/ws
  for size in 1024 16384; do
    [ "$pid" = 0 ] || t0=$(cpu_all "$pid")
    out=$("$bench" pingpong --url "$url" --size "$size" --duration "${secs}s")
    rt=$(field round_trips "$out")
    record "$name" "msgs_$size" "$(awk -v r="$(field per_second "$out")" 'BEGIN { print 2 * r }')"
    record "$name" "p50_$size" "$(field p50_us "$out")"
    record "$name" "p99_$size" "$(field p99_us "$out")"
    [ "$pid" = 0 ] || record "$name" "cpu_$size" "$(cpu_us_per $(( $(cpu_all "$pid") - t0 )) $((2 * rt)))"
  done
  # airlock only: the same on a frame-aware route, and with tracing.
  if [ "$name" = airlock ]; then
    for size in 1024 16384; do
      t0=$(cpu_all "$pid")
      out=$("$bench" --connect "$addr" pingpong --url "ws://frames.bench/ws" --size "$size" --duration "${secs}s")
      record "$name" "cpu_frames_$size" "$(cpu_us_per $(( $(cpu_all "$pid") - t0 )) $((2 * $(field round_trips "$out"))))"
    done
    local ratio tpid taddr
    for ratio in 001 1; do
      tpid=${traced_pids[$ratio]} taddr=${traced_addrs[$ratio]}
      t0=$(cpu_all "$tpid")
      out=$("$bench" pingpong --url "ws://$taddr/ws" --size 1024 --duration "${secs}s")
      record "$name" "cpu_1024_trace$ratio" "$(cpu_us_per $(( $(cpu_all "$tpid") - t0 )) $((2 * $(field round_trips "$out"))))"
      t0=$(cpu_all "$tpid")
      out=$("$bench" --connect "$taddr" handshakes --connections 16 --duration "${secs}s" \
        --url "ws://$taddr$sio_path" -H "Origin: https://app.example.com")
      record "$name" "hs_cpu_trace$ratio" "$(cpu_us_per $(( $(cpu_all "$tpid") - t0 )) "$(field handshakes "$out")")"
    done
  fi
  [ "$pid" = 0 ] || t0=$(cpu_all "$pid")
  out=$("$bench" paced --url "$url" --rate 10000 --size 256 --duration "${secs}s")
  for q in p50 p99 p999; do record "$name" "paced_$q" "$(field "${q}_us" "$out")"; done
  record "$name" paced_lost "$(field lost "$out")"
  [ "$pid" = 0 ] || record "$name" paced_cpu "$(cpu_us_per $(( $(cpu_all "$pid") - t0 )) $((2 * $(field received "$out"))))"
  # Handshakes look like a Socket.IO client's, so that the plugin chains admit them.
  # For airlock, the host picks 0, 1 or 2 example plugins; for the others it is ignored.
  for n in 0 1 2; do
    [ "$n" = 0 ] || [ "$name" = airlock ] || continue
    [ "$n" = 0 ] && suffix= || suffix=_$n
    [ "$n" = 0 ] && host=$addr || host=plugins$n.bench
    [ "$pid" = 0 ] || t0=$(cpu_all "$pid")
    out=$("$bench" --connect "$addr" handshakes --connections 16 --duration "${secs}s" \
      --url "ws://$host$sio_path" -H "Origin: https://app.example.com")
    record "$name" "hs_rate$suffix" "$(field per_second "$out")"
    record "$name" "hs_p99$suffix" "$(field p99_us "$out")"
    [ "$pid" = 0 ] || record "$name" "hs_cpu$suffix" "$(cpu_us_per $(( $(cpu_all "$pid") - t0 )) "$(field handshakes "$out")")"
  done
}

# Idle memory per tunnel of one running proxy: NAME PID ADDR [METRIC HOST] (the route
# with HOST, recorded as METRIC; default idle_kib and the address itself).
measure_idle() {
  local name=$1 pid=$2 metric=${4:-idle_kib} url=ws://${5:-$3}/ws
  sleep 1
  rss0=$(rss_kib "$pid")
  "$bench" --connect "$3" idle --url "$url" --connections "$idle_n" --hold 3s > "$work/idle.out" &
  idle_pid=$!
  for _ in $(seq 600); do grep -q '^open' "$work/idle.out" 2>/dev/null && break; sleep 0.1; done
  rss1=$(rss_kib "$pid")
  wait "$idle_pid"
  record "$name" "$metric" "$(awk -v a="$rss0" -v b="$rss1" -v n="$idle_n" 'BEGIN { printf "%.2f", (b - a) / n }')"
}

# All three proxies run for the whole benchmark (idle ones cost nothing), each warmed up
# once. They take turns within each repetition, so that a slow minute on a shared
# machine lands on all of them rather than on one proxy's repetitions.
proxies=(direct airlock nginx haproxy)
declare -A pids addrs traced_pids traced_addrs
sink_port=18430
python3 bench/otlp-sink.py "$sink_port" &
port=18430
for ratio in 001 1; do
  port=$((port + 1))
  { fill airlock.toml "$port"
    printf '[telemetry]\notlp_endpoint = "http://127.0.0.1:%s"\nsample_ratio = %s\nmax_queue = 100000\n' \
      "$sink_port" "$(sed 's/^0/0./' <<< "$ratio")"
  } > "$work/airlock-trace$ratio.toml"
  "$bin" --log warn run --config "$work/airlock-trace$ratio.toml" &
  traced_pids[$ratio]=$!
  traced_addrs[$ratio]=127.0.0.1:$port
  wait_port "$port"
  "$bench" pingpong --url "ws://127.0.0.1:$port/ws" --duration 1s > /dev/null # warm-up
done
for i in "${!proxies[@]}"; do
  name=${proxies[$i]}
  port=$((18410 + i))
  start_proxy "$name" "$port"
  pids[$name]=$pid
  [ "$name" = direct ] && addrs[$name]=$upstream || addrs[$name]=127.0.0.1:$port
  "$bench" pingpong --url "ws://${addrs[$name]}/ws" --duration 1s > /dev/null # warm-up
done
for rep in $(seq "$reps"); do
  echo "repetition $rep of $reps" >&2
  for name in "${proxies[@]}"; do
    run_workloads "$name" "${pids[$name]}" "${addrs[$name]}"
  done
done
for name in "${proxies[@]}"; do
  [ "$name" = direct ] && continue
  measure_idle "$name" "${pids[$name]}" "${addrs[$name]}"
  kill "${pids[$name]}"; wait "${pids[$name]}" 2>/dev/null || true
done
# The frame-aware route's idle tunnels, in a fresh airlock (memory the first measurement
# freed would otherwise be reused, and the second would look cheaper than it is).
# Warmed up as the first airlock was by its workloads.
start_proxy airlock 18420
"$bench" --connect 127.0.0.1:18420 pingpong --url ws://frames.bench/ws --duration "${secs}s" > /dev/null
measure_idle airlock "$pid" 127.0.0.1:18420 idle_frames_kib frames.bench
kill "$pid"; wait "$pid" 2>/dev/null || true

# The medians, one metric per line, for `airlock-bench report`.
metrics=(cpu_1024 cpu_16384 msgs_1024 msgs_16384 p50_1024 p99_1024 p50_16384 p99_16384 paced_cpu paced_p50
  paced_p99 paced_p999 paced_lost hs_cpu hs_cpu_1 hs_cpu_2 hs_rate hs_p99 idle_kib
  cpu_frames_1024 cpu_frames_16384 idle_frames_kib hs_cpu_trace001 hs_cpu_trace1 cpu_1024_trace001
  cpu_1024_trace1)
for metric in "${metrics[@]}"; do
  printf '%s' "$metric"
  for name in "${proxies[@]}"; do
    printf '\t%s' "$( [ -f "$work/$name.$metric" ] && median < "$work/$name.$metric" || echo –)"
  done
  echo
done > "$work/results.tsv"
cp "$work/results.tsv" "$root/bench/results.tsv"

# The section of docs/benchmarks.md between the markers is replaced with this run's.
{
  echo "$(date -u +%F), $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)),"
  echo "Linux $(uname -r), $(nginx -v 2>&1 | sed 's|.*nginx/|nginx |'), $(haproxy -v | sed -n 's/^HAProxy version \([^ ]*\).*/HAProxy \1/p'),"
  echo "airlock $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' with uncommitted changes')."
  echo "\`bash bench/compare.sh $secs $reps $idle_n\`: median of $reps runs of ${secs}s each, idle"
  echo "memory at $idle_n tunnels."
  echo
  "$bench" report "$root/bench/results.tsv" --svg "$root/docs/benchmarks.svg"
  echo
  echo '![Each proxy'"'"'s cost as a multiple of the better of nginx and HAProxy](benchmarks.svg)'
} > "$work/section.md"
cat "$work/section.md"
awk -v section="$work/section.md" '
  /<!-- results: end -->/ { skip = 0 }
  !skip { print }
  /<!-- results: start -->/ { while ((getline line < section) > 0) print line; skip = 1 }
' "$root/docs/benchmarks.md" > "$work/benchmarks.md" && cp "$work/benchmarks.md" "$root/docs/benchmarks.md"
