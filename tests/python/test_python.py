"""The Python package: ctypes declarations match include/pilip.h, pilip.Model and pilip.Calculator agree with the
C library, finite differences and energy conservation, caching, and clear errors."""
import ctypes
import re
import tomllib

import numpy as np
import pytest

from conftest import ROOT

import pilip  # noqa: E402  (installed from bindings/python by scripts/test.sh)
import ase  # noqa: E402,F401
from ase import Atoms  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.calculator import PropertyNotImplementedError  # noqa: E402
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402
from ase import units  # noqa: E402

from pilip_testdata import ethanol  # noqa: E402

C_TYPES = {
    "double": ctypes.c_double, "double *": ctypes.POINTER(ctypes.c_double), "const double *": ctypes.POINTER(ctypes.c_double),
    "int32_t *": ctypes.POINTER(ctypes.c_int32), "const int32_t *": ctypes.POINTER(ctypes.c_int32),
    "const int32_t *const *": ctypes.POINTER(ctypes.POINTER(ctypes.c_int32)), "size_t": ctypes.c_size_t,
    "size_t *": ctypes.POINTER(ctypes.c_size_t), "const char *": ctypes.c_char_p, "const char **": ctypes.POINTER(ctypes.c_char_p),
    "pilip_status_t": ctypes.c_int32, "void": None, "const bool *": ctypes.POINTER(ctypes.c_bool),
    "const pilip_model_t *": ctypes.c_void_p, "pilip_model_t *": ctypes.c_void_p, "pilip_model_t **": ctypes.POINTER(ctypes.c_void_p),
}


def header_functions():
    text = (ROOT / "include" / "pilip.h").read_text()
    text = re.sub(r"//[^\n]*", "", text)
    out = {}
    for ret, name, args in re.findall(r"([\w ]+?\**)\s*(pilip_\w+)\(([^)]*)\);", text):
        params = [] if args.strip() in ("", "void") else [re.sub(r"\s*\w+$", "", a.strip()) for a in args.split(",")]
        out[name] = (ret.strip(), [re.sub(r"\s+", " ", p).replace(" *", " *").strip() for p in params])
    return out


def test_ctypes_declarations_match_the_header():
    from pilip._c_lib import FUNCTIONS
    header = header_functions()
    assert set(header) == set(FUNCTIONS), f"header {sorted(header)} vs python {sorted(FUNCTIONS)}"
    for name, (ret, params) in header.items():
        restype, argtypes = FUNCTIONS[name]
        assert C_TYPES[ret] == restype, f"{name}: return {ret}"
        assert len(params) == len(argtypes), f"{name}: {params}"
        for p, a in zip(params, argtypes):
            assert C_TYPES[p] == a, f"{name}: parameter type {p} declared as {a}"


def test_status_constants_match_the_header():
    from pilip import _c_lib
    text = (ROOT / "include" / "pilip.h").read_text()
    header = {name: int(value) for name, value in re.findall(r"#define PILIP_(SUCCESS|ERROR_\w+) (\d+)", text)}
    assert {"SUCCESS", "ERROR_INVALID_ARGUMENT", "ERROR_IO", "ERROR_MODEL", "ERROR_ENGINE", "ERROR_INTERNAL"} <= set(header)
    for name, value in header.items():
        assert getattr(_c_lib, name, None) == value, f"PILIP_{name} is {value} in pilip.h, {getattr(_c_lib, name, None)} in Python"
    assert set(_c_lib.STATUS) == set(header.values())


def test_one_version_for_cargo_the_package_and_the_library():
    from pilip import _c_lib
    section = re.search(r"^\[package\][ \t]*\n(.*?)(?=^\[|\Z)", (ROOT / "Cargo.toml").read_text(), re.M | re.S)
    version = section and re.search(r'^version\s*=\s*"([^"]+)"', section.group(1), re.M)
    assert version, "no version = \"...\" in the [package] section of Cargo.toml"
    assert pilip.__version__ == version.group(1), "bindings/python/pilip/_version.py differs from Cargo.toml"
    assert pilip.__version__ == _c_lib.lib().pilip_version().decode()


@pytest.fixture(scope="module")
def cu(models):
    return pilip.Model(models["cu"]["f64"])


@pytest.fixture(scope="module")
def hco(models):
    return pilip.Model(models["hco"]["f64"])


