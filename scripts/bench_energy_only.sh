#!/usr/bin/env bash
# Energy-only training (issue 14, docs/energy-only.md): on the first N structures of TRAIN, using their energies
# only (the forces in TRAIN are never read, except by the opt-in CEILING row), trains and evaluates on TEST:
#   standard — the model on the N energies alone;
#   base     — a model on GFN2-xTB energies and forces of all TRAIN geometries (scripts/xtb_labels.py, cached next
#              to the outputs): the cheap method's shape, no expensive data;
#   delta    — Δ-learning: the base frozen, a correction network (model.base, hidden DELTA_HIDDEN) trained beside
#              it on the N energies — one exported model;            (the method reported as method_*: METHOD)
#   finetune — the base continued on the N energies (model.init, loss.anchor_weight = 1; FROZEN_LAYERS of it kept);
#   score    — standard + score matching at TEMPERATURE (K), the temperature the structures were sampled at
#              (rMD17: 500); skipped when TEMPERATURE is empty;
#   fep      — standard + the free-energy-perturbation identity at TEMPERATURE (loss.fep_weight);
#   conf     — standard + the configurational-temperature identity at TEMPERATURE
#              (loss.configurational_temperature_weight);
#   piwsl    — standard + PITC and PISC as the paper runs them (ε 0.05 Å, weights 24 and 0.2 next to the energy
#              weight 20, displacements of loss.piwsl_variant = PIWSL_VARIANT);
#   delta+T, finetune+T — Δ-learning or fine-tuning with one of the terms T above (e.g. delta+fep);
#   ceiling  — with CEILING=1 only: the model trained on the N structures' energies AND forces (reads TRAIN's
#              forces; the bound the energy-only rows aim for).
# Prints one JSON line: <row>_forces_mae (meV/Å) and <row>_energy_mae (meV/atom) per row, xtb_forces_mae (GFN2-xTB
# itself on TEST), and standard_*/method_*/base_forces_mae/forces_ratio for the method chosen by METHOD.
# Works on any rMD17-style file (C, H, N, O molecules, keys `energy` and `forces`).
# Usage: scripts/bench_energy_only.sh TRAIN.extxyz TEST.extxyz N [SEED] [EPOCHS]   (defaults: seed 1, 200 epochs)
# Env:   METHOD (delta), ROWS (all: "standard base delta finetune score"), TEMPERATURE (500), DELTA_HIDDEN ([8, 8]),
#        SCORE_WEIGHT (1e-3), FEP_WEIGHT (1e-3), CONF_WEIGHT (1e-3), PIWSL_VARIANT (paper_final),
#        FROZEN_LAYERS (0: the finetune rows keep this many first layers of each network, model.frozen_layers),
#        CEILING (0), BASE_SEED (SEED: the seed of the xTB base; the same base may serve several seeds of the rest),
#        OUT (bench_runs/energy_only/<TRAIN name>)
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/bench_energy_only.sh TRAIN.extxyz TEST.extxyz N [SEED] [EPOCHS]"
TRAIN=$(realpath "${1:?$usage}")
TEST=$(realpath "${2:?$usage}")
N=${3:?$usage}
SEED=${4:-1}
EPOCHS=${5:-200}
METHOD=${METHOD:-delta}
ROWS=${ROWS:-standard base delta finetune score}
TEMPERATURE=${TEMPERATURE-500}
DELTA_HIDDEN=${DELTA_HIDDEN:-[8, 8]}
SCORE_WEIGHT=${SCORE_WEIGHT:-1e-3}
FEP_WEIGHT=${FEP_WEIGHT:-1e-3}
CONF_WEIGHT=${CONF_WEIGHT:-1e-3}
PIWSL_VARIANT=${PIWSL_VARIANT:-paper_final}
FROZEN_LAYERS=${FROZEN_LAYERS:-0}
BASE_SEED=${BASE_SEED:-$SEED}
[ "${CEILING:-0}" = 1 ] && ROWS="$ROWS ceiling"
case " $ROWS " in *" $METHOD "*) ;; *) echo "METHOD=$METHOD is not one of the rows ($ROWS)" >&2; exit 2 ;; esac
bash scripts/setup_python.sh
cargo build --release --locked --bin pilip >&2
P=target/release/pilip
CFG=examples/configs/energy_only.toml
NAME=$(basename "$TRAIN" .extxyz)
OUT=${OUT:-bench_runs/energy_only/$NAME}
mkdir -p "$OUT"
XTB=$OUT/xtb_labels.extxyz
.venv/bin/python scripts/xtb_labels.py "$TRAIN" "$XTB" >&2
XTB_TEST=$OUT/xtb_test_labels.extxyz        # xTB itself on TEST, for its own force error
.venv/bin/python scripts/xtb_labels.py "$TEST" "$XTB_TEST" --forces-key xtb_forces --energy-key xtb_energy >&2
TOTAL=$(grep -c "Properties=" "$XTB")
NVALID=$(( N / 20 > 5 ? N / 20 : 5 ))
EXPENSIVE=(--set data.file="\"$TRAIN\"" --set data.n_train=$(( N - NVALID )) --set data.n_valid=$NVALID)
BASE_DIR=$OUT/xtb_base_s${BASE_SEED}_e$EPOCHS
BASE_CKPT=$PWD/$BASE_DIR/checkpoints/best.ckpt
train() { # run_dir, extra arguments (a later --set training.seed wins); a finished run is reused
  local dir=$1; shift
  if [ ! -f "$dir/done" ]; then
    rm -rf "$dir"
    $P train "$CFG" --quiet --set training.seed=$SEED --set training.max_epochs=$EPOCHS --set output.run_dir="\"$dir\"" "$@" >&2
    touch "$dir/done"
  fi
}
needs_base() { case " $ROWS " in *" base "*|*" delta"*|*" finetune"*) return 0 ;; esac; return 1; }
if needs_base; then
  train "$BASE_DIR" --set data.file="\"$(realpath "$XTB")\"" --set data.keys.forces='"forces"' \
    --set loss.forces_weight=1.0 --set training.early_stopping_metric='"val_loss"' \
    --set data.n_train=$(( TOTAL - 50 )) --set data.n_valid=50 --set training.seed=$BASE_SEED
