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


class EngineError(PilipError, RuntimeError):
    """The requested engine is not available (e.g. "ort" not compiled into libpilip, or ONNX Runtime cannot be
    loaded) or it failed while evaluating; not an OSError, since the model file is not to blame."""


def _raise(status):
    message = _c_lib.lib().pilip_last_error().decode(errors="replace")
    if status == _c_lib.ERROR_INVALID_ARGUMENT:
        raise InvalidInputError(message, status)
    if status in (_c_lib.ERROR_IO, _c_lib.ERROR_MODEL):
        raise ModelFileError(message, status)
    if status == _c_lib.ERROR_ENGINE:
        raise EngineError(message, status)
    raise PilipError(message, status)


def _check(status):
    if status != _c_lib.SUCCESS:
        _raise(status)


def _invalid(message):
    """An InvalidInputError detected in Python, with the status the library would have given."""
    return InvalidInputError(message, _c_lib.ERROR_INVALID_ARGUMENT)


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
        raise _invalid(f"{name} must be convertible to {np.dtype(dtype).name}: {e}") from None
    if a.shape != shape:
        raise _invalid(f"{name} must have shape {shape}, got {a.shape}")
    return a


class Model:
    """A pilip model exported with `pilip export`.

    `engine` is "native" (default: pilip's own kernels, checked against the graph when the model loads), "tract"
    (built in, runs any valid graph) or "ort" (ONNX Runtime: needs `ort_library` or ORT_DYLIB_PATH and a libpilip
    built with `--features ort`; EngineError otherwise). `threads`: threads of one compute call (the
    results are bit-identical to one thread; with ort also its intra-op threads).
    A Model may be shared between threads.
    """

    def __init__(self, path, engine="native", ort_library=None, threads=1):
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
        # species and symbols from the library itself (the names it uses in its own messages)
        count = ctypes.c_size_t()
        _check(self._lib.pilip_model_species(self._handle, None, 0, ctypes.byref(count)))
        self.species = np.zeros(count.value, dtype=np.int32)
        _check(self._lib.pilip_model_species(self._handle, self.species.ctypes.data_as(_c_lib.c_int32_p),
                                             count.value, ctypes.byref(count)))
        self.symbols = []
        for i in range(len(self.species)):
            symbol = ctypes.c_char_p()
            _check(self._lib.pilip_model_symbol(self._handle, i, ctypes.byref(symbol)))
            self.symbols.append(symbol.value.decode())

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
            raise PilipError("this Model was closed", _c_lib.ERROR_INVALID_ARGUMENT)
        numbers = np.asarray(numbers)
        if numbers.ndim != 1:
            raise _invalid(f"numbers must have shape (n,), got {numbers.shape}")
        if numbers.size and not np.issubdtype(numbers.dtype, np.integer):
            if not np.all(np.equal(np.mod(numbers, 1), 0)):
                raise _invalid(f"numbers must be integer atomic numbers, got dtype {numbers.dtype}")
        n = numbers.shape[0]
        numbers = _array(numbers, "numbers", (n,), np.int32)
        positions = _array(positions, "positions", (n, 3), np.float64)
        pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        if cell is not None:
            cell = _array(cell, "cell", (3, 3), np.float64)
        elif pbc.any():
            raise _invalid("periodic boundary conditions need a cell")
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
