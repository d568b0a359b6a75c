//! `pilip train`: the training loop (mini-batches, data parallelism over structures, validation, schedules,
//! early stopping, atomic checkpoints, exact resume).
//!
//! A run is: set up the run directory ([`RunDir`]), start or resume ([`start_or_resume`]), then epochs
//! ([`run_epoch`]) each followed by validation ([`validate`]), the budget's check ([`budget`]) and, at most
//! every minute, the checkpoints ([`RunDir::save_checkpoints`]), and at the end the test metrics of the best
//! model ([`finish`]).

pub mod budget;
pub mod checkpoint;
pub mod curvature;
pub mod env_cache;
pub mod loss;
pub mod muon;
pub mod optim;
pub mod precondition;

use crate::model::domain_guard::MIN_ATOMS_PER_DIRECTION;
use crate::io::write_atomically;
use crate::config::{Config, LossConfig, Optimizer, Precision, RepulsionKind, StoppingMetric, TrainingConfig};
use crate::dataset::{self, Splits};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::frame::{Frame, Vec3};
use crate::metrics::{self, Metrics};
use crate::model::{Environments, ForwardCache, LayerWeights, Model};
use crate::prediction::Prediction;
use crate::repulsion::Repulsion;
use crate::rng::Rng;
use budget::{epochs_within_budget, Budget, Rehearsal};
use env_cache::{Env, EnvCache};
use checkpoint::{Checkpoint, TrainState};
use loss::{LossTerms, Normalizers, Weights};
use optim::Schedule;
use precondition::FirstLayerPreconditioner;
use rayon::prelude::*;
use std::io::Write;
use std::sync::Arc;
use std::path::{Path, PathBuf};

/// How `pilip train` runs, besides the config.
#[derive(Clone, Default)]
pub struct TrainOptions {
    /// Continue from this checkpoint (`RUN/checkpoints/last.ckpt`).
    pub resume: Option<PathBuf>,
    /// Stop (resumably) after this many epochs in this invocation, e.g. to fit a job's time limit.
    pub stop_after: Option<usize>,
    /// No progress and no log lines at all (the log files are still written).
    pub quiet: bool,
    /// Where progress and log lines go unless `quiet`; `None`: log lines on stdout, no progress display.
    pub progress: Option<Arc<dyn Progress>>,
}

impl std::fmt::Debug for TrainOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrainOptions")
            .field("resume", &self.resume)
            .field("stop_after", &self.stop_after)
            .field("quiet", &self.quiet)
            .field("progress", &self.progress.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// Receives what training reports besides `train.log`. The library draws nothing itself: the `pilip` binary
/// shows a progress bar (indicatif) through this, other front ends can do their own.
pub trait Progress: Send + Sync {
    /// A line of the training log (run summary, one line per epoch, resume notes, the test result).
    fn line(&self, text: &str) {
        println!("{text}");
    }
    /// Training will run epochs `first_epoch..max_epochs` (0-based; fewer if it stops early) of `batches`
    /// mini-batches each.
    fn start(&self, _first_epoch: usize, _max_epochs: usize, _batches: usize) {}
    /// One mini-batch of epoch `epoch` (0-based) is done.
    fn batch(&self, _epoch: usize) {}
    /// Training returns (finished, stopped or failed).
    fn end(&self) {}
}

/// Log lines on stdout, no progress display.
struct PrintLines;
impl Progress for PrintLines {}

/// Tells the sink that training returned, also when it returns an error.
struct EndOnDrop(Option<Arc<dyn Progress>>);
impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if let Some(sink) = &self.0 {
            sink.end();
        }
    }
}

/// What a (possibly partial) run achieved.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Epochs completed so far.
    pub epochs_done: usize,
    /// Epoch of `best.ckpt`.
    pub best_epoch: usize,
    /// The early-stopping metric of `best.ckpt`.
    pub best_metric: f64,
    /// Validation metrics (of the best model once finished, else of the last epoch).
    pub valid: Metrics,
    /// Test metrics of the best model, once finished and if there is a test set.
    pub test: Option<Metrics>,
    /// True once early stopping or `max_epochs` ended the run.
    pub finished: bool,
}

/// Where a run's model starts besides the data: fresh, from a checkpoint to fine-tune (`model.init`), or from a
/// base to train a correction beside (`model.base`, Δ-learning).
#[derive(Clone, Debug)]
enum Origin {
    /// A new model fitted to the training data.
    Fresh,
    /// The `model.init` checkpoint's model, trained further: all of it, or (`model.frozen_layers`) per parameter
    /// as marked.
    FineTune(Model, Option<Vec<bool>>),
    /// The `model.base` checkpoint's model with correction networks beside it, and per parameter whether it is
    /// the correction's (trained) rather than the base's (frozen).
    Delta(Model, Vec<bool>),
}

impl Origin {
    /// The origin the config names, with its checkpoint read (and, for Δ-learning, the correction networks put
    /// beside the base's); also that checkpoint's config.
    fn load(cfg: &Config) -> Result<(Self, Option<Config>)> {
        let Some(path) = origin_path(cfg) else { return Ok((Origin::Fresh, None)) };
        let (model, config) = if is_exported(path) {
            let model = model_from_onnx(path)?;
            let config = config_of_exported(&model, cfg);
            (model, config)
        } else {
            let ck = Checkpoint::load(path)?;
            (ck.model, ck.config)
        };
        let origin = if cfg.model.init.is_some() {
            let mut model = model;
            let trainable = match cfg.model.frozen_layers {
                0 => None,
                k => Some(model.freeze_first_layers(k)?),
            };
            Origin::FineTune(model, trainable)
        } else {
            let (model, trainable) = Model::with_correction(model, &cfg.model.hidden, cfg.training.seed)?;
            Origin::Delta(model, trainable)
        };
        Ok((origin, Some(config)))
    }

    /// Per parameter of the run's model, whether training may change it (`None`: all may).
    fn trainable(&self) -> Option<Vec<bool>> {
        match self {
            Origin::Delta(_, trainable) | Origin::FineTune(_, Some(trainable)) => Some(trainable.clone()),
            _ => None,
        }
    }
}

/// The `model.init` or `model.base` file, if any.
fn origin_path(cfg: &Config) -> Option<&PathBuf> {
    cfg.model.init.as_ref().or(cfg.model.base.as_ref())
}

