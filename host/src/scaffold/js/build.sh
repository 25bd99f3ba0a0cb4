#!/bin/sh
# Builds {{name}}.wasm beside plugin.toml with componentize-js (npm:
# `npm install @bytecodealliance/componentize-js@0.23.0`, or set COMPONENTIZE_JS to one
# installed elsewhere). The file-connector world gives the code its data directory;
# WASI HTTP is left out (the host has none: outgoing calls go through outgoing-http).
set -eu
cd "$(dirname "$0")"
"${COMPONENTIZE_JS:-componentize-js}" app.js --wit wit --world-name file-connector \
  --disable http --disable fetch-event -o {{name}}.wasm
echo "built $(pwd)/{{name}}.wasm"
