//! The training configuration: one sectioned TOML file; unknown keys are rejected; `--set a.b=v` overrides.
//! Every choice between named alternatives is an enum, so a misspelling is refused with the list of valid
//! spellings (docs/config.md lists every key).

use crate::descriptor::four_body::Bispectrum;
use crate::descriptor::DescriptorSpec;
use crate::error::{Error, Result};
use crate::family::Family;
use crate::io::extxyz::LabelKeys;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A training run's configuration (`pilip train CONFIG.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[data]`: files, label keys, the split.
    pub data: DataConfig,
    /// `[descriptor]`: the density and power spectrum of both families.
    pub descriptor: DescriptorSpec,
    /// `[bispectrum]`: the four-body part of the bispectrum family (ignored by the power-spectrum family).
    pub bispectrum: Bispectrum,
    /// `[model]`: family, network widths, scales.
    pub model: ModelConfig,
    /// `[repulsion]`: the short-range repulsive prior.
    pub repulsion: RepulsionConfig,
    /// `[domain_guard]`: the out-of-domain energy penalty fitted after training.
    pub domain_guard: DomainGuardConfig,
    /// `[loss]`: weights of the loss terms.
    pub loss: LossConfig,
    /// `[training]`: optimiser, schedule, stopping, threads.
    pub training: TrainingConfig,
    /// `[output]`: the run directory.
    pub output: OutputConfig,
}

/// How `data.file` is split into training, validation and test structures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Shuffled with `split_seed`.
    #[default]
    Random,
    /// File order: train first, validation right after, test = the last block (a later part of a trajectory).
    Contiguous,
}

/// The penalty on an error: the per-atom energy error (`loss.energy_loss`) or a force component's
/// (`loss.forces_loss`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Penalty {
    /// Squared error.
    #[default]
    Mse,
    /// Squared below the threshold, linear above (robust to a few bad labels; for forces, closer to the mean
    /// absolute error the benchmarks report).
    Huber,
}

/// The optimiser.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Adam with L2 weight decay added to the gradient.
    Adam,
    /// Adam with decoupled weight decay.
    #[default]
    AdamW,
    /// Muon for the networks' weight matrices (the momentum orthogonalised by Newton–Schulz steps, `train::muon`),
    /// AdamW for everything else (biases, output layers, the bispectrum compression).
    Muon,
}

/// How the PIWSL displacements are drawn: pilip's, or as one of the two versions of the paper's official code
/// (for comparison rows; `docs/piwsl.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PiwslVariant {
    /// Components uniform in [−ε, ε], the mean displacement of each structure removed; PITC and PISC share Δ¹.
    #[default]
    Pilip,
    /// The earlier official code: components ε·U[0, 1), not centred.
    PaperV1,
    /// The final official code: centred ε·U[−1, 1), but PITC's displacement multiplied by ε once more
    /// (±ε² Å; its own configuration, PISC keeps Δ¹).
    PaperFinal,
}

/// The learning-rate schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Multiply by `plateau_factor` after `plateau_patience` epochs without improvement.
    #[default]
    Plateau,
    /// Cosine decay from `lr` to `lr_min` over `max_epochs`.
    Cosine,
    /// Linear decay from `lr` to `lr_min` over `max_epochs`.
    Linear,
    /// `lr` throughout.
    Constant,
}

/// The validation figure that early stopping, the plateau schedule and `best.ckpt` follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoppingMetric {
    /// The labelled loss terms with the training weights.
    #[default]
    ValLoss,
    /// Energy RMSE, meV/atom.
    ValEnergyRmse,
    /// Force RMSE, meV/Å.
    ValForcesRmse,
    /// Stress RMSE, meV/Å³.
    ValStressRmse,
}

impl StoppingMetric {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            StoppingMetric::ValLoss => "val_loss",
            StoppingMetric::ValEnergyRmse => "val_energy_rmse",
            StoppingMetric::ValForcesRmse => "val_forces_rmse",
            StoppingMetric::ValStressRmse => "val_stress_rmse",
        }
    }
}

/// `[data]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Extended XYZ file with the training data (split into train/valid/test unless the files below are given).
    pub file: PathBuf,
    /// Optional separate validation and test files.
    pub valid_file: Option<PathBuf>,
    /// Optional separate test file (then nothing of `file` is held out for testing).
    pub test_file: Option<PathBuf>,
    /// Names of the label keys in the files.
    pub keys: LabelKeys,
    /// "random" or "contiguous".
    pub split: Split,
    /// Seed of the random split.
    pub split_seed: u64,
    /// Training structures; 0 = all that are not validation or test.
    pub n_train: usize,
    /// Validation structures; 0 = `valid_fraction` of the file (at least one).
    pub n_valid: usize,
    /// Test structures; 0 = `test_fraction` of the file (at least one, unless the fraction is 0: no test set).
    pub n_test: usize,
    /// Fraction of the file used for validation when `n_valid` is 0.
    pub valid_fraction: f64,
    /// Fraction of the file held out for testing when `n_test` is 0; 0.0 with `n_test = 0` = no test set.
    pub test_fraction: f64,
    /// Drop force labels from training structures (energy-only training on a labelled set); 1.0 keeps all.
    pub train_forces_fraction: f64,
    /// Temperature (K) of the canonical ensemble the structures were sampled from (e.g. the thermostat of the MD
    /// run that produced them), for `loss.score_matching_weight`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            file: PathBuf::new(),
            valid_file: None,
            test_file: None,
            keys: LabelKeys::default(),
            split: Split::Random,
            split_seed: 1,
            n_train: 0,
            n_valid: 0,
            n_test: 0,
            valid_fraction: 0.1,
            test_fraction: 0.1,
            train_forces_fraction: 1.0,
            temperature: None,
        }
    }
}

