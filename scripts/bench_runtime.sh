#!/usr/bin/env bash
# Runtime benchmark (issue 3): time per whole-system energy+forces+virial call, one thread, for aspirin (21
# atoms), a 108-atom and a 2048-atom Cu cell, with the training-time Rust model, tract (f32, f64) and, when
# built with --features ort and ORT_DYLIB_PATH is set, ONNX Runtime (f32, f64).
# Usage: scripts/bench_runtime.sh [ASPIRIN_CKPT CU_CKPT]  (defaults: the models of scripts/bench_core.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${PILIP_DATA:-../shared/data}
ASP=${1:-bench_runs/core/asp200_ef/checkpoints/best.ckpt}
CU=${2:-bench_runs/core/cu/checkpoints/best.ckpt}
OUT=bench_runs/runtime
mkdir -p "$OUT"
if [ -z "${ORT_DYLIB_PATH:-}" ] && [ -d .venv ]; then
  ORT_DYLIB_PATH=$(ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1) || true
  export ORT_DYLIB_PATH
fi
cargo build --release --locked --features ort >/dev/null
# fcc Cu, a = 3.615 Å, 4 atoms per cubic cell, n×n×n cubic cells, positions jittered by 0.05 Å (deterministic).
fcc_cu() { # n, output
  python3 - "$1" "$2" <<'PY'
import random, sys
n, path = int(sys.argv[1]), sys.argv[2]
random.seed(n)
a = 3.615
basis = [(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]
jitter = lambda: random.gauss(0, 0.05)
atoms = [((i + b[0]) * a + jitter(), (j + b[1]) * a + jitter(), (k + b[2]) * a + jitter())
         for i in range(n) for j in range(n) for k in range(n) for b in basis]
L = n * a
with open(path, "w") as f:
    f.write(f"{len(atoms)}\nLattice=\"{L} 0 0 0 {L} 0 0 0 {L}\" Properties=species:S:1:pos:R:3 pbc=\"T T T\"\n")
    for x in atoms:
        f.write("Cu %.8f %.8f %.8f\n" % x)
PY
}
fcc_cu 3 "$OUT/cu_fcc_3.extxyz"
fcc_cu 8 "$OUT/cu_fcc_8.extxyz"
echo "== aspirin (GFN2-xTB model, 21 atoms)"
target/release/pilip bench-runtime "$ASP" "$DATA/aspirin_gfn2_500K.extxyz" --repeats 300
echo "== Cu fcc, 108 atoms"
target/release/pilip bench-runtime "$CU" "$OUT/cu_fcc_3.extxyz" --repeats 100
echo "== Cu fcc, 2048 atoms"
target/release/pilip bench-runtime "$CU" "$OUT/cu_fcc_8.extxyz" --repeats 10
