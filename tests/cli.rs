//! The `pilip` command line end to end: train → eval (--json, --plot) → check-forces → export → info → eval of
//! the ONNX model, and clear errors.
mod common;
use common::tmpdir;
use std::path::{Path, PathBuf};
use std::process::Command;

fn pilip() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pilip"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}


fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let (so, se) = (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
    assert!(out.status.success(), "command failed\nstdout:\n{so}\nstderr:\n{se}");
    so
}

fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn train_eval_plot_and_check_forces() {
    let dir = tmpdir("e2e");
    let run = dir.join("run");
    let cfg = root().join("examples/configs/molecule.toml");
    let out = run_ok(pilip().arg("train").arg(&cfg).args([
        "--set",
        "training.max_epochs=3",
        "--set",
        "data.n_train=40",
        "--set",
        "model.hidden=[16]",
        "--set",
        &format!("output.run_dir=\"{}\"", run.display()),
    ]));
    assert!(out.contains("epoch    3"), "{out}");
    assert!(out.contains("meV/atom") && out.contains("meV/Å"));
    for f in ["config.resolved.toml", "train.log", "metrics.jsonl", "split.json", "test.extxyz", "checkpoints/best.ckpt", "checkpoints/last.ckpt"] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    // `pilip split` writes the split the run made, without training (scripts/train_xtb_prior.sh relies on it);
    // another split seed gives another split
    let split_of = |seed: u64, out: &Path| {
        let said = run_ok(pilip().arg("split").arg(&cfg).args(["--set", "data.n_train=40", "--set", &format!("data.split_seed={seed}")]).arg("-o").arg(out));
        assert!(said.contains("40 train") && said.contains("run directory:"), "{said}");
        assert!(!out.join("checkpoints").exists());
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("split.json")).unwrap()).unwrap();
        v
    };
    let trained: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("split.json")).unwrap()).unwrap();
    let same = split_of(1, &dir.join("split"));
    assert_eq!(same["train"].as_array().map(|a| a.len()), Some(40));
    assert_eq!((&same["train"], &same["valid"], &same["test"]), (&trained["train"], &trained["valid"], &trained["test"]));
    assert_ne!(split_of(2, &dir.join("split2"))["train"], trained["train"]);

    let best = run.join("checkpoints/best.ckpt");
    let png = dir.join("parity.png");
    let json = run_ok(pilip().arg("eval").arg(&best).arg(run.join("test.extxyz")).arg("--json").arg("--plot").arg(&png));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    for k in ["energy_mae_mev_per_atom", "energy_rmse_mev_per_atom", "forces_mae_mev_per_A", "forces_rmse_mev_per_A"] {
        let x = v[k].as_f64().unwrap_or(-1.0);
        assert!(x > 0.0 && x.is_finite(), "{k} = {x}");
    }
    assert!(v["energy_rmse_mev_per_atom"].as_f64() >= v["energy_mae_mev_per_atom"].as_f64());
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    assert!(bytes.len() > 5000);
    // --by: the test structures tagged half=even/odd by position; each group is evaluated alone, the groups'
    // structures and force errors add up to the whole, and a key no structure has is refused, naming those present
    let tagged = dir.join("tagged.extxyz");
    let mut text = String::new();
    let (mut lines, mut frame) = (std::fs::read_to_string(run.join("test.extxyz")).unwrap().lines().map(str::to_string).collect::<Vec<_>>().into_iter(), 0usize);
    while let Some(count) = lines.next().filter(|l| !l.trim().is_empty()) {
        let n: usize = count.trim().parse().unwrap();
        let comment = lines.next().unwrap();
        text += &format!("{count}\n{comment} half={}\n", if frame % 2 == 0 { "even" } else { "odd" });
        (0..n).for_each(|_| text += &(lines.next().unwrap() + "\n"));
        frame += 1;
    }
    std::fs::write(&tagged, text).unwrap();
    let g: serde_json::Value =
        serde_json::from_str(&run_ok(pilip().arg("eval").arg(&best).arg(&tagged).args(["--json", "--by", "half"]))).unwrap();
    assert_eq!(g["forces_mae_mev_per_A"], v["forces_mae_mev_per_A"], "grouping does not change the overall figures");
    let groups = g["groups"].as_array().unwrap();
    assert_eq!(g["groups_by"], "half");
    assert_eq!(groups.iter().map(|x| x["value"].as_str().unwrap()).collect::<Vec<_>>(), ["even", "odd"]);
    let counts: Vec<u64> = groups.iter().map(|x| x["n_structures"].as_u64().unwrap()).collect();
    assert_eq!(counts, [frame.div_ceil(2) as u64, (frame / 2) as u64]);
    // same-sized structures: the overall force MAE is the structure-weighted mean of the groups'
    let (f, total) = (|x: &serde_json::Value, k: &str| x[k].as_f64().unwrap(), frame as f64);
    let mean: f64 = groups.iter().zip(&counts).map(|(x, &c)| f(x, "forces_mae_mev_per_A") * c as f64 / total).sum();
    assert!((mean - f(&g, "forces_mae_mev_per_A")).abs() < 1e-9 * mean, "{mean} vs {g}");
    let shares: f64 = groups.iter().map(|x| f(x, "forces_abs_error_share")).sum();
    assert!((shares - 1.0).abs() < 1e-12 && groups.iter().all(|x| f(x, "forces_abs_error_share") > 0.0), "{shares}");
    let table = run_ok(pilip().arg("eval").arg(&best).arg(&tagged).args(["--by", "half"]));
    assert!(table.contains("by half:") && table.lines().any(|l| l.starts_with("even ")) && table.contains(" %"), "{table}");
    let err = run_err(pilip().arg("eval").arg(&best).arg(&tagged).args(["--by", "halves"]));
    assert!(err.contains("--by halves") && err.contains("tagged.extxyz") && err.contains("config_type, half"), "{err}");
    let fd = run_ok(pilip().arg("check-forces").arg(&best).arg(run.join("test.extxyz")).args(["--step", "1e-4"]));
    let err: f64 = fd
        .split("max |analytic - fd| = ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(err < 1e-5, "{fd}");

    // export → info → eval through the runtime gives the checkpoint's metrics
    let onnx = dir.join("model.onnx");
    let out = run_ok(pilip().arg("export").arg(&best).arg("-o").arg(&onnx));
    assert!(out.contains("on 16 structures from") && out.contains("on 3 synthetic ones") && out.contains("f32"), "{out}");
    let info = run_ok(pilip().arg("info").arg(&onnx));
    assert!(info.contains("species:            H C O") && info.contains("format version 4"), "{info}");
    assert!(info.contains("repulsion:          ZBL, switched off between H–H"), "{info}");
    let info: serde_json::Value = serde_json::from_str(&run_ok(pilip().arg("info").arg(&onnx).arg("--json"))).unwrap();
    assert_eq!(info["dtype"], "f32");
    let test = run.join("test.extxyz");
    let keys = ["--energy-key", "REF_energy", "--forces-key", "REF_forces"];
    let via_onnx: serde_json::Value =
        serde_json::from_str(&run_ok(pilip().arg("eval").arg(&onnx).arg(&test).args(keys).arg("--json"))).unwrap();
    for k in ["energy_mae_mev_per_atom", "forces_mae_mev_per_A", "forces_rmse_mev_per_A"] {
        let (a, b) = (via_onnx[k].as_f64().unwrap(), v[k].as_f64().unwrap());
        assert!((a - b).abs() < 1e-3 * b, "{k}: onnx {a} vs checkpoint {b}");
    }
    let out = run_ok(pilip().arg("export").arg(&best).arg("-o").arg(dir.join("m64.onnx")).args(["--dtype", "f64"]));
    assert!(out.contains("f64"), "{out}");
    // verifying on structures with an element the model does not know fails and writes nothing
    let cu = root().join("examples/data/cu_50.extxyz");
    let bad = dir.join("bad.onnx");
    let err = run_err(pilip().arg("export").arg(&best).arg("-o").arg(&bad).arg("--verify-data").arg(&cu));
    assert!(err.contains("29 (Cu)") && !bad.exists(), "{err}");
    let err = run_err(pilip().arg("info").arg(&cu));
    assert!(err.contains("cu_50.extxyz") && err.contains("not a readable ONNX file"), "{err}");

    // md-stability: a short NVE run is stable and conserves energy; a tiny bond tolerance ends it early
    let md = dir.join("md.json");
    run_ok(pilip().arg("md-stability").arg(&onnx).arg(&test).args(["--time-ps", "0.2", "--seeds", "2", "-o"]).arg(&md));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&md).unwrap()).unwrap();
    assert_eq!(r["seeds"].as_array().unwrap().len(), 2);
    for s in r["seeds"].as_array().unwrap() {
        assert_eq!(s["completed"], true, "{s}");
        assert!((s["stable_time"].as_f64().unwrap() - 0.2).abs() < 1e-9);
        assert!(s["energy_drift_per_atom"].as_f64().unwrap().abs() < 1e-3, "{s}");
        assert!(s["max_bond_deviation"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(&std::fs::read(md.with_extension("png")).unwrap()[1..4], b"PNG");

    // engine options: the default engine named explicitly gives the same metrics, tract the same to rounding, two
    // threads the same bits; a checkpoint has no engine; bench times an exported model
    let explicit: serde_json::Value = serde_json::from_str(&run_ok(
        pilip().arg("eval").arg(&onnx).arg(&test).args(keys).args(["--json", "--engine", "native", "--threads", "1"]),
    ))
    .unwrap();
    assert_eq!(explicit["forces_rmse_mev_per_A"], via_onnx["forces_rmse_mev_per_A"]);
    let tract: serde_json::Value =
        serde_json::from_str(&run_ok(pilip().arg("eval").arg(&onnx).arg(&test).args(keys).args(["--json", "--engine", "tract"])))
            .unwrap();
    let (a, b) = (tract["forces_rmse_mev_per_A"].as_f64().unwrap(), explicit["forces_rmse_mev_per_A"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-4 * b, "tract {a} vs native {b}");
    let two: serde_json::Value =
        serde_json::from_str(&run_ok(pilip().arg("eval").arg(&onnx).arg(&test).args(keys).args(["--json", "--threads", "2"])))
            .unwrap();
    assert_eq!(two, explicit, "two threads per call give the same metrics");
    let err = run_err(pilip().arg("bench").arg(&best).arg(&test).args(["--engine", "tract"]));
    assert!(err.contains("--engine and --threads apply to exported models") && err.contains("best.ckpt"), "{err}");
    let out = run_ok(pilip().arg("bench").arg(&onnx).arg(&test).args(["--repeats", "5"]));
    assert!(out.contains("engine native (1 thread)") && out.contains("µs/atom"), "{out}");
    let err = run_err(pilip().arg("md-stability").arg(&onnx).arg(&test).args(["--engine", "tract", "--threads", "0"]));
    assert!(err.contains("threads must be in 1..="), "{err}");
    let out = run_ok(pilip().arg("md-stability").arg(&best).arg(&test).args(["--time-ps", "0.2", "--seeds", "1", "--bond-tolerance", "0.02"]));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = &r["seeds"][0];
    assert_eq!(s["completed"], false);
    assert!(s["stable_time"].as_f64().unwrap() < 0.2 && s["failure"].as_str().unwrap().contains("bond"), "{s}");
}

#[test]
fn periodic_example_config_trains_with_stress() {
    let dir = tmpdir("cu");
    let run = dir.join("run");
    let cfg = root().join("examples/configs/periodic.toml");
    run_ok(pilip().arg("train").arg(&cfg).args([
        "--set",
        "training.max_epochs=2",
        "--set",
        "model.hidden=[8]",
        "--set",
        &format!("output.run_dir=\"{}\"", run.display()),
        "--quiet",
    ]));
    let json = run_ok(pilip().arg("eval").arg(run.join("checkpoints/best.ckpt")).arg(run.join("test.extxyz")).arg("--json"));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["stress_rmse_mev_per_A3"].as_f64().unwrap() > 0.0);
    let fd = run_ok(pilip().arg("check-forces").arg(run.join("checkpoints/best.ckpt")).arg(run.join("test.extxyz")));
    assert!(fd.contains("stress: max |analytic - fd|"), "{fd}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tmpdir("bad");
    let bad = dir.join("bad.xyz");
    std::fs::write(&bad, "2\nProperties=species:S:1:pos:R:3 energy=1.0\nH 0 0 0\nH 0 0 zz\n").unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, format!("[data]\nfile = \"{}\"\n[output]\nrun_dir = \"{}\"\n", bad.display(), dir.join("r").display())).unwrap();
    let e = run_err(pilip().arg("train").arg(&cfg));
    assert!(e.contains("bad.xyz:4: pos: expected a number, found 'zz'"), "{e}");
    std::fs::write(&cfg, "[data]\nfile = \"x.xyz\"\n[training]\nlearning_rate = 1.0\n").unwrap();
    let e = run_err(pilip().arg("train").arg(&cfg));
    assert!(e.contains("unknown field `learning_rate`"), "{e}");
    let e = run_err(pilip().arg("train").arg(&cfg).args(["--set", "oops"]));
    assert!(e.contains("--set expects section.key=value"), "{e}");
    let e = run_err(pilip().arg("eval").arg(dir.join("missing.ckpt")).arg(&bad));
    assert!(e.contains("missing.ckpt"), "{e}");
    let e = run_err(pilip().arg("eval").arg(&bad).arg(&bad));
    assert!(e.contains("not a readable pilip checkpoint"), "{e}");
    let _ = Path::new("");
}

#[test]
fn piwsl_benchmark_smoke_run_writes_results_and_each_variant_changes_the_loss() {
    let dir = tmpdir("piwsl");
    let spec = root().join("examples/configs/bench/piwsl_smoke.toml");
    let out = run_ok(pilip().arg("bench-piwsl").arg(&spec).arg("--quiet").arg("--set").arg(format!("output_dir={:?}", dir.display().to_string())));
    assert!(out.contains("F RMSE meV/Å"), "{out}");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    // 2 sizes × (4 variants with forces + 3 energy-only) × 1 seed
    assert_eq!(r["runs"].as_array().unwrap().len(), 14);
    assert_eq!(r["summary"].as_array().unwrap().len(), 14);
    assert!(r["test_thermal_curvature_ev_per_A2"].as_f64().unwrap() > 1.0, "{}", r["test_thermal_curvature_ev_per_A2"]);
    for run in r["runs"].as_array().unwrap() {
        assert!(run["curvature_ev_per_A2"].as_f64().unwrap().is_finite(), "{run}");
        let epochs = if run["size"] == 32 { 1 } else { 2 }; // max_structure_epochs = 32 caps the larger set
        assert_eq!(run["epochs"], epochs, "{run}");
    }
    for a in r["summary"].as_array().unwrap() {
        for k in ["energy_rmse_mev_per_atom", "forces_rmse_mev_per_A", "train_seconds"] {
            assert!(a[k][0].as_f64().unwrap() > 0.0, "{k}: {a}");
        }
    }
    let csv = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 15);
    for png in ["forces_rmse_forces.png", "energy_rmse_energy.png"] {
        assert_eq!(&std::fs::read(dir.join(png)).unwrap()[1..4], b"PNG");
    }
    // the logged loss terms show which terms each variant optimises
    let terms = |labels: &str, variant: &str| -> serde_json::Value {
        let log = std::fs::read_to_string(dir.join(format!("runs/{labels}/{variant}/n16_s1/metrics.jsonl"))).unwrap();
        serde_json::from_str::<serde_json::Value>(log.lines().next().unwrap()).unwrap()["train"].clone()
    };
    for labels in ["forces", "energy"] {
        let std_ = terms(labels, "standard");
        assert!(std_["pitc"] == 0.0 && std_["pisc"] == 0.0 && std_["weak"] == 0.0, "{std_}");
        let pitc = terms(labels, "pitc");
        assert!(pitc["pitc"].as_f64().unwrap() > 0.0 && pitc["pisc"] == 0.0, "{pitc}");
        let both = terms(labels, "pitc_pisc");
        assert!(both["pitc"].as_f64().unwrap() > 0.0 && both["pisc"].as_f64().unwrap() > 0.0, "{both}");
        assert_eq!(labels == "energy", std_["forces"] == 0.0, "energy-only runs have no force loss: {std_}");
    }
    let weak = terms("forces", "weak");
    assert!(weak["weak"].as_f64().unwrap() > 0.0, "{weak}");
    // a second invocation reuses the finished runs instead of training again, and finishes an interrupted run
    // (a run directory with checkpoints but no result) instead of refusing to touch it
    let saved = dir.join("runs/forces/pitc/n16_s1/bench_result.json");
    let before = std::fs::metadata(&saved).unwrap().modified().unwrap();
    let interrupted = dir.join("runs/energy/pitc_pisc/n32_s1/bench_result.json");
    let expected: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&interrupted).unwrap()).unwrap();
    std::fs::remove_file(&interrupted).unwrap();
    run_ok(pilip().arg("bench-piwsl").arg(&spec).arg("--quiet").arg("--set").arg(format!("output_dir={:?}", dir.display().to_string())));
    assert_eq!(std::fs::metadata(&saved).unwrap().modified().unwrap(), before);
    let again: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&interrupted).unwrap()).unwrap();
    assert_eq!(again["test"], expected["test"]);
}

