//! `pilip bench-piwsl SPEC.toml`: the PIWSL benchmark suite — the same model trained with the standard loss,
//! + PITC, + PITC + PISC and with weak labels, with forces and energy-only, over training-set sizes and seeds,
//! all evaluated on one fixed held-out test set. Results go to JSON/CSV and log–log plots.
//!
//! Finished runs are reused (their `test_metrics.json`), so an interrupted suite continues where it stopped.

use pilip::config::{override_value, Config};
use pilip::error::{Error, Result};
use pilip::frame::Frame;
use pilip::io::extxyz;
use pilip::metrics::Metrics;
use pilip::rng::Rng;
use pilip::train::checkpoint::Checkpoint;
use pilip::train::curvature::{random_direction_curvature, thermal_curvature};
use pilip::train::{train, TrainOptions, TrainSummary};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The benchmark specification (a TOML file; paths relative to it).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BenchSpec {
    /// Base training config (its data file is split into a fixed test set and a training pool).
    pub config: PathBuf,
    pub output_dir: PathBuf,
    pub sizes: Vec<usize>,
    pub seeds: Vec<u64>,
    /// Held-out test structures: the last `n_test` frames of the data file (`test_split = "last"`) or a random
    /// selection fixed by `test_seed` (`"random"`).
    pub n_test: usize,
    #[serde(default)]
    pub test_split: TestSplit,
    /// Seed of the random test selection.
    #[serde(default)]
    pub test_seed: u64,
    /// Validation structures drawn (per seed) from the pool besides the training set.
    pub n_valid: usize,
    /// "forces" and/or "energy" (energy-only: no force labels in training).
    pub label_modes: Vec<LabelMode>,
    /// Names of variants to run, each defined in `[variants]`.
    pub variants: Vec<String>,
    /// Config overrides (`section.key = value`) per variant.
    pub variant_overrides: BTreeMap<String, BTreeMap<String, toml::Value>>,
    /// Overrides for every run (also applied when reading the data file, so `"data.file"` may be set here).
    #[serde(default)]
    pub overrides: BTreeMap<String, toml::Value>,
    /// Extra overrides of the energy-only mode (e.g. early stopping on the validation energy).
    #[serde(default)]
    pub energy_only_overrides: BTreeMap<String, toml::Value>,
    /// Temperature (K) at which the data were sampled (canonical ensemble), for the thermal curvature estimate
    /// ⟨F²⟩/k_BT that the models' curvature is compared with.
    #[serde(default)]
    pub temperature_k: Option<f64>,
    /// Caps the epochs of a run at ⌈max_structure_epochs / size⌉ (below the config's `max_epochs`), so large
    /// training sets get a bounded number of passes over structures rather than the same number of epochs.
    #[serde(default)]
    pub max_structure_epochs: Option<usize>,
}

/// Which frames of the data file form the fixed test set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TestSplit {
    /// The last `n_test` frames (a later part of a trajectory).
    #[default]
    Last,
    /// A selection fixed by `test_seed`.
    Random,
}

/// The labels a run trains on (ordered as their names, so summaries keep their order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelMode {
    /// Energies only (force labels dropped from the training structures).
    Energy,
    /// Energies and forces.
    Forces,
}

impl std::fmt::Display for LabelMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LabelMode::Forces => "forces",
            LabelMode::Energy => "energy",
        })
    }
}

/// One training run's outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub size: usize,
    pub seed: u64,
    pub variant: String,
    pub labels: LabelMode,
    pub test: Metrics,
    pub train_seconds: f64,
    pub epochs: usize,
    pub best_epoch: usize,
    /// The trained model's mean curvature along random centred directions on the test set, eV/Å²
    /// (see [`random_direction_curvature`]).
    #[serde(default, rename = "curvature_ev_per_A2", alias = "curvature_ev_per_a2")]
    pub curvature_ev_per_a2: Option<f64>,
}

/// Mean and standard deviation over seeds of one (size, variant, labels) cell.
#[derive(Clone, Debug, Serialize)]
/// JSON keys spell Å as `A`, as `pilip eval --json` does (`forces_rmse_mev_per_A`).
#[allow(non_snake_case)]
pub struct Aggregate {
    pub size: usize,
    pub variant: String,
    pub labels: LabelMode,
    pub n_seeds: usize,
    pub energy_mae_mev_per_atom: (f64, f64),
    pub energy_rmse_mev_per_atom: (f64, f64),
    pub forces_mae_mev_per_A: (f64, f64),
    pub forces_rmse_mev_per_A: (f64, f64),
    /// NaN for non-periodic data.
    pub stress_rmse_mev_per_A3: (f64, f64),
    pub train_seconds: (f64, f64),
    pub curvature_ev_per_A2: (f64, f64),
}

