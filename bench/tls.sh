#!/usr/bin/env bash
# TLS handshakes through airlock and nginx with the same certificate, and the extra
# memory an idle wss:// tunnel costs over a ws:// one.
#
#   bash bench/tls.sh [seconds per run] [parallel clients] [idle tunnels]
#
# Handshakes come from `openssl s_time` (connect, handshake, close; no request), several
# clients in parallel. Full handshakes are measured with TLS 1.3 and TLS 1.2; resumed ones
# with TLS 1.2 only, because s_time never reads the TLS 1.3 session tickets it would need.
# For each: handshakes per second and the proxy's own CPU time per handshake (from /proc).
set -euo pipefail
secs=${1:-5}
clients=${2:-4}
idle_n=${3:-2000}
source bench/common.sh

need_packages nginx
upstream=127.0.0.1:18500
build_and_start_upstream "$upstream"

# One ECDSA P-256 certificate for bench.test, signed by a throwaway CA.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$work/ca-key.pem" -out "$work/ca.pem" -subj /CN=bench-ca 2> /dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$work/key.pem" -out "$work/req.pem" -subj /CN=bench.test 2> /dev/null
openssl x509 -req -in "$work/req.pem" -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" \
  -days 2 -out "$work/cert.pem" -extfile <(echo subjectAltName=DNS:bench.test) 2> /dev/null

airlock_tls_config() { # PORT
  cat <<CONF
worker_threads = 2
shutdown_grace = "1s"
[[listener]]
name = "tls"
bind = "127.0.0.1:$1"
[listener.tls]
certificates = [{ cert = "$work/cert.pem", key = "$work/key.pem" }]
alpn = ["http/1.1"]
[[listener]]
name = "plain"
bind = "127.0.0.1:$(($1 + 100))"
[[route]]
name = "bench"
upstream = "target"
[upstream.target]
servers = ["$upstream"]
CONF
}

nginx_tls_config() { # PORT
  cat <<CONF
worker_processes 2;
worker_rlimit_nofile 20000;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log crit;
events { worker_connections 16000; }
http {
    access_log off;
    map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
    upstream echo { server $upstream; }
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_session_tickets on;
    server {
        listen 127.0.0.1:$1 ssl;
        listen 127.0.0.1:$(($1 + 100));
        location / {
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_buffering off;
        }
    }
}
CONF
}

# handshakes PORT MODE(new|reuse) VERSION -> "per_second cpu_us_per_handshake"
handshakes() {
  local t0 t1 start end total=0 out timers=()
  t0=$(cpu_all "$pid")
  start=$(date +%s.%N)
  for c in $(seq "$clients"); do
    openssl s_time -connect "127.0.0.1:$1" -"$2" -"$3" -time "$secs" > "$work/s_time.$c" 2>&1 &
    timers+=($!)
  done
  wait "${timers[@]}" || true
  end=$(date +%s.%N)
  t1=$(cpu_all "$pid")
  for c in $(seq "$clients"); do
    out=$(grep -m1 'connections in' "$work/s_time.$c" | awk '{print $1}')
    total=$((total + ${out:-0}))
  done
  awk -v n="$total" -v s="$start" -v e="$end" -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.0f %.1f\n", n / (e - s), (n ? t / hz * 1e6 / n : 0) }'
}

echo "| proxy | full TLS 1.3 /s | CPU µs | full TLS 1.2 /s | CPU µs | resumed TLS 1.2 /s | CPU µs | KiB per idle ws | KiB per idle wss |"
echo "|---|---|---|---|---|---|---|---|---|"
for name in airlock nginx; do
  port=18510
  [ "$name" = nginx ] && port=18520
  if [ "$name" = airlock ]; then
    airlock_tls_config "$port" > "$work/airlock.toml"
    "$bin" --log warn run --config "$work/airlock.toml" & pid=$!
  else
    nginx_tls_config "$port" > "$work/nginx.conf"
    nginx -c "$work/nginx.conf" & pid=$!
  fi
  wait_port "$port"
  read -r full13 cpu13 <<< "$(handshakes "$port" new tls1_3)"
  read -r full12 cpu12 <<< "$(handshakes "$port" new tls1_2)"
  read -r res12 cpures <<< "$(handshakes "$port" reuse tls1_2)"
  # Idle tunnels: memory with N open minus memory before, per tunnel.
  per_tunnel=()
  for url in "ws://bench.test:$((port + 100))/ws" "wss://bench.test:$port/ws"; do
    target=$port
    [[ $url == ws:* ]] && target=$((port + 100))
    before=$(rss_kib "$pid")
    "$bench" --ca "$work/ca.pem" --connect "127.0.0.1:$target" \
      idle --url "$url" --connections "$idle_n" --hold 3s > "$work/idle.out" &
    idle_pid=$!
    for _ in $(seq 600); do grep -q '^open' "$work/idle.out" 2> /dev/null && break; sleep 0.1; done
    sleep 1
    during=$(rss_kib "$pid")
    wait "$idle_pid"
    per_tunnel+=("$(awk -v a="$before" -v b="$during" -v n="$idle_n" 'BEGIN { printf "%.1f", (b - a) / n }')")
  done
  echo "| $name | $full13 | $cpu13 | $full12 | $cpu12 | $res12 | $cpures | ${per_tunnel[0]} | ${per_tunnel[1]} |"
  kill "$pid"
  wait "$pid" 2> /dev/null || true
done
