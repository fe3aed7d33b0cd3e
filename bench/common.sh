# Shared by the bench/*.sh scripts, sourced first: the scratch directory ($work, removed
# with every background job on exit), airlock configs with 0-2 example plugins, starting
# airlock, nginx and HAProxy, and reading CPU time and memory from /proc. The functions
# use $bin (airlock; build_and_start_upstream sets it) and, for the bench/configs files,
# $upstream (the echo upstream's address), set by the script.

root=$(pwd)
wasm=$root/target/wasm-plugins/wasm32-wasip2/plugin # the example plugins, once built
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# The plugin chains the scripts compare, by number of plugins.
chains=('' 'plugins = ["origin"]' 'plugins = ["origin", "socketio"]')

# airlock_config PORT UPSTREAM_ADDR N CACHE_DIR: a one-route config with chain N.
airlock_config() {
  cat <<CONF
worker_threads = 1
shutdown_grace = "1s"
plugin_cache_dir = "$4"
[[listener]]
name = "bench"
bind = "127.0.0.1:$1"
[[route]]
name = "bench"
upstream = "target"
${chains[$3]}
[upstream.target]
servers = ["$2"]
[plugin.origin]
wasm = "$wasm/origin_allowlist.wasm"
config = { allow = ["https://app.example.com"] }
[plugin.socketio]
wasm = "$wasm/socketio.wasm"
CONF
}

# start_airlock CONFIG_FILE PORT: run airlock in the background (its pid in $pid) and
# wait until PORT accepts connections.
start_airlock() {
  "$bin" --log warn run --config "$1" &
  pid=$!
  wait_port "$2"
}

# wait_port PORT: wait (at most 5 s) until something accepts connections on PORT.
wait_port() {
  for _ in $(seq 100); do
    (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  exit 1
}

# fill TEMPLATE PORT: a config from bench/configs with its placeholders filled in (uses
# $upstream, the echo upstream's address).
fill() {
  sed -e "s|@WORK@|$work|g" -e "s|@PORT@|$2|g" -e "s|@UPSTREAM@|$upstream|g" -e "s|@WASM@|$wasm|g" \
    "$root/bench/configs/$1"
}

# start_proxy NAME PORT: start airlock, nginx or HAProxy with its config from
# bench/configs (its pid in $pid) and wait until it listens; NAME direct sets pid=0.
start_proxy() {
  case $1 in
    direct) pid=0 ;;
    airlock) fill airlock.toml "$2" > "$work/airlock.toml"; "$bin" --log warn run --config "$work/airlock.toml" & pid=$! ;;
    nginx) fill nginx.conf "$2" > "$work/nginx.conf"; nginx -c "$work/nginx.conf" & pid=$! ;;
    haproxy) fill haproxy.cfg "$2" > "$work/haproxy.cfg"; haproxy -db -f "$work/haproxy.cfg" & pid=$! ;;
  esac
  [ "$1" = direct ] || wait_port "$2"
}

# pids_of PID: the process and its children (nginx's workers).
pids_of() { echo "$1" $(pgrep -P "$1" || true); }
# cpu_all PID, rss_kib PID: clock ticks used, and resident KiB, by it and its children.
cpu_all() { local t=0 p; for p in $(pids_of "$1"); do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }
rss_kib() { local t=0 p; for p in $(pids_of "$1"); do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo "$t"; }

# A Socket.IO client's WebSocket path, so that the example plugin chains admit it.
sio_path='/socket.io/?EIO=4&transport=websocket&sid=lv_VI97HAXpY6yYWAAAC'

# field NAME JSON: a number from airlock-bench's one-line JSON output.
field() { sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p" <<< "$2"; }

# cpu_ticks PID: user + system clock ticks the process has used.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# cpu_us_per TICKS COUNT: microseconds of CPU per item.
cpu_us_per() {
  awk -v t="$1" -v hz="$(getconf CLK_TCK)" -v n="$2" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }'
}

# need_packages TOOL...: install each tool from its Debian package when it is missing.
need_packages() {
  local tool
  for tool in "$@"; do
    if ! command -v "$tool" > /dev/null && ! [ -x "/usr/sbin/$tool" ]; then
      # A fresh machine may have no package lists yet: fetch them and try again.
      apt-get install -y "$tool" >&2 || { apt-get update >&2 && apt-get install -y "$tool" >&2; }
    fi
  done
}

# build_and_start_upstream ADDR: release-build airlock and airlock-bench (setting $bin
# and $bench), then start airlock-bench's WebSocket echo upstream on ADDR.
build_and_start_upstream() {
  rustup target add wasm32-wasip2 >&2 # the example plugins' target; a no-op once added
  cargo build --release -p airlock -p airlock-bench >&2
  bin=$root/target/release/airlock
  bench=$root/target/release/airlock-bench
  "$bench" upstream --listen "$1" > /dev/null &
  wait_port "${1##*:}"
}

# handshake_row LABEL CONFIG PORT URL: run airlock on CONFIG (listening on PORT), warm it
# up, run the caller's `load URL DURATION` for $secs seconds, print a markdown row with
# airlock's CPU time per handshake, and stop it.
handshake_row() {
  local label=$1 config=$2 port=$3 url=$4 out t0 t1 cpu
  start_airlock "$config" "$port"
  load "$url" 1s > /dev/null
  t0=$(cpu_ticks "$pid")
  out=$(load "$url" "${secs}s")
  t1=$(cpu_ticks "$pid")
  if [ "$(field errors "$out")" != 0 ]; then echo "failed handshakes ($label): $out" >&2; fi
  cpu=$(cpu_us_per $((t1 - t0)) "$(field handshakes "$out")")
  echo "| $label | $(field per_second "$out") | $(field p50_us "$out") | $(field p99_us "$out") | $cpu |"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# prepare_callgrind ADDR: what the callgrind scripts need first: valgrind, the release
# build with the echo upstream on ADDR, and $out_dir for the dumps.
prepare_callgrind() {
  need_packages valgrind
  build_and_start_upstream "$1"
  out_dir=${AIRLOCK_CALLGRIND_DIR:-$root/target/callgrind}
  mkdir -p "$out_dir"
}

# callgrind_run DUMP CONFIG PORT SECS: run airlock on CONFIG under callgrind (its pid in
# $pid), warm it up with the caller's `load DURATION`, count instructions only during
# `load SECS` (its output in $result), stop airlock, and set $total to the count.
callgrind_run() {
  local dump=$1 config=$2 port=$3 secs=$4
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$dump" \
    "$bin" --log warn run --config "$config" 2> "$work/valgrind.log" &
  pid=$!
  for _ in $(seq 600); do
    (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  load 2s > /dev/null # warm-up: instances, buffers and caches reach their steady state
  callgrind_control -i on "$pid" > /dev/null 2>&1
  result=$(load "${secs}s")
  callgrind_control -i off "$pid" > /dev/null 2>&1
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t { gsub(",", "", $1); t = $1 } END { print t }')
  if [ -z "$total" ]; then
    echo "no instruction count; valgrind said:" >&2
    tail -20 "$work/valgrind.log" >&2
    exit 1
  fi
}
