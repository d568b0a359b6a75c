#!/usr/bin/env python3
"""Relaxed scan of one bond length: the energy profile a model gives along a path the data may never sample.

Takes structure FRAME of STRUCTURES (any ASE-readable file), sets the distance between atoms I and J to each value
of --from … --to (step --step, Å), moving J only, then relaxes every other degree of freedom with that distance
held fixed (ASE BFGS, --fmax eV/Å) and prints E(r) − E(first r). Each point starts from the last relaxed one, so
the profile follows one continuous path (e.g. a proton moving from its donor to an acceptor, or a bond
breaking). With --gfn2 the same scan is run with GFN2-xTB (tblite) as a physical reference for the profile's
shape: a model whose profile has a minimum or a low barrier where the reference rises has learnt a path its
training data never covered (docs/benchmarks.md: salicylic acid's hydroxyl proton).

Usage: scripts/scan_bond.py STRUCTURES MODEL.onnx I J [--frame 0] [--from 1.0] [--to 1.7] [--step 0.1]
                            [--fmax 0.02] [--gfn2] [--near K …]
--near K prints the distance from J to atom K and from I to K at each point (e.g. the acceptor). One JSON line
per calculator follows the table. Needs the pilip Python package (bindings/python), ASE, and tblite for --gfn2.
"""
import argparse
import json

import numpy as np
from ase.constraints import FixBondLength
from ase.io import read
from ase.optimize import BFGS


def scan(atoms, calc_factory, i, j, distances, fmax, near):
    a = atoms.copy()
    a.calc = calc_factory()
    points = []
    for r in distances:
        a.set_constraint()
        a.set_distance(i, j, r, fix=0)  # fix=0: atom i stays, j moves
        a.set_constraint(FixBondLength(i, j))
        BFGS(a, logfile=None).run(fmax=fmax, steps=500)
        a.set_constraint()
        points.append({
            "r": float(r),
            "energy": float(a.get_potential_energy()),
            "near": {str(k): [float(a.get_distance(j, k)), float(a.get_distance(i, k))] for k in near},
        })
    e0 = points[0]["energy"]
    for p in points:
        p["de"] = p["energy"] - e0
    return points


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("structures")
    ap.add_argument("model")
    ap.add_argument("i", type=int)
    ap.add_argument("j", type=int)
    ap.add_argument("--frame", type=int, default=0)
    ap.add_argument("--from", dest="r_from", type=float, default=1.0)
    ap.add_argument("--to", dest="r_to", type=float, default=1.7)
    ap.add_argument("--step", type=float, default=0.1)
    ap.add_argument("--fmax", type=float, default=0.02)
    ap.add_argument("--gfn2", action="store_true", help="also scan with GFN2-xTB (tblite)")
    ap.add_argument("--near", type=int, nargs="*", default=[])
    args = ap.parse_args()
    if args.step <= 0 or args.r_to < args.r_from:
        ap.error("need --step > 0 and --to >= --from")
    atoms = read(args.structures, index=args.frame)
    n = len(atoms)
    for k in [args.i, args.j, *args.near]:
        if not 0 <= k < n:
            ap.error(f"atom index {k} is outside 0..{n - 1} of frame {args.frame} of {args.structures}")
    distances = np.arange(args.r_from, args.r_to + 1e-9, args.step)

    from pilip.calculator import Calculator

    calcs = [("model", lambda: Calculator(args.model))]
    if args.gfn2:
        from tblite.ase import TBLite

        calcs.append(("GFN2-xTB", lambda: TBLite(method="GFN2-xTB", verbosity=0)))
    sym = atoms.get_chemical_symbols()
    print(f"{args.structures} frame {args.frame}: relaxed scan of {sym[args.i]}{args.i}–{sym[args.j]}{args.j}, "
          f"E(r) − E({distances[0]:.2f} Å) in eV")
    results = {name: scan(atoms, f, args.i, args.j, distances, args.fmax, args.near) for name, f in calcs}
    header = "r (Å)   " + "".join(f"{name:>10}" for name in results) + ("  (distances on the model's path)" if args.near else "")
    header += "".join(f"  {sym[args.j]}{args.j}–{sym[k]}{k} {sym[args.i]}{args.i}–{sym[k]}{k}" for k in args.near)
    print(header)
    for q, r in enumerate(distances):
        row = f"{r:6.2f}  " + "".join(f"{results[name][q]['de']:+10.3f}" for name in results)
        first = next(iter(results.values()))[q]["near"]
        row += "".join(f"  {first[str(k)][0]:9.2f} {first[str(k)][1]:9.2f}" for k in args.near)
        print(row)
    for name, points in results.items():
        print(json.dumps({"calculator": name, "model": args.model, "structures": args.structures, "frame": args.frame,
                          "i": args.i, "j": args.j, "points": points}))


if __name__ == "__main__":
    main()
