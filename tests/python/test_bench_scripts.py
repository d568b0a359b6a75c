"""The benchmark scripts of the accuracy issue run on any data of their form: scripts/bench_rmd17.sh on a small
molecule set written as MOL_{train,test}_01.extxyz (and _03 with SPLIT=03), scripts/bench_materials.sh on a small solid set written as
EL_{train,test}.extxyz (a few epochs each; the numbers are checked for sanity, not for accuracy)."""
import json
import os
import subprocess

from ase.io import read, write

from conftest import ROOT


def pilip_binary():
    return str(ROOT / "target" / "release" / "pilip")


def relabel(frames, energy_key, forces_key):
    """Frames with their labels under ASE's standard keys, as the shipped data have them."""
    from ase.calculators.singlepoint import SinglePointCalculator

    out = []
    for a in frames:
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=a.info[energy_key], forces=a.arrays[forces_key])
        out.append(b)
    return out


def run_script(script, args, data, out, **env):
    full = dict(os.environ, PILIP_DATA=str(data), OUT=str(out), PILIP=pilip_binary(), **env)
    r = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], env=full, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_bench_rmd17_runs_on_any_molecule_file(tmp_path):
    frames = relabel(read(ROOT / "examples" / "data" / "ethanol_300.extxyz", index=":"), "REF_energy", "REF_forces")
    (tmp_path / "rmd17").mkdir()
    write(tmp_path / "rmd17" / "mymol_train_01.extxyz", frames[:80])
    write(tmp_path / "rmd17" / "mymol_test_01.extxyz", frames[200:230])
    # a 3-epoch smoke run: without min_steps = 0 the shipped config would lengthen it to 40 000 steps
    stdout = run_script("bench_rmd17.sh", ["mymol"], tmp_path, tmp_path / "out", N="20", MD_PS="0.02",
                        EXTRA="--set training.max_epochs=3 --set training.min_steps=0")
    line = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[-1])
    assert line["molecule"] == "mymol" and line["n_train"] == 20 and line["test_structures"] == 30
    assert 0 < line["forces_mae_mev_per_A"] < 5000 and line["energy_mae_mev"] > 0 and line["call_us"] > 0
    assert len(line["md_stable_ps"]) == 3  # three starts, each simulated (or stopped at a broken bond)
    assert all(0 < t <= 0.02 + 1e-9 for t in line["md_stable_ps"])
    assert "mymol" in stdout and "ACE E / F" in stdout
    # another published split (SPLIT=03: MOL_{train,test}_03.extxyz) is its own run and its own row
    write(tmp_path / "rmd17" / "mymol_train_03.extxyz", frames[100:180])
    write(tmp_path / "rmd17" / "mymol_test_03.extxyz", frames[230:250])
    stdout = run_script("bench_rmd17.sh", [], tmp_path, tmp_path / "out", N="20", MD_PS="0", SPLIT="03",
                        EXTRA="--set training.max_epochs=3 --set training.min_steps=0 --set model.bispectrum_max_elements=3")
    line = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[-1])
    assert line["molecule"] == "mymol" and line["split"] == "03" and line["test_structures"] == 20
    resolved = (tmp_path / "out" / "mymol_n20_s1_split03" / "config.resolved.toml").read_text()
    assert "mymol_train_03.extxyz" in resolved and "mymol_test_03.extxyz" in resolved
    assert 'family = "bispectrum"' in resolved  # rmd17.toml's model family reaches a run of ≤ 3 elements
    # and gives way to the power spectrum above rmd17.toml's limit of two elements (ethanol: H, C, O)
    assert 'family = "power_spectrum"' in (tmp_path / "out" / "mymol_n20_s1" / "config.resolved.toml").read_text()
    rows = [l.split() for l in stdout.splitlines() if l.startswith("mymol")]
    assert sorted(r[1] for r in rows) == ["01", "03"]  # both splits in the table, each once
    r = subprocess.run(["bash", str(ROOT / "scripts" / "bench_rmd17.sh")], env=dict(os.environ, PILIP_DATA=str(tmp_path),
                       OUT=str(tmp_path / "out"), PILIP=pilip_binary(), SPLIT="3a"), capture_output=True, text=True)
    assert r.returncode == 2 and "SPLIT must be" in r.stderr


def test_bench_materials_runs_on_any_element_file(tmp_path):
    frames = read(ROOT / "examples" / "data" / "cu_50.extxyz", index=":")
    (tmp_path / "mlearn").mkdir()
    write(tmp_path / "mlearn" / "Xx_train.extxyz", frames[:30])
    write(tmp_path / "mlearn" / "Xx_test.extxyz", frames[40:50])
    stdout = run_script("bench_materials.sh", ["Xx"], tmp_path, tmp_path / "out", EXTRA="--set training.max_epochs=3")
    line = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[-1])
    assert line["element"] == "Xx" and line["test_structures"] == 10
    assert 0 < line["energy_mae_mev_per_atom"] and 0 < line["forces_mae_mev_per_A"] < 5000
    assert "Xx" in stdout and "GAP E / F" in stdout
    # the test errors per configuration type: the test frames' own config_type values, their counts, shares of one
    types = [a.info["config_type"] for a in frames[40:50]]
    by = line["by_config_type"]
    assert sorted(by) == sorted(set(types)) and all(by[t]["structures"] == types.count(t) for t in by)
    assert abs(sum(g["forces_share"] for g in by.values()) - 1) < 0.01 and "per configuration type" in stdout


