"""Installing the Python package the way users do: `pip wheel ./bindings/python` on a clean copy of the sources
(no target/, no prebuilt library) runs cargo itself and gives a platform wheel with libpilip inside; that wheel,
installed into a fresh virtual environment, imports and computes outside the checkout, with the library from
inside the installed package, exactly like the project venv's package.

The copy builds with CARGO_TARGET_DIR = the checkout's target/ (or the CARGO_TARGET_DIR already set), so the
compiled dependencies of `cargo test --release --features ort` are reused: with the files' times kept, cargo finds
the pilip crate itself fresh too when target/ was built from these sources (~5 s), else it compiles only that
crate (~50 s on 2 cores).
setuptools-rust comes from PyPI (or pip's cache) through pip's build isolation; numpy for the fresh venv too,
at the project venv's version so that pip's cache serves it. Never skips when CI=true.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata

import numpy as np
import pytest

from conftest import ROOT, require
from pilip_testdata import ethanol

import pilip

# Runs in the fresh venv: loads the package from there and computes with both engines.
PROBE = r"""
import json, sys
import numpy as np
import pilip, pilip._c_lib
job = json.load(open(sys.argv[1]))
out = {"file": pilip.__file__, "library": pilip._c_lib.lib()._name, "prefix": sys.prefix, "results": []}
for case in job["cases"]:
    args = (np.array(case["positions"]), case["numbers"], case["cell"] and np.array(case["cell"]), case["pbc"])
    r = pilip.Model(case["model"]).compute(*args)
    entry = {"energy": r.energy, "forces": r.forces.tolist()}
    if job["ort_library"]:
        o = pilip.Model(case["model"], engine="ort", ort_library=job["ort_library"]).compute(*args)
        entry["ort_energy"], entry["ort_forces"] = o.energy, o.forces.tolist()
    out["results"].append(entry)
print(json.dumps(out))
"""


def run(args, with_stderr=False, **kwargs):
    """The output of a command that must succeed (the ends of stdout and stderr in the error if it fails)."""
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({out.returncode}):\n{out.stdout[-6000:]}\n"
                           f"{out.stderr[-6000:]}")
    return out.stdout + out.stderr if with_stderr else out.stdout


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PILIP_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


def source_files():
    """The checkout's sources as git sees them: tracked files plus new files not ignored (so target/, .venv/ and
    build leftovers stay behind), as they are in the working tree."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        if os.environ.get("CI") == "true":
            raise RuntimeError("test_install needs git and a git checkout in CI")
        pytest.skip("not a git checkout")
    listing = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    return [name for name in listing.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if shutil.which("cargo") is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError("cargo is required")
        pytest.skip("cargo not found")
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    names = source_files()
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    # Folders keep their times too (build.rs watches src/c_api): cargo then finds the pilip crate fresh when target/
    # was built from these sources, and compiles it otherwise.
    folders = {parent for name in names for parent in pathlib.Path(name).parents if parent != pathlib.Path(".")}
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        shutil.copystat(ROOT / folder, src / folder)
    assert not (src / "target").exists() and not list((src / "bindings" / "python" / "pilip").glob("libpilip*"))
    target_dir = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    log = run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", src / "bindings" / "python", "-w",
               tmp / "wheels"], with_stderr=True, cwd=tmp, env=clean_env(CARGO_TARGET_DIR=target_dir))
    assert "cargo rustc --lib" in log and "--features ort" in log, "the wheel build runs cargo itself"
    wheels = list((tmp / "wheels").glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_pip_wheel_builds_a_platform_wheel_with_the_library(wheel):
    name, version, python, abi, platform = wheel.stem.split("-")
    assert (name, version) == ("pilip", pilip.__version__)
    assert (python, abi) == ("py3", "none"), "the library does not use the Python C API"
    assert platform != "any" and platform.startswith(("linux", "manylinux", "macosx", "win")), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "pilip/libpilip.abi3.so" in names, names
        assert z.getinfo("pilip/libpilip.abi3.so").file_size > 1_000_000
        wheel_meta = z.read(f"pilip-{version}.dist-info/WHEEL").decode()
        requires = z.read(f"pilip-{version}.dist-info/METADATA").decode()
    assert "Root-Is-Purelib: false" in wheel_meta
    assert "Requires-Dist: numpy" in requires
    assert {"pilip/__init__.py", "pilip/_c_lib.py", "pilip/model.py", "pilip/calculator.py"} <= set(names)


def test_the_wheel_in_a_fresh_venv_computes_like_the_project_venv(wheel, models, tmp_path):
    ort = pathlib.Path(os.environ.get("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")).resolve()
    require(ort, "set ORT_DYLIB_PATH to the onnxruntime wheel's library (scripts/test.sh does)")
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])  # no --system-site-packages
    python = venv / "bin" / "python"
    # the project venv's pip installs into the fresh venv; numpy pinned to ours so pip's cache can serve it
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", wheel,
         f"numpy=={metadata.version('numpy')}"], env=clean_env())

    rng = np.random.default_rng(5)
    a = 3.615
    base = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    cells = np.array([[x, y, z] for x in range(2) for y in range(2) for z in range(2)])
    cu_pos = ((cells[:, None, :] + base[None]) * a).reshape(-1, 3) + rng.normal(scale=0.05, size=(32, 3))
    hco_pos, hco_numbers = ethanol()
    cases = [
        dict(model=str(models["cu"]["f64"]), positions=cu_pos.tolist(), numbers=[29] * len(cu_pos),
             cell=(np.eye(3) * 2 * a).tolist(), pbc=True),
        dict(model=str(models["hco"]["f64"]), positions=np.asarray(hco_pos).tolist(),
             numbers=[int(z) for z in hco_numbers], cell=None, pbc=False),
    ]
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"cases": cases, "ort_library": str(ort)}))
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    out = json.loads(run([python, probe, job], cwd=outside, env=clean_env()))

    # the fresh venv's package and the library inside it: not the checkout's, not the project venv's
    package = pathlib.Path(out["file"]).resolve().parent
    assert pathlib.Path(out["prefix"]).resolve() == venv.resolve()
    assert package.is_relative_to(venv.resolve()), out["file"]
    library = pathlib.Path(out["library"]).resolve()
    assert library == package / "libpilip.abi3.so", out["library"]
    assert not library.is_relative_to(ROOT) and not library.is_relative_to(pathlib.Path(sys.prefix).resolve())

    for case, got in zip(cases, out["results"]):
        want = pilip.Model(case["model"]).compute(np.array(case["positions"]), case["numbers"],
                                                  case["cell"] and np.array(case["cell"]), case["pbc"])
        assert abs(got["energy"] - want.energy) <= 1e-12 * max(1.0, abs(want.energy)), (got["energy"], want.energy)
        np.testing.assert_allclose(got["forces"], want.forces, rtol=0, atol=1e-12)
        # engine "ort" is compiled into the wheel's library (ONNX Runtime opened at run time)
        assert abs(got["ort_energy"] - want.energy) <= 1e-10 * max(1.0, abs(want.energy))
        np.testing.assert_allclose(got["ort_forces"], want.forces, rtol=1e-9, atol=1e-10)