impl BenchSpec {
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut value: toml::Value =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        for o in overrides {
            let (k, v) = o.split_once('=').ok_or_else(|| Error::Config(format!("--set {o}: expected KEY=VALUE")))?;
            if let Some(t) = value.as_table_mut() {
                t.insert(k.trim().to_string(), override_value(v));
            }
        }
        let mut spec: BenchSpec = value.try_into().map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        if spec.config.is_relative() {
            spec.config = dir.join(&spec.config);
        }
        for v in &spec.variants {
            if !spec.variant_overrides.contains_key(v) {
                return Err(Error::Config(format!("{}: variant '{v}' has no [variant_overrides.{v}] table", path.display())));
            }
        }
        Ok(spec)
    }
}

fn set_args(map: &BTreeMap<String, toml::Value>) -> Vec<String> {
    map.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Splits the base config's data file into the fixed test set and the training pool (both written to `dir`); returns
/// their paths and the test frames.
fn prepare_data(spec: &BenchSpec, base: &Config, dir: &Path) -> Result<(PathBuf, PathBuf, Vec<Frame>)> {
    let mut frames = extxyz::read_file(&base.data.file, &base.data.keys)?;
    let n = frames.len();
    if spec.n_test + spec.n_valid + spec.sizes.iter().max().copied().unwrap_or(0) > n {
        return Err(Error::Config(format!(
            "{}: {n} structures cannot hold n_test {} + n_valid {} + the largest size {:?}",
            base.data.file.display(),
            spec.n_test,
            spec.n_valid,
            spec.sizes.iter().max()
        )));
    }
    let test: Vec<_> = match spec.test_split {
        TestSplit::Last => frames.split_off(n - spec.n_test),
        TestSplit::Random => {
            let mut idx: Vec<usize> = (0..n).collect();
            Rng::new(spec.test_seed).shuffle(&mut idx);
            let chosen: std::collections::BTreeSet<usize> = idx[..spec.n_test].iter().copied().collect();
            let (t, p): (Vec<_>, Vec<_>) = frames.into_iter().enumerate().partition(|(i, _)| chosen.contains(i));
            frames = p.into_iter().map(|x| x.1).collect();
            t.into_iter().map(|x| x.1).collect()
        }
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (pool, test_path) = (dir.join("pool.extxyz"), dir.join("test.extxyz"));
    extxyz::write_file(&pool, &frames, &base.data.keys)?;
    extxyz::write_file(&test_path, &test, &base.data.keys)?;
    let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    Ok((abs(pool), abs(test_path), test))
}

/// Runs (or reuses) every run of the suite and writes `results.json`, `summary.csv` and plots.
/// With `report_only`, nothing is trained: the finished runs are summarised and the missing ones listed.
pub fn run(spec: &BenchSpec, quiet: bool, report_only: bool) -> Result<Vec<Aggregate>> {
    let out = &spec.output_dir;
    let base = Config::load(&spec.config, &set_args(&spec.overrides))?;
    let (pool, test, test_frames) = prepare_data(spec, &base, &out.join("data"))?;
    let (mut results, mut missing) = (Vec::new(), Vec::new());
    for &size in &spec.sizes {
        for labels in &spec.label_modes {
            for variant in &spec.variants {
                if *labels == LabelMode::Energy && needs_forces(&spec.variant_overrides[variant]) {
                    continue; // weak labels need reference forces
                }
                for &seed in &spec.seeds {
                    let name = format!("{labels}/{variant}/n{size}_s{seed}");
                    let run_dir = out.join("runs").join(&name);
                    let saved = run_dir.join("bench_result.json");
                    if let Ok(text) = std::fs::read_to_string(&saved) {
                        if let Ok(mut r) = serde_json::from_str::<RunResult>(&text) {
                            if r.curvature_ev_per_a2.is_none() {
                                r.curvature_ev_per_a2 = Some(run_curvature(&run_dir, &test_frames)?);
                                save_result(&saved, &r)?;
                            }
                            results.push(r);
                            continue;
                        }
                    }
                    if report_only {
                        missing.push(name);
                        continue;
                    }
                    let mut sets = set_args(&spec.overrides);
                    sets.extend(set_args(&spec.variant_overrides[variant]));
                    if *labels == LabelMode::Energy {
                        sets.extend(["data.train_forces_fraction=0.0".to_string(), "loss.forces_weight=0.0".to_string()]);
                        sets.extend(set_args(&spec.energy_only_overrides));
                    }
                    if let Some(budget) = spec.max_structure_epochs {
                        let max_epochs = base.training.max_epochs.min(budget.div_ceil(size.max(1)));
                        sets.push(format!("training.max_epochs={max_epochs}"));
                    }
                    sets.extend([
                        format!("data.file={:?}", pool.display().to_string()),
                        format!("data.test_file={:?}", test.display().to_string()),
                        "data.split=\"random\"".into(),
                        format!("data.split_seed={seed}"),
                        format!("data.n_train={size}"),
                        format!("data.n_valid={}", spec.n_valid),
                        "data.n_test=0".into(),
                        format!("training.seed={seed}"),
                        format!("output.run_dir={:?}", run_dir.display().to_string()),
                    ]);
                    let cfg = Config::load(&spec.config, &sets)?;
                    let t0 = std::time::Instant::now();
                    let s = train_or_resume(&cfg, &run_dir)?;
                    let r = RunResult {
                        size,
                        seed,
                        variant: variant.clone(),
                        labels: *labels,
                        test: s.test.ok_or_else(|| Error::invalid(format!("run {name} produced no test metrics")))?,
                        train_seconds: t0.elapsed().as_secs_f64(),
                        epochs: s.epochs_done,
                        best_epoch: s.best_epoch,
                        curvature_ev_per_a2: Some(run_curvature(&run_dir, &test_frames)?),
                    };
                    save_result(&saved, &r)?;
                    if !quiet {
                        println!(
                            "{name}: E RMSE {:.2} meV/atom, F RMSE {:.1} meV/Å, {:.0} s",
                            r.test.energy_rmse_mev_per_atom.unwrap_or(f64::NAN),
                            r.test.forces_rmse_mev_per_A.unwrap_or(f64::NAN),
                            r.train_seconds
                        );
                    }
                    results.push(r);
                }
            }
        }
    }
    if !missing.is_empty() {
        println!("{} runs not finished (summary without them): {}", missing.len(), missing.join(", "));
    }
    let aggregates = aggregate(&results);
    let thermal = spec.temperature_k.map(|t| thermal_curvature(&test_frames, t));
    write_outputs(out, spec, &results, &aggregates, thermal)?;
    Ok(aggregates)
}

/// Trains one run; a run that was interrupted (its directory holds `last.ckpt` but no result) continues from its
/// checkpoint, or starts again if the checkpoint cannot be resumed (e.g. written by a pilip with other defaults).
fn train_or_resume(cfg: &Config, run_dir: &Path) -> Result<TrainSummary> {
    let last = run_dir.join("checkpoints").join("last.ckpt");
    let options = |resume| TrainOptions { resume, quiet: true, ..Default::default() };
    if last.exists() {
        match train(cfg, &options(Some(last.clone()))) {
            Ok(s) => return Ok(s),
            Err(e) => {
                eprintln!("{}: cannot resume ({e}); training again from the start", run_dir.display());
                std::fs::remove_dir_all(run_dir.join("checkpoints")).map_err(|e| Error::io(run_dir, e))?;
            }
        }
    }
    train(cfg, &options(None))
}

/// Weak labels need reference forces, so such variants are skipped for energy-only training.
fn needs_forces(overrides: &BTreeMap<String, toml::Value>) -> bool {
    overrides.get("loss.weak_label_weight").and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64))).is_some_and(|w| w > 0.0)
}