/// A `model.init` / `model.base` file ending in `.onnx` is an exported model, anything else a checkpoint.
fn is_exported(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// An exported model (`pilip export`) as a training-time model: the networks read out of its graph
/// (`onnx::networks`), species, reference energies, descriptor and four-body compression from its metadata. The
/// descriptor standardisation is folded into the first layers, so the model reads the raw descriptor (identity
/// statistics) until [`start_model`] fits statistics to the training data. An f32 file gives f32-rounded
/// weights.
pub fn model_from_onnx(path: &Path) -> Result<Model> {
    use crate::model::power_spectrum::PowerSpectrumModel;
    use crate::model::AtomicModel;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let source = path.display().to_string();
    let (proto, meta) = crate::onnx::decode::decode(&bytes, &source)?;
    let nets = crate::onnx::networks::read_networks(&proto, &meta)
        .map_err(|e| Error::model(format!("{source}: its networks cannot be read back for training ({e})")))?;
    // export writes one energy scale for every element; otherwise each goes into its last layer
    let scale = nets.first().map_or(1.0, |n| n.scale);
    let shared = nets.iter().all(|n| n.scale == scale);
    let networks = nets
        .iter()
        .map(|n| {
            let mut sizes = vec![n.layers[0].2];
            sizes.extend(n.layers.iter().map(|l| l.3));
            let last = n.layers.len() - 1;
            let mut params = Vec::new();
            for (k, (w, b, _, _)) in n.layers.iter().enumerate() {
                let f = if k == last && !shared { n.scale } else { 1.0 };
                params.extend(w.iter().chain(b).map(|x| x * f));
            }
            crate::nn::Mlp { sizes, params }
        })
        .collect();
    let ps = PowerSpectrumModel::from_networks(meta.descriptor.clone(), meta.bispectrum.clone(), &meta.species, networks)
        .map_err(|e| Error::model(format!("{source}: {e}")))?;
    let atomic = match meta.family {
        Family::PowerSpectrum => AtomicModel::PowerSpectrum(ps),
        Family::Bispectrum => AtomicModel::Bispectrum(ps),
    };
    let energy_scale = if shared { scale } else { 1.0 };
    let model = Model { species: meta.species, reference_energies: meta.reference_energies, energy_scale, atomic, repulsion: meta.repulsion };
    model.check()?;
    Ok(model)
}

/// What a checkpoint's config would say about the architecture of an exported `model` (descriptor, family,
/// four-body settings, hidden widths), on top of `cfg`.
fn config_of_exported(model: &Model, cfg: &Config) -> Config {
    use crate::model::AtomicModel;
    let mut c = cfg.clone();
    let (AtomicModel::PowerSpectrum(m) | AtomicModel::Bispectrum(m)) = &model.atomic;
    c.descriptor = m.descriptor.clone();
    if let Some(b) = &m.four_body {
        c.bispectrum = crate::descriptor::four_body::Bispectrum { compression: Vec::new(), ..b.clone() };
    }
    c.model.family = model.family();
    if let Some(net) = m.networks.first() {
        c.model.hidden = net.sizes[1..net.sizes.len() - 1].to_vec();
    }
    c
}

/// Builds a model for the training data: species, reference energies, input statistics, energy scale (or,
/// with `model.init` / `model.base`, the fine-tuning or Δ-learning start from that checkpoint).
pub fn initial_model(cfg: &Config, train: &[Frame], all: &[&Frame]) -> Result<Model> {
    start_model(cfg, Origin::load(cfg)?.0, train, all)
}

/// [`initial_model`] with the origin's checkpoint already loaded.
fn start_model(cfg: &Config, origin: Origin, train: &[Frame], all: &[&Frame]) -> Result<Model> {
    let trainable = origin.trainable();
    let mut model = match origin {
        Origin::Fresh => return fresh_model(cfg, train, all),
        Origin::FineTune(model, _) | Origin::Delta(model, _) => continued_model(model, cfg, train, all)?,
    };
    // An exported model reads the raw descriptor: fit statistics to this data, with the base's (or, fine-tuning,
    // every) hidden unit rewritten to compute what it did, so that new correction networks read standardised inputs.
    if origin_path(cfg).is_some_and(|p| is_exported(p)) {
        let envs = sample_environments(&model, train)?;
        model.restandardise(&envs, cfg.model.feature_std_floor, trainable.as_deref());
    }
    Ok(model)
}

/// The environments of (at most) the first 500 training structures under `model`: what input statistics and the
/// four-body compression are fitted to.
fn sample_environments(model: &Model, train: &[Frame]) -> Result<Vec<Environments>> {
    let sample: Vec<&Frame> = train.iter().take(500).collect();
    sample.par_iter().map(|f| model.frame_environments(f)).collect()
}

/// The atomic numbers in `frames`, sorted, each once.
fn species_of<'a>(frames: impl IntoIterator<Item = &'a Frame>) -> Vec<u32> {
    let mut species: Vec<u32> = frames.into_iter().flat_map(|f| f.numbers.iter().copied()).collect();
    species.sort_unstable();
    species.dedup();
    species
}

/// Element symbols of atomic numbers, for messages ("H, C, O").
fn element_names(species: &[u32]) -> String {
    species.iter().map(|&z| crate::elements::symbol(z).unwrap_or("?")).collect::<Vec<_>>().join(", ")
}

/// A new model fitted to the training data.
fn fresh_model(cfg: &Config, train: &[Frame], all: &[&Frame]) -> Result<Model> {
    let species = species_of(all.iter().copied());
    let mut model = match cfg.model.family {
        Family::PowerSpectrum => Model::power_spectrum(cfg.descriptor.clone(), species, &cfg.model.hidden, cfg.training.seed)?,
        Family::Bispectrum => {
            Model::bispectrum(cfg.descriptor.clone(), cfg.bispectrum.clone(), species, &cfg.model.hidden, cfg.training.seed)?
        }
    };
    let refs: Vec<&Frame> = train.iter().collect();
    model.repulsion = repulsion_for(cfg, &model, &refs)?;
    model.fit_reference_energies(&refs)?;
    let mut envs = sample_environments(&model, train)?;
    if model.family() == Family::Bispectrum {
        model.fit_compression(&envs);
        envs = sample_environments(&model, train)?;
    }
    model.fit_input_statistics(&envs, cfg.model.feature_std_floor, cfg.model.drop_features_below);
    model.energy_scale = if cfg.model.energy_scale > 0.0 {
        cfg.model.energy_scale
    } else {
        auto_energy_scale(&model, train)
    };
    Ok(model)
}

/// The starting model of a fine-tuning or Δ-learning run: a checkpoint's model (with correction networks for Δ)
/// whose reference energies are refitted to the training set (the data may come from another level of theory).
fn continued_model(mut model: Model, cfg: &Config, train: &[Frame], all: &[&Frame]) -> Result<Model> {
    // a guard belongs to the data it was fitted to; `finish` fits a new one if the config asks for it
    model.fit_domain_guard(&[], 0, 0, 1.0, 0.0)?;
    let mut missing = species_of(all.iter().copied());
    missing.retain(|&z| model.species_index(z).is_none());
    if !missing.is_empty() {
        let key = if cfg.model.init.is_some() { "model.init" } else { "model.base" };
        let path = cfg.model.init.as_ref().or(cfg.model.base.as_ref()).map(|p| p.display().to_string()).unwrap_or_default();
        return Err(Error::Config(format!("{key}: {path} knows {}, but the data also has {}", element_names(&model.species), element_names(&missing))));
    }
    let refs: Vec<&Frame> = train.iter().collect();
    if model.repulsion.is_none() {
        model.repulsion = repulsion_for(cfg, &model, &refs)?;
    }
    model.refit_reference_energies(&refs)?;
    Ok(model)
}

/// The repulsive prior `[repulsion]` asks for, fitted to the training structures.
fn repulsion_for(cfg: &Config, model: &Model, train: &[&Frame]) -> Result<Option<Repulsion>> {
    let r = &cfg.repulsion;
    match r.kind {
        RepulsionKind::None => Ok(None),
        RepulsionKind::Zbl => Ok(Some(Repulsion::fit(&model.species, train, model.cutoff(), r.outer, r.inner)?)),
    }
}

