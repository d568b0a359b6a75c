#!/usr/bin/env bash
# Trains the ethanol example model (if not there yet), exports it, installs the Python package and runs
# examples/ase/run.py: relaxation, then 1 ps NVE MD in ASE.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runs/ase-example
mkdir -p "$OUT"
bash scripts/setup_python.sh
cargo build --release --locked --features ort
.venv/bin/pip install --quiet --force-reinstall --no-deps ./bindings/python
if [ ! -f "$OUT/ethanol.onnx" ]; then
  target/release/pilip train examples/configs/molecule.toml --quiet --set output.run_dir="\"$OUT/run\""
  target/release/pilip export "$OUT/run/checkpoints/best.ckpt" -o "$OUT/ethanol.onnx"
fi
.venv/bin/python examples/ase/run.py "$OUT/ethanol.onnx" examples/data/ethanol_300.extxyz
