#!/usr/bin/env bash
# Long NVE run of pair_style pilip in LAMMPS (issue 15): fcc Cu, N×N×N cells (default 8: 2048 atoms), velocities
# for 600 K (≈ 300 K after equipartition), velocity Verlet with 1 fs steps, total energy every 100 steps. Prints
# one JSON line: the energy drift |E(end) − E(0)| and the largest |E(t) − E(0)| per atom, the slope of a linear
# fit (eV/atom/ps), the temperature, and the speed. The bound the docs justify (docs/lammps.md): drift and
# largest deviation below 1e-4 eV/atom over 100 ps.
# Usage: scripts/lammps_long_nve.sh MODEL.onnx [STEPS] [RANKS] [CELLS]   (default 100000 steps, 2 ranks, 8)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$(realpath "${1:?usage: scripts/lammps_long_nve.sh MODEL.onnx [STEPS] [RANKS] [CELLS]}")
STEPS=${2:-100000}
RANKS=${3:-2}
CELLS=${4:-8}
bash scripts/setup_python.sh
bash lammps_plugin/build.sh .venv/bin/python >/dev/null
OUT=bench_runs/lammps_nve
mkdir -p "$OUT"
cat > "$OUT/in.nve" <<EOF2
units metal
atom_style atomic
lattice fcc 3.615
region box block 0 $CELLS 0 $CELLS 0 $CELLS
create_box 1 box
create_atoms 1 box
mass 1 63.546
plugin load $PWD/target/lammps/pilipplugin.so
pair_style pilip
pair_coeff * * $MODEL Cu
velocity all create 600 20261129 loop geom
fix 1 all nve
timestep 0.001
thermo_style custom step time temp pe etotal press
thermo_modify format float %.10g
thermo 100
run $STEPS
EOF2
export OMP_NUM_THREADS=1
LOG="$OUT/log.nve.$STEPS.$RANKS"
START=$(date +%s.%N)
.venv/bin/mpiexec -np "$RANKS" .venv/bin/lmp -in "$OUT/in.nve" -log "$LOG" -screen none
END=$(date +%s.%N)
.venv/bin/python - "$LOG" "$START" "$END" "$RANKS" <<'EOF3'
import json, sys
import numpy as np
log, start, end, ranks = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
lines = open(log).read().splitlines()
head = next(i for i, l in enumerate(lines) if l.split()[:2] == ["Step", "Time"])
atoms = int(next(l.split()[-2] for l in lines if l.startswith("Loop time")))
rows = []
for l in lines[head + 1:]:
    f = l.split()
    if not f or not f[0].isdigit():
        break
    rows.append([float(x) for x in f])
t, temp, etot = (np.array([r[k] for r in rows]) for k in (1, 2, 4))
dev = (etot - etot[0]) / atoms
slope = np.polyfit(t, dev, 1)[0] if len(t) > 1 else 0.0
steps = int(rows[-1][0])
print(json.dumps({"atoms": atoms, "steps": steps, "time_ps": round(t[-1], 3), "ranks": ranks,
                  "drift_ev_per_atom": float(abs(dev[-1])), "max_deviation_ev_per_atom": float(np.abs(dev).max()),
                  "slope_ev_per_atom_per_ps": float(slope), "mean_temperature_k": float(temp[len(temp) // 10:].mean()),
                  "wall_s": round(end - start, 1),
                  "us_per_atom_step_per_rank": round((end - start) * 1e6 * ranks / (atoms * max(steps, 1)), 2)}))
EOF3