/// With `model.init` or `model.base` the descriptor (and, for `model.init`, the networks' widths) is the
/// checkpoint's: the config is completed from it, so that `config.resolved.toml`, the checkpoints and the resume
/// check say what is trained. A Δ run's `model.hidden` stays the correction's.
fn with_origin_architecture(cfg: &Config, origin: &Origin, origin_config: Option<&Config>) -> Config {
    let mut resolved = cfg.clone();
    let Some(from) = origin_config else { return resolved };
    resolved.descriptor = from.descriptor.clone();
    resolved.bispectrum = from.bispectrum.clone();
    resolved.bispectrum.trained_fraction = cfg.bispectrum.trained_fraction; // a setting of this run
    resolved.model.family = from.model.family;
    match origin {
        Origin::FineTune(model, _) => {
            resolved.model.hidden = from.model.hidden.clone();
            // frozen layers freeze the compression, which feeds the first layer; a compression that its run
            // stopped training (`bispectrum.trained_fraction`) stays kept
            if model.family() == Family::Bispectrum {
                resolved.bispectrum.trainable &= model.has_trained_descriptor();
            }
        }
        Origin::Delta(..) => resolved.bispectrum.trainable = false,
        Origin::Fresh => {}
    }
    resolved
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

/// Loss terms and parameter gradient of one mini-batch. The batch is cut into [`SUB_BATCHES`] runs of
/// consecutive structures that are predicted together and go to the model's gradient together (the networks
/// then run on a run's atoms of each element at once), the runs side by side on the pool's threads; the loss
/// terms are formed structure by structure, and the batch-level ensemble identities over the whole batch. Every
/// sum has a fixed order, so the result does not depend on the number of threads. `seed` is `training.seed`;
/// `step` and the structures' `ids` select the random displacements of the PIWSL terms.
/// `cache`, if given, supplies (and keeps) the structures' environments, indexed by `ids` ([`EnvCache`]).
#[allow(clippy::too_many_arguments)]
pub fn batch_loss_and_grad(
    model: &Model,
    frames: &[&Frame],
    ids: &[usize],
    loss_cfg: &LossConfig,
    seed: u64,
    w: &Weights,
    step: u64,
    with_grad: bool,
    cache: Option<&EnvCache>,
) -> Result<(LossTerms, Vec<f64>)> {
    let none = EnvCache::new(0);
    let cache = cache.unwrap_or(&none);
    let norm = Normalizers::of(frames);
    let envs: Vec<Env> = cache.take(model, ids, frames)?;
    let env_refs: Vec<&Environments> = envs.iter().map(|e| &**e).collect();
    let runs = sub_batches(frames.len());
    let predicted: Vec<(Option<ForwardCache>, Vec<loss::StructureLoss>)> = runs
        .par_iter()
        .map(|r| {
            let envs = &env_refs[r.clone()];
            let (preds, forward) = if loss::needs_forces(w) {
                let (preds, forward) = model.predict_batch_keeping(envs);
                (preds, Some(forward))
            } else {
                // energy-only losses: no input gradients, no descriptor VJP
                (model.energies_batch(envs).into_iter().map(|energy| Prediction { energy, ..Default::default() }).collect(), None)
            };
            let parts = (&frames[r.clone()], &ids[r.clone()], envs, &preds)
                .into_par_iter()
                .map(|(f, &id, &env, pred)| {
                    let mut rng = Rng::derive(seed ^ 0x9157_1c0f, step, id as u64);
                    loss::structure_loss(model, f, env, pred, loss_cfg, w, &norm, &mut rng)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((forward, parts))
        })
        .collect::<Result<_>>()?;
    let (forwards, parts): (Vec<_>, Vec<_>) = predicted.into_iter().unzip();
    let mut parts: Vec<loss::StructureLoss> = parts.into_iter().flatten().collect();
    let mut total = loss::ensemble_identities(&mut parts, w);
    for p in &parts {
        total.add(&p.terms);
    }
    if !with_grad {
        return Ok((total, Vec::new()));
    }
    let run_grad = |(r, forward): (&std::ops::Range<usize>, &Option<ForwardCache>)| {
        let mut grad = vec![0.0; model.n_params()];
        let primitives: Vec<_> = parts[r.clone()].iter().zip(&env_refs[r.clone()]).flat_map(|(p, &env)| p.primitives(env)).collect();
        match forward {
            Some(f) => model.accumulate_param_grad_after(&primitives, &mut grad, f),
            None => model.accumulate_param_grad(&primitives, &mut grad),
        }
        grad
    };
    let mut grads = runs.par_iter().zip(&forwards).map(run_grad).collect::<Vec<_>>().into_iter();
    let mut grad = grads.next().unwrap_or_else(|| vec![0.0; model.n_params()]);
    for g in grads {
        grad.par_chunks_mut(optim::ELEMENTWISE_CHUNK).zip(g.par_chunks(optim::ELEMENTWISE_CHUNK)).for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
    }
    Ok((total, grad))
}

/// Runs of consecutive structures a batch is cut into ([`batch_loss_and_grad`]). Two runs side by side keep both
/// threads of a two-core machine busy through a step with one join per pass instead of one per stage (network
/// pass, descriptor VJP, loss terms, JVP, gradient pieces), each of which left a thread waiting: ethanol's and
/// naphthalene's epochs took 3–8 % less time on two cores, uracil's the same (four runs were slower: the
/// networks then see few atoms at a time). Fixed, so that the sums do not depend on the number of threads; on
/// more cores the passes inside each run still share the threads.
const SUB_BATCHES: usize = 2;

/// The runs of a batch of `n` structures: [`SUB_BATCHES`] near-equal ranges (fewer when `n` is smaller).
fn sub_batches(n: usize) -> Vec<std::ops::Range<usize>> {
    let runs = SUB_BATCHES.clamp(1, n.max(1));
    (0..runs).map(|k| n * k / runs..n * (k + 1) / runs).collect()
}

fn metric_value(metric: StoppingMetric, m: &Metrics, val_loss: f64) -> f64 {
    match metric {
        StoppingMetric::ValLoss => Some(val_loss),
        StoppingMetric::ValEnergyRmse => m.energy_rmse_mev_per_atom,
        StoppingMetric::ValForcesRmse => m.forces_rmse_mev_per_A,
        StoppingMetric::ValStressRmse => m.stress_rmse_mev_per_A3,
    }
    .unwrap_or(f64::INFINITY)
}

/// The validation loss: the labelled terms with the training weights (eV units), no random terms.
fn validation_loss(cfg: &LossConfig, m: &Metrics) -> f64 {
    let sq = |x: Option<f64>| x.map(|v| (v / 1000.0).powi(2)).unwrap_or(0.0);
    cfg.energy_weight * sq(m.energy_rmse_mev_per_atom)
        + cfg.forces_weight * sq(m.forces_rmse_mev_per_A)
        + cfg.stress_weight * sq(m.stress_rmse_mev_per_A3)
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

/// The run directory: its checkpoint paths and the two log files (`train.log`, `metrics.jsonl`).
struct RunDir {
    dir: PathBuf,
    last: PathBuf,
    best: PathBuf,
    log: std::fs::File,
    metrics: std::fs::File,
    /// Where log lines go besides `train.log` (none when quiet).
    sink: Option<Arc<dyn Progress>>,
    /// A better model than `best.ckpt` holds, not yet written.
    pending_best: Option<Model>,
    /// When the checkpoints were last written (`None`: not yet in this invocation).
    saved_at: Option<std::time::Instant>,
}

/// Seconds between checkpoint writes during a run (besides after an invocation's first epoch and at its end or
/// stop). A checkpoint of a four-element molecule's model is ~60 MB of JSON: written every epoch it cost 3–5 % of
/// the training time; a run killed between writes resumes at most this far back.
pub(crate) const CHECKPOINT_INTERVAL_S: f64 = 60.0;

impl RunDir {
    /// Creates `run_dir/checkpoints`; refuses to start over an existing run unless resuming.
    fn prepare(cfg: &Config, resuming: bool) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let dir = cfg.output.run_dir.clone();
        let ckpt_dir = dir.join("checkpoints");
        std::fs::create_dir_all(&ckpt_dir).map_err(|e| Error::io(&ckpt_dir, e))?;
        let (last, best) = (ckpt_dir.join("last.ckpt"), ckpt_dir.join("best.ckpt"));
        if !resuming && last.exists() {
            return Err(Error::Config(format!(
                "{} already holds a run; continue it with --resume {} or choose another output.run_dir",
                dir.display(),
                last.display()
            )));
        }
        Ok((dir, last, best))
    }

    /// Opens the log files; when resuming after epoch `epochs_done`, drops the lines of later epochs (written
    /// before an interruption) from `metrics.jsonl` and appends.
    fn open(dir: PathBuf, last: PathBuf, best: PathBuf, epochs_done: Option<usize>, sink: Option<Arc<dyn Progress>>) -> Result<Self> {
        let mp = dir.join("metrics.jsonl");
        if let Some(done) = epochs_done {
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
            // atomically: a kill during this rewrite must not lose the kept epochs
            write_atomically(&mp, body.as_bytes())?;
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
        let (log, metrics) = (open(dir.join("train.log"), resume)?, open(mp, resume)?);
        Ok(RunDir { log, metrics, dir, last, best, sink, pending_best: None, saved_at: None })
    }

    /// Writes `best.ckpt` (when a better model is waiting) and then `last.ckpt`, if `now`, after the first epoch
    /// of an invocation, or if [`CHECKPOINT_INTERVAL_S`] have passed since the last write: the two files always
    /// describe the same moment of the run.
    fn save_checkpoints(&mut self, cfg: &Config, model: &Model, st: &TrainState, now: bool) -> Result<()> {
        if !now && self.saved_at.is_some_and(|t| t.elapsed().as_secs_f64() < CHECKPOINT_INTERVAL_S) {
            return Ok(());
        }
        if let Some(best) = self.pending_best.take() {
            Checkpoint::new(cfg, &best, None).save(&self.best)?;
        }
        Checkpoint::new(cfg, model, Some(st.clone())).save(&self.last)?;
        self.saved_at = Some(std::time::Instant::now());
        Ok(())
    }

    /// A line to `train.log` and to the progress sink.
    fn log(&mut self, line: &str) {
        if let Some(sink) = &self.sink {
            sink.line(line);
        }
        let _ = writeln!(self.log, "{line}");
    }
}

/// What `pilip train` would train on, without training: loads the config's data, makes its split, and writes
/// `config.resolved.toml` and `split.json` (and `test.extxyz` when the split holds a test set) into `dir` — so
/// that a tool can prepare data for exactly the structures a run will train on (`scripts/train_xtb_prior.sh`).
/// The split is the one `train` makes from the same config.
pub fn write_split(cfg: &Config, dir: &Path) -> Result<Splits> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let splits = dataset::load(&cfg.data)?;
    write_inputs(dir, cfg, &splits)?;
    Ok(splits)
}

/// Writes `config.resolved.toml`, `split.json` and `test.extxyz` into the run directory.
fn write_inputs(dir: &Path, cfg: &Config, splits: &Splits) -> Result<()> {
    write_atomically(&dir.join("config.resolved.toml"), cfg.to_toml().as_bytes())?;
    let split_json = serde_json::json!({"file": cfg.data.file, "train": splits.train_idx, "valid": splits.valid_idx, "test": splits.test_idx});
    write_atomically(&dir.join("split.json"), split_json.to_string().as_bytes())?;
    if !splits.test.is_empty() {
        crate::io::extxyz::write_file(&dir.join("test.extxyz"), &splits.test, &cfg.data.keys)?;
    }
    Ok(())
}

/// `cfg` sized for its training structures, with a line for the log per change: `model.family` set to the power
/// spectrum when the structures hold more elements than `model.bispectrum_max_elements`, `training.max_epochs` and
/// `training.patience` raised by the factor that gives at least `training.min_steps` optimiser steps,
/// `training.weight_decay_atoms / n_atoms` added to `training.weight_decay` (`training.weight_decay_params` waits
/// for the model: [`with_decay_for_model`]), below `training.lr_small_sets_below_atoms` atoms `training.lr` set
/// to `training.lr_small_sets`, and below `training.precondition_tangents_min_atoms` atoms
/// `training.precondition_tangents` set to 0 and `training.precondition_variance` to
/// `training.precondition_variance_small_sets`, and below `training.muon_min_atoms` atoms `training.optimizer`
/// "muon" set to "adamw".
fn sized_for_training_set(cfg: &Config, train: &[Frame]) -> (Config, Vec<String>) {
    let mut out = cfg.clone();
    let mut notes = Vec::new();
    let m = &mut out.model;
    if m.family == Family::Bispectrum && m.bispectrum_max_elements > 0 && m.init.is_none() && m.base.is_none() {
        let species = species_of(train);
        if species.len() > m.bispectrum_max_elements {
            notes.push(format!(
                "model.bispectrum_max_elements = {}: the training structures hold {} elements ({}), so family \"bispectrum\" → \"power_spectrum\"",
                m.bispectrum_max_elements,
                species.len(),
                element_names(&species)
            ));
            m.family = Family::PowerSpectrum;
        }
    }
    let t = &mut out.training;
    let n_train = train.len();
    let batches = batches_per_epoch(n_train, t.batch_size).max(1);
    if t.min_steps > 0 && batches * t.max_epochs < t.min_steps && t.max_epochs > 0 {
        let epochs = t.min_steps.div_ceil(batches);
        let patience = t.patience * epochs / t.max_epochs;
        notes.push(format!(
            "training.min_steps = {}: {n_train} training structures make {batches} steps per epoch, so max_epochs {} → {epochs} and patience {} → {patience}",
            t.min_steps, t.max_epochs, t.patience
        ));
        (t.max_epochs, t.patience) = (epochs, patience);
    }
    let n_atoms = training_atoms(train);
    if t.weight_decay_atoms > 0.0 && n_atoms > 0 {
        let decay = t.weight_decay + t.weight_decay_atoms / n_atoms as f64;
        notes.push(format!(
            "training.weight_decay_atoms = {}: with {n_atoms} atoms in the training structures, weight_decay {} → {decay:.4}",
            t.weight_decay_atoms, t.weight_decay
        ));
        (t.weight_decay, t.weight_decay_atoms) = (decay, 0.0);
    }
    if t.lr_small_sets > 0.0 && t.lr_small_sets != t.lr && n_atoms < t.lr_small_sets_below_atoms {
        notes.push(format!(
            "training.lr_small_sets = {}: fewer than {} atoms in the training structures ({n_atoms}), so lr {} → {}",
            t.lr_small_sets, t.lr_small_sets_below_atoms, t.lr, t.lr_small_sets
        ));
        t.lr = t.lr_small_sets;
    }
    if t.optimizer == Optimizer::Muon && n_atoms < t.muon_min_atoms {
        notes.push(format!(
            "training.muon_min_atoms = {}: fewer atoms in the training structures ({n_atoms}), so optimizer \"muon\" → \"adamw\"",
            t.muon_min_atoms
        ));
        t.optimizer = Optimizer::AdamW;
    }
    // a small set: the inputs' covariance alone, and fewer directions (only where there is a preconditioner)
    if t.precondition_variance > 0.0 && n_atoms < t.precondition_tangents_min_atoms {
        if t.precondition_tangents > 0.0 {
            notes.push(format!(
                "training.precondition_tangents_min_atoms = {}: {n_atoms} atoms in the training structures, so precondition_tangents {} → 0 \
                 (the inputs' covariance alone)",
                t.precondition_tangents_min_atoms, t.precondition_tangents
            ));
            t.precondition_tangents = 0.0;
        }
        let small = t.precondition_variance_small_sets;
        if small > 0.0 && small != t.precondition_variance {
            notes.push(format!(
                "training.precondition_variance_small_sets = {small}: fewer than {} atoms in the training structures, so \
                 precondition_variance {} → {small}",
                t.precondition_tangents_min_atoms, t.precondition_variance
            ));
            t.precondition_variance = small;
        }
    }
    (out, notes)
}

/// Atoms in the training structures: the force loss is a mean over them, so a prior on the weights weighs
/// 1 / their number in it.
fn training_atoms(train: &[Frame]) -> usize {
    train.iter().map(Frame::len).sum()
}

/// `training.weight_decay_params × n_params / n_atoms` added to `training.weight_decay`, for a run that starts
/// with `n_params` trained parameters ([`trained_params`]) and `n_atoms` training atoms; the line for
/// the log, or None when the key is 0. The same for a fresh run and its resumption, so that their configs agree.
fn with_decay_for_model(t: &mut TrainingConfig, n_params: usize, n_atoms: usize) -> Option<String> {
    if t.weight_decay_params == 0.0 || n_atoms == 0 {
        return None;
    }
    let decay = t.weight_decay + t.weight_decay_params * n_params as f64 / n_atoms as f64;
    let note = format!(
        "training.weight_decay_params = {}: {n_params} trained parameters and {n_atoms} atoms in the training structures, weight_decay {} → {decay:.4}",
        t.weight_decay_params, t.weight_decay
    );
    (t.weight_decay, t.weight_decay_params) = (decay, 0.0);
    Some(note)
}

/// Parameters the run trains: those `trainable` marks, or all of `model`'s.
fn trained_params(model: &Model, trainable: Option<&[bool]>) -> usize {
    trainable.map_or(model.n_params(), |t| t.iter().filter(|&&x| x).count())
}

/// Trains a model as configured. Writes `RUN_DIR/{config.resolved.toml, train.log, metrics.jsonl,
/// split.json, test.extxyz, test_metrics.json, checkpoints/{best,last}.ckpt}`.
pub fn train(cfg: &Config, opts: &TrainOptions) -> Result<TrainSummary> {
    let threads = if cfg.training.threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { cfg.training.threads };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::invalid(format!("thread pool: {e}")))?;
    // The `model.init` / `model.base` checkpoint is read once: it completes the config, starts the model, and
    // anchors it (fine-tuning) or says which parameters are frozen (Δ-learning).
    let (origin, origin_config) = Origin::load(cfg)?;
    let cfg = with_origin_architecture(cfg, &origin, origin_config.as_ref());
    pool.install(|| train_in_pool(&cfg, origin, opts))
}

fn train_in_pool(cfg: &Config, origin: Origin, opts: &TrainOptions) -> Result<TrainSummary> {
    let started = std::time::Instant::now();
    let trainable = origin.trainable();
    let (dir, last, best) = RunDir::prepare(cfg, opts.resume.is_some())?;
    let splits = dataset::load(&cfg.data)?;
    let (mut resolved, mut size_notes) = sized_for_training_set(cfg, &splits.train);
    let resumed = match &opts.resume {
        Some(p) => Some(resume_from(&mut resolved, p, trainable.as_deref(), training_atoms(&splits.train))?),
        None => None,
    };
    check_stopping_metric(resolved.training.early_stopping_metric, &splits.valid)?;
    let anchored = matches!(origin, Origin::FineTune(..)) && resolved.loss.anchor_weight > 0.0;
    let resuming = resumed.is_some();
    let (mut model, mut st) = start_or_resume(&mut resolved, &splits, resumed, origin, trainable.as_deref(), &mut size_notes)?;
    model.set_training_precision(resolved.training.precision == Precision::F32);
    // A resumed run has moved away from its start, to which the anchor (fine-tuning) and the first-layer
    // preconditioner's network inputs belong: the start is built again, once, where either needs it (the
    // preconditioner only when a trained compression W has moved the inputs).
    let moved_inputs = resuming && (model.has_trained_descriptor() || st.frozen_compression_params > 0);
    let rebuilt_start = if resuming && (anchored || moved_inputs) {
        let all: Vec<&Frame> = splits.train.iter().chain(&splits.valid).chain(&splits.test).collect();
        let mut start = initial_model(cfg, &splits.train, &all)?;
        start.set_training_precision(resolved.training.precision == Precision::F32);
        Some(start)
    } else {
        None
    };
    let inputs_of = rebuilt_start.as_ref().filter(|_| moved_inputs).unwrap_or(&model);
    let precondition = first_layer_preconditioner(inputs_of, &resolved.training, &splits.train, trainable.as_deref())?;
    if let Some(p) = &precondition {
        size_notes.push(format!(
            "first-layer preconditioner: {:?} input directions per element scaled to variance {} (tangents' share {})",
            p.ranks(),
            resolved.training.precondition_variance,
            resolved.training.precondition_tangents
        ));
    }
    let mut env_cache = EnvCache::new(splits.train.len());
    let mut valid_cache = EnvCache::with_max_bytes(splits.valid.len(), env_cache::MAX_BYTES / 4);
    // The anchor is the start's parameters (for a resumed run the rebuilt start's: the checkpoint's, or an
    // exported model refitted to this data as at the start).
    let mut anchor = match (anchored, &rebuilt_start) {
        (false, _) => None,
        (true, None) => Some(model.params()),
        (true, Some(start)) => {
            let mut params = start.params();
            params.truncate(model.n_params()); // without a compression the run has stopped training
            Some(params)
        }
    };
    if trainable.as_ref().is_some_and(|t| t.len() != model.n_params()) {
        return Err(Error::Config(format!(
            "model.base / model.init: the checkpoint's networks do not match the run's ({} parameters); was the file replaced?",
            model.n_params()
        )));
    }
    // training.max_minutes: the epoch count that fits the budget, chosen before the first epoch (a resumed run
    // keeps its checkpoint's) and changed during the run if the epochs turn out slower or faster
    let cap_epochs = resolved.training.max_epochs;
    let (budget_note, test_reserve) = match (resuming, resolved.training.max_minutes > 0.0) {
        (false, true) => {
            let rehearsal = Rehearsal {
                model: &model,
                st: &st,
                splits: &splits,
                cfg: &resolved,
                anchor: anchor.as_deref(),
                trainable: trainable.as_deref(),
                precondition: precondition.as_ref(),
                last: &last,
                cache: &env_cache,
            };
            let (epochs, test, note) = epochs_within_budget(&rehearsal, started)?;
            resolved.training.max_epochs = epochs;
            st.schedule.max_epochs = epochs;
            (Some(note), test)
        }
        _ => (None, 0.0),
    };
    let mut budget = Budget::new(&resolved, started, st.budget.as_ref(), test_reserve, cap_epochs);
    let cfg = &resolved;
    write_inputs(&dir, cfg, &splits)?;
    let sink: Option<Arc<dyn Progress>> =
        if opts.quiet { None } else { Some(opts.progress.clone().unwrap_or_else(|| Arc::new(PrintLines))) };
    let _end = EndOnDrop(sink.clone());
    let mut run = RunDir::open(dir, last, best, opts.resume.as_ref().map(|_| st.epochs_done), sink.clone())?;
    match &opts.resume {
        None => {
            let species: Vec<&str> = model.species.iter().map(|z| crate::elements::symbol(*z).unwrap_or("?")).collect();
            let parameters = match &trainable {
                Some(t) => {
                    let why = if cfg.model.base.is_some() { "Δ-learning: the base is frozen" } else { "fine-tuning with model.frozen_layers" };
                    format!("{} parameters, {} trained ({why})", model.n_params(), trained_params(&model, Some(t)))
                }
                None => format!("{} parameters", model.n_params()),
            };
            run.log(&format!(
                "pilip {} | train {} valid {} test {} structures | species {:?} | {} descriptor features | {parameters} | energy scale {:.4} eV | {} threads",
                env!("CARGO_PKG_VERSION"),
                splits.train.len(),
                splits.valid.len(),
                splits.test.len(),
                species,
                model.n_features(),
                model.energy_scale,
                rayon::current_num_threads()
            ));
            for note in size_notes.iter().chain(&budget_note) {
                run.log(note);
            }
        }
        Some(p) => run.log(&format!("resumed after epoch {} from {}", st.epochs_done, p.display())),
    }

    if let Some(sink) = &sink {
        sink.start(st.epochs_done, cfg.training.max_epochs, batches_per_epoch(splits.train.len(), cfg.training.batch_size));
    }
    let mut last_valid = Metrics::default();
    let mut epochs_this_run = 0;
    let mut epoch_clock = std::time::Instant::now();
    while !st.finished && st.epochs_done < resolved.training.max_epochs {
        let cfg = &resolved;
        let t0 = std::time::Instant::now();
        let lr_used = st.schedule.lr;
        let sums = run_epoch(&mut model, &mut st, &splits.train, &env_cache, cfg, anchor.as_deref(), trainable.as_deref(), precondition.as_ref(), sink.as_deref(), &run.last)?;
        last_valid = validate(&model, &mut st, &splits, &valid_cache, cfg, &mut run, &sums, lr_used, t0)?;
        epochs_this_run += 1;
        if epochs_this_run == 1 && !env_cache.is_empty() {
            run.log(&format!(
                "kept the environments of {} of {} training structures for the next epochs ({:.0} MB)",
                env_cache.len(),
                splits.train.len(),
                env_cache.bytes() as f64 / 1e6
            ));
        }
        if let Some(b) = budget.as_mut() {
            b.record_epoch(epoch_clock.elapsed().as_secs_f64());
            epoch_clock = std::time::Instant::now();
            if let Some(epochs) = b.replan(st.epochs_done, resolved.training.max_epochs) {
                run.log(&format!(
                    "training.max_minutes = {}: epochs take {:.2} s now, so max_epochs {} → {epochs}",
                    resolved.training.max_minutes,
                    b.seconds_per_epoch(),
                    resolved.training.max_epochs
                ));
                resolved.training.max_epochs = epochs;
                st.schedule.set_horizon(epochs, st.epochs_done);
                st.finished |= st.epochs_done >= epochs;
                if let Some(sink) = &sink {
                    sink.start(st.epochs_done, epochs, batches_per_epoch(splits.train.len(), resolved.training.batch_size));
                }
            }
            st.budget = Some(b.state());
        }
        if let Some(line) = freeze_compression_when_due(&mut model, &mut st, &resolved, &mut anchor) {
            run.log(&line);
            if let Some(b) = budget.as_mut() {
                b.step_changed();
            }
            // the kept environments hold the invariants of an earlier W and no network inputs
            env_cache = EnvCache::new(splits.train.len());
            valid_cache = EnvCache::with_max_bytes(splits.valid.len(), env_cache::MAX_BYTES / 4);
        }
        let stopping = opts.stop_after.is_some_and(|n| epochs_this_run >= n) && !st.finished;
        run.save_checkpoints(&resolved, &model, &st, st.finished || stopping)?;
        if stopping {
            let line = format!("stopped after {} epochs in this run; continue with --resume {}", epochs_this_run, run.last.display());
            run.log(&line);
            break;
        }
    }
    let test = if st.finished { finish(&resolved, &model, &splits, &mut run, &st, &mut last_valid)? } else { None };
    Ok(TrainSummary {
        run_dir: run.dir,
        epochs_done: st.epochs_done,
        best_epoch: st.best_epoch,
        best_metric: st.best_metric,
        valid: last_valid,
        test,
        finished: st.finished,
    })
}

/// `bispectrum.trained_fraction`: once that share of the planned epochs is done, the compression W keeps its
/// present values for the rest of the run, which then takes the step of fixed four-body invariants (no density
/// tangents, no gradient to W, kept f32 network inputs): 0.55–0.75× the time of a step that trains W. W leaves
/// the parameter vector from its end, so the optimiser's moments, the EMA and a fine-tuning anchor are cut to the
/// networks'. The EMA's W is dropped, not averaged in: its networks follow the kept W within a few hundred steps.
/// Returns the line for the log when W was frozen now.
fn freeze_compression_when_due(model: &mut Model, st: &mut TrainState, cfg: &Config, anchor: &mut Option<Vec<f64>>) -> Option<String> {
    let fraction = cfg.bispectrum.trained_fraction;
    let due = (fraction * cfg.training.max_epochs as f64).ceil() as usize;
    if fraction >= 1.0 || st.finished || st.epochs_done < due || !model.has_trained_descriptor() {
        return None;
    }
    let frozen = model.freeze_compression();
    let n = model.n_params();
    st.optimizer.truncate(n);
    if let Some(m) = st.muon.as_mut() {
        m.truncate(n);
    }
    if let Some(e) = st.ema.as_mut() {
        e.truncate(n);
    }
    if let Some(a) = anchor.as_mut() {
        a.truncate(n);
    }
    st.frozen_compression_params = frozen;
    Some(format!(
        "bispectrum.trained_fraction = {fraction}: the compression ({frozen} parameters) is kept from epoch {} of {} on",
        st.epochs_done + 1,
        cfg.training.max_epochs
    ))
}

/// The first layers' preconditioner of `training.precondition_variance` for this model and training set: none
/// when it is off, and for runs that train only some parameters (fine-tuning with frozen layers, Δ-learning),
/// whose masks it is not meant to mix.
fn first_layer_preconditioner(model: &Model, t: &TrainingConfig, train: &[Frame], trainable: Option<&[bool]>) -> Result<Option<FirstLayerPreconditioner>> {
    if t.precondition_variance <= 0.0 || t.precondition_directions == 0 || trainable.is_some() {
        return Ok(None);
    }
    let sample = preconditioner_sample(train, t.seed);
    let (inputs, tangents) = if t.precondition_tangents > 0.0 {
        // every coordinate N(0, 1) Å: over the draws the tangents' second moment is Σ_k J_k J_kᵀ
        let displacements: Vec<Vec<Vec3>> = (0..sample.len())
            .map(|f| {
                let mut rng = Rng::derive(t.seed, 0x7a9e, f as u64);
                sample[f].positions.iter().map(|_| [rng.normal(), rng.normal(), rng.normal()]).collect()
            })
            .collect();
        let (inputs, tangents) = model.network_inputs_and_tangents(&sample, &displacements)?;
        (inputs, Some(tangents))
    } else {
        (model.network_inputs(&sample)?, None)
    };
    let tangents = tangents.as_deref().map(|tn| (tn, t.precondition_tangents));
    Ok(FirstLayerPreconditioner::fit(&inputs, tangents, &model.first_layers(), t.precondition_directions, t.precondition_variance, t.seed))
}

/// The training frames the preconditioner is fitted on: all of them up to [`PRECONDITIONER_ATOMS`] atoms, else a
/// seeded random subset of about that many atoms (the inputs and tangents of every atom are held at once).
fn preconditioner_sample(train: &[Frame], seed: u64) -> std::borrow::Cow<'_, [Frame]> {
    let atoms: usize = train.iter().map(|f| f.numbers.len()).sum();
    if atoms <= PRECONDITIONER_ATOMS {
        return train.into();
    }
    let mut order: Vec<usize> = (0..train.len()).collect();
    Rng::derive(seed, 0x9c0d, 0).shuffle(&mut order);
    let mut sample = Vec::new();
    let mut taken = 0;
    for i in order {
        if taken >= PRECONDITIONER_ATOMS {
            break;
        }
        taken += train[i].numbers.len();
        sample.push(train[i].clone());
    }
    sample.into()
}

/// Atoms whose inputs the preconditioner's covariance is estimated from (two `[atoms][inputs]` f64 arrays: ~0.6 GB
/// at 1 500 inputs per atom); rMD17's 950 structures have 8 550–20 000.
const PRECONDITIONER_ATOMS: usize = 25_000;

/// The model and training state of `checkpoint`, which must have been written with the same config (with a
/// `training.max_minutes` budget, `cfg` takes the epoch count the run chose at its start; `training.weight_decay_params`
/// is resolved for the checkpoint's model, as it was at the start).
fn resume_from(cfg: &mut Config, checkpoint: &Path, trainable: Option<&[bool]>, n_atoms: usize) -> Result<(Model, TrainState)> {
    let ck = Checkpoint::load(checkpoint)?;
    let frozen = ck.state.as_ref().map_or(0, |st| st.frozen_compression_params);
    with_decay_for_model(&mut cfg.training, trained_params(&ck.model, trainable) + frozen, n_atoms);
    if cfg.training.max_minutes > 0.0 && ck.config.training.max_minutes == cfg.training.max_minutes {
        cfg.training.max_epochs = ck.config.training.max_epochs;
    }
    let diff = config_diff(&ck.config, cfg);
    if !diff.is_empty() {
        return Err(Error::Config(format!(
            "refusing to resume from {}: the config differs from the checkpoint's:\n  {}\n\
             (resume continues the same run; start a new run_dir to change settings)",
            checkpoint.display(),
            diff.join("\n  ")
        )));
    }
    let st = ck.state.clone().ok_or_else(|| {
        Error::invalid(format!("{}: has no training state (is it a best.ckpt? resume from last.ckpt)", checkpoint.display()))
    })?;
    Ok((ck.model, st))
}

/// Refuses an early-stopping metric the validation set has no labels for.
fn check_stopping_metric(metric: StoppingMetric, valid: &[Frame]) -> Result<()> {
    let has = |p: &dyn Fn(&Frame) -> bool| valid.iter().any(p);
    let missing = match metric {
        StoppingMetric::ValForcesRmse if !has(&|f| f.forces.is_some()) => Some("forces"),
        StoppingMetric::ValStressRmse if !has(&|f| f.stress.is_some()) => Some("stress"),
        StoppingMetric::ValEnergyRmse if !has(&|f| f.energy.is_some()) => Some("energies"),
        _ => None,
    };
    match missing {
        Some(what) => Err(Error::Config(format!(
            "training.early_stopping_metric = \"{}\" but the validation set has no {what}",
            metric.name()
        ))),
        None => Ok(()),
    }
}

/// The resumed model and state, or a fresh model fitted to the training data with a new optimiser state (and
/// `cfg`'s weight decay resolved for its size, the line for the log added to `notes`).
fn start_or_resume(
    cfg: &mut Config,
    splits: &Splits,
    resumed: Option<(Model, TrainState)>,
    origin: Origin,
    trainable: Option<&[bool]>,
    notes: &mut Vec<String>,
) -> Result<(Model, TrainState)> {
    if let Some(r) = resumed {
        return Ok(r);
    }
    let all: Vec<&Frame> = splits.train.iter().chain(&splits.valid).chain(&splits.test).collect();
    let model = start_model(cfg, origin, &splits.train, &all)?;
    notes.extend(with_decay_for_model(&mut cfg.training, trained_params(&model, trainable), training_atoms(&splits.train)));
    let t = &cfg.training;
    let (optimizer, muon) = muon::optimizer_state(t, model.n_params());
    let st = TrainState {
        epochs_done: 0,
        step: 0,
        optimizer,
        muon,
        schedule: Schedule::new(t.schedule, t.lr, t.lr_min, t.plateau_patience, t.plateau_factor, t.max_epochs),
        ema: (t.ema_decay > 0.0).then(|| model.params()),
        best_metric: f64::INFINITY,
        best_epoch: 0,
        bad_epochs: 0,
        finished: false,
        budget: None,
        frozen_compression_params: 0,
    };
    Ok((model, st))
}

/// Mini-batches of one epoch (a batch larger than the training set is the whole set).
fn batches_per_epoch(n_train: usize, batch_size: usize) -> usize {
    n_train.div_ceil(batch_size.min(n_train).max(1))
}

/// One pass over the shuffled training set: a gradient step per mini-batch, of the `trainable` parameters only
/// (all if `None`). Returns the summed loss terms.
#[allow(clippy::too_many_arguments)]
fn run_epoch(
    model: &mut Model,
    st: &mut TrainState,
    train: &[Frame],
    cache: &EnvCache,
    cfg: &Config,
    anchor: Option<&[f64]>,
    trainable: Option<&[bool]>,
    precondition: Option<&FirstLayerPreconditioner>,
    progress: Option<&dyn Progress>,
    last: &Path,
) -> Result<LossTerms> {
    let t = &cfg.training;
    let epoch = st.epochs_done;
    let bs = t.batch_size.min(train.len()).max(1);
    let w = Weights::at_epoch(&cfg.loss, cfg.data.temperature, epoch);
    let mut order: Vec<usize> = (0..train.len()).collect();
    Rng::derive(t.seed, epoch as u64, 0x5_4ff1e).shuffle(&mut order);
    let mut sums = LossTerms::default();
    // the optimiser's coordinates (the model's, or the preconditioned first layers'), and the EMA in them: P is
    // linear and fixed, so averaging W̃ and mapping once per epoch is averaging W
    let mut params = model.params();
    let mut ema = st.ema.clone();
    if let Some(p) = precondition {
        p.to_optimizer(&mut params);
        if let Some(e) = ema.as_mut() {
            p.to_optimizer(e);
        }
    }
    let to_model = |network: usize, w: LayerWeights<'_>| {
        if let Some(p) = precondition {
            p.to_model_layer(network, w);
        }
    };
    // Muon's matrices, and the parameters Adam steps beside them
    let muon_matrices = if st.muon.is_some() { muon::matrices(model, trainable) } else { Vec::new() };
    let adam_mask = st.muon.is_some().then(|| muon::adam_mask(params.len(), &muon_matrices, trainable));
    for (b, ids) in order.chunks(bs).enumerate() {
        let frames: Vec<&Frame> = ids.iter().map(|&i| &train[i]).collect();
        let (mut l, mut g) = batch_loss_and_grad(model, &frames, ids, &cfg.loss, t.seed, &w, st.step, true, Some(cache))?;
        if let Some(a) = anchor {
            // the anchor is on the model's weights: mapped from the optimiser's where they differ
            let at = match precondition {
                Some(p) => {
                    let mut at = params.clone();
                    p.to_model(&mut at);
                    std::borrow::Cow::Owned(at)
                }
                None => std::borrow::Cow::Borrowed(&params[..]),
            };
            l.anchor = loss::anchor_term(&at, a, cfg.loss.anchor_weight, &mut g);
        }
        if let Some(p) = precondition {
            p.gradient_to_optimizer(&mut g, t.precision == Precision::F32);
        }
        if !l.total().is_finite() {
            return Err(Error::invalid(format!(
                "training diverged (non-finite loss) at epoch {} batch {b}; lower training.lr (now {:.2e}) or the loss weights; \
                 the last good state is in {}",
                epoch + 1,
                st.schedule.lr,
                last.display()
            )));
        }
        sums.add(&l);
        if let Some(mask) = trainable {
            g.iter_mut().zip(mask).filter(|(_, &t)| !t).for_each(|(g, _)| *g = 0.0);
        }
        let clip = optim::clip_factor(optim::grad_norm(&g), t.clip_grad_norm);
        if let Some(m) = st.muon.as_mut() {
            m.step(&muon_matrices, &mut params, &g, clip, st.schedule.lr, st.optimizer.weight_decay);
        }
        st.optimizer.step(&mut params, &g, clip, st.schedule.lr, adam_mask.as_deref().or(trainable), ema.as_deref_mut().map(|e| (e, t.ema_decay)));
        model.set_training_weights(&params, &to_model);
        st.step += 1;
        if let Some(p) = progress {
            p.batch(epoch);
        }
    }
    // back to the model's coordinates, exactly (f64), for validation, checkpoints and the next epoch
    if let Some(p) = precondition {
        p.to_model(&mut params);
        if let Some(e) = ema.as_mut() {
            p.to_model(e);
        }
    }
    model.set_params(&params);
    st.ema = ema;
    Ok(sums)
}

