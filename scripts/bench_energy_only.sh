#!/usr/bin/env bash
# Energy-only training with forces from a cheap method (issue 14): on the first N structures of TRAIN, using
# their energies only (the forces in TRAIN are never read), trains
#   standard — the model on the N energies alone;
#   method   — a base model on GFN2-xTB energies and forces of all TRAIN geometries (scripts/xtb_labels.py,
#              cached next to the outputs), fine-tuned on the N energies (model.init + loss.anchor_weight = 1);
# evaluates both, the base model and GFN2-xTB itself on TEST, and prints one JSON line (meV/Å, meV/atom).
# Works on any rMD17-style file (C, H, N, O molecules, keys `energy` and `forces`).
# Usage: scripts/bench_energy_only.sh TRAIN.extxyz TEST.extxyz N [SEED] [EPOCHS]   (defaults: seed 1, 200 epochs)
set -euo pipefail
cd "$(dirname "$0")/.."
TRAIN=$(realpath "${1:?usage: scripts/bench_energy_only.sh TRAIN.extxyz TEST.extxyz N [SEED] [EPOCHS]}")
TEST=$(realpath "${2:?usage: scripts/bench_energy_only.sh TRAIN.extxyz TEST.extxyz N [SEED] [EPOCHS]}")
N=${3:?usage: scripts/bench_energy_only.sh TRAIN.extxyz TEST.extxyz N [SEED] [EPOCHS]}
SEED=${4:-1}
EPOCHS=${5:-200}
bash scripts/setup_python.sh
cargo build --release --locked --bin pilip >&2
P=target/release/pilip
CFG=examples/configs/energy_only.toml
NAME=$(basename "$TRAIN" .extxyz)
OUT=bench_runs/energy_only/$NAME
mkdir -p "$OUT"
XTB=$OUT/xtb_labels.extxyz
.venv/bin/python scripts/xtb_labels.py "$TRAIN" "$XTB" >&2
XTB_TEST=$OUT/xtb_test_labels.extxyz        # xTB itself on TEST, for its own force error
.venv/bin/python scripts/xtb_labels.py "$TEST" "$XTB_TEST" --forces-key xtb_forces --energy-key xtb_energy >&2
TOTAL=$(grep -c "Properties=" "$XTB")
NVALID=$(( N / 20 > 5 ? N / 20 : 5 ))
split() { echo --set data.n_train=$(( $1 - $2 )) --set data.n_valid=$2; }
common() { echo --quiet --set training.seed=$SEED --set training.max_epochs=$EPOCHS; }
train() { # run_dir, extra arguments
  local dir=$OUT/$1; shift
  if [ ! -f "$dir/done" ]; then
    rm -rf "$dir"
    $P train "$CFG" $(common) --set output.run_dir="\"$dir\"" "$@" >&2
    touch "$dir/done"
  fi
}
train "standard_n${N}_s${SEED}_e$EPOCHS" --set data.file="\"$TRAIN\"" $(split "$N" "$NVALID")
train "xtb_base_s${SEED}_e$EPOCHS" --set data.file="\"$(realpath "$XTB")\"" --set data.keys.forces='"forces"' \
  --set loss.forces_weight=1.0 --set training.early_stopping_metric='"val_loss"' $(split "$TOTAL" 50)
train "finetuned_n${N}_s${SEED}_e$EPOCHS" --set data.file="\"$TRAIN\"" $(split "$N" "$NVALID") \
  --set model.init="\"$PWD/$OUT/xtb_base_s${SEED}_e$EPOCHS/checkpoints/best.ckpt\"" --set loss.anchor_weight=1.0
ev() { $P eval "$OUT/$1/checkpoints/best.ckpt" "$TEST" --energy-key energy --forces-key forces --json; }
.venv/bin/python - "$(ev "standard_n${N}_s${SEED}_e$EPOCHS")" "$(ev "finetuned_n${N}_s${SEED}_e$EPOCHS")" "$(ev "xtb_base_s${SEED}_e$EPOCHS")" \
  "$NAME" "$N" "$SEED" "$TEST" "$XTB_TEST" <<'EOF2'
import json, sys
import numpy as np
std, method, base = (json.loads(a) for a in sys.argv[1:4])

def forces(path, key):
    """Force columns `key` of every frame (extended XYZ with a Properties line)."""
    out, lines, i = [], open(path).read().splitlines(), 0
    while i < len(lines):
        n = int(lines[i]); props = lines[i + 1].split("Properties=")[1].split()[0].split(":")
        col, start = None, 0
        for name, kind, width in zip(props[::3], props[1::3], props[2::3]):
            if name == key:
                col = start
            start += int(width)
        out.append(np.array([[float(x) for x in l.split()[col:col + 3]] for l in lines[i + 2:i + 2 + n]]))
        i += 2 + n
    return np.concatenate(out)

xtb_mae = 1e3 * np.abs(forces(sys.argv[7], "forces") - forces(sys.argv[8], "xtb_forces")).mean()
print(json.dumps({
    "train": sys.argv[4], "n": int(sys.argv[5]), "seed": int(sys.argv[6]), "method": "xtb_finetune_anchor1",
    "standard_forces_mae": round(std["forces_mae_mev_per_A"], 2),
    "method_forces_mae": round(method["forces_mae_mev_per_A"], 2),
    "base_forces_mae": round(base["forces_mae_mev_per_A"], 2),
    "xtb_forces_mae": round(float(xtb_mae), 2),
    "standard_energy_mae": round(std["energy_mae_mev_per_atom"], 3),
    "method_energy_mae": round(method["energy_mae_mev_per_atom"], 3),
    "forces_ratio": round(std["forces_mae_mev_per_A"] / method["forces_mae_mev_per_A"], 2),
}))
EOF2