/// `[model]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The model family: "power_spectrum" (the fast preset) or "bispectrum" (power spectrum + four-body
    /// invariants: the accurate one).
    pub family: Family,
    /// Hidden layer widths of each per-element network.
    pub hidden: Vec<usize>,
    /// Energy scale of the network output in eV; 0 = automatic (force RMS, else per-atom energy spread).
    pub energy_scale: f64,
    /// Floor on each descriptor component's standard deviation, relative to the largest one of the element.
    pub feature_std_floor: f64,
    /// Descriptor components whose spread over an element's training atoms is below this fraction of the
    /// element's largest spread are left out of its network (0: keep all; ignored with a trained compression).
    pub drop_features_below: f64,
    /// `family = "bispectrum"` is trained on data of at most this many elements; training structures with more
    /// train `"power_spectrum"` instead (0: the configured family always). Within a fixed time the four-body
    /// invariants pay on hydrocarbons and cost molecules with heteroatoms (`docs/benchmarks.md`, session 74).
    /// Not applied with `init` or `base`, whose family is the start model's.
    pub bispectrum_max_elements: usize,
    /// Start from this checkpoint or exported model (`.onnx`; fine-tuning, e.g. a model trained on cheap labels
    /// with forces, continued on expensive energies): its species, descriptor, networks, input statistics and
    /// energy scale are kept — `[descriptor]`, `family` and `hidden` are taken from it — and its reference
    /// energies are refitted to this data set. An exported model's input statistics are fitted to this data, with
    /// its first layers rewritten to compute the same function. A relative path is relative to the config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// With `init`: the first this many layers of each network (weights and biases; from 1 on, also a bispectrum
    /// model's compression) keep the start model's values, and only the layers above them are trained.
    pub frozen_layers: usize,
    /// Δ-learning from this checkpoint or exported model (`.onnx`, e.g. one made by someone else): `E = E_base +
    /// ΔE`, where the base model (e.g. trained on cheap labels with forces) stays frozen and a correction network
    /// of `hidden` widths per element, with as many layers as the base's, is trained on this data set beside it.
    /// The result is one model: exported and deployed like any other. `[descriptor]` and `family` are taken from
    /// the base; its reference energies are refitted. A relative path is relative to the config file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            family: Family::PowerSpectrum,
            hidden: vec![32, 32],
            energy_scale: 0.0,
            feature_std_floor: 0.3,
            drop_features_below: 3e-4,
            bispectrum_max_elements: 0,
            init: None,
            frozen_layers: 0,
            base: None,
        }
    }
}

/// `[loss]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Weight of the per-atom energy error ((E − E_ref)/N)², eV².
    pub energy_weight: f64,
    /// "mse" or "huber".
    pub energy_loss: Penalty,
    /// Huber threshold in eV/atom.
    pub huber_delta: f64,
    /// Weight of the force error per component, (eV/Å)².
    pub forces_weight: f64,
    /// "mse" or "huber" on each force component.
    pub forces_loss: Penalty,
    /// Huber threshold of `forces_loss` in eV/Å.
    pub forces_huber_delta: f64,
    /// Weight of the stress error per component, (eV/Å³)².
    pub stress_weight: f64,
    /// Physics-informed Taylor consistency (PITC) weight.
    pub pitc_weight: f64,
    /// 1 = first-order target E(R) − Δ·F(R); 2 = trapezoid target E(R) − Δ·½[F(R) + F(R+Δ)].
    pub pitc_order: u32,
    /// Physics-informed spatial consistency (PISC) weight.
    pub pisc_weight: f64,
    /// Weak labels (Cooper et al. 2020): target E_ref(R) − Δ·F_ref(R); only structures with forces.
    pub weak_label_weight: f64,
    /// Displacement amplitude ε (Å): components uniform in [−ε, ε], centred per structure.
    pub epsilon: f64,
    /// How PITC/PISC/weak-label displacements are drawn (pilip's, or the paper code's versions).
    pub piwsl_variant: PiwslVariant,
    /// Divide PITC/PISC/weak-label residuals by the number of atoms (per-atom energies) before squaring.
    pub per_atom: bool,
    /// Linear warm-up of the PITC/PISC/weak-label weights over this many epochs (0 = none).
    pub ramp_epochs: usize,
    /// Score matching for structures sampled at `data.temperature`: weight of ½|F|² − k_BT·∇²E per force
    /// component, (eV/Å)² like `forces_weight`; a force loss without force labels (the Laplacian is estimated
    /// along a random ±`epsilon` probe).
    pub score_matching_weight: f64,
    /// Free-energy perturbation identity of canonical samples at `data.temperature`: weight of
    /// (ln⟨exp(−[E(R+Δ) − E(R)]/k_BT)⟩)² over each batch, Δ a random displacement (±`epsilon`) drawn independently
    /// of R (the mean is 1 for the true surface). Dimensionless.
    pub fep_weight: f64,
    /// Configurational temperature of canonical samples at `data.temperature`: weight of (G − L)²/(G² + L²) over
    /// each batch, G = ⟨|∇E|²⟩ and L = k_BT⟨∇²E⟩ per force component (equal for the true surface; the Laplacian
    /// along a random ±`epsilon` probe). Dimensionless.
    pub configurational_temperature_weight: f64,
    /// Weight of w·mean((θ − θ_init)²) over the network parameters θ, an L2 pull towards the `model.init`
    /// checkpoint's parameters (keeps a pretrained force field while fine-tuning on energies only).
    pub anchor_weight: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            energy_weight: 1.0,
            energy_loss: Penalty::Mse,
            huber_delta: 0.01,
            forces_weight: 1.0,
            forces_loss: Penalty::Mse,
            forces_huber_delta: 0.01,
            stress_weight: 0.0,
            pitc_weight: 0.0,
            pitc_order: 1,
            pisc_weight: 0.0,
            weak_label_weight: 0.0,
            epsilon: 0.01,
            piwsl_variant: PiwslVariant::Pilip,
            per_atom: true,
            ramp_epochs: 0,
            score_matching_weight: 0.0,
            fep_weight: 0.0,
            configurational_temperature_weight: 0.0,
            anchor_weight: 0.0,
        }
    }
}

