"""`pilip.Model`: a loaded pilip ONNX model computing energy, per-atom energies, forces, virial and stress."""
import ctypes
import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _c_lib


class PilipError(Exception):
    """Base class of the errors raised by libpilip; `status` is the C status code."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


class InvalidInputError(PilipError, ValueError):
    """Bad input: wrong shape, non-finite coordinates, an element the model does not know, …"""


class ModelFileError(PilipError, OSError):
    """The model file cannot be read or is not a pilip model this library can run."""


def _raise(status):
    message = _c_lib.lib().pilip_last_error().decode(errors="replace")
    if status == 1:
        raise InvalidInputError(message, status)
    if status in (2, 3):
        raise ModelFileError(message, status)
    raise PilipError(message, status)


def _check(status):
    if status != 0:
        _raise(status)


@dataclass
class Result:
    energy: float
    """eV"""
    energies: np.ndarray
    """per-atom energies, eV, shape (n,)"""
    forces: np.ndarray
    """eV/Å, shape (n, 3)"""
    virial: np.ndarray
    """eV, shape (3, 3): W = −Σ r_ij ⊗ ∂E/∂r_ij (LAMMPS's sign)"""
    stress: Optional[np.ndarray]
    """eV/Å³, shape (3, 3), −W/V; only for fully periodic cells"""


def _array(x, name, shape, dtype):
    try:
        a = np.ascontiguousarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"{name} must be convertible to {np.dtype(dtype).name}: {e}", 1) from None
    if a.shape != shape:
        raise InvalidInputError(f"{name} must have shape {shape}, got {a.shape}", 1)
    return a


class Model:
    """A pilip model exported with `pilip export`.

    `engine` is "tract" (default, built in) or "ort" (ONNX Runtime: needs `ort_library` or ORT_DYLIB_PATH and a
    libpilip built with `--features ort`). A Model may be shared between threads.
    """

    def __init__(self, path, engine="tract", ort_library=None, threads=1):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"model path must be a str or os.PathLike, got {type(path).__name__}")
        path = os.fspath(path)
        options = {"engine": engine, "threads": int(threads)}
        if ort_library is not None:
            options["ort_library"] = os.fspath(ort_library)
        self._lib = _c_lib.lib()
        self._handle = ctypes.c_void_p()
        status = self._lib.pilip_model_load(path.encode(), json.dumps(options).encode(), ctypes.byref(self._handle))
        _check(status)
        self.path = path
        json_ptr = ctypes.c_char_p()
        _check(self._lib.pilip_model_metadata_json(self._handle, ctypes.byref(json_ptr)))
        self.metadata = json.loads(json_ptr.value.decode())
        cutoff = ctypes.c_double()
        _check(self._lib.pilip_model_cutoff(self._handle, ctypes.byref(cutoff)))
        self.cutoff = cutoff.value
        self.species = np.array(self.metadata["species"], dtype=np.int32)
        self.symbols = list(self.metadata["symbols"])

    def __repr__(self):
        return f"pilip.Model({self.path!r}, species={self.symbols}, cutoff={self.cutoff})"

    def close(self):
        if getattr(self, "_handle", None) and self._handle.value:
            self._lib.pilip_model_free(self._handle)
            self._handle = ctypes.c_void_p()

    def __del__(self):
        self.close()

    def compute(self, positions, numbers, cell=None, pbc=False) -> Result:
        """Energy and derivatives of a whole system. `positions` (n, 3) Å, `numbers` (n,) atomic numbers,
        `cell` (3, 3) with the lattice vectors as rows (Å; required if any `pbc`), `pbc` a bool or 3 bools."""
        if not self._handle.value:
            raise PilipError("this Model was closed", 1)
        numbers = np.asarray(numbers)
        if numbers.ndim != 1:
            raise InvalidInputError(f"numbers must have shape (n,), got {numbers.shape}", 1)
        if numbers.size and not np.issubdtype(numbers.dtype, np.integer):
            if not np.all(np.equal(np.mod(numbers, 1), 0)):
                raise InvalidInputError(f"numbers must be integer atomic numbers, got dtype {numbers.dtype}", 1)
        n = numbers.shape[0]
        numbers = _array(numbers, "numbers", (n,), np.int32)
        positions = _array(positions, "positions", (n, 3), np.float64)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        if cell is not None:
            cell = _array(cell, "cell", (3, 3), np.float64)
        elif pbc.any():
            raise InvalidInputError("periodic boundary conditions need a cell", 1)
        energy = ctypes.c_double()
        energies = np.zeros(n)
        forces = np.zeros((n, 3))
        virial = np.zeros((3, 3))
        dp = _c_lib.c_double_p
        status = self._lib.pilip_model_compute(
            self._handle, n, positions.ctypes.data_as(dp), numbers.ctypes.data_as(_c_lib.c_int32_p),
            None if cell is None else cell.ctypes.data_as(dp), (ctypes.c_bool * 3)(*pbc), ctypes.byref(energy),
            energies.ctypes.data_as(dp), forces.ctypes.data_as(dp), virial.ctypes.data_as(dp))
        _check(status)
        stress = None
        if cell is not None and pbc.all():
            stress = -virial / abs(np.linalg.det(cell))
        return Result(energy.value, energies, forces, virial, stress)
