//! `pilip train`: the training loop (mini-batches, data parallelism over structures, validation, schedules,
//! early stopping, atomic checkpoints, exact resume).

pub mod checkpoint;
pub mod loss;
pub mod optim;

use crate::config::Config;
use crate::dataset;
use crate::error::{Error, Result};
use crate::frame::Frame;
use crate::metrics::{self, Metrics};
use crate::model::Model;
use crate::rng::Rng;
use checkpoint::{Checkpoint, TrainState};
use loss::{Normalizers, Weights, TERMS};
use optim::{Adam, Schedule};
use rayon::prelude::*;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct TrainOptions {
    /// Continue from this checkpoint (`RUN/checkpoints/last.ckpt`).
    pub resume: Option<PathBuf>,
    /// Stop (resumably) after this many epochs in this invocation, e.g. to fit a job's time limit.
    pub stop_after: Option<usize>,
    /// No progress bar and no per-epoch lines on stdout (the log files are still written).
    pub quiet: bool,
}

#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub epochs_done: usize,
    pub best_epoch: usize,
    pub best_metric: f64,
    pub valid: Metrics,
    pub test: Option<Metrics>,
    pub finished: bool,
}

/// Builds a model for the training data: species, reference energies, descriptor statistics, energy scale.
pub fn initial_model(cfg: &Config, train: &[Frame], all: &[&Frame]) -> Result<Model> {
    let mut species: Vec<u32> = all.iter().flat_map(|f| f.numbers.iter().copied()).collect();
    species.sort_unstable();
    species.dedup();
    let mut model = Model::new(cfg.descriptor.clone(), species, &cfg.model.hidden, cfg.training.seed);
    let refs: Vec<&Frame> = train.iter().collect();
    model.fit_reference_energies(&refs)?;
    let sample: Vec<&Frame> = train.iter().take(500).collect();
    let envs: Vec<_> = sample.par_iter().map(|f| model.frame_environments(f)).collect::<Result<_>>()?;
    model.fit_feature_statistics(&envs, cfg.model.feature_std_floor);
    model.energy_scale = if cfg.model.energy_scale > 0.0 {
        cfg.model.energy_scale
    } else {
        auto_energy_scale(&model, train)
    };
    Ok(model)
}

/// RMS of the reference force components if there are any, else the spread of per-atom energies.
fn auto_energy_scale(model: &Model, train: &[Frame]) -> f64 {
    let (mut s, mut n) = (0.0, 0usize);
    for f in train {
        if let Some(fr) = &f.forces {
            for x in fr.iter().flatten() {
                s += x * x;
                n += 1;
            }
        }
    }
    if n > 0 {
        return (s / n as f64).sqrt().max(1e-3);
    }
    let resid: Vec<f64> = train
        .iter()
        .filter_map(|f| {
            let e0: f64 = f.numbers.iter().filter_map(|z| model.species_index(*z)).map(|s| model.reference_energies[s]).sum();
            f.energy.map(|e| (e - e0) / (f.len() as f64).sqrt())
        })
        .collect();
    let m = resid.iter().sum::<f64>() / resid.len().max(1) as f64;
    (resid.iter().map(|r| (r - m) * (r - m)).sum::<f64>() / resid.len().max(1) as f64).sqrt().max(1e-3)
}

/// Loss terms and parameter gradient of one mini-batch. Per-structure gradients are summed in batch order,
/// so the result does not depend on the number of threads.
pub fn batch_loss_and_grad(
    model: &Model,
    frames: &[&Frame],
    ids: &[usize],
    cfg: &Config,
    w: &Weights,
    step: u64,
    with_grad: bool,
) -> Result<([f64; 6], Vec<f64>)> {
    let norm = Normalizers::of(frames);
    let np = model.n_params();
    let parts: Vec<([f64; 6], Vec<f64>)> = frames
        .par_iter()
        .zip(ids.par_iter())
        .map(|(f, &id)| {
            let mut rng = Rng::derive(cfg.training.seed ^ 0x9157_1c0f, step, id as u64);
            let mut g = if with_grad { vec![0.0; np] } else { Vec::new() };
            let l = loss::structure_loss_and_grad(model, f, &cfg.loss, w, &norm, &mut rng, with_grad.then_some(&mut g[..]))?;
            Ok((l, g))
        })
        .collect::<Result<_>>()?;
    let mut total = [0.0; 6];
    let mut grad = if with_grad { vec![0.0; np] } else { Vec::new() };
    for (l, g) in parts {
        for k in 0..6 {
            total[k] += l[k];
        }
        for (a, b) in grad.iter_mut().zip(&g) {
            *a += b;
        }
    }
    Ok((total, grad))
}