/// `[training]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Seed of the initial weights, the batch order and the PIWSL displacements.
    pub seed: u64,
    /// Upper bound on the epochs.
    pub max_epochs: usize,
    /// At least this many optimiser steps: on a training set too small to reach them in `max_epochs`, the run's
    /// `max_epochs` and `patience` are raised by the same factor (0 = off). Keeps one config right for 50 and
    /// 1000 structures: epochs of 50 structures are 20× shorter.
    pub min_steps: usize,
    /// Wall-time budget of the run in minutes (0 = none): before the first epoch a timed rehearsal estimates the
    /// time per epoch and `max_epochs` is lowered to what fits (the cosine schedule's horizon follows); during
    /// the run the count follows the measured epoch times (never above the configured `max_epochs`), so one
    /// config trains small and large molecules each as long as the budget allows. The counts go to the train log
    /// and the checkpoint; `--set training.max_epochs=N` with `max_minutes = 0` repeats a run whose count never
    /// changed after the start exactly.
    pub max_minutes: f64,
    /// Structures per mini-batch.
    pub batch_size: usize,
    /// "adam", "adamw" or "muon".
    pub optimizer: Optimizer,
    /// Muon's momentum coefficient (optimizer = "muon").
    pub muon_momentum: f64,
    /// Muon's update as a multiple of √max(rows, cols) of its matrix's orthogonalised momentum: 0.2 gives the
    /// update about the root mean square of AdamW's, so one `lr` serves both (Liu et al. 2025, "Muon is scalable").
    pub muon_scale: f64,
    /// Training sets of fewer atoms than this train with "adamw" instead of "muon" (0 = any size): Muon fits
    /// the training structures so much sooner that a few dozen of them are over-fitted (rMD17 ethanol, 50
    /// structures: validation force MAE 69 against AdamW's 45 meV/Å).
    pub muon_min_atoms: usize,
    /// Initial learning rate.
    pub lr: f64,
    /// The initial learning rate of training sets of fewer than `lr_small_sets_below_atoms` atoms (0 = `lr`): a
    /// run over many structures is short of epochs within a budget and gains from a larger rate, one over a few
    /// dozen structures repeats them for thousands of epochs and over-fits sooner with it (rMD17, 2e-3 against
    /// 1e-3: 950 structures −3 to −9 % force error within the budget on the slower cores, 50 structures +4 to
    /// +10 %; docs/benchmarks.md, session 69).
    pub lr_small_sets: f64,
    /// Training sets of fewer atoms than this take `lr_small_sets` (with `lr_small_sets` > 0).
    pub lr_small_sets_below_atoms: usize,
    /// Weight decay (L2 for adam, decoupled for adamw).
    pub weight_decay: f64,
    /// Weight decay in proportion to 1 / (atoms in the training structures): the run decays by `weight_decay +
    /// weight_decay_atoms / n_atoms`. The force loss is a mean over the training atoms' force components, so a
    /// prior of fixed strength on the weights weighs 1/n_atoms in it: it matters for 50 small molecules and
    /// fades for 1000. Resolved into `weight_decay` before training.
    pub weight_decay_atoms: f64,
    /// Weight decay in proportion to (trained parameters) / (atoms in the training structures): the run decays by
    /// `weight_decay + weight_decay_params × n_params / n_atoms` (with `weight_decay_atoms` on top). A larger
    /// network over-fits a small training set sooner, so it needs the stronger prior (rMD17 N = 50 with 1e-3:
    /// 0.12 for toluene's 89 k parameters, 0.74 for uracil's 443 k). Resolved into `weight_decay` once the model is built.
    pub weight_decay_params: f64,
    /// "plateau", "cosine" or "constant".
    pub schedule: Schedule,
    /// Floor of the learning rate.
    pub lr_min: f64,
    /// Epochs without improvement before the plateau schedule lowers the rate.
    pub plateau_patience: usize,
    /// Factor of each plateau reduction.
    pub plateau_factor: f64,
    /// Global gradient-norm clip; 0 = off.
    pub clip_grad_norm: f64,
    /// Exponential moving average of the weights used for validation and the best checkpoint; 0 = off.
    pub ema_decay: f64,
    /// The first-layer preconditioner (`train::precondition`): per element, the directions of the standardised
    /// network inputs whose variance over the training atoms exceeds this are scaled to it in the optimiser's
    /// coordinates; 0 = off.
    pub precondition_variance: f64,
    /// Share β of the force loss's input curvature (the inputs' tangents along random displacements) in the
    /// matrix the preconditioner's directions come from, against the inputs' covariance (1 − β); 0 = inputs only.
    pub precondition_tangents: f64,
    /// Training sets of fewer atoms than this use the inputs' covariance alone (β = 0) and
    /// `precondition_variance_small_sets`: with very few structures the tangents' share costs force error instead
    /// of saving it (rMD17 at 50 structures: +5–6 % at 450 and 600 atoms, ±0 at 800, −4 to −10 % at 750 and 900;
    /// ethanol −4 % at 900 atoms, −6 % at 1 800).
    pub precondition_tangents_min_atoms: usize,
    /// Training sets below `precondition_tangents_min_atoms` atoms also scale fewer directions: those of variance
    /// above this instead of `precondition_variance` (0 keeps `precondition_variance`). With few structures the
    /// preconditioner's speed-up of the leading directions fits them sooner than the data can say (rMD17 at 50
    /// structures, 1.0 against 0.1: ethanol −9 % and −3 %, malonaldehyde −5 % and −1 % on two splits, uracil
    /// +0.3 %).
    pub precondition_variance_small_sets: f64,
    /// At most this many such directions per element.
    pub precondition_directions: usize,
    /// Metric for early stopping, plateau and `best`: val_loss, val_energy_rmse, val_forces_rmse, val_stress_rmse.
    pub early_stopping_metric: StoppingMetric,
    /// Epochs without improvement before training stops.
    pub patience: usize,
    /// Smallest decrease of the metric that counts as an improvement.
    pub min_delta: f64,
    /// Worker threads; 0 = all cores.
    pub threads: usize,
    /// Precision of the networks' products in the training passes: "f32" (faster) or "f64". Validation, test,
    /// checkpoints and exports are f64 either way.
    pub precision: Precision,
}