def triclinic_cu():
    atoms = bulk("Cu", "fcc", a=3.615) * (3, 2, 2)
    atoms.set_cell(atoms.cell.array + np.array([[0.0, 0.0, 0.0], [0.4, 0.0, 0.0], [-0.3, 0.2, 0.0]]), scale_atoms=True)
    atoms.rattle(0.05, seed=3)
    return atoms


def periodic_config():
    """The config the `cu` fixture model was trained with (its cutoff is what the model file must report)."""
    with open(ROOT / "examples" / "configs" / "periodic.toml", "rb") as f:
        return tomllib.load(f)


def test_model_api_matches_the_c_library(cu, hco, models, reference):
    # conftest's Reference calls pilip_model_compute through its own ctypes declarations and plain arrays
    ref = reference(models["cu"]["f64"])
    atoms = triclinic_cu()
    r = cu.compute(atoms.positions, atoms.numbers, atoms.cell.array, True)
    e, ae, f, w = ref.compute(atoms.positions, atoms.numbers, atoms.cell.array, (True,) * 3)
    assert r.energy == e and np.array_equal(r.energies, ae) and np.array_equal(r.forces, f) and np.array_equal(r.virial, w)
    np.testing.assert_allclose(r.stress, -w / atoms.get_volume(), rtol=1e-14)
    # Fortran-ordered and float32/int64 inputs, lists, a slab (pbc along two lattice vectors only)
    pos32 = np.asfortranarray(atoms.positions.astype(np.float32))
    r = cu.compute(pos32, atoms.numbers.astype(np.int64), atoms.cell.array.tolist(), [True, True, False])
    e, ae, f, w = ref.compute(pos32.astype(np.float64), atoms.numbers, atoms.cell.array, (True, True, False))
    assert r.energy == e and np.array_equal(r.energies, ae) and np.array_equal(r.forces, f) and np.array_equal(r.virial, w)
    assert r.stress is None and r.forces.shape == (len(atoms), 3) and r.virial.shape == (3, 3)
    pos, numbers = ethanol()
    r = hco.compute(pos, list(numbers))
    e, ae, f, w = reference(models["hco"]["f64"]).compute(pos, numbers)
    assert r.energy == e and np.array_equal(r.energies, ae) and np.array_equal(r.forces, f) and np.array_equal(r.virial, w)
    assert cu.cutoff == periodic_config()["descriptor"]["cutoff"] and list(cu.species) == ref.species() == [29] and cu.symbols == ref.symbols() == ["Cu"]
    hco_ref = reference(models["hco"]["f64"])
    assert list(hco.species) == hco_ref.species() and hco.symbols == hco_ref.symbols()
    assert sorted(hco.symbols) == ["C", "H", "O"]
    # models trained with the default [repulsion] carry their ZBL prior (format 4), one switch per element pair
    assert cu.metadata["format_version"] == 4 and cu.metadata["dtype"] == "f64"
    assert [p["z"] for p in cu.metadata["repulsion"]["pairs"]] == [[29, 29]]
    assert sorted(p["z"] for p in hco.metadata["repulsion"]["pairs"]) == [[1, 1], [1, 6], [1, 8], [6, 6], [6, 8], [8, 8]]


def test_calculator_matches_the_model_for_a_molecule_and_a_periodic_cell(cu, hco):
    atoms = triclinic_cu()
    atoms.calc = pilip.Calculator(cu)
    r = cu.compute(atoms.positions, atoms.numbers, atoms.cell.array, True)
    assert atoms.get_potential_energy() == r.energy == atoms.get_potential_energy(force_consistent=True)
    np.testing.assert_array_equal(atoms.get_potential_energies(), r.energies)
    np.testing.assert_array_equal(atoms.get_forces(), r.forces)
    s = r.stress
    np.testing.assert_array_equal(atoms.get_stress(), [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
    np.testing.assert_allclose(atoms.get_stress(voigt=False), s, rtol=1e-12, atol=1e-15)  # W symmetric to rounding
    pos, numbers = ethanol()
    mol = Atoms(numbers=numbers, positions=pos)
    mol.calc = pilip.Calculator(hco)
    rm = hco.compute(pos, numbers)
    assert mol.get_potential_energy() == rm.energy
    np.testing.assert_array_equal(mol.get_forces(), rm.forces)
    assert abs(mol.get_potential_energies().sum() - rm.energy) < 1e-10
    with pytest.raises(PropertyNotImplementedError, match="fully periodic"):
        mol.get_stress()


@pytest.mark.parametrize("family", ["power_spectrum", "bispectrum"])
def test_forces_and_stress_equal_finite_differences(models, family):
    # both families run through the same C ABI and calculator: only their metadata says which they are
    suffix = "" if family == "power_spectrum" else "_bispectrum"
    cu, hco = pilip.Model(models["cu" + suffix]["f64"]), pilip.Model(models["hco" + suffix]["f64"])
    assert cu.metadata["family"] == family and cu.metadata["format_version"] == 4
    if family == "bispectrum":
        assert cu.metadata["bispectrum"]["channels"] == 8 and len(cu.metadata["bispectrum"]["compression"]) > 0
    from ase.calculators.fd import calculate_numerical_forces as numeric_forces, calculate_numerical_stress
    atoms = triclinic_cu()
    atoms.calc = pilip.Calculator(cu)
    np.testing.assert_allclose(atoms.get_forces(), numeric_forces(atoms, eps=1e-5), atol=2e-7)
    np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-6), atol=1e-8)
    pos, numbers = ethanol()
    mol = Atoms(numbers=numbers, positions=pos)
    mol.calc = pilip.Calculator(hco)
    assert np.abs(mol.get_forces()).max() > 1e-3
    np.testing.assert_allclose(mol.get_forces(), numeric_forces(mol, eps=1e-5), atol=2e-7)


