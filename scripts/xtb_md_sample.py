"""Sample extra geometries around given molecules by GFN2-xTB Langevin MD and label them with xTB energies and forces.

Usage:  .venv/bin/python scripts/xtb_md_sample.py IN.extxyz OUT.extxyz [--split RUN/split.json | --first N]
                [--frames-per-start 20] [--stride 20] [--temperature 500] [--dt 0.5] [--friction 0.01]
                [--seed 1] [--jobs 2] [--method GFN2-xTB] [--charge 0] [--uhf 0]
                [--energy-key energy] [--forces-key forces]

Why: a potential trained on a few expensive structures learns the energy surface between them from those structures
alone. A cheap method's surface sampled densely around them (the base of Δ-learning, `model.base`,
`docs/energy-only.md`) carries the shape — bond stiffnesses, angles, torsions — and the expensive structures then only
correct it. This script makes that cheap data set from the expensive structures' geometries alone.

What it does: for every start geometry (the `train` frames of a pilip run's split.json, or the first N frames, or all),
Maxwell–Boltzmann velocities at --temperature, then Langevin dynamics (ASE's integrator, --dt fs, --friction per fs)
on the xTB surface (tblite's ASE calculator); it writes the start itself and then every --stride steps until
--frames-per-start frames of that start are written. Each frame carries xTB's energy (eV, total, no reference
shift) and forces (eV/Å) under the given keys. Every start has the same total charge (--charge) and unpaired electrons
(--uhf), as in scripts/xtb_labels.py. Only species and positions of IN are read (no labels), as in
scripts/xtb_labels.py. A start whose SCF fails is reported by its frame index and skipped; a trajectory whose SCF
fails later keeps the frames written before. OUT is written atomically.
Dependencies: numpy, ase, tblite (scripts/requirements.txt).
"""
import argparse
import json
import multiprocessing as mp
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny molecules: tblite's OpenMP threads only slow them down

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xtb_labels import (InputError, Z_OF, _atomic_write, _check_key, add_charge_arguments,  # noqa: E402
                        electron_parity_error, read_geometries)


def _trajectory(task):
    """Worker: one start -> (start index, [(positions, energy, forces)], error or None)."""
    from ase import Atoms, units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from tblite.ase import TBLite

    i, numbers, pos, a = task
    atoms = Atoms(numbers=numbers, positions=pos)
    atoms.calc = TBLite(method=a.method, charge=float(a.charge), multiplicity=a.uhf + 1, verbosity=0)
    rng = np.random.default_rng([a.seed, i])
    MaxwellBoltzmannDistribution(atoms, temperature_K=a.temperature, rng=rng)
    dyn = Langevin(atoms, a.dt * units.fs, temperature_K=a.temperature, friction=a.friction / units.fs, rng=rng)
    frames = []
    try:
        while True:
            e = atoms.get_potential_energy()
            f = atoms.get_forces()
            if not (np.isfinite(e) and np.isfinite(f).all()):
                raise RuntimeError("non-finite energy or forces")
            frames.append((atoms.get_positions().copy(), float(e), f.copy()))
            if len(frames) == a.frames_per_start:
                return i, frames, None
            dyn.run(a.stride)
    except Exception as exc:  # SCF failures come as tblite's runtime error
        return i, frames, f"{type(exc).__name__}: {exc}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inp", help="extended XYZ with the start geometries (labels are not read)")
    p.add_argument("out", help="extended XYZ to write (xTB-labelled frames)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--split", help="a pilip run's split.json: start from its 'train' frames of IN")
    g.add_argument("--first", type=int, help="start from the first N frames of IN")
    p.add_argument("--frames-per-start", type=int, default=20)
    p.add_argument("--stride", type=int, default=20, help="MD steps between written frames")
    p.add_argument("--temperature", type=float, default=500.0, help="K")
    p.add_argument("--dt", type=float, default=0.5, help="fs")
    p.add_argument("--friction", type=float, default=0.01, help="per fs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--method", default="GFN2-xTB", choices=("GFN2-xTB", "GFN1-xTB"))
    add_charge_arguments(p)
    p.add_argument("--energy-key", default="energy")
    p.add_argument("--forces-key", default="forces")
    a = p.parse_args()
    for name in ("frames_per_start", "stride", "jobs"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    _check_key("--energy-key", a.energy_key, "xtb_md_sample")
    _check_key("--forces-key", a.forces_key, "xtb_md_sample")
    if a.energy_key == a.forces_key:
        p.error("--energy-key and --forces-key must differ")
    if not (a.temperature > 0 and a.dt > 0 and a.friction >= 0):
        p.error("--temperature and --dt must be positive, --friction non-negative")

    try:
        frames, _ = read_geometries(a.inp)
    except (OSError, InputError) as exc:
        sys.exit(f"xtb_md_sample: {exc}")
    if a.split:
        try:
            with open(a.split) as fh:
                starts = [int(k) for k in json.load(fh)["train"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            sys.exit(f"xtb_md_sample: {a.split}: expected a pilip split.json with a 'train' list of frame indices ({exc})")
        bad = [k for k in starts if not 0 <= k < len(frames)]
        if bad:
            sys.exit(f"xtb_md_sample: {a.split}: frame index {bad[0]} outside {a.inp}'s {len(frames)} frames")
    else:
        starts = list(range(min(a.first, len(frames)) if a.first else len(frames)))
    if not starts:
        sys.exit(f"xtb_md_sample: no start frames in {a.inp}")
    for k in starts:
        why = electron_parity_error(frames[k][0], a.charge, a.uhf)
        if why:
            sys.exit(f"xtb_md_sample: frame {k} (0-based) of {a.inp}: {why}")

    tasks = [(k, np.array([Z_OF[s] for s in frames[k][0]]), np.array(frames[k][1], dtype=float), a) for k in starts]
    t0 = time.time()
    if a.jobs == 1:
        results = list(map(_trajectory, tasks))
    else:
        with mp.get_context("spawn").Pool(a.jobs) as pool:
            results = pool.map(_trajectory, tasks, chunksize=1)
    props = f"Properties=species:S:1:pos:R:3:{a.forces_key}:R:3"
    lines, n_out, failed = [], 0, []
    for k, traj, err in results:
        if err is not None:
            failed.append(f"start frame {k} after {len(traj)} frames: {err}")
        syms = frames[k][0]
        for pos, e, f in traj:
            lines.append(f"{len(syms)}\n{props} {a.energy_key}={e!r} pbc=\"F F F\" xtb_start={k}\n")
            lines.extend(f"{s} {x[0]:.10f} {x[1]:.10f} {x[2]:.10f} {y[0]:.10f} {y[1]:.10f} {y[2]:.10f}\n"
                         for s, x, y in zip(syms, pos, f))
            n_out += 1
    for msg in failed[:10]:
        print(f"xtb_md_sample: warning: {msg}", file=sys.stderr)
    if len(failed) > 10:
        print(f"xtb_md_sample: warning: {len(failed) - 10} more starts failed", file=sys.stderr)
    if n_out == 0:
        sys.exit("xtb_md_sample: no frame could be computed")
    _atomic_write(a.out, "".join(lines))
    print(f"xtb_md_sample: {n_out} frames from {len(starts)} starts ({a.method}, {a.temperature:g} K, every "
          f"{a.stride * a.dt:g} fs) -> {a.out} in {time.time() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
