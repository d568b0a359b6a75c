#!/usr/bin/env bash
# Train a molecular potential from few expensive structures on top of a GFN2-xTB prior (Δ-learning).
#
# Usage: scripts/train_xtb_prior.sh CONFIG [--set SECTION.KEY=VALUE …] [--quiet]
#   CONFIG and the --set arguments are those of `pilip train` (e.g. examples/configs/rmd17.toml with
#   --set data.n_train=50). The final model is an ordinary run in the config's output.run_dir: export it with
#   `pilip export RUN_DIR/checkpoints/best.ckpt -o model.onnx` and use it anywhere (one file; no xTB at run time).
#
# Why: with tens of structures a network learns the energy surface between them from those structures alone.
# A cheap method's surface sampled densely around them carries its shape (bond stiffnesses, angles, torsions), and
# the expensive labels then only correct it (docs/xtb-prior.md; the Δ-learning of docs/energy-only.md).
# Steps (each one's output is kept in RUN_DIR/prior and reused when the script runs again with the same inputs):
#   1. split:  `pilip split` — the frames the run will train on (RUN_DIR/prior/split.json);
#   2. sample: GFN2-xTB Langevin MD from each training frame (scripts/xtb_md_sample.py; only the geometries of the
#      training frames are read, never their labels or the validation/test frames): FRAMES_PER_START frames each,
#      STRIDE steps of 0.5 fs apart, at TEMPERATURE K → RUN_DIR/prior/xtb.extxyz;
#   3. base:   the same config trained on those xTB energies and forces for BASE_MINUTES (5 % of the frames,
#      at least 20, validate) → RUN_DIR/prior/base;
#   4. Δ:      the same config on the expensive structures with model.base = the base (frozen); the correction
#      networks have the config's model.hidden (DELTA_HIDDEN to change them), and a time budget
#      (training.max_minutes) covers steps 2–4 together.
# Environment: PILIP (binary; default target/release/pilip, built if missing), PYTHON (default .venv/bin/python:
#   needs numpy, ase, tblite — scripts/setup_python.sh), FRAMES_PER_START (1000 / training structures, at
#   least 2: 20 for 50 structures), STRIDE (20), TEMPERATURE (500),
#   BASE_MINUTES (4), DELTA_HIDDEN (the config's model.hidden), FAMILY (model.family of base and Δ, default
#   power_spectrum: the base has to fit ~1000 xTB frames within BASE_MINUTES, where the three-body family gets
#   four times the four-body family's epochs: rMD17 toluene at 50 structures 14.2 against 17.6 meV/Å with the
#   four-body family of rmd17.toml, session 73; empty: the config's; a --set model.family argument wins),
#   JOBS (2, xTB processes), CHARGE (0, total charge) and UHF (0, unpaired electrons): the same for every
#   structure, as xtb's --chrg / --uhf.
# Molecules only (xTB here is non-periodic), elements H–Rn.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,8p' "$0" >&2; exit 2; }
CONFIG=$1; shift
[ -f "$CONFIG" ] || { echo "train_xtb_prior: config '$CONFIG' not found" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
if [ -z "${PILIP:-}" ]; then
  (cd "$ROOT" && cargo build --release --locked >/dev/null)
  PILIP=$ROOT/target/release/pilip
fi
STRIDE=${STRIDE:-20} TEMPERATURE=${TEMPERATURE:-500}
BASE_MINUTES=${BASE_MINUTES:-4} JOBS=${JOBS:-2} CHARGE=${CHARGE:-0} UHF=${UHF:-0} FAMILY=${FAMILY-power_spectrum}
T0=$(date +%s)
SETS=() QUIET=()
while [ $# -gt 0 ]; do
  case $1 in
    --set) [ $# -ge 2 ] || { echo "train_xtb_prior: --set needs SECTION.KEY=VALUE" >&2; exit 2; }; SETS+=(--set "$2"); shift 2 ;;
    --set=*) SETS+=(--set "${1#--set=}"); shift ;;
    --quiet) QUIET=(--quiet); shift ;;
    *) echo "train_xtb_prior: unexpected argument '$1' (expected --set SECTION.KEY=VALUE or --quiet)" >&2; exit 2 ;;
  esac
done
if [ -n "$FAMILY" ]; then   # before the caller's --set arguments, which pilip train applies after it
  SETS=(--set "model.family=\"$FAMILY\"" "${SETS[@]}")
fi

