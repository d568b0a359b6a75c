#!/usr/bin/env bash
# Trains the two example potentials (Cu with stress, ethanol H C O) on the bundled data if they are not there
# yet, exports them, builds the LAMMPS plugin, and runs both example inputs (serial, then Cu on 2 MPI ranks).
# Usage: bash examples/lammps/run.sh          (outputs in runs/lammps-example/)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=runs/lammps-example
mkdir -p "$OUT"
bash scripts/setup_python.sh
cargo build --release --locked --features ort
bash lammps_plugin/build.sh .venv/bin/python
PILIP=target/release/pilip
model() { # name config epochs
  if [ ! -f "$OUT/$1.onnx" ]; then
    "$PILIP" train "examples/configs/$2" --quiet --set output.run_dir="\"$OUT/$1-run\"" --set training.max_epochs=$3
    "$PILIP" export "$OUT/$1-run/checkpoints/best.ckpt" -o "$OUT/$1.onnx"
  fi
}
model cu periodic.toml 100
model ethanol molecule.toml 100
PLUGIN=$PWD/target/lammps/pilipplugin.so
export OMP_NUM_THREADS=1
cd examples/lammps
../../.venv/bin/lmp -in in.cu -var model "../../$OUT/cu.onnx" -var plugin "$PLUGIN" -log "../../$OUT/log.cu"
../../.venv/bin/mpirun -np 2 ../../.venv/bin/lmp -in in.cu -var model "../../$OUT/cu.onnx" -var plugin "$PLUGIN" \
  -log "../../$OUT/log.cu.mpi2" -screen none
../../.venv/bin/lmp -in in.ethanol -var model "../../$OUT/ethanol.onnx" -var plugin "$PLUGIN" -log "../../$OUT/log.ethanol"
echo "logs in $OUT/"
