#!/usr/bin/env bash
# Materials benchmark (Zuo et al. 2020 DFT sets, issue 12 protocol) for any element with files EL_train.extxyz and
# EL_test.extxyz: train examples/configs/materials.toml on the training file (10 % of it for validation), test on
# the test file, and print one JSON line per element and a table next to the published GAP and MTP errors (for
# the elements the mlearn README lists), with the test errors per configuration type (`config_type` of the test
# file, e.g. AIMD, elastic, surface, vacancy) beneath it.
# Usage: scripts/bench_materials.sh [ELEMENT…]   (default: every *_train.extxyz in $PILIP_DATA/mlearn)
# Environment: PILIP_DATA (default ../shared/data), SEED (default 1), CONFIG (default examples/configs/materials.toml),
# EXTRA (more --set arguments for `pilip train`), PILIP (a pilip binary to use instead of building one).
# Results (OUT, default bench_runs/materials): OUT/<element>_s<SEED>/ and OUT/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$(realpath "${PILIP_DATA:-../shared/data}")/mlearn
SEED=${SEED:-1}
CONFIG=${CONFIG:-examples/configs/materials.toml}
OUT=${OUT:-bench_runs/$(basename "$CONFIG" .toml)}   # one results folder per config
mkdir -p "$OUT"
source scripts/bench_common.sh
if [ $# -eq 0 ]; then
  set -- $(ls "$DATA"/*_train.extxyz | xargs -n1 basename | sed 's/_train.extxyz//')
fi
for EL in "$@"; do
  TRAIN="$DATA/${EL}_train.extxyz" TEST="$DATA/${EL}_test.extxyz"
  [ -f "$TRAIN" ] && [ -f "$TEST" ] || { echo "bench_materials: $TRAIN or $TEST not found" >&2; exit 2; }
  RUN="$OUT/${EL}_s${SEED}"
  train_once "$RUN" "$TRAIN" "$TEST"
  # the test errors per configuration type, when the test file names them
  if grep -q 'config_type=' "$TEST"; then
    "$PILIP" eval "$RUN/checkpoints/best.ckpt" "$TEST" --by config_type --json >"$RUN/test_by_config_type.json"
  fi
  python3 - "$EL" "$SEED" "$RUN" <<'PY' | tee -a "$OUT/results.jsonl"
import json, os, sys
el, seed, run = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = json.load(open(f"{run}/test_metrics.json"))
train_s = open(f"{run}/train_seconds").read().strip() if os.path.exists(f"{run}/train_seconds") else None
out = {"element": el, "seed": seed, "test_structures": t["n_structures"],
       "energy_mae_mev_per_atom": round(t["energy_mae_mev_per_atom"], 3), "forces_mae_mev_per_A": round(t["forces_mae_mev_per_A"], 2),
       "train_seconds": train_s}
if "stress_mae_mev_per_A3" in t:
    out["stress_mae_mev_per_A3"] = round(t["stress_mae_mev_per_A3"], 3)
if os.path.exists(f"{run}/test_by_config_type.json"):
    out["by_config_type"] = {g["value"]: {"structures": g["n_structures"], "forces_mae_mev_per_A": round(g["forces_mae_mev_per_A"], 2),
                                          "forces_share": round(g["forces_abs_error_share"], 3)}
                             for g in json.load(open(f"{run}/test_by_config_type.json"))["groups"]
                             if g.get("forces_mae_mev_per_A") is not None}
print(json.dumps(out))
PY
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
# published test errors, energy MAE meV/atom / force MAE meV/Å (Zuo et al. 2020, via the mlearn README)
gap = {"Cu": (0.46, 10), "Ni": (0.42, 20), "Li": (0.49, 10), "Ge": (2.06, 50)}
mtp = {"Cu": (0.41, 10), "Ni": (0.48, 10), "Li": (0.49, 10), "Ge": (1.79, 50)}
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows[(r["element"], r["seed"])] = r
print("\nZuo 2020 sets: test energy MAE meV/atom / force MAE meV/Å (the published force MAEs have one significant digit)")
print(f"{'element':<9}{'seed':>5}{'pilip E / F':>18}{'GAP E / F':>14}{'MTP E / F':>14}")
for (el, seed), r in sorted(rows.items()):
    fmt = lambda p: f"{p[0]} / {p[1]}" if p else "–"
    print(f"{el:<9}{seed:>5}{r['energy_mae_mev_per_atom']:>9.2f} / {r['forces_mae_mev_per_A']:<6.1f}{fmt(gap.get(el)):>14}{fmt(mtp.get(el)):>14}")
by = [(k, r["by_config_type"]) for k, r in sorted(rows.items()) if r.get("by_config_type")]
if by:
    print("\ntest force MAE meV/Å per configuration type (share of the summed force error)")
    for (el, seed), groups in by:
        print(f"{el} (seed {seed}): " + ", ".join(f"{t} {g['forces_mae_mev_per_A']:.1f} ({100 * g['forces_share']:.0f} %, {g['structures']})"
                                                    for t, g in sorted(groups.items(), key=lambda x: -x[1]["forces_share"])))
PY