def test_velocity_verlet_conserves_energy(cu):
    # 2000 steps of 2 fs at 600 K (32 atoms). A C²-smooth conservative potential: the total energy only
    # fluctuates by O(dt²); the bound 5e-4 eV/atom is 1 % of k_B T and ~10× the fluctuation measured here.
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True) * (2, 2, 2)
    atoms.calc = pilip.Calculator(cu)
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(1))
    Stationary(atoms)
    energies = []
    dyn = VelocityVerlet(atoms, timestep=2.0 * units.fs)
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=20)
    dyn.run(2000)
    e = np.array(energies) / len(atoms)
    assert np.abs(e - e[0]).max() < 5e-4, f"max deviation {np.abs(e - e[0]).max():.2e} eV/atom"
    assert abs(e[-1] - e[0]) < 2e-4


def test_calculator_recomputes_on_changes_and_caches_otherwise(cu, monkeypatch):
    calls, computed_by = [], []
    compute = pilip.Model.compute

    def counting_compute(self, *args, **kwargs):
        computed_by.append(self)
        return compute(self, *args, **kwargs)

    monkeypatch.setattr(pilip.Model, "compute", counting_compute)

    class Counting(pilip.Calculator):
        def calculate(self, *args, **kwargs):
            calls.append(1)
            super().calculate(*args, **kwargs)

    atoms = triclinic_cu()
    atoms.calc = Counting(cu)
    assert atoms.calc.model is cu, "a Model passed in is used, not reloaded"
    e0 = atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    atoms.get_potential_energies()
    assert len(calls) == 1, "energy, forces, stress and energies come from one library call"
    atoms.positions[0, 0] += 0.01
    assert atoms.get_potential_energy() != e0 and len(calls) == 2
    atoms.set_cell(atoms.cell.array * 1.01, scale_atoms=True)
    atoms.get_forces()
    assert len(calls) == 3
    atoms.pbc = [True, True, False]
    atoms.get_forces()
    assert len(calls) == 4
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()
    assert len(calls) == 5, "the refused stress was attempted once"
    # charges and magnetic moments are not read by the model: no new calculation
    atoms.set_initial_charges(np.linspace(-0.1, 0.1, len(atoms)))
    atoms.set_initial_magnetic_moments(np.ones(len(atoms)))
    atoms.get_forces()
    assert len(calls) == 5
    # the same positions set again (a new array, equal values) are no change either; one atom moved back is
    atoms.positions = atoms.positions.copy()
    atoms.get_forces()
    assert len(calls) == 5
    atoms.positions[0, 0] -= 0.01
    atoms.get_forces()
    assert len(calls) == 6
    assert computed_by == [cu] * 5, "one Model.compute per calculation; the refused stress makes none"


