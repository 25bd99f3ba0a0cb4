#!/bin/sh
# Builds {{name}}.wasm beside plugin.toml with componentize-py (PyPI:
# `pip install componentize-py==0.25.1`, or set COMPONENTIZE_PY to one installed elsewhere).
set -eu
cd "$(dirname "$0")"
"${COMPONENTIZE_PY:-componentize-py}" -d wit -w connector componentize app -o {{name}}.wasm
echo "built $(pwd)/{{name}}.wasm"