# 1. the split of the run (and its resolved config: data file, run directory, budget, widths)
SCRATCH=$(mktemp -d); trap 'rm -rf "$SCRATCH"' EXIT
"$PILIP" split "$CONFIG" "${SETS[@]}" -o "$SCRATCH" >/dev/null
{ read -r RUN_DIR; read -r DATA_FILE; read -r MAX_MINUTES; read -r HIDDEN; read -r N_TRAIN; } < <("$PYTHON" - "$SCRATCH" <<'PY'
import json, sys, tomllib
c = tomllib.load(open(sys.argv[1] + "/config.resolved.toml", "rb"))
hidden = "[" + ",".join(str(h) for h in c["model"]["hidden"]) + "]"
n_train = len(json.load(open(sys.argv[1] + "/split.json"))["train"])
print(c["output"]["run_dir"], c["data"]["file"], float(c["training"].get("max_minutes", 0)), hidden, n_train, sep="\n")
PY
)
# about 1000 xTB frames in all, at least 2 per start
FRAMES_PER_START=${FRAMES_PER_START:-$(( (1000 + N_TRAIN - 1) / N_TRAIN > 2 ? (1000 + N_TRAIN - 1) / N_TRAIN : 2 ))}
DELTA_HIDDEN=${DELTA_HIDDEN:-$HIDDEN}
if [ "$N_TRAIN" -ge 500 ]; then   # measured on rMD17: docs/xtb-prior.md, "When it pays"
  echo "train_xtb_prior: note: $N_TRAIN training structures; on rMD17 salicylic acid the prior halved the force error at 50," \
    "took a third off at 200, broke even at 500 and cost 21 % at 950 within the same budget (docs/xtb-prior.md," \
    "\"When it pays\"): compare with a plain pilip train run" >&2
fi
if [ -f "$RUN_DIR/checkpoints/last.ckpt" ]; then
  echo "train_xtb_prior: $RUN_DIR already holds a run; choose another output.run_dir (or resume it with pilip train --resume)" >&2
  exit 2
fi
PRIOR=$RUN_DIR/prior
mkdir -p "$PRIOR"
# a prior made for other training frames or sampler settings is made again
STAMP="$(cat "$SCRATCH/split.json") $FRAMES_PER_START $STRIDE $TEMPERATURE $BASE_MINUTES $CHARGE $UHF $(cat "$DATA_FILE" "$SCRATCH/config.resolved.toml" | sha256sum | cut -c1-16)"
if [ ! -f "$PRIOR/stamp" ] || [ "$(cat "$PRIOR/stamp")" != "$STAMP" ]; then
  rm -rf "$PRIOR"/*
  cp "$SCRATCH/split.json" "$PRIOR/split.json"
  echo "$STAMP" > "$PRIOR/stamp"
fi

# 2. xTB MD around the training frames
if [ ! -f "$PRIOR/xtb.extxyz" ]; then
  "$PYTHON" "$ROOT/scripts/xtb_md_sample.py" "$DATA_FILE" "$PRIOR/xtb.extxyz" --split "$PRIOR/split.json" \
    --frames-per-start "$FRAMES_PER_START" --stride "$STRIDE" --temperature "$TEMPERATURE" --jobs "$JOBS" \
    --charge "$CHARGE" --uhf "$UHF"
fi
FRAMES=$(grep -c "Properties=" "$PRIOR/xtb.extxyz")
NVALID=$(( FRAMES / 20 >= 20 ? FRAMES / 20 : (FRAMES / 4 < 20 ? FRAMES / 4 : 20) ))   # 5 %, at least 20 (a quarter of very few)
[ "$FRAMES" -gt $(( 2 * NVALID )) ] || { echo "train_xtb_prior: only $FRAMES xTB frames; raise FRAMES_PER_START" >&2; exit 2; }

# 3. the base: the config on the xTB frames (energies and forces), no test set
if [ ! -f "$PRIOR/base/done" ]; then
  rm -rf "$PRIOR/base"
  "$PILIP" train "$CONFIG" --quiet "${SETS[@]}" --set "data.file=\"$PRIOR/xtb.extxyz\"" \
    --set 'data.keys={energy = "energy", forces = "forces"}' --set 'data.valid_file=""' --set 'data.test_file=""' \
    --set "data.n_train=$(( FRAMES - NVALID ))" --set "data.n_valid=$NVALID" --set data.n_test=0 \
    --set data.test_fraction=0.0 --set data.train_forces_fraction=1.0 --set loss.forces_weight=1.0 \
    --set loss.stress_weight=0.0 --set "training.max_minutes=$BASE_MINUTES" --set "output.run_dir=\"$PRIOR/base\"" \
    | sed 's/^/base: /'
  touch "$PRIOR/base/done"
fi

# 4. Δ-learning on the expensive structures, within what is left of the config's budget
LEFT=()
if [ "$MAX_MINUTES" != 0.0 ]; then   # (0: no budget)
  LEFT=(--set "training.max_minutes=$("$PYTHON" -c "import sys; print(max(1.0, float(sys.argv[1]) - float(sys.argv[2]) / 60))" "$MAX_MINUTES" $(( $(date +%s) - T0 )))")
fi
"$PILIP" train "$CONFIG" "${QUIET[@]}" "${SETS[@]}" --set "model.base=\"$PRIOR/base/checkpoints/best.ckpt\"" \
  --set "model.hidden=$DELTA_HIDDEN" "${LEFT[@]}"
