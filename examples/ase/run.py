"""Relax a structure with a pilip model in ASE, then run 1 ps of NVE MD and print energies.

    python examples/ase/run.py MODEL.onnx STRUCTURE.extxyz     (bash examples/ase/run.sh does everything)
"""
import sys

import numpy as np
from ase import units
from ase.io import read
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

import pilip


def main(model_path, structure_path):
    atoms = read(structure_path, index=0)
    atoms.calc = pilip.Calculator(model_path)
    print(f"{atoms.get_chemical_formula()}: {len(atoms)} atoms, model {atoms.calc.model}")
    print(f"initial energy {atoms.get_potential_energy():.6f} eV, max force {np.abs(atoms.get_forces()).max():.4f} eV/Å")

    BFGS(atoms, logfile=None).run(fmax=0.01, steps=500)
    e_min = atoms.get_potential_energy()
    print(f"relaxed energy {e_min:.6f} eV, max force {np.abs(atoms.get_forces()).max():.4f} eV/Å")
    if atoms.pbc.all():
        print("stress (eV/Å³, xx yy zz yz xz xy):", np.array2string(atoms.get_stress(), precision=5))

    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    e0 = atoms.get_total_energy()

    def report():
        t = dyn.get_time() / (1000 * units.fs)
        e = atoms.get_total_energy()
        print(f"t = {t:5.2f} ps  E_pot = {atoms.get_potential_energy():.5f} eV  T = {atoms.get_temperature():6.1f} K"
              f"  E_tot - E_tot(0) = {(e - e0) / len(atoms):+.2e} eV/atom")

    dyn.attach(report, interval=200)
    dyn.run(2000)  # 1 ps


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
