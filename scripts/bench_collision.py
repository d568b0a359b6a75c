#!/usr/bin/env python3
"""Head-on collisions: what an exported pilip model does when one atom is fired at its neighbour.

A primary knock-on atom (PKA, as in a radiation-damage cascade, or a hot spot in a long MD run) gets kinetic energy
E (eV) aimed at its nearest neighbour; plain velocity-Verlet NVE follows the collision for DURATION fs with a time
step that moves the PKA at most 0.005 Å. Per model and energy it prints the closest approach of the two atoms, the
ZBL turning point (where the universal screened nuclear repulsion alone equals the collision's centre-of-mass
energy E·m_target/(m_PKA + m_target): about where a physical head-on collision turns around), the largest deviation of the total energy from its start (a blow-up shows here) and how the run ended
("ok", or the error that stopped it, e.g. atoms closer than 0.1 Å). One JSON line per model and energy.

Usage: scripts/bench_collision.py STRUCTURES MODEL.onnx [MODEL.onnx …] [--energies 10 30 100] [--frame 0]
       [--atom I] [--duration 30]
STRUCTURES: any ASE-readable file (molecule or periodic cell); frame FRAME is used, atom I (default: the lighter
atom of the shortest bond) is the PKA. Needs the pilip Python package (bindings/python) and ASE.
"""
import argparse
import json

import numpy as np
from ase.io import read

import pilip

EV_PER_AMU_A2_PS2 = 1.0364269e-4   # 1 amu·Å²/ps² in eV


def zbl(r, za, zb):
    a = 0.46850 / (za ** 0.23 + zb ** 0.23)
    c, d = [0.18175, 0.50986, 0.28022, 0.02817], [3.19980, 0.94229, 0.40290, 0.20162]
    return 14.3996453 * za * zb / r * sum(ck * np.exp(-dk * r / a) for ck, dk in zip(c, d))


def turning_point(energy, za, zb):
    """The distance at which ZBL alone equals `energy` (bisection)."""
    lo, hi = 1e-3, 10.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if zbl(mid, za, zb) > energy else (lo, mid)
    return 0.5 * (lo + hi)


def collide(model, atoms, pka, target, energy, duration_fs):
    pbc = bool(atoms.pbc.any())
    cell = atoms.cell.array if pbc else None
    masses = atoms.get_masses()
    pos = atoms.positions.copy()
    direction = atoms.get_distance(pka, target, mic=pbc, vector=True)
    direction /= np.linalg.norm(direction)
    vel = np.zeros_like(pos)   # Å/ps
    speed = np.sqrt(2 * energy / (masses[pka] * EV_PER_AMU_A2_PS2))
    vel[pka] = speed * direction
    dt = 0.005 / speed          # ps: the PKA moves at most 0.005 Å per step at its start
    steps = int(np.ceil(duration_fs * 1e-3 / dt))

    def forces_and_energy(p):
        r = model.compute(p, atoms.numbers, cell, tuple(atoms.pbc))
        return r.forces, r.energy

    def pair_distance(p):
        d = p[target] - p[pka]
        if pbc:
            frac = np.linalg.solve(cell.T, d)
            d = cell.T @ (frac - np.round(frac))
        return np.linalg.norm(d)

    f, e_pot = forces_and_energy(pos)
    e0 = e_pot + 0.5 * np.sum(masses[:, None] * vel ** 2) * EV_PER_AMU_A2_PS2
    closest, worst, status = pair_distance(pos), 0.0, "ok"
    try:
        for _ in range(steps):
            vel += 0.5 * dt * f / (masses[:, None] * EV_PER_AMU_A2_PS2)
            pos += dt * vel
            f, e_pot = forces_and_energy(pos)
            vel += 0.5 * dt * f / (masses[:, None] * EV_PER_AMU_A2_PS2)
            e = e_pot + 0.5 * np.sum(masses[:, None] * vel ** 2) * EV_PER_AMU_A2_PS2
            if not np.isfinite(e):
                status = "non-finite energy"
                break
            worst = max(worst, abs(e - e0))
            closest = min(closest, pair_distance(pos))
    except pilip.PilipError as err:
        status = str(err).split(";")[0]
    return closest, worst, status, dt * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("structures")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--energies", type=float, nargs="+", default=[10.0, 30.0, 100.0], help="PKA energies, eV")
    ap.add_argument("--frame", type=int, default=0)
    ap.add_argument("--atom", type=int, default=None, help="the PKA (default: the atom with the shortest bond)")
    ap.add_argument("--duration", type=float, default=30.0, help="fs")
    args = ap.parse_args()
    atoms = read(args.structures, args.frame)
    d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    np.fill_diagonal(d, np.inf)
    if args.atom is None:
        i, j = np.unravel_index(np.argmin(d), d.shape)
        masses = atoms.get_masses()
        pka = int(i if masses[i] <= masses[j] else j)
    else:
        pka = args.atom
    target = int(np.argmin(d[pka]))
    m = atoms.get_masses()
    centre_of_mass_share = m[target] / (m[pka] + m[target])
    za, zb = atoms.numbers[pka], atoms.numbers[target]
    print(f"PKA {atoms[pka].symbol}{pka} fired at {atoms[target].symbol}{target} ({d[pka, target]:.3f} Å away)")
    print(f"{'model':<40} {'E (eV)':>7} {'closest Å':>10} {'ZBL turn Å':>10} {'max |ΔE_tot| eV':>16}  end")
    for path in args.models:
        model = pilip.Model(path)
        for energy in args.energies:
            closest, worst, status, dt_fs = collide(model, atoms, pka, target, energy, args.duration)
            turn = turning_point(energy * centre_of_mass_share, za, zb)
            print(f"{path[-40:]:<40} {energy:>7.1f} {closest:>10.3f} {turn:>10.3f} {worst:>16.3g}  {status}")
            print(json.dumps({"model": path, "structures": args.structures, "frame": args.frame, "pka": pka,
                              "target": target, "pka_energy_eV": energy, "closest_A": closest, "zbl_turning_point_A": turn,
                              "max_energy_error_eV": worst, "time_step_fs": dt_fs, "duration_fs": args.duration,
                              "end": status}))


if __name__ == "__main__":
    main()