fn save_result(path: &Path, r: &RunResult) -> Result<()> {
    let text = serde_json::to_string_pretty(r).map_err(|e| Error::invalid(e.to_string()))?;
    pilip::io::write_atomically(path, text.as_bytes())
}

/// The curvature probe of a finished run's best model on the test set.
fn run_curvature(run_dir: &Path, test: &[Frame]) -> Result<f64> {
    let ck = Checkpoint::load(&run_dir.join("checkpoints").join("best.ckpt"))?;
    random_direction_curvature(&ck.model, test)
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, var.sqrt())
}

pub fn aggregate(results: &[RunResult]) -> Vec<Aggregate> {
    let mut groups: BTreeMap<(LabelMode, String, usize), Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        groups.entry((r.labels, r.variant.clone(), r.size)).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((labels, variant, size), rs)| {
            let col = |f: &dyn Fn(&Metrics) -> Option<f64>| mean_std(&rs.iter().filter_map(|r| f(&r.test)).collect::<Vec<_>>());
            Aggregate {
                size,
                variant,
                labels,
                n_seeds: rs.len(),
                energy_mae_mev_per_atom: col(&|m| m.energy_mae_mev_per_atom),
                energy_rmse_mev_per_atom: col(&|m| m.energy_rmse_mev_per_atom),
                forces_mae_mev_per_A: col(&|m| m.forces_mae_mev_per_A),
                forces_rmse_mev_per_A: col(&|m| m.forces_rmse_mev_per_A),
                stress_rmse_mev_per_A3: col(&|m| m.stress_rmse_mev_per_A3),
                train_seconds: mean_std(&rs.iter().map(|r| r.train_seconds).collect::<Vec<_>>()),
                curvature_ev_per_A2: mean_std(&rs.iter().filter_map(|r| r.curvature_ev_per_a2).collect::<Vec<_>>()),
            }
        })
        .collect()
}