def test_bad_input_raises_clear_exceptions(cu, tmp_path):
    with pytest.raises(pilip.ModelFileError, match="missing.onnx") as err:
        pilip.Model(tmp_path / "missing.onnx")
    assert isinstance(err.value, OSError)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file at all")
    with pytest.raises(pilip.ModelFileError, match="not a readable ONNX file"):
        pilip.Model(bad)
    with pytest.raises(pilip.InvalidInputError, match="torch"):
        pilip.Model(tmp_path / "missing.onnx", engine="torch")
    with pytest.raises(TypeError, match="model path"):
        pilip.Model(3.5)
    with pytest.raises(pilip.InvalidInputError, match="threads"):
        pilip.Model(cu.path, threads=0)
    pos = np.zeros((2, 3))
    pos[1, 0] = 2.5
    with pytest.raises(pilip.InvalidInputError, match=r"positions must have shape \(2, 3\), got \(6,\)"):
        cu.compute(pos.ravel(), [29, 29])
    with pytest.raises(pilip.InvalidInputError, match=r"cell must have shape \(3, 3\)"):
        cu.compute(pos, [29, 29], cell=np.eye(2), pbc=True)
    with pytest.raises(pilip.InvalidInputError, match="convertible to float64"):
        cu.compute([["a", "b", "c"], [0, 0, 0]], [29, 29])
    with pytest.raises(pilip.InvalidInputError, match="integer atomic numbers"):
        cu.compute(pos, [29.5, 29])
    with pytest.raises(ValueError, match=r"atom 1 has atomic number 26 \(Fe\).*model species: \[Cu\]"):
        cu.compute(pos, [29, 26])
    nan = pos.copy()
    nan[0, 2] = np.nan
    with pytest.raises(pilip.InvalidInputError, match="atom 0 is not finite"):
        cu.compute(nan, [29, 29])
    with pytest.raises(pilip.InvalidInputError, match="need a cell"):
        cu.compute(pos, [29, 29], pbc=True)
    atoms = Atoms("CuFe", positions=pos)
    atoms.calc = pilip.Calculator(cu)
    with pytest.raises(ValueError, match="Fe"):
        atoms.get_potential_energy()


def test_a_missing_onnx_runtime_is_an_engine_error(cu, tmp_path):
    from pilip import _c_lib
    # Not ModelFileError/OSError: the model file is fine, the engine is missing. The explicit ort_library wins
    # over ORT_DYLIB_PATH. ONNX Runtime loads once per process, so if another test already loaded it, the
    # refusal says "already loaded" (still an engine error naming the path asked for).
    missing = tmp_path / "missing_libonnxruntime.so"
    with pytest.raises(pilip.EngineError) as err:
        pilip.Model(cu.path, engine="ort", ort_library=missing)
    assert not isinstance(err.value, OSError) and isinstance(err.value, RuntimeError)
    assert err.value.status == _c_lib.ERROR_ENGINE
    message = str(err.value)
    assert str(missing) in message or "already loaded" in message, message


def test_library_search_reports_the_paths_it_tried(monkeypatch, tmp_path):
    from pilip import _c_lib
    monkeypatch.setattr(_c_lib, "_LIB", None)
    monkeypatch.setenv("PILIP_LIBRARY_PATH", str(tmp_path / "nowhere.so"))
    monkeypatch.setattr(_c_lib, "candidate_paths", lambda: [tmp_path / "nowhere.so"])
    with pytest.raises(ImportError, match="nowhere.so \\(not found\\)"):
        _c_lib.lib()


def test_threads_are_bit_identical_to_one_thread(cu):
    # 108 atoms: several work items per thread, so the threaded path really runs
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True) * (3, 3, 3)
    atoms.rattle(0.05, seed=7)
    one = cu.compute(atoms.positions, atoms.numbers, atoms.cell.array, True)
    for threads in (2, 3):
        r = pilip.Model(cu.path, threads=threads).compute(atoms.positions, atoms.numbers, atoms.cell.array, True)
        assert r.energy == one.energy
        assert np.array_equal(r.energies, one.energies) and np.array_equal(r.forces, one.forces)
        assert np.array_equal(r.virial, one.virial)


def test_impossible_systems_raise_instead_of_aborting(cu):
    # a cell given in the wrong unit made libpilip try to allocate gigabytes and abort the Python process
    pos = np.array([[0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [0.0, 0.05, 0.0]])
    with pytest.raises(pilip.InvalidInputError, match=r"apart, closer than 0\.1 Å"):
        cu.compute(pos, [29, 29, 29], cell=np.eye(3) * 0.1, pbc=True)
    with pytest.raises(pilip.InvalidInputError, match="cell is too small"):
        cu.compute(pos[:1], [29], cell=np.eye(3) * 0.01, pbc=True)
    assert np.isfinite(cu.compute(pos[:1], [29]).energy), "the model still works afterwards"
