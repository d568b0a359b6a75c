"""Time one energy + forces call of an exported model from Python, in three layers, on one structure:
the C function called through ctypes with preallocated arrays (the library's own time plus the ctypes call),
`pilip.Model.compute` (plus array checks and result objects) and the ASE calculator (plus ASE's bookkeeping; the
positions change before every call so nothing is cached). Prints the medians in µs and the overheads.

Usage: .venv/bin/python scripts/bench_python.py MODEL.onnx STRUCTURE.extxyz [INDEX] [REPEATS]
"""
import ctypes
import statistics
import sys
import time

import numpy as np
from ase.io import read

import pilip
from pilip import _c_lib


def median_us(f, repeats):
    f()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def main():
    model_path, structure = sys.argv[1], sys.argv[2]
    index = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 500
    atoms = read(structure, index=index)
    model = pilip.Model(model_path)
    n = len(atoms)
    pos = np.ascontiguousarray(atoms.positions, dtype=np.float64)
    z = np.ascontiguousarray(atoms.numbers, dtype=np.int32)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.ascontiguousarray(atoms.cell.array, dtype=np.float64) if pbc.any() else None
    energy, forces, virial = ctypes.c_double(), np.zeros((n, 3)), np.zeros((3, 3))
    dp = _c_lib.c_double_p
    lib, handle = _c_lib.lib(), model._handle
    args = (handle, n, pos.ctypes.data_as(dp), z.ctypes.data_as(_c_lib.c_int32_p),
            None if cell is None else cell.ctypes.data_as(dp), (ctypes.c_bool * 3)(*pbc), ctypes.byref(energy),
            None, forces.ctypes.data_as(dp), virial.ctypes.data_as(dp))

    def raw():
        assert lib.pilip_model_compute(*args) == _c_lib.SUCCESS

    t_raw = median_us(raw, repeats)
    t_model = median_us(lambda: model.compute(pos, z, cell, pbc), repeats)
    atoms.calc = pilip.Calculator(model)
    rng = np.random.default_rng(0)
    base = atoms.positions.copy()

    def ase_call():
        atoms.positions = base + 1e-4 * rng.standard_normal(base.shape)
        atoms.get_forces()

    t_ase = median_us(ase_call, repeats)
    print(f"{structure} frame {index}: {n} atoms, {repeats} calls, median")
    print(f"  C library through ctypes   {t_raw:9.1f} µs")
    print(f"  pilip.Model.compute        {t_model:9.1f} µs  (+{t_model - t_raw:.1f} µs Python)")
    print(f"  ASE calculator get_forces  {t_ase:9.1f} µs  (+{t_ase - t_model:.1f} µs ASE)")


if __name__ == "__main__":
    main()
