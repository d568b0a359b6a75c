//! The `pilip` command line: train, eval, check-forces.

use clap::{Parser, Subcommand};
use pilip::config::Config;
use pilip::error::{Error, Result};
use pilip::io::extxyz::{self, LabelKeys};
use pilip::train::checkpoint::Checkpoint;
use std::path::PathBuf;

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
    /// Errors of a model against the labels of a data set.
    Eval {
        /// A checkpoint (RUN_DIR/checkpoints/best.ckpt).
        model: PathBuf,
        /// Extended XYZ file with reference labels.
        data: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Write energy and force parity plots to this PNG file.
        #[arg(long, value_name = "PNG")]
        plot: Option<PathBuf>,
        #[command(flatten)]
        keys: KeyArgs,
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
    /// Time energy + forces (+ virial) evaluations of a model on one structure (single thread).
    Bench {
        model: PathBuf,
        structure: PathBuf,
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Number of timed calls.
        #[arg(long, default_value_t = 200)]
        repeats: usize,
    },
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
fn structure_at(path: &std::path::Path, index: usize) -> Result<pilip::frame::Frame> {
    let mut frames = extxyz::read_structures(path)?;
    let n = frames.len();
    if index >= n {
        return Err(Error::invalid(format!("--index {index}: {} has only {n} structures", path.display())));
    }
    Ok(frames.swap_remove(index))
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
            let s = pilip::train::train(&cfg, &pilip::train::TrainOptions { resume, stop_after, quiet })?;
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
        Cmd::Eval { model, data, json, plot, keys } => {
            let ck = Checkpoint::load(&model)?;
            let keys = keys.resolve(&ck.config.data.keys);
            let frames = extxyz::read_file(&data, &keys)?;
            let preds = pilip::metrics::predict_all(&ck.model, &frames)?;
            let m = pilip::metrics::compute(&frames, &preds);
            if let Some(p) = plot {
                pilip::plot::parity_png(&p, &frames, &preds)?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&m).map_err(|e| Error::invalid(e.to_string()))?);
            } else {
                println!("{}: {} structures", data.display(), m.n_structures);
                println!("{}", m.summary());
                if let (Some(a), Some(b)) = (m.energy_mae_mev, m.energy_rmse_mev) {
                    println!("E MAE {a:.2} RMSE {b:.2} meV/structure");
                }
            }
            Ok(())
        }
        Cmd::CheckForces { model, structure, index, step } => {
            let ck = Checkpoint::load(&model)?;
            let frame = structure_at(&structure, index)?;
            let r = pilip::check::finite_difference(&ck.model, &frame, step)?;
            println!("{r}");
            Ok(())
        }
        Cmd::Bench { model, structure, index, repeats } => {
            let ck = Checkpoint::load(&model)?;
            let frame = structure_at(&structure, index)?;
            let t = pilip::check::time_evaluation(&ck.model, &frame, repeats.max(1))?;
            println!("{t}");
            Ok(())
        }
    }
}