fi
DELTA_TAG=delta_h$(echo "$DELTA_HIDDEN" | tr -dc '0-9,' | tr , x)
tagged() { [ "$2" = "$3" ] && echo "$1" || echo "$1_w$2"; }   # run-dir tag; the weight only when not the default
FINETUNE=(--set model.init="\"$BASE_CKPT\"" --set loss.anchor_weight=1.0 --set model.frozen_layers=$FROZEN_LAYERS)
FINETUNE_TAG=$(tagged finetuned "$FROZEN_LAYERS" 0 | sed 's/_w/_frozen/')
term() { # a physics term: sets PHYS (config overrides) and TAG (run-dir tag); false when it cannot run
  case $1 in
    score|fep|conf) [ -n "$TEMPERATURE" ] || return 1 ;;
  esac
  case $1 in
    score) PHYS=(--set data.temperature=$TEMPERATURE --set loss.score_matching_weight=$SCORE_WEIGHT)
      TAG=$(tagged score_T$TEMPERATURE "$SCORE_WEIGHT" 1e-3) ;;
    fep) PHYS=(--set data.temperature=$TEMPERATURE --set loss.fep_weight=$FEP_WEIGHT)
      TAG=$(tagged fep_T$TEMPERATURE "$FEP_WEIGHT" 1e-3) ;;
    conf) PHYS=(--set data.temperature=$TEMPERATURE --set loss.configurational_temperature_weight=$CONF_WEIGHT)
      TAG=$(tagged conf_T$TEMPERATURE "$CONF_WEIGHT" 1e-3) ;;
    piwsl) PHYS=(--set loss.pitc_weight=24 --set loss.pisc_weight=0.2 --set loss.epsilon=0.05
        --set loss.piwsl_variant="\"$PIWSL_VARIANT\"")
      TAG=piwsl_$PIWSL_VARIANT ;;
    *) echo "unknown term '$1' in ROWS" >&2; exit 2 ;;
  esac
}
declare -A RUN
for row in $ROWS; do
  case $row in
    standard) RUN[$row]=$OUT/standard_n${N}_s${SEED}_e$EPOCHS; train "${RUN[$row]}" "${EXPENSIVE[@]}" ;;
    base) RUN[$row]=$BASE_DIR ;;
    delta) RUN[$row]=$OUT/${DELTA_TAG}_n${N}_s${SEED}_e$EPOCHS
      train "${RUN[$row]}" "${EXPENSIVE[@]}" --set model.base="\"$BASE_CKPT\"" --set model.hidden="$DELTA_HIDDEN" ;;
    finetune) RUN[$row]=$OUT/${FINETUNE_TAG}_n${N}_s${SEED}_e$EPOCHS
      train "${RUN[$row]}" "${EXPENSIVE[@]}" "${FINETUNE[@]}" ;;
    score|fep|conf|piwsl) term "$row" || continue
      RUN[$row]=$OUT/${TAG}_n${N}_s${SEED}_e$EPOCHS
      train "${RUN[$row]}" "${EXPENSIVE[@]}" "${PHYS[@]}" ;;
    delta+*) term "${row#delta+}" || continue
      RUN[$row]=$OUT/${DELTA_TAG}+${TAG}_n${N}_s${SEED}_e$EPOCHS
      train "${RUN[$row]}" "${EXPENSIVE[@]}" --set model.base="\"$BASE_CKPT\"" --set model.hidden="$DELTA_HIDDEN" "${PHYS[@]}" ;;
    finetune+*) term "${row#finetune+}" || continue
      RUN[$row]=$OUT/${FINETUNE_TAG}+${TAG}_n${N}_s${SEED}_e$EPOCHS
      train "${RUN[$row]}" "${EXPENSIVE[@]}" "${FINETUNE[@]}" "${PHYS[@]}" ;;
    ceiling) RUN[$row]=$OUT/ceiling_forces_n${N}_s${SEED}_e$EPOCHS
      train "${RUN[$row]}" "${EXPENSIVE[@]}" --set data.keys.forces='"forces"' --set loss.forces_weight=1.0 \
        --set training.early_stopping_metric='"val_loss"' ;;
    *) echo "unknown row '$row' in ROWS" >&2; exit 2 ;;
  esac
