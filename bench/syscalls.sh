#!/usr/bin/env bash
# System calls and context switches per WebSocket handshake and per relayed 1 KiB
# message, for airlock, nginx and HAProxy with the configs of bench/compare.sh. These
# are counts: unlike CPU time they hardly move with the load of a shared machine, and
# they show where a proxy's kernel time goes.
#
#   bash bench/syscalls.sh [seconds per workload]
#
# Counts with perf's syscall tracepoints (Debian package linux-perf); needs permission
# to trace other processes (root, or kernel.perf_event_paranoid <= -1).
set -euo pipefail
secs=${1:-5}
source bench/common.sh

need_packages nginx haproxy
command -v perf > /dev/null || apt-get install -y linux-perf >&2
upstream=127.0.0.1:18400
build_and_start_upstream "$upstream"

proxies=(airlock nginx haproxy)
workloads=(handshake relay_1k)
port=18430
for name in "${proxies[@]}"; do
  start_proxy "$name" "$port"
  addr=127.0.0.1:$port
  "$bench" pingpong --url "ws://$addr/ws" --duration 1s > /dev/null # warm-up
  for workload in "${workloads[@]}"; do
    perf stat -x, -e 'context-switches,syscalls:sys_enter_*' -o "$work/perf.csv" \
      -p "$(pids_of "$pid" | tr ' ' ,)" -- sleep "$((secs + 1))" &
    perf_pid=$!
    sleep 0.2
    case $workload in
      handshake)
        out=$("$bench" --connect "$addr" handshakes --connections 16 --duration "${secs}s" \
          --url "ws://$addr$sio_path" -H "Origin: https://app.example.com")
        n=$(field handshakes "$out") ;;
      relay_1k)
        out=$("$bench" pingpong --url "ws://$addr/ws" --size 1024 --duration "${secs}s")
        n=$((2 * $(field round_trips "$out"))) ;;
    esac
    wait "$perf_pid"
    # "count,,event,..." -> "workload event proxy count-per-item", for the events seen.
    awk -F, -v w="$workload" -v p="$name" -v n="$n" '
      /^[0-9]/ && $1 > 0 { sub(/^syscalls:sys_enter_/, "", $3); printf "%s %s %s %.3f\n", w, $3, p, $1 / n }
    ' "$work/perf.csv" >> "$work/counts"
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  port=$((port + 1))
done

# One table per workload: a row per system call any proxy made at least 0.01 times per
# item, the total, and context switches.
for workload in "${workloads[@]}"; do
  case $workload in
    handshake) echo "Per handshake (16 concurrent clients, each: upgrade, close frame, close):" ;;
    relay_1k) echo "Per relayed 1 KiB message (16 clients in closed-loop ping-pong):" ;;
  esac
  echo
  sort -k2,2 "$work/counts" | awk -v w="$workload" -v list="${proxies[*]}" '
    BEGIN { np = split(list, p, " ") }
    $1 == w && !(($2) in seen) { seen[$2] = 1; if ($2 != "context-switches") names[++n] = $2 }
    $1 == w { v[$2, $3] = $4; if ($2 != "context-switches") total[$3] += $4 }
    END {
      printf "| |"; for (i = 1; i <= np; i++) printf " %s |", p[i]; print ""
      printf "|---|"; for (i = 1; i <= np; i++) printf "---|"; print ""
      for (k = 1; k <= n; k++) {
        e = names[k]; big = 0
        for (i = 1; i <= np; i++) if (v[e, p[i]] >= 0.01) big = 1
        if (!big) continue
        printf "| %s |", e; for (i = 1; i <= np; i++) printf " %.2f |", v[e, p[i]]; print ""
      }
      printf "| **all system calls** |"; for (i = 1; i <= np; i++) printf " **%.2f** |", total[p[i]]; print ""
      printf "| context switches |"; for (i = 1; i <= np; i++) printf " %.2f |", v["context-switches", p[i]]; print ""
    }'
  echo
done