/// The complete lines of `metrics.jsonl` of a run (one being written, or cut by a kill, is left out), without
/// the wall-time fields.
fn epochs_without_timing(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).ok()?;
            v.as_object_mut()?.remove("time_s");
            Some(v)
        })
        .collect()
}

#[test]
fn training_killed_at_random_points_and_resumed_ends_where_an_uninterrupted_run_ends() {
    // kill -9 at random points (while an epoch runs, while a checkpoint is written, before the first one), then
    // `--resume` from whatever last.ckpt is on disk: the epochs and the test metrics are those of a run that was
    // never interrupted.
    let dir = tmpdir("kill9");
    let cfg = root().join("examples/configs/molecule.toml");
    let (reference, killed) = (dir.join("reference"), dir.join("killed"));
    let train = |run: &Path| {
        let mut cmd = pilip();
        cmd.arg("train").arg(&cfg).arg("--quiet").args([
            "--set",
            "training.max_epochs=40",
            "--set",
            "training.patience=1000",
            "--set",
            "data.n_train=30",
            "--set",
            "model.hidden=[8]",
            "--set",
            "training.threads=1",
            "--set",
            &format!("output.run_dir=\"{}\"", run.display()),
        ]);
        cmd
    };
    run_ok(&mut train(&reference));
    let mut rng = pilip::rng::Rng::new(20261129);
    let (mut kills, mut starts) = (0, 0);
    loop {
        starts += 1;
        assert!(starts < 200, "no progress after {starts} starts");
        let last = killed.join("checkpoints/last.ckpt");
        let mut cmd = train(&killed);
        if last.exists() {
            cmd.arg("--resume").arg(&last);
        }
        let done_before = epochs_without_timing(&killed).len();
        let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        // let this start make 0–2 epochs of progress, then kill it somewhere inside the next epoch
        let wait_for = done_before + rng.below(3);
        let t0 = std::time::Instant::now();
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if epochs_without_timing(&killed).len() >= wait_for || t0.elapsed().as_secs() > 60 {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        if let Some(status) = finished {
            assert!(status.success(), "a resumed run failed");
            if killed.join("test_metrics.json").exists() {
                break;
            }
            continue;
        }
        std::thread::sleep(std::time::Duration::from_millis(rng.below(40) as u64));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    eprintln!("{kills} kills in {starts} starts");
    assert!(kills >= 10, "only {kills} kills");
    assert_eq!(epochs_without_timing(&killed), epochs_without_timing(&reference), "after {kills} kills");
    let metrics = |run: &Path| std::fs::read_to_string(run.join("test_metrics.json")).unwrap();
    assert_eq!(metrics(&killed), metrics(&reference));
}

#[test]
fn an_export_killed_at_random_points_never_leaves_a_partial_model() {
    let dir = tmpdir("kill-export");
    let run = dir.join("run");
    let cfg = root().join("examples/configs/molecule.toml");
    run_ok(pilip().arg("train").arg(&cfg).args(["--quiet", "--set", "training.max_epochs=1", "--set", "data.n_train=20"]).args([
        "--set",
        &format!("output.run_dir=\"{}\"", run.display()),
    ]));
    let best = run.join("checkpoints/best.ckpt");
    let model = dir.join("model.onnx");
    let mut rng = pilip::rng::Rng::new(11);
    let mut complete = 0;
    for _ in 0..12 {
        let _ = std::fs::remove_file(&model);
        let mut child = pilip().arg("export").arg(&best).arg("-o").arg(&model).stdout(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.below(120) as u64));
        let _ = child.kill();
        child.wait().unwrap();
        // either no model at all, or a complete one that loads
        if model.exists() {
            run_ok(pilip().arg("info").arg(&model));
            complete += 1;
        }
    }
    eprintln!("{complete} of 12 killed exports had finished");
    run_ok(pilip().arg("export").arg(&best).arg("-o").arg(&model));
    run_ok(pilip().arg("info").arg(&model));
}

/// The shell script of [`a_full_disk_stops_training_with_a_clear_error_and_keeps_the_checkpoints`]: train 2
/// epochs into `$RUN`, fill the file system, resume (must fail), free the space, resume (must finish). `$LIMIT`
/// either mounts a small tmpfs at `$MNT` (in a private mount namespace, `unshare -rm`) or, where that is not
/// allowed, limits the size of files the process may write (`ulimit -f`, EFBIG instead of ENOSPC).
const DISK_FULL_SCRIPT: &str = r#"
set -u
train() { "$PILIP" train "$CFG" --quiet --set training.max_epochs=5 --set training.patience=100 \
  --set data.n_train=20 --set 'model.hidden=[16]' --set training.threads=1 --set "output.run_dir=\"$RUN\"" "$@"; }
if [ "$MODE" = tmpfs ]; then mount -t tmpfs -o size=64m tmpfs "$MNT" || exit 90; fi
train --stop-after 2 || exit 91
sum() { cksum < "$RUN/checkpoints/$1" | cut -d' ' -f1; }
echo "before last=$(sum last.ckpt) best=$(sum best.ckpt)"
if [ "$MODE" = tmpfs ]; then
  dd if=/dev/zero of="$MNT/filler" bs=64k 2>/dev/null
  train --resume "$RUN/checkpoints/last.ckpt" 2>"$MNT/../err.txt"; echo "full status=$?"
else
  ( trap '' XFSZ; ulimit -f 2048; exec "$PILIP" train "$CFG" --quiet --set training.max_epochs=5 --set training.patience=100 \
    --set data.n_train=20 --set 'model.hidden=[16]' --set training.threads=1 --set "output.run_dir=\"$RUN\"" \
    --resume "$RUN/checkpoints/last.ckpt" 2>"$MNT/../err.txt" ); echo "full status=$?"
fi
echo "after last=$(sum last.ckpt) best=$(sum best.ckpt) tmp=$(ls "$RUN/checkpoints" | grep -c tmp)"
rm -f "$MNT/filler"
train --resume "$RUN/checkpoints/last.ckpt"; echo "resumed status=$?"
test -f "$RUN/test_metrics.json" && echo "finished epochs=$(grep -c '"epoch"' "$RUN/metrics.jsonl")"
"#;

#[test]
fn a_full_disk_stops_training_with_a_clear_error_and_keeps_the_checkpoints() {
    let dir = tmpdir("disk-full");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    // A private tmpfs needs user namespaces (or root); otherwise the file-size limit gives the same failure.
    let tmpfs = Command::new("unshare").args(["-rm", "true"]).status().is_ok_and(|s| s.success());
    let mut cmd = if tmpfs { Command::new("unshare") } else { Command::new("sh") };
    if tmpfs {
        cmd.args(["-rm", "sh"]);
    }
    let out = cmd
        .args(["-c", DISK_FULL_SCRIPT])
        .env("PILIP", env!("CARGO_BIN_EXE_pilip"))
        .env("CFG", root().join("examples/configs/molecule.toml"))
        .env("MNT", &mnt)
        .env("RUN", mnt.join("run"))
        .env("MODE", if tmpfs { "tmpfs" } else { "ulimit" })
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = std::fs::read_to_string(dir.join("err.txt")).unwrap_or_default();
    let context = format!("mode {}\n{stdout}\n{}\nerror of the full run: {err}", if tmpfs { "tmpfs" } else { "ulimit" }, String::from_utf8_lossy(&out.stderr));
    let field = |line: &str, key: &str| -> String {
        let l = stdout.lines().find(|l| l.starts_with(line)).unwrap_or_else(|| panic!("no '{line}' line: {context}"));
        l.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{key}="))).unwrap_or_default().to_string()
    };
    // The run on the full disk fails with a message naming the file and the cause …
    assert_ne!(field("full", "status"), "0", "{context}");
    // (which file fills the disk first depends on the file system: a checkpoint, or an input file rewritten on resume)
    assert!(err.contains(": No space left on device") || err.contains(": File too large"), "{context}");
    assert!(err.contains("could not be written; the previous version of the file is intact"), "{context}");
    // … and leaves both checkpoints as they were, with no temporary file.
    assert_eq!(field("after", "last"), field("before", "last"), "{context}");
    assert_eq!(field("after", "best"), field("before", "best"), "{context}");
    assert_eq!(field("after", "tmp"), "0", "{context}");
    // With space again, the run resumes from them and finishes all epochs.
    assert_eq!(field("resumed", "status"), "0", "{context}");
    assert_eq!(field("finished", "epochs"), "5", "{context}");
}