fn metric_value(name: &str, m: &Metrics, val_loss: f64) -> Option<f64> {
    match name {
        "val_loss" => Some(val_loss),
        "val_energy_rmse" => m.energy_rmse_mev_per_atom,
        "val_forces_rmse" => m.forces_rmse_mev_per_A,
        "val_stress_rmse" => m.stress_rmse_mev_per_A3,
        _ => None,
    }
}

/// The validation loss: the labelled terms with the training weights (eV units), no random terms.
fn validation_loss(cfg: &Config, m: &Metrics) -> f64 {
    let sq = |x: Option<f64>| x.map(|v| (v / 1000.0).powi(2)).unwrap_or(0.0);
    cfg.loss.energy_weight * sq(m.energy_rmse_mev_per_atom)
        + cfg.loss.forces_weight * sq(m.forces_rmse_mev_per_A)
        + cfg.loss.stress_weight * sq(m.stress_rmse_mev_per_A3)
}

/// Human-readable list of the config keys that differ.
fn config_diff(a: &Config, b: &Config) -> Vec<String> {
    fn walk(prefix: &str, x: &toml::Value, y: &toml::Value, out: &mut Vec<String>) {
        match (x, y) {
            (toml::Value::Table(tx), toml::Value::Table(ty)) => {
                let mut keys: Vec<&String> = tx.keys().chain(ty.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    match (tx.get(k), ty.get(k)) {
                        (Some(vx), Some(vy)) => walk(&p, vx, vy, out),
                        (vx, vy) => out.push(format!("{p}: {vx:?} → {vy:?}")),
                    }
                }
            }
            _ if x != y => out.push(format!("{prefix}: {x} → {y}")),
            _ => {}
        }
    }
    let to = |c: &Config| toml::Value::try_from(c).unwrap_or(toml::Value::Boolean(false));
    let mut out = Vec::new();
    walk("", &to(a), &to(b), &mut out);
    out
}

struct RunFiles {
    log: std::fs::File,
    metrics: std::fs::File,
}

fn open_run_files(dir: &Path, epochs_done: Option<usize>) -> Result<RunFiles> {
    let mp = dir.join("metrics.jsonl");
    if let Some(done) = epochs_done {
        // Drop lines of epochs after the checkpoint (written before an interruption).
        let text = std::fs::read_to_string(&mp).unwrap_or_default();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()))
                    .is_some_and(|e| (e as usize) <= done)
            })
            .collect();
        let body = if kept.is_empty() { String::new() } else { kept.join("\n") + "\n" };
        std::fs::write(&mp, body).map_err(|e| Error::io(&mp, e))?;
    }
    let open = |p: PathBuf, append: bool| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(append)
            .write(true)
            .truncate(!append)
            .open(&p)
            .map_err(|e| Error::io(p, e))
    };
    let resume = epochs_done.is_some();
    Ok(RunFiles { log: open(dir.join("train.log"), resume)?, metrics: open(mp, resume)? })
}

/// Trains a model as configured. Writes `RUN_DIR/{config.resolved.toml, train.log, metrics.jsonl,
/// split.json, checkpoints/{best,last}.ckpt}`.
pub fn train(cfg: &Config, opts: &TrainOptions) -> Result<TrainSummary> {
    let threads = if cfg.training.threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { cfg.training.threads };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::invalid(format!("thread pool: {e}")))?;
    pool.install(|| train_in_pool(cfg, opts))
}

