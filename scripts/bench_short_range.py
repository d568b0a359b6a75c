#!/usr/bin/env python3
"""Short-range behaviour of exported pilip models: does the energy rise when two atoms are pushed together?

For up to FRAMES structures of STRUCTURES (any extended-XYZ/ASE-readable file: molecules or periodic cells), for
every bonded pair (closer than 1.2 × the sum of covalent radii, and every atom with its nearest neighbour) the
second atom is moved towards the first along their bond, all other atoms fixed, from the bond length r0 down to
R_MIN Å in STEPS steps, and the model's energy E(r) is recorded. Per model and element pair it prints:
  scans    how many bonds were scanned
  holes    the fraction of scans in which E(r) somewhere below 0.8 r0 is more than 0.05 eV below the lowest E(r)
           between 0.8 r0 and r0 (near the bond): collapsing the bond is downhill
  falls    the fraction of scans in which E(r), below 0.8 r0, falls by more than 0.05 eV below the highest E(r) met
           on the way in: past that barrier the two atoms are pulled into each other
  max fall the largest such fall (eV)
  min dE   the lowest E(r) − E(r0) below 0.8 r0 over all scans (eV; negative: lower than the start)
  dE(½r0)  the median of E(r0/2) − E(r0) (eV): how hard half a bond length is
  dE(rmin) the median of E(R_MIN) − E(r0) (eV)
and one JSON line per model. Compare a model with its repulsive prior against the same networks without it
(docs/benchmarks.md) or any two models of the same data.

Usage: scripts/bench_short_range.py STRUCTURES MODEL.onnx [MODEL.onnx …] [--frames 20] [--r-min 0.3] [--steps 60]
Needs the pilip Python package (bindings/python) and ASE.
"""
import argparse
import json
from collections import defaultdict

import numpy as np
from ase.data import covalent_radii
from ase.io import read

import pilip


def bonded_pairs(atoms):
    """(i, j), i < j, closer than 1.2 × the sum of their covalent radii (minimum image for periodic cells), and each
    atom with its nearest neighbour."""
    d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    np.fill_diagonal(d, np.inf)
    radii = covalent_radii[atoms.numbers]
    bonded = {(i, j) for i, j in zip(*np.nonzero(d < 1.2 * (radii[:, None] + radii[None, :]))) if i < j}
    nearest = {tuple(sorted((i, int(np.argmin(d[i]))))) for i in range(len(atoms))}
    return sorted(bonded | nearest)


def scan(model, atoms, i, j, r_min, steps):
    """Energies (eV) with atom j moved along its bond to i to each distance of the returned grid (Å)."""
    pbc = bool(atoms.pbc.any())
    vec = atoms.get_distance(i, j, mic=pbc, vector=True)
    r0 = np.linalg.norm(vec)
    grid = np.linspace(r0, r_min, steps)
    cell = atoms.cell.array if pbc else None
    energies = []
    for r in grid:
        pos = atoms.positions.copy()
        pos[j] = atoms.positions[i] + vec * r / r0
        energies.append(model.compute(pos, atoms.numbers, cell, tuple(atoms.pbc)).energy)
    return grid, np.array(energies)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("structures")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--frames", type=int, default=20, help="structures used, evenly spaced through the file")
    ap.add_argument("--r-min", type=float, default=0.3, help="Å, the shortest distance scanned")
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    frames = read(args.structures, ":")
    frames = [frames[k] for k in np.linspace(0, len(frames) - 1, min(args.frames, len(frames))).astype(int)]
    print(f"{'model':<40} {'pair':<6} {'scans':>5} {'holes':>6} {'falls':>6} {'max fall':>9} {'min dE':>9} "
          f"{'dE(½r0)':>9} {'dE(rmin)':>9}")
    for path in args.models:
        model = pilip.Model(path)
        stats = defaultdict(lambda: {"holes": 0, "falls": 0, "max_fall": 0.0, "scans": 0, "min": np.inf, "half": [],
                                     "end": []})
        for atoms in frames:
            for i, j in bonded_pairs(atoms):
                grid, e = scan(model, atoms, i, j, args.r_min, args.steps)
                de = e - e[0]
                name = "-".join(sorted([atoms[i].symbol, atoms[j].symbol]))
                s = stats[name]
                s["scans"] += 1
                deep = grid < 0.8 * grid[0]      # the bond's own well (a stretched bond relaxes inwards) is left out
                s["holes"] += int(de[deep].min() < de[~deep].min() - 0.05)
                fall = (np.maximum.accumulate(de) - de)[deep].max()   # how far E drops below its running maximum
                s["falls"] += int(fall > 0.05)
                s["max_fall"] = max(s["max_fall"], fall)
                s["min"] = min(s["min"], de[deep].min())
                s["half"].append(np.interp(grid[0] / 2, grid[::-1], de[::-1]))
                s["end"].append(de[-1])
        result = {"model": path, "structures": args.structures, "frames": len(frames), "r_min": args.r_min, "pairs": {}}
        for name, s in sorted(stats.items()):
            row = {"scans": s["scans"], "hole_fraction": s["holes"] / s["scans"], "fall_fraction": s["falls"] / s["scans"],
                   "max_fall_eV": float(s["max_fall"]), "min_dE_eV": float(s["min"]),
                   "median_dE_half_r0_eV": float(np.median(s["half"])), "median_dE_r_min_eV": float(np.median(s["end"]))}
            result["pairs"][name] = row
            print(f"{path[-40:]:<40} {name:<6} {row['scans']:>5} {row['hole_fraction']:>6.2f} {row['fall_fraction']:>6.2f} "
                  f"{row['max_fall_eV']:>9.2f} {row['min_dE_eV']:>9.2f} "
                  f"{row['median_dE_half_r0_eV']:>9.2f} {row['median_dE_r_min_eV']:>9.2f}")
        print(json.dumps(result))


if __name__ == "__main__":
    main()