/// Floating-point precision of a computation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Single precision.
    #[default]
    F32,
    /// Double precision.
    F64,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            seed: 1,
            max_epochs: 200,
            min_steps: 0,
            max_minutes: 0.0,
            batch_size: 8,
            optimizer: Optimizer::AdamW,
            muon_momentum: 0.95,
            muon_scale: 0.2,
            muon_min_atoms: 0,
            lr: 3e-3,
            lr_small_sets: 0.0,
            lr_small_sets_below_atoms: 0,
            weight_decay: 0.0,
            weight_decay_atoms: 0.0,
            weight_decay_params: 0.0,
            schedule: Schedule::Plateau,
            lr_min: 1e-5,
            plateau_patience: 10,
            plateau_factor: 0.5,
            clip_grad_norm: 100.0,
            ema_decay: 0.0,
            precondition_variance: 0.1,
            precondition_tangents: 0.5,
            precondition_tangents_min_atoms: 700,
            precondition_variance_small_sets: 1.0,
            precondition_directions: 64,
            early_stopping_metric: StoppingMetric::ValLoss,
            patience: 40,
            min_delta: 0.0,
            threads: 0,
            precision: Precision::F32,
        }
    }
}

/// Which short-range repulsive prior a model gets (`crate::repulsion`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RepulsionKind {
    /// The ZBL universal screened nuclear repulsion, switched off where the training data are.
    #[default]
    Zbl,
    /// No prior: below the shortest sampled distances the energy is whatever the networks extrapolate.
    None,
}

/// `[repulsion]`: the short-range repulsive prior that keeps MD from collapsing two atoms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepulsionConfig {
    /// "zbl" or "none".
    pub kind: RepulsionKind,
    /// Å: the prior is zero from this distance on; 0 = per element pair, 0.9 × the shortest distance of that
    /// pair in the training structures (so the prior never touches the data or structures like them).
    pub outer: f64,
    /// Å: full ZBL below this distance, switched off smoothly up to `outer`; 0 = 2/3 of each pair's `outer`.
    pub inner: f64,
}

impl Default for RepulsionConfig {
    fn default() -> Self {
        RepulsionConfig { kind: RepulsionKind::Zbl, outer: 0.0, inner: 0.0 }
    }
}

/// `[domain_guard]`: an energy penalty on atomic environments unlike the training set's
/// (`crate::model::domain_guard`), fitted to the best model's training atoms when training ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainGuardConfig {
    /// eV per atom at one unit of squared excess past the onset; 0 = no guard.
    pub strength: f64,
    /// Where the penalty starts, in units of the largest score of the element's training atoms.
    pub onset: f64,
    /// Principal directions of each element's network inputs that count as inside the domain.
    pub components: usize,
    /// Rows of the random sketch that measures an atom's residual off those directions (the guard's cost per
    /// atom is a product with this many rows).
    pub sketch: usize,
}

