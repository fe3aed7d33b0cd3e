#!/usr/bin/env bash
# CPU time airlock spends per proxied request with 0, 1 and 2 example plugins.
#
# A preliminary measurement until the benchmark harness exists (issue: benchmark against
# nginx and HAProxy). Plain HTTP requests run a route's plugin chain just like upgrades,
# so wrk drives requests through airlock (1 worker thread) to nginx answering `200 ok`,
# and airlock's own user+system CPU time is read from /proc before and after.
#
# Needs: nginx and wrk (apt-get install nginx-light wrk). Run from the repository root:
#   bash bench/plugin-cost.sh [seconds per run] [repetitions]
set -euo pipefail
secs=${1:-8}
reps=${2:-3}
source bench/common.sh

cargo build --release -p airlock >&2
bin=$root/target/release/airlock

cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:18090; location / { return 200 "ok\n"; } } }
CONF
nginx -c "$work/nginx.conf" &
sleep 0.5

url_path='/socket.io/?EIO=4&transport=polling'
echo "| plugins | requests/s | CPU µs per request |"
echo "|---|---|---|"
for rep in $(seq "$reps"); do
  for n in 0 1 2; do
    port=$((18100 + n))
    airlock_config "$port" 127.0.0.1:18090 "$n" "$work/cache" > "$work/airlock-$n.toml"
    start_airlock "$work/airlock-$n.toml" "$port"
    target="http://127.0.0.1:$port$url_path"
    wrk -t1 -c16 -d2s -H 'Origin: https://app.example.com' "$target" > /dev/null
    t0=$(cpu_ticks "$pid")
    out=$(wrk -t1 -c16 -d"${secs}s" -H 'Origin: https://app.example.com' "$target")
    t1=$(cpu_ticks "$pid")
    requests=$(awk '/requests in/ {print $1}' <<< "$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<< "$out")
    if grep -q Non-2xx <<< "$out"; then echo "non-2xx answers in run $n; aborting" >&2; exit 1; fi
    cpu=$(cpu_us_per $((t1 - t0)) "$requests")
    echo "| $n | $rps | $cpu |"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
