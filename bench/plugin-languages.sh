#!/usr/bin/env bash
# The same plugin in Rust, JavaScript and Python (the origin check `airlock plugin new`
# writes in each), built with the toolchains airlock's examples pin, and what each costs:
# toolchain build time, component and compiled size, load time, memory per instance,
# a fresh instance, and warm calls (p50/p99), from `cargo bench --bench plugin_call`.
#
# Needs: Node.js and npm, Python 3, the wasm32-wasip2 target. From the repository root:
#   bash bench/plugin-languages.sh [warm calls per language]
set -euo pipefail
calls=${1:-20000}
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo build --release -p airlock >&2
bin=$root/target/release/airlock

python3 -m venv "$work/venv" >&2
"$work/venv/bin/pip" install -q --require-hashes -r plugins/signed-url-py/requirements.txt >&2

time_build() { # NAME, then the command; prints seconds
  local name=$1; shift
  local t0=$(date +%s.%N)
  "$@" > "$work/$name-build.log" 2>&1 || { cat "$work/$name-build.log" >&2; exit 1; }
  echo "$(date +%s.%N) - $t0" | bc
}

"$bin" plugin new bench-rust --lang rust --dir "$work/rust" >&2
"$bin" plugin new bench-js --lang js --dir "$work/js" >&2
"$bin" plugin new bench-py --lang python --dir "$work/py" >&2
(cd "$work/js" && npm ci --no-audit --no-fund --prefer-offline >&2)

rust_s=$(cd "$work/rust" && time_build rust cargo build --release --target wasm32-wasip2)
js_s=$(cd "$work/js" && time_build js npm run build)
py_s=$(cd "$work/py" && PATH="$work/venv/bin:$PATH" time_build py ./build.sh)

echo "Toolchain build time (a clean Rust build includes its dependencies):"
echo
echo "| plugin | build |"
echo "|---|---|"
printf '| rust | %.1f s |\n| js | %.1f s |\n| python | %.1f s |\n' "$rust_s" "$js_s" "$py_s"
echo

PLUGIN_BENCH_CALLS=$calls \
PLUGIN_BENCH_LANGS="rust=$work/rust/target/wasm32-wasip2/release/bench_rust.wasm,js=$work/js/bench_js.wasm,python=$work/py/bench_py.wasm" \
  cargo bench -q -p airlock --bench plugin_call 2>/dev/null