def test_bench_rmd17_with_an_xtb_prior_samples_around_the_training_frames_only(tmp_path):
    """PRIOR=xtb: the split is the run's, xTB MD starts from its training frames (their geometries, exactly), every
    sampled frame carries GFN2-xTB's own energy and forces, the base trains on them and the final run is a Δ model
    on the expensive structures."""
    import numpy as np
    from tblite.interface import Calculator

    frames = relabel(read(ROOT / "examples" / "data" / "ethanol_300.extxyz", index=":"), "REF_energy", "REF_forces")
    (tmp_path / "rmd17").mkdir()
    write(tmp_path / "rmd17" / "mymol_train_01.extxyz", frames[:80])
    write(tmp_path / "rmd17" / "mymol_test_01.extxyz", frames[200:230])
    stdout = run_script("bench_rmd17.sh", ["mymol"], tmp_path, tmp_path / "out", N="10", MD_PS="0", PRIOR="xtb",
                        FRAMES_PER_START="3", STRIDE="4", BASE_MINUTES="0.2",
                        EXTRA="--set training.max_epochs=3 --set training.min_steps=0")
    line = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[-1])
    assert line["prior"] == "xtb" and line["n_train"] == 10 and 0 < line["forces_mae_mev_per_A"] < 5000
    assert "with a xtb prior" in stdout
    run = tmp_path / "out" / "mymol_n10_s1"
    split = json.loads((run / "prior" / "split.json").read_text())
    assert split["train"] == json.loads((run / "split.json").read_text())["train"] and len(split["train"]) == 10
    sampled = read(run / "prior" / "xtb.extxyz", index=":")
    assert len(sampled) == 30
    starts = [a.info["xtb_start"] for a in sampled]
    assert sorted(set(starts)) == sorted(split["train"]) and all(starts.count(k) == 3 for k in split["train"])
    train = read(tmp_path / "rmd17" / "mymol_train_01.extxyz", index=":")
    bohr, hartree = 0.529177210903, 27.211386245988
    for i in (0, 1, 2, 29):  # a start (the training geometry itself) and MD frames
        a = sampled[i]
        if i % 3 == 0:
            np.testing.assert_allclose(a.positions, train[a.info["xtb_start"]].positions, atol=1e-9)
        else:
            assert np.abs(a.positions - train[a.info["xtb_start"]].positions).max() > 1e-3  # the MD moved
        res = Calculator("GFN2-xTB", a.numbers, a.positions / bohr).singlepoint()
        assert abs(res.get("energy") * hartree - a.get_potential_energy()) < 1e-5
        np.testing.assert_allclose(a.get_forces(), -np.asarray(res.get("gradient")) * hartree / bohr, atol=1e-4)
    base = (run / "prior" / "base" / "config.resolved.toml").read_text()
    assert "xtb.extxyz" in base and (run / "prior" / "base" / "checkpoints" / "best.ckpt").exists()
    delta = (run / "config.resolved.toml").read_text()
    assert "base = " in delta and "prior/base/checkpoints/best.ckpt" in delta
    # the script's FAMILY default (the power spectrum) replaces rmd17.toml's four-body family in base and Δ
    assert 'family = "power_spectrum"' in base and 'family = "power_spectrum"' in delta


def test_xtb_scripts_label_charged_and_open_shell_molecules_as_tblite_does(tmp_path):
    """--charge and --uhf reach tblite in both xTB scripts (the prior's sampler and the labeller): hydroxide's
    energies and forces equal a direct tblite single point of that charge, the hydroxyl radical's of one unpaired
    electron; an electron count whose parity contradicts --uhf is refused with the frame named."""
    import numpy as np
    from tblite.interface import Calculator

    bohr, hartree = 0.529177210903, 27.211386245988
    xyz = tmp_path / "oh.extxyz"
    xyz.write_text("".join(f'2\nProperties=species:S:1:pos:R:3 pbc="F F F"\nO 0 0 0\nH 0.1 0 {d}\n' for d in (0.95, 1.02)))
    python = str(ROOT / ".venv" / "bin" / "python")

    def script(name, *args):
        return subprocess.run([python, str(ROOT / "scripts" / name), *map(str, args)], capture_output=True, text=True, timeout=120)

    def direct(a, **kw):
        res = Calculator("GFN2-xTB", a.numbers, a.positions / bohr, **kw).singlepoint()
        return res.get("energy") * hartree, -np.asarray(res.get("gradient")) * hartree / bohr

    for args, kw in ((["--charge", "-1"], dict(charge=-1.0)), (["--uhf", "1"], dict(uhf=1))):
        out = tmp_path / "labels.extxyz"
        r = script("xtb_labels.py", xyz, out, *args)
        assert r.returncode == 0, r.stderr
        for a in read(out, index=":"):
            e, f = direct(a, **kw)
            assert abs(a.get_potential_energy() - e) < 1e-6
            np.testing.assert_allclose(a.get_forces(), f, atol=1e-6)
    neutral = direct(read(out, index=0), charge=0.0, uhf=1)[0]
    anion = direct(read(out, index=0), charge=-1.0)[0]
    assert abs(neutral - anion) > 0.5  # the charge changes the surface: the comparison above can fail
    sampled = tmp_path / "md.extxyz"
    r = script("xtb_md_sample.py", xyz, sampled, "--charge", "-1", "--frames-per-start", "2", "--stride", "3", "--jobs", "1")
    assert r.returncode == 0, r.stderr
    frames = read(sampled, index=":")
    assert len(frames) == 4
    for a in frames:
        assert abs(a.get_potential_energy() - direct(a, charge=-1.0)[0]) < 1e-5
    for name, extra in (("xtb_labels.py", [tmp_path / "x.extxyz"]), ("xtb_md_sample.py", [tmp_path / "y.extxyz"])):
        r = script(name, xyz, *extra)  # 9 electrons, closed shell: refused
        assert r.returncode != 0 and "frame 0" in r.stderr and "unpaired" in r.stderr, r.stderr
