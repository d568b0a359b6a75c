#!/usr/bin/env bash
# Benchmarks of the core trainer (issue 2): accuracy on aspirin (GFN2-xTB, contiguous split), training
# throughput with and without PITC/PISC, and the time of one energy+forces evaluation (aspirin, 108-atom Cu).
# Usage: scripts/bench_core.sh [quick]     ("quick" = fewer epochs, for a smoke run)
# Needs ../shared/data (or PILIP_DATA=folder with aspirin_gfn2_500K.extxyz and cu_qsnap.extxyz).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${PILIP_DATA:-../shared/data}
OUT=${PILIP_BENCH_OUT:-bench_runs/core}
EPOCHS=${1:-}
cargo build --release --locked --features ort >/dev/null
PILIP=target/release/pilip
mkdir -p "$OUT"
CFG=examples/configs/bench/aspirin.toml
extra=(--set "data.file=\"$DATA/aspirin_gfn2_500K.extxyz\"")
if [ "$EPOCHS" = quick ]; then extra+=(--set training.max_epochs=5); fi

train() { # name, then --set overrides
  local name=$1; shift
  rm -rf "$OUT/$name"
  local t0=$(date +%s.%N)
  "$PILIP" train "$CFG" "${extra[@]}" --set "output.run_dir=\"$OUT/$name\"" "$@" --quiet >/dev/null
  local t1=$(date +%s.%N)
  echo "$name $(echo "$t1 - $t0" | bc)" >> "$OUT/times.txt"
}
: > "$OUT/times.txt"
train asp200_ef       --set data.n_train=200
train asp200_ef_rand  --set data.n_train=200 --set data.split=\"random\"
train asp700_ef       --set data.n_train=700
train asp200_e        --set data.n_train=200 --set data.train_forces_fraction=0.0 --set loss.forces_weight=0.0 --set training.early_stopping_metric=\"val_energy_rmse\"
train asp200_e_piwsl  --set data.n_train=200 --set data.train_forces_fraction=0.0 --set loss.forces_weight=0.0 --set training.early_stopping_metric=\"val_energy_rmse\" --set loss.pitc_weight=1.0 --set loss.pisc_weight=0.1
train asp200_e_pitc2   --set data.n_train=200 --set data.train_forces_fraction=0.0 --set loss.forces_weight=0.0 --set training.early_stopping_metric=\"val_energy_rmse\" --set loss.pitc_weight=1.0 --set loss.pitc_order=2
train asp200_ef_piwsl --set data.n_train=200 --set loss.pitc_weight=1.0 --set loss.pisc_weight=0.1

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
times = dict(l.split() for l in open(os.path.join(out, "times.txt")))
print(f"{'run':<18}{'train':>6}{'epochs':>7}{'E MAE':>9}{'E RMSE':>9}{'F MAE':>9}{'F RMSE':>9}{'wall s':>9}{'struct/s':>10}")
print(f"{'':<18}{'':>6}{'':>7}{'meV/at':>9}{'meV/at':>9}{'meV/Å':>9}{'meV/Å':>9}")
for name in times:
    d = os.path.join(out, name)
    ms = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl"))]
    split = json.load(open(os.path.join(d, "split.json")))
    t = json.load(open(os.path.join(d, "test_metrics.json")))
    ntr = len(split["train"])
    train_s = sum(m["time_s"] for m in ms)
    f = lambda k: f"{t[k]:9.2f}" if t.get(k) is not None else f"{'-':>9}"
    print(f"{name:<18}{ntr:>6}{len(ms):>7}{f('energy_mae_mev_per_atom')}{f('energy_rmse_mev_per_atom')}"
          f"{f('forces_mae_mev_per_A')}{f('forces_rmse_mev_per_A')}{float(times[name]):9.0f}{ntr*len(ms)/train_s:10.0f}")
print("test split: the last 200 structures of aspirin_gfn2_500K.extxyz; train = first n_train, valid = next 100; seed 1")
print("(asp200_ef_rand: random split with split_seed 1, 200 train / 100 valid / 200 test)")
PY

# Evaluation speed: aspirin (21 atoms) and a 108-atom Cu cell, one thread.
echo
echo "aspirin: $("$PILIP" bench "$OUT/asp200_ef/checkpoints/best.ckpt" "$DATA/aspirin_gfn2_500K.extxyz" --repeats 500)"
rm -rf "$OUT/cu"
"$PILIP" train examples/configs/periodic.toml --set "data.file=\"$DATA/cu_qsnap.extxyz\"" --set data.n_train=100 \
  --set data.n_valid=20 --set data.n_test=20 --set training.max_epochs=${CU_EPOCHS:-20} --set "output.run_dir=\"$OUT/cu\"" --quiet >/dev/null
echo "Cu:      $("$PILIP" bench "$OUT/cu/checkpoints/best.ckpt" "$DATA/cu_qsnap.extxyz" --index 1 --repeats 200)"
echo "Cu test errors after ${CU_EPOCHS:-20} epochs on 100 cells: $(python3 -c "import json;t=json.load(open('$OUT/cu/test_metrics.json'));print(f\"E RMSE {t['energy_rmse_mev_per_atom']:.2f} meV/atom, F RMSE {t['forces_rmse_mev_per_A']:.1f} meV/Å, S RMSE {t['stress_rmse_mev_per_A3']:.3f} meV/Å³\")")"