fn train_in_pool(cfg: &Config, opts: &TrainOptions) -> Result<TrainSummary> {
    let run_dir = cfg.output.run_dir.clone();
    let ckpt_dir = run_dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir).map_err(|e| Error::io(&ckpt_dir, e))?;
    let last_path = ckpt_dir.join("last.ckpt");
    let best_path = ckpt_dir.join("best.ckpt");

    let resumed = match &opts.resume {
        Some(p) => {
            let ck = Checkpoint::load(p)?;
            let diff = config_diff(&ck.config, cfg);
            if !diff.is_empty() {
                return Err(Error::Config(format!(
                    "refusing to resume from {}: the config differs from the checkpoint's:\n  {}\n\
                     (resume continues the same run; start a new run_dir to change settings)",
                    p.display(),
                    diff.join("\n  ")
                )));
            }
            let st = ck.state.clone().ok_or_else(|| {
                Error::invalid(format!("{}: has no training state (is it a best.ckpt? resume from last.ckpt)", p.display()))
            })?;
            Some((ck.model, st))
        }
        None => {
            if last_path.exists() {
                return Err(Error::Config(format!(
                    "{} already holds a run; continue it with --resume {} or choose another output.run_dir",
                    run_dir.display(),
                    last_path.display()
                )));
            }
            None
        }
    };
    let cfg_path = run_dir.join("config.resolved.toml");
    std::fs::write(&cfg_path, cfg.to_toml()).map_err(|e| Error::io(&cfg_path, e))?;

    let splits = dataset::load(&cfg.data)?;
    let split_path = run_dir.join("split.json");
    let split_json = serde_json::json!({"file": cfg.data.file, "train": splits.train_idx, "valid": splits.valid_idx, "test": splits.test_idx});
    std::fs::write(&split_path, split_json.to_string()).map_err(|e| Error::io(&split_path, e))?;
    if !splits.test.is_empty() {
        crate::io::extxyz::write_file(&run_dir.join("test.extxyz"), &splits.test, &cfg.data.keys)?;
    }
    let has = |frames: &[Frame], p: &dyn Fn(&Frame) -> bool| frames.iter().any(p);
    let metric = cfg.training.early_stopping_metric.as_str();
    let needs = match metric {
        "val_forces_rmse" => Some(("forces", has(&splits.valid, &|f| f.forces.is_some()))),
        "val_stress_rmse" => Some(("stress", has(&splits.valid, &|f| f.stress.is_some()))),
        "val_energy_rmse" => Some(("energies", has(&splits.valid, &|f| f.energy.is_some()))),
        _ => None,
    };
    if let Some((what, false)) = needs {
        return Err(Error::Config(format!("training.early_stopping_metric = \"{metric}\" but the validation set has no {what}")));
    }

    let (mut model, mut st) = match resumed {
        Some((m, s)) => (m, s),
        None => {
            let all: Vec<&Frame> = splits.train.iter().chain(&splits.valid).chain(&splits.test).collect();
            let model = initial_model(cfg, &splits.train, &all)?;
            let t = &cfg.training;
            let st = TrainState {
                epochs_done: 0,
                step: 0,
                optimizer: Adam::new(model.n_params(), t.optimizer == "adamw", t.weight_decay),
                schedule: Schedule::new(&t.schedule, t.lr, t.lr_min, t.plateau_patience, t.plateau_factor, t.max_epochs),
                ema: (t.ema_decay > 0.0).then(|| model.params()),
                best_metric: f64::INFINITY,
                best_epoch: 0,
                bad_epochs: 0,
                finished: false,
            };
            (model, st)
        }
    };
    let mut files = open_run_files(&run_dir, opts.resume.as_ref().map(|_| st.epochs_done))?;
    let log = |files: &mut RunFiles, line: &str, quiet: bool| {
        if !quiet {
            println!("{line}");
        }
        let _ = writeln!(files.log, "{line}");
    };
    if opts.resume.is_none() {
        let species: Vec<&str> = model.species.iter().map(|z| crate::elements::symbol(*z).unwrap_or("?")).collect();
        let head = format!(
            "pilip {} | train {} valid {} test {} structures | species {:?} | {} descriptor features | {} parameters | energy scale {:.4} eV | {} threads",
            env!("CARGO_PKG_VERSION"),
            splits.train.len(),
            splits.valid.len(),
            splits.test.len(),
            species,
            model.descriptor().n_features(),
            model.n_params(),
            model.energy_scale,
            rayon::current_num_threads()
        );
        log(&mut files, &head, opts.quiet);
    } else {
        log(&mut files, &format!("resumed after epoch {} from {}", st.epochs_done, opts.resume.as_ref().map(|p| p.display().to_string()).unwrap_or_default()), opts.quiet);
    }

    let t = &cfg.training;
    let bs = t.batch_size.min(splits.train.len()).max(1);
    let n_batches = splits.train.len().div_ceil(bs);
    let progress = !opts.quiet && std::io::stderr().is_terminal();
    let mut last_valid = Metrics::default();
    let mut epochs_this_run = 0;
    while !st.finished && st.epochs_done < t.max_epochs {
        let epoch = st.epochs_done;
        let t0 = std::time::Instant::now();
        let w = Weights::at_epoch(&cfg.loss, epoch);
        let mut order: Vec<usize> = (0..splits.train.len()).collect();
        Rng::derive(t.seed, epoch as u64, 0x5_4ff1e).shuffle(&mut order);
        let mut sums = [0.0; 6];
        let mut params = model.params();
        for (b, ids) in order.chunks(bs).enumerate() {
            let frames: Vec<&Frame> = ids.iter().map(|&i| &splits.train[i]).collect();
            let (l, mut g) = batch_loss_and_grad(&model, &frames, ids, cfg, &w, st.step, true)?;
            let total: f64 = l.iter().sum();
            if !total.is_finite() {
                return Err(Error::invalid(format!(
                    "training diverged (non-finite loss) at epoch {} batch {b}; lower training.lr (now {:.2e}) or the loss weights; \
                     the last good state is in {}",
                    epoch + 1,
                    st.schedule.lr,
                    last_path.display()
                )));
            }
            for k in 0..6 {
                sums[k] += l[k];
            }
            optim::clip_grad_norm(&mut g, t.clip_grad_norm);
            st.optimizer.step(&mut params, &g, st.schedule.lr);
            model.set_params(&params);
            if let Some(e) = st.ema.as_mut() {
                optim::ema_update(e, &params, t.ema_decay);
            }
            st.step += 1;
            if progress {
                let done = (b + 1) * 30 / n_batches;
                eprint!("\repoch {:>4} [{}{}] {}/{} batches", epoch + 1, "#".repeat(done), ".".repeat(30 - done), b + 1, n_batches);
                let _ = std::io::stderr().flush();
            }
        }
        if progress {
            eprint!("\r{}\r", " ".repeat(70));
        }
        // validation with the EMA weights if enabled
        let eval_model = match &st.ema {
            Some(e) => {
                let mut m = model.clone();
                m.set_params(e);
                m
            }
            None => model.clone(),
        };
        let preds = metrics::predict_all(&eval_model, &splits.valid)?;
        let vm = metrics::compute(&splits.valid, &preds);
        let val_loss = validation_loss(cfg, &vm);
        let mval = metric_value(metric, &vm, val_loss).unwrap_or(f64::INFINITY);
        let lr_used = st.schedule.lr;
        st.schedule.end_epoch(epoch, mval);
        st.epochs_done += 1;
        let improved = mval < st.best_metric - t.min_delta;
        if improved {
            st.best_metric = mval;
            st.best_epoch = st.epochs_done;
            st.bad_epochs = 0;
            Checkpoint::new(cfg, &eval_model, None).save(&best_path)?;
        } else {
            st.bad_epochs += 1;
        }
        if st.bad_epochs > t.patience || st.epochs_done >= t.max_epochs {
            st.finished = true;
        }
        let nb = n_batches as f64;
        let train_terms: serde_json::Map<String, serde_json::Value> =
            TERMS.iter().zip(sums).map(|(k, v)| (k.to_string(), serde_json::json!(v / nb))).collect();
        let line = serde_json::json!({
            "epoch": st.epochs_done, "lr": lr_used, "train": train_terms,
            "train_loss": sums.iter().sum::<f64>() / nb, "val": vm, "val_loss": val_loss,
            "metric": metric, "metric_value": mval, "best_epoch": st.best_epoch,
            "time_s": t0.elapsed().as_secs_f64(),
        });
        let _ = writeln!(files.metrics, "{line}");
        let terms: Vec<String> = TERMS
            .iter()
            .zip(sums)
            .filter(|(_, v)| *v != 0.0)
            .map(|(k, v)| format!("{k} {:.3e}", v / nb))
            .collect();
        let text = format!(
            "epoch {:>4} | lr {:.2e} | train {} | val {} | {} {:.4}{} | {:.1} s",
            st.epochs_done,
            lr_used,
            terms.join(" "),
            vm.summary(),
            metric,
            mval,
            if improved { " *" } else { "" },
            t0.elapsed().as_secs_f64()
        );
        log(&mut files, &text, opts.quiet);
        Checkpoint::new(cfg, &model, Some(st.clone())).save(&last_path)?;
        last_valid = vm;
        epochs_this_run += 1;
        if opts.stop_after.is_some_and(|n| epochs_this_run >= n) && !st.finished {
            log(&mut files, &format!("stopped after {} epochs in this run; continue with --resume {}", epochs_this_run, last_path.display()), opts.quiet);
            break;
        }
    }
    let mut test = None;
    if st.finished {
        let best = if best_path.exists() { Checkpoint::load(&best_path)?.model } else { model.clone() };
        let vp = metrics::predict_all(&best, &splits.valid)?;
        last_valid = metrics::compute(&splits.valid, &vp);
        if !splits.test.is_empty() {
            let tp = metrics::predict_all(&best, &splits.test)?;
            let tm = metrics::compute(&splits.test, &tp);
            log(&mut files, &format!("best epoch {} | test ({} structures): {}", st.best_epoch, splits.test.len(), tm.summary()), opts.quiet);
            let p = run_dir.join("test_metrics.json");
            std::fs::write(&p, serde_json::to_string_pretty(&tm).unwrap_or_default()).map_err(|e| Error::io(&p, e))?;
            test = Some(tm);
        }
    }
    Ok(TrainSummary {
        run_dir,
        epochs_done: st.epochs_done,
        best_epoch: st.best_epoch,
        best_metric: st.best_metric,
        valid: last_valid,
        test,
        finished: st.finished,
    })
}