fn write_outputs(out: &Path, spec: &BenchSpec, results: &[RunResult], aggs: &[Aggregate], thermal: Option<f64>) -> Result<()> {
    let json = serde_json::json!({
        "spec": spec,
        "test_thermal_curvature_ev_per_A2": thermal,
        "runs": results,
        "summary": aggs,
    });
    let path = out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).map_err(|e| Error::invalid(e.to_string()))?)
        .map_err(|e| Error::io(&path, e))?;
    let mut csv = String::from(
        "labels,variant,size,n_seeds,energy_mae_mev_per_atom,energy_mae_std,energy_rmse_mev_per_atom,energy_rmse_std,\
         forces_mae_mev_per_A,forces_mae_std,forces_rmse_mev_per_A,forces_rmse_std,stress_rmse_mev_per_A3,stress_rmse_std,\
         train_seconds,curvature_eV_per_A2,curvature_std\n",
    );
    for a in aggs {
        csv += &format!(
            "{},{},{},{},{:.4},{:.4},{:.4},{:.4},{:.3},{:.3},{:.3},{:.3},{:.4},{:.4},{:.1},{:.3},{:.3}\n",
            a.labels,
            a.variant,
            a.size,
            a.n_seeds,
            a.energy_mae_mev_per_atom.0,
            a.energy_mae_mev_per_atom.1,
            a.energy_rmse_mev_per_atom.0,
            a.energy_rmse_mev_per_atom.1,
            a.forces_mae_mev_per_A.0,
            a.forces_mae_mev_per_A.1,
            a.forces_rmse_mev_per_A.0,
            a.forces_rmse_mev_per_A.1,
            a.stress_rmse_mev_per_A3.0,
            a.stress_rmse_mev_per_A3.1,
            a.train_seconds.0,
            a.curvature_ev_per_A2.0,
            a.curvature_ev_per_A2.1
        );
    }
    let path = out.join("summary.csv");
    std::fs::write(&path, csv).map_err(|e| Error::io(&path, e))?;
    for labels in &spec.label_modes {
        for (what, title, get) in [
            ("forces_rmse", "Force RMSE", (|a: &Aggregate| a.forces_rmse_mev_per_A.0) as fn(&Aggregate) -> f64),
            ("energy_rmse", "Energy RMSE", |a: &Aggregate| a.energy_rmse_mev_per_atom.0),
        ] {
            let series: Vec<(String, Vec<(f64, f64)>)> = spec
                .variants
                .iter()
                .map(|v| {
                    let pts = aggs
                        .iter()
                        .filter(|a| a.labels == *labels && &a.variant == v && get(a) > 0.0)
                        .map(|a| (a.size as f64, get(a)))
                        .collect();
                    (v.to_string(), pts)
                })
                .filter(|s: &(String, Vec<(f64, f64)>)| !s.1.is_empty())
                .collect();
            let unit = if what == "forces_rmse" { "meV/Å" } else { "meV/atom" };
            let png = out.join(format!("{what}_{labels}.png"));
            crate::plot::lines_png(
                &png,
                &format!("{title} vs training-set size ({labels} labels)"),
                "training structures",
                &format!("{title} ({unit})"),
                &series,
                (crate::plot::Axis::Log, crate::plot::Axis::Log),
            )?;
        }
    }
    Ok(())
}
