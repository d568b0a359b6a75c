#!/usr/bin/env bash
# The main job on the bundled examples, end to end: builds pilip, trains an ethanol potential (energies + forces)
# and a periodic Cu potential (+ stress), evaluates them on their held-out test splits (parity plot, finite-
# difference force check), exports both to ONNX, and runs them where users run MD: LAMMPS (pair_style pilip,
# serial and on 2 MPI ranks) and ASE (relaxation + 1 ps NVE). Outputs in runs/quickstart/. Needs cargo,
# python3 (venv) and a C++ compiler; installs the pinned Python wheels into .venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust first, e.g. 'apt install curl && curl https://sh.rustup.rs -sSf | sh'" >&2
  exit 1
fi
bash scripts/setup_python.sh
cargo build --release --locked --features ort
PILIP=target/release/pilip
RUN=runs/quickstart
rm -rf "$RUN"
mkdir -p "$RUN"

echo "== ethanol: train, evaluate, check forces, export"
"$PILIP" train examples/configs/molecule.toml --set output.run_dir="\"$RUN/ethanol\"" --set training.max_epochs=100
"$PILIP" eval "$RUN/ethanol/checkpoints/best.ckpt" "$RUN/ethanol/test.extxyz" --plot "$RUN/ethanol_parity.png"
"$PILIP" check-forces "$RUN/ethanol/checkpoints/best.ckpt" "$RUN/ethanol/test.extxyz"
"$PILIP" export "$RUN/ethanol/checkpoints/best.ckpt" -o "$RUN/ethanol.onnx"
"$PILIP" eval "$RUN/ethanol.onnx" "$RUN/ethanol/test.extxyz" --energy-key REF_energy --forces-key REF_forces

echo "== Cu: train (energies, forces, stress), export"
"$PILIP" train examples/configs/periodic.toml --quiet --set output.run_dir="\"$RUN/cu\"" --set training.max_epochs=60
"$PILIP" export "$RUN/cu/checkpoints/best.ckpt" -o "$RUN/cu.onnx"
"$PILIP" info "$RUN/cu.onnx"

echo "== LAMMPS: pair_style pilip (examples/lammps)"
bash lammps_plugin/build.sh .venv/bin/python
PLUGIN=$PWD/target/lammps/pilipplugin.so
export OMP_NUM_THREADS=1
(cd examples/lammps &&
  ../../.venv/bin/lmp -in in.cu -var model "../../$RUN/cu.onnx" -var plugin "$PLUGIN" -log "../../$RUN/log.cu" -screen none &&
  ../../.venv/bin/mpirun -np 2 ../../.venv/bin/lmp -in in.cu -var model "../../$RUN/cu.onnx" -var plugin "$PLUGIN" \
    -log "../../$RUN/log.cu.mpi2" -screen none &&
  ../../.venv/bin/lmp -in in.ethanol -var model "../../$RUN/ethanol.onnx" -var plugin "$PLUGIN" \
    -log "../../$RUN/log.ethanol" -screen none)
grep -A3 "^ *Step" "$RUN/log.cu" | head -4
tail -3 "$RUN/log.cu.mpi2" | head -1

echo "== ASE: pilip.Calculator (examples/ase/run.py)"
.venv/bin/pip install --quiet --force-reinstall --no-deps ./bindings/python
.venv/bin/python examples/ase/run.py "$RUN/ethanol.onnx" examples/data/ethanol_300.extxyz

echo "done: models $RUN/ethanol.onnx and $RUN/cu.onnx, parity plot $RUN/ethanol_parity.png, LAMMPS logs $RUN/log.*"
