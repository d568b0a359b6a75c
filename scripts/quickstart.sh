#!/usr/bin/env bash
# Builds pilip, trains a potential on the bundled ethanol example (energies + forces), evaluates it on the
# held-out test split, writes a parity plot, and exports the model to ONNX for the runtime (C API, LAMMPS, ASE). Takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust first, e.g. 'apt install curl && curl https://sh.rustup.rs -sSf | sh'" >&2
  exit 1
fi
cargo build --release --locked --features ort
PILIP=target/release/pilip
RUN=runs/quickstart
rm -rf "$RUN"
"$PILIP" train examples/configs/molecule.toml --set output.run_dir="\"$RUN\"" --set training.max_epochs=100
"$PILIP" eval "$RUN/checkpoints/best.ckpt" "$RUN/test.extxyz" --plot "$RUN/parity.png"
"$PILIP" check-forces "$RUN/checkpoints/best.ckpt" "$RUN/test.extxyz"
# Export the potential as one ONNX file (verified against the trained model) and evaluate it through the runtime.
"$PILIP" export "$RUN/checkpoints/best.ckpt" -o "$RUN/model.onnx"
"$PILIP" info "$RUN/model.onnx"
"$PILIP" eval "$RUN/model.onnx" "$RUN/test.extxyz" --energy-key REF_energy --forces-key REF_forces
echo "done: model $RUN/model.onnx (checkpoint $RUN/checkpoints/best.ckpt), parity plot $RUN/parity.png"