/// Validates (with the EMA weights if enabled), steps the schedule, updates early stopping, keeps an improved
/// model for `best.ckpt` ([`RunDir::save_checkpoints`] writes it) and writes one line to each log. Returns the
/// validation metrics.
#[allow(clippy::too_many_arguments)]
fn validate(
    model: &Model,
    st: &mut TrainState,
    splits: &Splits,
    valid_cache: &EnvCache,
    cfg: &Config,
    run: &mut RunDir,
    sums: &LossTerms,
    lr_used: f64,
    t0: std::time::Instant,
) -> Result<Metrics> {
    let t = &cfg.training;
    let metric = t.early_stopping_metric;
    // validation in the networks' training precision (f32 products instead of f64's through matrixmultiply; the
    // errors agree with f64's to ~1e-6 relative, far below the digits they are read to); best.ckpt and the test
    // pass in f64
    let mut eval_model = model.clone();
    if let Some(e) = &st.ema {
        eval_model.set_params(e);
    }
    let preds = predict_kept(&eval_model, &splits.valid, valid_cache)?;
    let vm = metrics::compute(&splits.valid, &preds);
    let val_loss = validation_loss(&cfg.loss, &vm);
    let mval = metric_value(metric, &vm, val_loss);
    let epoch = st.epochs_done;
    st.schedule.end_epoch(epoch, mval);
    st.epochs_done += 1;
    let improved = mval < st.best_metric - t.min_delta;
    if improved {
        st.best_metric = mval;
        st.best_epoch = st.epochs_done;
        st.bad_epochs = 0;
        eval_model.set_training_precision(false);
        run.pending_best = Some(eval_model);
    } else {
        st.bad_epochs += 1;
    }
    if st.bad_epochs > t.patience || st.epochs_done >= t.max_epochs {
        st.finished = true;
    }
    let nb = batches_per_epoch(splits.train.len(), t.batch_size) as f64;
    let train_terms: serde_json::Map<String, serde_json::Value> =
        sums.named().map(|(k, v)| (k.to_string(), serde_json::json!(v / nb))).collect();
    let line = serde_json::json!({
        "epoch": st.epochs_done, "lr": lr_used, "train": train_terms,
        "train_loss": sums.values().iter().sum::<f64>() / nb, "val": vm, "val_loss": val_loss,
        "metric": metric, "metric_value": mval, "best_epoch": st.best_epoch,
        "time_s": t0.elapsed().as_secs_f64(),
    });
    let _ = writeln!(run.metrics, "{line}");
    let terms: Vec<String> = sums.named().filter(|(_, v)| *v != 0.0).map(|(k, v)| format!("{k} {:.3e}", v / nb)).collect();
    let text = format!(
        "epoch {:>4} | lr {:.2e} | train {} | val {} | {} {:.4}{} | {:.1} s",
        st.epochs_done,
        lr_used,
        terms.join(" "),
        vm.summary(),
        metric.name(),
        mval,
        if improved { " *" } else { "" },
        t0.elapsed().as_secs_f64()
    );
    run.log(&text);
    Ok(vm)
}

