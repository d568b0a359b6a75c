#!/usr/bin/env bash
# Runs every test of the project: Rust unit, integration and CLI tests, the C and C++ programs, and the ONNX
# Runtime engine (through the onnxruntime wheel in .venv). Sets up .venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_python.sh
ORT_DYLIB_PATH=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -1)
export ORT_DYLIB_PATH
cargo test --release --locked --features ort "$@"
# The build regenerates include/pilip.h from src/c_api; the committed header must be current.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && ! git diff --quiet -- include/pilip.h; then
  echo "include/pilip.h changed during the build: commit the regenerated header" >&2
  git --no-pager diff --stat -- include/pilip.h >&2
  exit 1
fi