done
[ -n "${RUN[$METHOD]:-}" ] || { echo "METHOD=$METHOD was not run (TEMPERATURE empty?)" >&2; exit 2; }
EVALS=$(for row in "${!RUN[@]}"; do
  printf '%s\t%s\n' "$row" "$($P eval "${RUN[$row]}/checkpoints/best.ckpt" "$TEST" --energy-key energy --forces-key forces --json | tr -d '\n')"
done)
EVALS=$EVALS BASE_SEED=$BASE_SEED ROWS="$ROWS" .venv/bin/python - "$NAME" "$N" "$SEED" "$METHOD" "$TEST" "$XTB_TEST" <<'EOF2'
import json, os, sys
import numpy as np
name, n, seed, method, test, xtb_test = sys.argv[1:7]
evals = {row: json.loads(text) for row, text in (l.split("\t", 1) for l in os.environ["EVALS"].strip().splitlines())}

def forces(path, key):
    """Force columns `key` of every frame (extended XYZ with a Properties line)."""
    out, lines, i = [], open(path).read().splitlines(), 0
    while i < len(lines):
        count = int(lines[i]); props = lines[i + 1].split("Properties=")[1].split()[0].split(":")
        col, start = None, 0
        for prop, kind, width in zip(props[::3], props[1::3], props[2::3]):
            if prop == key:
                col = start
            start += int(width)
        out.append(np.array([[float(x) for x in l.split()[col:col + 3]] for l in lines[i + 2:i + 2 + count]]))
        i += 2 + count
    return np.concatenate(out)

result = {"train": name, "n": int(n), "seed": int(seed), "base_seed": int(os.environ["BASE_SEED"]), "method": method}
for row in os.environ["ROWS"].split():
    if row in evals:
        result[f"{row}_forces_mae"] = round(evals[row]["forces_mae_mev_per_A"], 2)
        result[f"{row}_energy_mae"] = round(evals[row]["energy_mae_mev_per_atom"], 3)
result["xtb_forces_mae"] = round(float(1e3 * np.abs(forces(test, "forces") - forces(xtb_test, "xtb_forces")).mean()), 2)
result["method_forces_mae"] = result[f"{method}_forces_mae"]
result["method_energy_mae"] = result[f"{method}_energy_mae"]
if "standard" in evals:
    result["forces_ratio"] = round(result["standard_forces_mae"] / result["method_forces_mae"], 2)
print(json.dumps(result))
EOF2