impl Default for DomainGuardConfig {
    fn default() -> Self {
        DomainGuardConfig { strength: 0.0, onset: 4.0, components: 128, sketch: 32 }
    }
}

/// `[output]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Where logs, splits and checkpoints go.
    pub run_dir: PathBuf,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig { run_dir: PathBuf::from("runs/default") }
    }
}

impl Config {
    /// Reads a config file and applies `section.key=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path, overrides)
    }

    /// [`Config::load`] of config text that was read from `path` (named in messages; relative data paths are
    /// relative to its folder).
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Config> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        // The path of the offending key (`training.schedule: unknown variant ...`) makes the message actionable.
        let mut cfg: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let what = inner.message();
            match key.as_str() {
                "" | "." => Error::Config(format!("{}: {what}", path.display())),
                _ => Error::Config(format!("{}: {key}: {what}", path.display())),
            }
        })?;
        // Relative data paths are relative to the config file, as users expect when they move a project.
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() && !p.exists() && base.join(&*p).exists() {
                *p = base.join(&*p);
            }
        };
        // An empty path is no file: how `--set data.test_file=""` takes out a file the config names.
        for p in [&mut cfg.data.valid_file, &mut cfg.data.test_file, &mut cfg.model.init, &mut cfg.model.base] {
            if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *p = None;
            }
        }
        rebase(&mut cfg.data.file);
        if let Some(p) = cfg.data.valid_file.as_mut() {
            rebase(p);
        }
        if let Some(p) = cfg.data.test_file.as_mut() {
            rebase(p);
        }
        if let Some(p) = cfg.model.init.as_mut() {
            rebase(p);
        }
        if let Some(p) = cfg.model.base.as_mut() {
            rebase(p);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as TOML (`config.resolved.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Range checks that the types cannot express.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        self.descriptor.validate().map_err(Error::Config)?;
        if self.model.family == Family::Bispectrum {
            self.bispectrum.validate(self.descriptor.l_max).map_err(Error::Config)?;
        }
        if !self.bispectrum.compression.is_empty() {
            return bad("bispectrum.compression is fitted to the training data; remove it from the config".into());
        }
        if self.data.file.as_os_str().is_empty() {
            return bad("data.file is required (path to an extended XYZ file)".into());
        }
        let g = &self.domain_guard;
        if !(g.strength >= 0.0 && g.strength.is_finite()) {
            return bad(format!("domain_guard.strength must be ≥ 0 eV (0: no guard), got {}", g.strength));
        }
        if !(g.onset >= 1.0 && g.onset.is_finite()) {
            return bad(format!("domain_guard.onset must be ≥ 1 (in units of the largest training score), got {}", g.onset));
        }
        if g.components == 0 || g.sketch == 0 {
            return bad(format!("domain_guard.components and domain_guard.sketch must be ≥ 1, got {} and {}", g.components, g.sketch));
        }
        let r = &self.repulsion;
        if !(r.outer >= 0.0 && r.outer <= self.descriptor.cutoff) {
            return bad(format!("repulsion.outer must be 0 (from the data) or a distance up to the cutoff {} Å, got {}", self.descriptor.cutoff, r.outer));
        }
        if !(r.inner >= 0.0 && r.inner.is_finite() && (r.outer == 0.0 || r.inner < r.outer)) {
            return bad(format!("repulsion.inner must be 0 (2/3 of outer) or a distance below outer, got {}", r.inner));
        }
        if ![1, 2].contains(&self.loss.pitc_order) {
            return bad(format!("loss.pitc_order must be 1 or 2, got {}", self.loss.pitc_order));
        }
        for (name, delta, unit) in [("huber_delta", self.loss.huber_delta, "eV/atom"), ("forces_huber_delta", self.loss.forces_huber_delta, "eV/Å")] {
            if !(delta > 0.0 && delta.is_finite()) {
                return bad(format!("loss.{name} must be a threshold > 0 in {unit}, got {delta}"));
            }
        }
        if !(self.loss.epsilon > 0.0 && self.loss.epsilon < 0.5) {
            return bad(format!("loss.epsilon must be in (0, 0.5) Å, got {}", self.loss.epsilon));
        }
        let l = &self.loss;
        for (name, w) in [
            ("energy_weight", l.energy_weight),
            ("forces_weight", l.forces_weight),
            ("stress_weight", l.stress_weight),
            ("pitc_weight", l.pitc_weight),
            ("pisc_weight", l.pisc_weight),
            ("weak_label_weight", l.weak_label_weight),
            ("score_matching_weight", l.score_matching_weight),
            ("fep_weight", l.fep_weight),
            ("configurational_temperature_weight", l.configurational_temperature_weight),
            ("anchor_weight", l.anchor_weight),
        ] {
            if !(w >= 0.0 && w.is_finite()) {
                return bad(format!("loss.{name} must be a finite number >= 0, got {w}"));
            }
        }
        if let Some(t) = self.data.temperature.filter(|t| !(t.is_finite() && *t > 0.0)) {
            return bad(format!("data.temperature must be a temperature in K > 0, got {t}"));
        }
        for (name, w) in [
            ("score_matching_weight", l.score_matching_weight),
            ("fep_weight", l.fep_weight),
            ("configurational_temperature_weight", l.configurational_temperature_weight),
        ] {
            if w > 0.0 && self.data.temperature.is_none() {
                return bad(format!("loss.{name} needs data.temperature (K): the temperature the structures were sampled at"));
            }
        }
        if self.model.init.is_some() && self.model.base.is_some() {
            return bad("model.init (fine-tuning) and model.base (Δ-learning) exclude each other; set one".into());
        }
        if l.anchor_weight > 0.0 && self.model.init.is_none() {
            return bad("loss.anchor_weight pulls towards the model.init checkpoint; set model.init too".into());
        }
        if self.model.frozen_layers > 0 && self.model.init.is_none() {
            return bad("model.frozen_layers keeps layers of the model.init start; set model.init too".into());
        }
        if self.training.batch_size == 0 {
            return bad("training.batch_size must be >= 1".into());
        }
        if !(self.training.lr > 0.0) {
            return bad(format!("training.lr must be > 0, got {}", self.training.lr));
        }
        if !(self.training.lr_small_sets.is_finite() && self.training.lr_small_sets >= 0.0) {
            return bad(format!("training.lr_small_sets must be a number >= 0 (0 = training.lr), got {}", self.training.lr_small_sets));
        }
        let t = &self.training;
        if !(t.muon_momentum.is_finite() && (0.0..1.0).contains(&t.muon_momentum)) {
            return bad(format!("training.muon_momentum must be a number in [0, 1), got {}", t.muon_momentum));
        }
        if !(t.muon_scale.is_finite() && t.muon_scale > 0.0) {
            return bad(format!("training.muon_scale must be a number > 0, got {}", t.muon_scale));
        }
        for (key, v) in [("weight_decay", t.weight_decay), ("weight_decay_atoms", t.weight_decay_atoms), ("weight_decay_params", t.weight_decay_params)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("training.{key} must be a number >= 0, got {v}"));
            }
        }
        if !(self.training.max_minutes.is_finite() && self.training.max_minutes >= 0.0) {
            return bad(format!("training.max_minutes must be a number of minutes >= 0 (0 = no budget), got {}", self.training.max_minutes));
        }
        if !(self.training.precondition_variance.is_finite() && self.training.precondition_variance >= 0.0) {
            return bad(format!("training.precondition_variance must be a number >= 0 (0 = off), got {}", self.training.precondition_variance));
        }
        if !(self.training.precondition_variance_small_sets.is_finite() && self.training.precondition_variance_small_sets >= 0.0) {
            return bad(format!(
                "training.precondition_variance_small_sets must be a number >= 0 (0 = precondition_variance), got {}",
                self.training.precondition_variance_small_sets
            ));
        }
        if !(0.0..=1.0).contains(&self.training.precondition_tangents) {
            return bad(format!("training.precondition_tangents must be in [0, 1] (0 = the inputs' covariance only), got {}", self.training.precondition_tangents));
        }
        if !(0.0..1.0).contains(&self.training.ema_decay) {
            return bad(format!("training.ema_decay must be in [0, 1), got {}", self.training.ema_decay));
        }
        if self.model.hidden.is_empty() || self.model.hidden.contains(&0) {
            return bad("model.hidden must list at least one positive layer width".into());
        }
        if !(0.0..=1.0).contains(&self.model.feature_std_floor) {
            return bad(format!("model.feature_std_floor must be in [0, 1], got {}", self.model.feature_std_floor));
        }
        if !(0.0..1.0).contains(&self.model.drop_features_below) {
            return bad(format!("model.drop_features_below must be in [0, 1), got {}", self.model.drop_features_below));
        }
        if !(0.0..=1.0).contains(&self.data.train_forces_fraction) {
            return bad("data.train_forces_fraction must be in [0, 1]".into());
        }
        Ok(())
    }
}

/// The value of a `--set key=value` override: parsed as TOML, else taken as a string.
pub fn override_value(value: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

/// `section.key=value` into the raw table.
fn apply_override(table: &mut toml::Table, o: &str) -> Result<()> {
    let (path, value) = o
        .split_once('=')
        .ok_or_else(|| Error::Config(format!("--set expects section.key=value, got '{o}'")))?;
    let value = override_value(value);
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.len() < 2 {
        return Err(Error::Config(format!("--set expects section.key=value, got '{o}'")));
    }
    let mut t = table;
    for k in &keys[..keys.len() - 1] {
        t = t
            .entry(k.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| Error::Config(format!("--set {path}: '{k}' is not a section")))?;
    }
    t.insert(keys[keys.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config file `c.toml` with `text` in a temporary folder of its own (`tag`).
    fn config_file(tag: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pilip_{tag}_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    /// `Config::load` of `p` with `--set` overrides.
    fn load_with(p: &std::path::Path, sets: &[&str]) -> Result<Config> {
        Config::load(p, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// Each override set of `cases` is rejected with an error containing its message.
    fn assert_rejected(p: &std::path::Path, cases: &[(&[&str], &str)]) {
        for &(sets, want) in cases {
            let e = load_with(p, sets).unwrap_err().to_string();
            assert!(e.contains(want), "{sets:?}: {e}");
        }
    }

    #[test]
    fn overrides_and_unknown_keys() {
        let p = config_file("cfg", "[data]\nfile = \"x.xyz\"\n[loss]\npitc_weight = 1.0\n");
        let c = Config::load(&p, &["loss.epsilon=0.02".into(), "data.keys.energy=REF_energy".into()]).unwrap();
        assert_eq!(c.loss.epsilon, 0.02);
        assert_eq!(c.loss.pitc_weight, 1.0);
        assert_eq!(c.data.keys.energy, "REF_energy");
        std::fs::write(&p, "[data]\nfile = \"x.xyz\"\n[loss]\npitc_wieght = 1.0\n").unwrap();
        let e = Config::load(&p, &[]).unwrap_err().to_string();
        assert!(e.contains("unknown field `pitc_wieght`"), "{e}");
        std::fs::write(&p, "[data]\nfile = \"x.xyz\"\n").unwrap();
        let e = Config::load(&p, &["training.schedule=\"cosinus\"".into()]).unwrap_err().to_string();
        assert!(e.contains("c.toml: training.schedule: unknown variant `cosinus`") && e.contains("linear") && e.contains("plateau") && e.contains("cosine"), "{e}");
        for bad in ["training.max_minutes=-1", "training.max_minutes=nan"] {
            let e = Config::load(&p, &[bad.into()]).unwrap_err().to_string();
            assert!(e.contains("training.max_minutes must be a number of minutes >= 0"), "{bad}: {e}");
        }
        let decays = [("training.weight_decay=-0.1", "weight_decay"), ("training.weight_decay_atoms=nan", "weight_decay_atoms"), ("training.weight_decay_params=-1e-3", "weight_decay_params")];
        for (bad, key) in decays {
            let e = Config::load(&p, &[bad.into()]).unwrap_err().to_string();
            assert!(e.contains(&format!("training.{key} must be a number >= 0")), "{bad}: {e}");
        }
        for (bad, want) in [
            ("training.muon_momentum=1.0", "training.muon_momentum must be a number in [0, 1), got 1"),
            ("training.muon_momentum=-0.1", "training.muon_momentum must be a number in [0, 1)"),
            ("training.muon_scale=0", "training.muon_scale must be a number > 0, got 0"),
        ] {
            let e = Config::load(&p, &[bad.into()]).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert_eq!(Config::load(&p, &["training.optimizer=\"muon\"".into()]).unwrap().training.optimizer, Optimizer::Muon);
        let e = Config::load(&p, &["data.split=\"blocks\"".into()]).unwrap_err().to_string();
        assert!(e.contains("blocks") && e.contains("random") && e.contains("contiguous"), "{e}");
        // the spellings of every choice
        let sets = ["data.split=\"contiguous\"", "loss.energy_loss=\"huber\"", "training.optimizer=\"adam\"",
            "training.schedule=\"constant\"", "training.early_stopping_metric=\"val_forces_rmse\"", "model.family=\"power_spectrum\""];
        let c = Config::load(&p, &sets.map(String::from)).unwrap();
        assert_eq!(
            (c.data.split, c.loss.energy_loss, c.training.optimizer, c.training.schedule, c.training.early_stopping_metric),
            (Split::Contiguous, Penalty::Huber, Optimizer::Adam, Schedule::Constant, StoppingMetric::ValForcesRmse)
        );
        assert!(c.to_toml().contains("split = \"contiguous\"") && c.to_toml().contains("optimizer = \"adam\""));
    }

    /// `--set data.test_file=""` takes out the test file a config names (a split of `file` then holds the test set).
    #[test]
    fn an_empty_path_is_no_file() {
        let p = config_file("cfg_empty", "[data]\nfile = \"x.xyz\"\ntest_file = \"t.xyz\"\n[model]\ninit = \"a.ckpt\"\n");
        let c = Config::load(&p, &[]).unwrap();
        assert_eq!((c.data.test_file.as_deref(), c.model.init.as_deref()), (Some(Path::new("t.xyz")), Some(Path::new("a.ckpt"))));
        let c = Config::load(&p, &["data.test_file=\"\"".into(), "model.init=\"\"".into(), "data.valid_file=\"\"".into()]).unwrap();
        assert_eq!((c.data.test_file, c.data.valid_file, c.model.init), (None, None, None));
    }

    #[test]
    fn bispectrum_channel_counts_are_checked_by_name() {
        let p = config_file("cfg_bs", "[data]\nfile = \"x.xyz\"\n[model]\nfamily = \"bispectrum\"\n");
        let load = |sets: &[&str]| load_with(&p, sets);
        let c = load(&["bispectrum.three_body=\"compressed\"", "bispectrum.channels=20", "bispectrum.four_body_channels=6"]).unwrap();
        assert_eq!((c.bispectrum.three_body, c.bispectrum.four_body_k()), (crate::descriptor::four_body::ThreeBody::Compressed, 6));
        assert_rejected(
            &p,
            &[
                (&["bispectrum.channels=20"][..], "bispectrum.four_body_channels ≤ 16"),
                (&["bispectrum.channels=4", "bispectrum.four_body_channels=5"][..], "bispectrum.four_body_channels must be at most"),
                (&["bispectrum.channels=33"][..], "bispectrum.channels must be in 1..=32"),
                (&["bispectrum.three_body=\"partial\""][..], "unknown variant `partial`"),
            ],
        );
    }

    #[test]
    fn the_loss_penalties_are_checked_by_name() {
        let p = config_file("cfg_penalty", "[data]\nfile = \"x.xyz\"\n");
        let load = |sets: &[&str]| load_with(&p, sets);
        let c = load(&["loss.forces_loss=\"huber\"", "loss.forces_huber_delta=0.02"]).unwrap();
        assert_eq!((c.loss.forces_loss, c.loss.forces_huber_delta, c.loss.energy_loss), (Penalty::Huber, 0.02, Penalty::Mse));
        assert_rejected(
            &p,
            &[
                (&["loss.forces_huber_delta=0"][..], "loss.forces_huber_delta must be a threshold > 0 in eV/Å, got 0"),
                (&["loss.huber_delta=-1"][..], "loss.huber_delta must be a threshold > 0 in eV/atom"),
                (&["loss.forces_loss=\"l1\""][..], "unknown variant `l1`, expected `mse` or `huber`"),
            ],
        );
    }

    #[test]
    fn the_preconditioner_settings_are_checked_by_name() {
        let p = config_file("cfg_precondition", "[data]\nfile = \"x.xyz\"\n");
        let load = |sets: &[&str]| load_with(&p, sets);
        let t = load(&[]).unwrap().training;
        assert_eq!((t.precondition_variance, t.precondition_tangents, t.precondition_variance_small_sets), (0.1, 0.5, 1.0));
        assert_eq!(load(&["training.precondition_variance_small_sets=0"]).unwrap().training.precondition_variance_small_sets, 0.0);
        assert_rejected(
            &p,
            &[
                (&["training.precondition_variance=-1"][..], "training.precondition_variance must be a number >= 0 (0 = off), got -1"),
                (&["training.precondition_variance_small_sets=-0.5"][..], "training.precondition_variance_small_sets must be a number >= 0 (0 = precondition_variance), got -0.5"),
                (&["training.precondition_tangents=2"][..], "training.precondition_tangents must be in [0, 1]"),
                (&["training.lr_small_sets=-1e-3"][..], "training.lr_small_sets must be a number >= 0 (0 = training.lr), got -0.001"),
            ],
        );
    }

    #[test]
    fn repulsion_and_radial_scale_are_checked_by_name() {
        let p = config_file("cfg_rep", "[data]\nfile = \"x.xyz\"\n");
        let load = |sets: &[&str]| load_with(&p, sets);
        let c = load(&[]).unwrap();
        assert_eq!((c.repulsion.kind, c.repulsion.outer, c.repulsion.inner, c.descriptor.radial_scale), (RepulsionKind::Zbl, 0.0, 0.0, 0.0));
        let c = load(&["repulsion.kind=\"none\"", "repulsion.outer=1.2", "repulsion.inner=0.8", "descriptor.radial_scale=2.0"]).unwrap();
        assert_eq!((c.repulsion.kind, c.descriptor.radial_scale), (RepulsionKind::None, 2.0));
        // per-element widths, as a table or key by key
        let c = load(&["descriptor.radial_width_by_element={ H = 0.9, C = 0.6 }", "descriptor.radial_width_by_element.O=0.7"]).unwrap();
        assert_eq!((c.descriptor.radial_width_of(1), c.descriptor.radial_width_of(6), c.descriptor.radial_width_of(8), c.descriptor.radial_width_of(7)), (0.9, 0.6, 0.7, 0.6));
        assert_rejected(
            &p,
            &[
                (&["repulsion.outer=6.0"][..], "repulsion.outer must be 0 (from the data) or a distance up to the cutoff 5"),
                (&["repulsion.outer=1.0", "repulsion.inner=1.0"][..], "repulsion.inner must be 0 (2/3 of outer) or a distance below outer"),
                (&["repulsion.inner=-0.1"][..], "repulsion.inner"),
                (&["repulsion.kind=\"lj\""][..], "unknown variant `lj`, expected `zbl` or `none`"),
                (&["descriptor.radial_scale=-1.0"][..], "descriptor.radial_scale must be in [0, 10]"),
                (&["descriptor.radial_width_by_element.Xx=0.5"][..], "descriptor.radial_width_by_element: 'Xx' is not an element symbol"),
                (&["descriptor.radial_width_by_element.H=0"][..], "descriptor.radial_width_by_element.H must be > 0, got 0"),
            ],
        );
    }

    #[test]
    fn the_domain_guard_is_off_by_default_and_checked_by_name() {
        let p = config_file("cfg_guard", "[data]\nfile = \"x.xyz\"\n");
        let load = |sets: &[&str]| load_with(&p, sets);
        let g = load(&[]).unwrap().domain_guard;
        assert_eq!((g.strength, g.onset, g.components, g.sketch), (0.0, 4.0, 128, 32));
        let g = load(&["domain_guard.strength=0.002", "domain_guard.onset=2.5", "domain_guard.sketch=16"]).unwrap().domain_guard;
        assert_eq!((g.strength, g.onset, g.sketch), (0.002, 2.5, 16));
        assert_rejected(
            &p,
            &[
                (&["domain_guard.strength=-1"][..], "domain_guard.strength must be ≥ 0 eV"),
                (&["domain_guard.onset=0.5"][..], "domain_guard.onset must be ≥ 1"),
                (&["domain_guard.sketch=0"][..], "domain_guard.components and domain_guard.sketch must be ≥ 1"),
                (&["domain_guard.rows=3"][..], "unknown field `rows`"),
            ],
        );
    }
}
