#!/usr/bin/env bash
# Creates the project-local Python environment .venv with the pinned packages the tests and examples use
# (ONNX Runtime for the optional `ort` engine). Safe to run repeatedly; prints nothing when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import sys; sys.exit(0 if open('.venv/.pilip-requirements').read() == open('scripts/requirements.txt').read() else 1)" 2>/dev/null; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -r scripts/requirements.txt
  cp scripts/requirements.txt .venv/.pilip-requirements
fi