/// [`metrics::predict_all`] of the validation structures with their environments kept from one epoch to the
/// next in `cache`: rebuilding them (neighbour lists and descriptors) was a third of the validation pass, itself
/// 4–6 % of a small molecule's epoch.
fn predict_kept(model: &Model, frames: &[Frame], cache: &EnvCache) -> Result<Vec<Prediction>> {
    metrics::predict_in_groups(model, frames.len(), |ids| {
        let ids: Vec<usize> = ids.collect();
        cache.take(model, &ids, &ids.iter().map(|&i| &frames[i]).collect::<Vec<_>>())
    })
}

/// After the last epoch: validation and test metrics of the best model (`test_metrics.json`).
fn finish(cfg: &Config, model: &Model, splits: &Splits, run: &mut RunDir, st: &TrainState, valid: &mut Metrics) -> Result<Option<Metrics>> {
    let mut checkpoint = if run.best.exists() { Some(Checkpoint::load(&run.best)?) } else { None };
    let mut best = checkpoint.as_ref().map_or_else(|| model.clone(), |ck| ck.model.clone());
    best.set_training_precision(false);
    let g = &cfg.domain_guard;
    if let (true, Some(ck)) = (g.strength > 0.0, checkpoint.as_mut()) {
        best.fit_domain_guard(&splits.train, g.components, g.sketch, g.onset, g.strength)?;
        ck.model = best.clone();
        ck.save(&run.best)?;
        let line = match best.domain_guard() {
            Some(fitted) => format!(
                "domain guard fitted to the {} training structures (strength {} eV, onset {}, sketch of {} rows; principal directions per element {:?}: an element with fewer than {} × {} atoms gets none)",
                splits.train.len(), g.strength, g.onset, g.sketch, fitted.components, MIN_ATOMS_PER_DIRECTION, g.components
            ),
            None => format!("no domain guard: every element has fewer than {MIN_ATOMS_PER_DIRECTION} × {} training atoms", g.components),
        };
        run.log(&line);
    }
    let vp = metrics::predict_all(&best, &splits.valid)?;
    *valid = metrics::compute(&splits.valid, &vp);
    if splits.test.is_empty() {
        return Ok(None);
    }
    let tp = metrics::predict_all(&best, &splits.test)?;
    let tm = metrics::compute(&splits.test, &tp);
    run.log(&format!("best epoch {} | test ({} structures): {}", st.best_epoch, splits.test.len(), tm.summary()));
    if let Some(line) = tm.by_element_line() {
        run.log(&format!("test {line}"));
    }
    let p = run.dir.join("test_metrics.json");
    write_atomically(&p, serde_json::to_string_pretty(&tm).unwrap_or_default().as_bytes())?;
    Ok(Some(tm))
}
