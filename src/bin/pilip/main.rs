//! The `pilip` command line: train, split, eval, export, info, check-forces, and the tools beside the library —
//! benchmarks (`bench`), MD robustness (`md`), the PIWSL suite (`piwsl_bench`) and plots (`plot`). They use the
//! library only through its public API and are not part of libpilip.

mod bench;
mod md;
mod piwsl_bench;
mod plot;
mod progress;

use clap::{Parser, Subcommand};
use pilip::config::Config;
use pilip::error::{Error, Result};
use pilip::frame::Frame;
use pilip::io::extxyz::{self, LabelKeys};
use pilip::onnx::metadata::Dtype;
use pilip::runtime::{EngineKind, Potential, RuntimeOptions};
use pilip::train::checkpoint::Checkpoint;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "pilip", version, about = "Physics-informed learned interatomic potentials")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a potential from an extended XYZ data set.
    Train {
        /// TOML config (see docs/config.md and examples/configs/).
        config: PathBuf,
        /// Override a config key, e.g. --set loss.pitc_weight=1.0 (repeatable).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
        /// Continue a run from RUN_DIR/checkpoints/last.ckpt (the config must be unchanged).
        #[arg(long)]
        resume: Option<PathBuf>,
        /// Stop (resumably) after this many epochs in this invocation.
        #[arg(long, value_name = "EPOCHS")]
        stop_after: Option<usize>,
        /// Only write the log files; print nothing per epoch.
        #[arg(long)]
        quiet: bool,
    },
    /// Write the split a `train` run of this config would make (split.json, config.resolved.toml) into a folder,
    /// without training: which frames train, validate and test.
    Split {
        /// TOML config (as for `train`).
        config: PathBuf,
        /// Override a config key, as for `train` (repeatable).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
        /// Folder to write into (created if missing).
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
    },
    /// Errors of a model against the labels of a data set.
    Eval {
        /// A checkpoint (RUN_DIR/checkpoints/best.ckpt) or an exported model (.onnx).
        model: PathBuf,
        /// Extended XYZ file with reference labels.
        data: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Write energy and force parity plots to this PNG file.
        #[arg(long, value_name = "PNG")]
        plot: Option<PathBuf>,
        /// Also the errors of each group of structures that share this per-structure key of the comment line
        /// (e.g. `config_type`), with each group's share of the force error.
        #[arg(long, value_name = "KEY")]
        by: Option<String>,
        #[command(flatten)]
        keys: KeyArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Compare analytic forces (and stress) with central finite differences.
    CheckForces {
        model: PathBuf,
        structure: PathBuf,
        /// Which frame of the file (0-based).
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Finite-difference step, Å (and strain).
        #[arg(long, default_value_t = 1e-4)]
        step: f64,
    },
    /// Write a trained model as one self-describing ONNX file (checked through the runtime before it is written).
    Export {
        /// A checkpoint (RUN_DIR/checkpoints/best.ckpt).
        checkpoint: PathBuf,
        /// Output ONNX file.
        #[arg(short, long)]
        output: PathBuf,
        /// Floating-point type of the network in the graph (descriptors and chain rule stay f64).
        #[arg(long, default_value = "f32", value_parser = ["f32", "f64"])]
        dtype: String,
        /// Structures to verify the export on (default: the validation split of the training data, if readable).
        #[arg(long, value_name = "EXTXYZ")]
        verify_data: Option<PathBuf>,
    },
    /// Print the metadata of an exported ONNX model.
    Info {
        model: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time the runtime engines (tract, ort if built, training-time Rust model) on one structure.
    BenchRuntime {
        /// A checkpoint; it is exported in memory (f32 and f64) for the ONNX engines.
        checkpoint: PathBuf,
        structure: PathBuf,
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Repeat the structure n×n×n times (periodic structures only).
        #[arg(long, default_value_t = 1)]
        supercell: usize,
        /// Number of timed calls per engine.
        #[arg(long, default_value_t = 50)]
        repeats: usize,
    },
    /// NVE MD from a Maxwell–Boltzmann start: time until a bond breaks (molecules) or the energy drifts
    /// (periodic), and the energy drift; JSON and a PNG of the energy traces.
    MdStability {
        /// An exported model (.onnx) or a checkpoint.
        model: PathBuf,
        /// Starting structure (extended XYZ).
        structure: PathBuf,
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// K
        #[arg(long, default_value_t = 300.0)]
        temperature: f64,
        /// fs
        #[arg(long, default_value_t = 0.5)]
        timestep: f64,
        /// Simulated time per seed, ps.
        #[arg(long = "time-ps", default_value_t = 100.0)]
        time_ps: f64,
        #[arg(long, default_value_t = 3)]
        seeds: usize,
        /// Å: largest allowed change of a bond length (molecules).
        #[arg(long, default_value_t = 0.5)]
        bond_tolerance: f64,
        /// eV/atom: largest allowed total-energy drift (periodic systems).
        #[arg(long, default_value_t = 0.01)]
        drift_threshold: f64,
        /// Write results here (JSON) and a plot beside it (.png); default: print JSON only.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// The PIWSL benchmark suite: standard / PITC / PITC+PISC / weak-label training over sizes and seeds, with
    /// forces and energy-only, on a fixed test set (see docs/piwsl.md).
    BenchPiwsl {
        /// Benchmark specification (examples/configs/bench/piwsl_*.toml).
        spec: PathBuf,
        /// Override a top-level key of the specification, e.g. --set 'sizes=[50,100]' (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        quiet: bool,
        /// Train nothing: summarise the finished runs of the selection (a partial suite) and list the missing ones.
        #[arg(long)]
        report_only: bool,
    },
    /// Time energy + forces (+ virial) evaluations of a model on one structure.
    Bench {
        /// A checkpoint (training-time model) or an exported model (.onnx, through the runtime).
        model: PathBuf,
        structure: PathBuf,
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Number of timed calls.
        #[arg(long, default_value_t = 200)]
        repeats: usize,
        #[command(flatten)]
        engine: EngineArgs,
    },
}

/// How an exported model is run (as `pilip_model_load`'s options, `pair_style pilip` and `pilip.Model`).
#[derive(clap::Args)]
struct EngineArgs {
    /// Network engine for an exported model: native (default: pilip's own kernels), tract (built in, runs any
    /// valid graph) or ort (ONNX Runtime, needs a build with `--features ort` and ORT_DYLIB_PATH).
    #[arg(long, value_parser = ["native", "tract", "ort"])]
    engine: Option<String>,
    /// Threads of one evaluation (the model's own pool; results are bit-identical to one thread).
    #[arg(long)]
    threads: Option<usize>,
}

impl EngineArgs {
    /// The runtime options for an exported model; refused for a checkpoint, which runs in the training-time model.
    fn options(&self, model: &Path) -> Result<RuntimeOptions> {
        if !is_onnx(model) && (self.engine.is_some() || self.threads.is_some()) {
            return Err(Error::invalid(format!(
                "--engine and --threads apply to exported models (.onnx); {} is a checkpoint, evaluated by the \
                 training-time model in Rust (export it with `pilip export` to use an engine)",
                model.display()
            )));
        }
        // The spellings are EngineKind's own (those of `pilip_model_load`'s options).
        let engine: EngineKind = match &self.engine {
            Some(name) => serde_json::from_value(serde_json::Value::String(name.clone())).map_err(|e| Error::invalid(format!("--engine: {e}")))?,
            None => EngineKind::default(),
        };
        let options = RuntimeOptions { engine, threads: self.threads.unwrap_or(1), ..Default::default() };
        options.validate()?;
        Ok(options)
    }
}

#[derive(clap::Args)]
struct KeyArgs {
    /// Energy key in the data file (default: the training config's).
    #[arg(long)]
    energy_key: Option<String>,
    #[arg(long)]
    forces_key: Option<String>,
    #[arg(long)]
    stress_key: Option<String>,
}

impl KeyArgs {
    fn resolve(&self, base: &LabelKeys) -> LabelKeys {
        LabelKeys {
            energy: self.energy_key.clone().unwrap_or_else(|| base.energy.clone()),
            forces: self.forces_key.clone().unwrap_or_else(|| base.forces.clone()),
            stress: self.stress_key.clone().unwrap_or_else(|| base.stress.clone()),
        }
    }
}

/// Frame `index` of a structure file (labels not required).
fn structure_at(path: &Path, index: usize) -> Result<Frame> {
    let mut frames = extxyz::read_structures(path)?;
    let n = frames.len();
    if index >= n {
        return Err(Error::invalid(format!("--index {index}: {} has only {n} structures", path.display())));
    }
    Ok(frames.swap_remove(index))
}

fn is_onnx(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Train { config, set, resume, stop_after, quiet } => {
            let cfg = Config::load(&config, &set)?;
            let s = pilip::train::train(&cfg, &pilip::train::TrainOptions { resume, stop_after, quiet, progress: Some(progress::Bar::new()) })?;
            if quiet {
                println!("{}", s.valid.summary());
            }
            println!(
                "run directory: {} ({} epochs, best epoch {}{})",
                s.run_dir.display(),
                s.epochs_done,
                s.best_epoch,
                if s.finished { "" } else { ", not finished" }
            );
            Ok(())
        }
        Cmd::Split { config, set, out } => {
            let cfg = Config::load(&config, &set)?;
            let s = pilip::train::write_split(&cfg, &out)?;
            println!(
                "{} train, {} validation, {} test structures -> {} (split.json, config.resolved.toml); run directory: {}",
                s.train.len(),
                s.valid.len(),
                s.test.len(),
                out.display(),
                cfg.output.run_dir.display()
            );
            Ok(())
        }
        Cmd::Eval { model, data, json, plot, by, keys, engine } => {
            let options = engine.options(&model)?;
            let preds_and_frames = if is_onnx(&model) {
                let pot = Potential::load(&model, &options)?;
                let frames = extxyz::read_file(&data, &keys.resolve(&LabelKeys::default()))?;
                (pilip::metrics::predict_all_with(&frames, |f| pot.compute_frame(f))?, frames)
            } else {
                let ck = Checkpoint::load(&model)?;
                let frames = extxyz::read_file(&data, &keys.resolve(&ck.config.data.keys))?;
                (pilip::metrics::predict_all(&ck.model, &frames)?, frames)
            };
            let (preds, frames) = preds_and_frames;
            let m = pilip::metrics::compute(&frames, &preds);
            let groups = match &by {
                Some(key) => Some(
                    pilip::metrics::compute_by(&frames, &preds, key)
                        .map_err(|e| Error::invalid(format!("--by {key}: {}: {e}", data.display())))?,
                ),
                None => None,
            };
            if let Some(p) = plot {
                plot::parity_png(&p, &frames, &preds)?;
            }
            if json {
                let mut v = serde_json::to_value(&m).map_err(|e| Error::invalid(e.to_string()))?;
                if let (Some(key), Some(groups), Some(obj)) = (&by, &groups, v.as_object_mut()) {
                    obj.insert("groups_by".into(), key.clone().into());
                    obj.insert("groups".into(), serde_json::to_value(groups).map_err(|e| Error::invalid(e.to_string()))?);
                }
                println!("{}", serde_json::to_string_pretty(&v).map_err(|e| Error::invalid(e.to_string()))?);
            } else {
                println!("{}: {} structures", data.display(), m.n_structures);
                println!("{}", m.summary());
                if let (Some(a), Some(b)) = (m.energy_mae_mev, m.energy_rmse_mev) {
                    println!("E MAE {a:.2} RMSE {b:.2} meV/structure");
                }
                if let Some(line) = m.by_element_line() {
                    println!("{line}");
                }
                if let (Some(key), Some(groups)) = (&by, &groups) {
                    print!("{}", pilip::metrics::group_table(key, groups));
                }
            }
            Ok(())
        }
        Cmd::Export { checkpoint, output, dtype, verify_data } => {
            let ck = Checkpoint::load(&checkpoint)?;
            let dtype = Dtype::parse(&dtype)?;
            let (mut frames, source) = match verify_data {
                Some(p) => (extxyz::read_structures(&p)?, p.display().to_string()),
                None => match pilip::dataset::load(&ck.config.data) {
                    Ok(s) => (s.valid, format!("the validation split of {}", ck.config.data.file.display())),
                    Err(e) => {
                        eprintln!("note: training data not readable ({e}); verifying on synthetic structures only");
                        (Vec::new(), "no data".into())
                    }
                },
            };
            frames.truncate(16);
            let check = pilip::export::export(&ck.model, dtype, &output, &frames)?;
            let (d, s) = (&check.data, &check.synthetic);
            println!(
                "wrote {} ({} network, {} species, cutoff {} Å); max relative deviation on {} structures from {source}: \
                 energy {:.1e}, forces {:.1e}, virial {:.1e}; on {} synthetic ones: {:.1e}, {:.1e}, {:.1e}",
                output.display(),
                dtype.name(),
                ck.model.species.len(),
                ck.model.cutoff(),
                d.n_structures,
                d.energy_rel,
                d.forces_rel,
                d.virial_rel,
                s.n_structures,
                s.energy_rel,
                s.forces_rel,
                s.virial_rel
            );
            Ok(())
        }
        Cmd::Info { model, json } => {
            let bytes = std::fs::read(&model).map_err(|e| Error::io(&model, e))?;
            let (_, meta) = pilip::onnx::decode::decode(&bytes, &model.display().to_string())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&meta).map_err(|e| Error::invalid(e.to_string()))?);
            } else {
                println!("{}", pilip::onnx::metadata::describe(&meta));
            }
            Ok(())
        }
        Cmd::BenchRuntime { checkpoint, structure, index, supercell, repeats } => {
            let ck = Checkpoint::load(&checkpoint)?;
            let mut frame = structure_at(&structure, index)?;
            if supercell > 1 {
                frame = pilip::frame::supercell(&frame, supercell)
                    .map_err(|e| Error::invalid(format!("--supercell {supercell}: {} frame {index}: {e}", structure.display())))?;
            }
            for line in bench::bench_runtime(&ck.model, &frame, repeats.max(1))? {
                println!("{line}");
            }
            Ok(())
        }
        Cmd::MdStability { model, structure, index, temperature, timestep, time_ps, seeds, bond_tolerance, drift_threshold, output, engine } => {
            let runtime_options = engine.options(&model)?;
            let frame = structure_at(&structure, index)?;
            let options = md::MdOptions {
                temperature,
                timestep,
                time: time_ps,
                seeds: seeds.max(1),
                bond_tolerance,
                drift_threshold,
                record_every: (time_ps * 1000.0 / 2000.0).max(timestep),
            };
            let results = if is_onnx(&model) {
                let pot = Potential::load(&model, &runtime_options)?;
                md::run(&frame, &options, &|f| pot.compute_frame(f))?
            } else {
                let ck = Checkpoint::load(&model)?;
                md::run(&frame, &options, &|f| ck.model.predict_frame(f))?
            };
            for r in &results {
                eprintln!(
                    "seed {}: stable for {:.3} ps{}; energy drift {:.2e} eV/atom ({:.2e} eV/atom/ps), mean T {:.0} K{}",
                    r.seed,
                    r.stable_time,
                    if r.completed { " (completed)" } else { "" },
                    r.energy_drift_per_atom,
                    r.drift_rate_per_atom_ps,
                    r.mean_temperature,
                    r.failure.as_ref().map(|f| format!(" — {f}")).unwrap_or_default()
                );
            }
            let report = serde_json::json!({
                "model": model, "structure": structure, "index": index, "n_atoms": frame.len(),
                "periodic": frame.is_fully_periodic(), "options": options, "seeds": results,
            });
            let text = serde_json::to_string_pretty(&report).map_err(|e| Error::invalid(e.to_string()))?;
            match output {
                Some(path) => {
                    std::fs::write(&path, &text).map_err(|e| Error::io(&path, e))?;
                    let series: Vec<(String, Vec<(f64, f64)>)> =
                        results.iter().map(|r| (format!("seed {}", r.seed), r.energy_trace.clone())).collect();
                    let png = path.with_extension("png");
                    plot::lines_png(
                        &png,
                        "NVE total energy drift",
                        "time (ps)",
                        "E(t) − E(0) (eV/atom)",
                        &series,
                        (plot::Axis::Linear, plot::Axis::Linear),
                    )?;
                    println!("wrote {} and {}", path.display(), png.display());
                }
                None => println!("{text}"),
            }
            Ok(())
        }
        Cmd::BenchPiwsl { spec, set, quiet, report_only } => {
            let spec = piwsl_bench::BenchSpec::load(&spec, &set)?;
            let aggs = piwsl_bench::run(&spec, quiet, report_only)?;
            println!("{:<7} {:<20} {:>6} {:>5} {:>16} {:>16}", "labels", "variant", "size", "seeds", "E RMSE meV/atom", "F RMSE meV/Å");
            for a in &aggs {
                println!(
                    "{:<7} {:<20} {:>6} {:>5} {:>9.3} ± {:<5.3} {:>9.1} ± {:<5.1}",
                    a.labels, a.variant, a.size, a.n_seeds, a.energy_rmse_mev_per_atom.0, a.energy_rmse_mev_per_atom.1,
                    a.forces_rmse_mev_per_A.0, a.forces_rmse_mev_per_A.1
                );
            }
            println!("results in {}", spec.output_dir.display());
            Ok(())
        }
        Cmd::CheckForces { model, structure, index, step } => {
            let ck = Checkpoint::load(&model)?;
            let frame = structure_at(&structure, index)?;
            let r = pilip::check::finite_difference(&ck.model, &frame, step)?;
            println!("{r}");
            Ok(())
        }
        Cmd::Bench { model, structure, index, repeats, engine } => {
            let options = engine.options(&model)?;
            let frame = structure_at(&structure, index)?;
            if is_onnx(&model) {
                let pot = Potential::load(&model, &options)?;
                let t = bench::time_potential(&pot, &frame, repeats.max(1))?;
                println!(
                    "{} atoms, {} calls, engine {} ({} thread{}): energy+forces+virial {:.1} µs per call ({:.2} µs/atom)",
                    frame.len(),
                    repeats.max(1),
                    pot.engine_name(),
                    options.threads,
                    if options.threads == 1 { "" } else { "s" },
                    1e6 * t,
                    1e6 * t / frame.len().max(1) as f64
                );
            } else {
                let ck = Checkpoint::load(&model)?;
                println!("{}", bench::time_evaluation(&ck.model, &frame, repeats.max(1))?);
            }
            Ok(())
        }
    }
}
