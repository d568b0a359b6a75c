#!/usr/bin/env bash
# Builds pilip, trains a potential on the bundled ethanol example (energies + forces), evaluates it on the
# held-out test split and writes a parity plot. Takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust first, e.g. 'apt install curl && curl https://sh.rustup.rs -sSf | sh'" >&2
  exit 1
fi
cargo build --release --locked
PILIP=target/release/pilip
RUN=runs/quickstart
rm -rf "$RUN"
"$PILIP" train examples/configs/molecule.toml --set output.run_dir="\"$RUN\"" --set training.max_epochs=100
"$PILIP" eval "$RUN/checkpoints/best.ckpt" "$RUN/test.extxyz" --plot "$RUN/parity.png"
"$PILIP" check-forces "$RUN/checkpoints/best.ckpt" "$RUN/test.extxyz"
echo "done: model $RUN/checkpoints/best.ckpt, parity plot $RUN/parity.png"
