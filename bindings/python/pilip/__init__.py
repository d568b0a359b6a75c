"""pilip from Python: `pilip.Model` (ctypes bindings to libpilip) and `pilip.Calculator` (ASE).

    import pilip
    model = pilip.Model("model.onnx")
    result = model.compute(positions, numbers, cell, pbc)      # energy, energies, forces, virial, stress
    atoms.calc = pilip.Calculator("model.onnx")                # needs ASE
"""
from ._version import __version__
from .model import EngineError, InvalidInputError, Model, ModelFileError, PilipError, Result

__all__ = ["Model", "Calculator", "Result", "PilipError", "InvalidInputError", "ModelFileError", "EngineError",
           "__version__"]


def __getattr__(name):
    # ASE is optional: import the calculator only when it is asked for.
    if name == "Calculator":
        from .calculator import Calculator

        return Calculator
    raise AttributeError(f"module 'pilip' has no attribute {name!r}")
