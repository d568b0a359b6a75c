"""`pilip.Calculator`: an ASE calculator running a pilip model (energy, free_energy, energies, forces, stress)."""
import numpy as np
from ase.calculators.calculator import Calculator as _AseCalculator
from ase.calculators.calculator import PropertyNotImplementedError, all_changes

from .model import Model


class Calculator(_AseCalculator):
    """ASE calculator for a pilip model: `atoms.calc = pilip.Calculator("model.onnx")`.

    One library call computes energy, per-atom energies, forces and the virial; stress (ASE's Voigt order
    xx yy zz yz xz xy, eV/Å³) exists only for fully periodic cells. Extra keyword arguments go to `pilip.Model`
    when a path is given.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model, **kwargs):
        model_kwargs = {k: kwargs.pop(k) for k in ("engine", "ort_library", "threads") if k in kwargs}
        super().__init__(**kwargs)
        self.model = model if isinstance(model, Model) else Model(model, **model_kwargs)

    def check_state(self, atoms, tol=1e-15):
        """What changed since the last calculation, of what a pilip model reads: positions, atomic numbers, cell
        and pbc, compared exactly. (ASE's generic check also compares magnetic moments and charges, with
        tolerances, and took a third of a molecule's `get_forces` time.)"""
        old = self.atoms
        if old is None:
            return list(all_changes)
        pairs = (("positions", old.positions, atoms.positions), ("numbers", old.numbers, atoms.numbers),
                 ("cell", old.cell.array, atoms.cell.array), ("pbc", old.pbc, atoms.pbc))
        return [name for name, a, b in pairs if not np.array_equal(a, b)]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        pbc = np.asarray(atoms.pbc, dtype=bool)
        if "stress" in properties and not pbc.all():
            raise PropertyNotImplementedError(
                f"pilip.Calculator: stress needs a fully periodic cell (pbc = {pbc.tolist()}); the virial of a "
                "non-periodic system has no volume to divide by")
        cell = np.asarray(atoms.cell.array) if pbc.any() else None
        r = self.model.compute(atoms.positions, atoms.numbers, cell, pbc)
        self.results = {
            "energy": r.energy,
            "free_energy": r.energy,
            "energies": r.energies,
            "forces": r.forces,
        }
        if r.stress is not None:
            s = r.stress
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
