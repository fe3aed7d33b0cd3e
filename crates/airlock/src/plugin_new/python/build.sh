#!/bin/sh
# Build {{file}}.wasm from app.py against airlock's WIT (needs componentize-py:
# pip install --require-hashes -r requirements.txt).
set -e
cd "$(dirname "$0")"
exec componentize-py -d wit/airlock-plugin.wit -w handshake-plugin componentize app -o {{file}}.wasm
