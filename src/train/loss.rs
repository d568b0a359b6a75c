//! Loss terms of one structure and the training primitives of their parameter gradient.
//!
//! Every term is reduced to the model's training primitive `∇θ[a·E(X) + D_t E(X)]` at up to three
//! configurations: the reference geometry R, C = R + Δ¹ and B = R + Δ² (fresh neighbour lists for C and B).
//! Coefficients of all terms are summed per configuration first, so each configuration costs one primitive.
//!
//! Residuals (with D_δ E(X) = −Σ_k δ_k·F_k(X), model forces, no stop-gradient):
//! - PITC (order 1):  r = E(C) − [E(R) + D_Δ¹E(R)]
//! - PITC (order 2):  r = E(C) − [E(R) + ½D_Δ¹E(R) + ½D_Δ¹E(C)]
//! - PISC:            r = E(C) − [E(B) + D_{Δ¹−Δ²}E(B)]
//! - weak labels:     r = E(C) − [E_ref(R) − Δ¹·F_ref(R)]
//!
//! each divided by N when `per_atom`, squared, averaged over the structures of the batch.
//!
//! Score matching (structures sampled at a known temperature, `data.temperature`) is not a residual: it is
//! ½|∇E(R)|² − k_B T·∇²E(R) per force component, with the Laplacian from a second difference along a random
//! ±1 probe v at R ± hv (two more configurations; see [`score_term`]).

use crate::config::{LossConfig, Penalty, PiwslVariant};
use crate::error::Result;
use crate::frame::{displaced, Frame, Mat3, Vec3};
use crate::model::{Environments, Model, Primitive};
use crate::prediction::Prediction;
use crate::rng::Rng;

/// The weighted loss terms of one structure or summed over a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossTerms {
    /// Per-atom energy error.
    pub energy: f64,
    /// Force-component error.
    pub forces: f64,
    /// Stress-component error.
    pub stress: f64,
    /// Taylor consistency (PITC).
    pub pitc: f64,
    /// Path independence (PISC).
    pub pisc: f64,
    /// Weak labels from reference forces.
    pub weak: f64,
    /// Score matching at the data's temperature (can be negative).
    pub score: f64,
    /// Free-energy perturbation identity at the data's temperature (per batch).
    pub fep: f64,
    /// Configurational-temperature identity at the data's temperature (per batch).
    pub conf_temperature: f64,
    /// L2 pull towards the `model.init` parameters (added per step, not per structure).
    pub anchor: f64,
}

impl LossTerms {
    /// The terms' names, in log order (the keys of `metrics.jsonl`'s `train` object).
    pub const NAMES: [&'static str; 10] = ["energy", "forces", "stress", "pitc", "pisc", "weak", "score", "fep", "conf_temperature", "anchor"];

    /// The values in the order of [`LossTerms::NAMES`].
    pub fn values(&self) -> [f64; 10] {
        let t = self;
        [t.energy, t.forces, t.stress, t.pitc, t.pisc, t.weak, t.score, t.fep, t.conf_temperature, t.anchor]
    }

    /// `(name, value)` in log order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, f64)> {
        Self::NAMES.into_iter().zip(self.values())
    }

    /// The value of the term called `name` (one of [`LossTerms::NAMES`]).
    pub fn get(&self, name: &str) -> Option<f64> {
        self.named().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The sum of all terms.
    pub fn total(&self) -> f64 {
        self.values().iter().sum()
    }

    /// Adds `other` term by term.
    pub fn add(&mut self, other: &LossTerms) {
        self.energy += other.energy;
        self.forces += other.forces;
        self.stress += other.stress;
        self.pitc += other.pitc;
        self.pisc += other.pisc;
        self.weak += other.weak;
        self.score += other.score;
        self.fep += other.fep;
        self.conf_temperature += other.conf_temperature;
        self.anchor += other.anchor;
    }
}

/// The anchor term w·mean((θ − θ₀)²): returns the loss and adds its gradient to `grad`.
pub fn anchor_term(params: &[f64], anchor: &[f64], weight: f64, grad: &mut [f64]) -> f64 {
    let n = params.len().max(1) as f64;
    let mut loss = 0.0;
    for ((g, p), a) in grad.iter_mut().zip(params).zip(anchor) {
        let d = p - a;
        loss += d * d;
        *g += 2.0 * weight * d / n;
    }
    weight * loss / n
}

/// Batch-level normalisers so that each term is a mean over the batch.
#[derive(Clone, Copy, Debug)]
pub struct Normalizers {
    /// Structures with an energy label.
    pub n_energy: f64,
    /// Force components with labels.
    pub n_force_components: f64,
    /// Fully periodic structures with a stress label.
    pub n_stress: f64,
    /// Structures.
    pub n_structures: f64,
    /// Structures with energy and forces (weak labels).
    pub n_weak: f64,
}

impl Normalizers {
    /// The normalisers of a batch.
    pub fn of(frames: &[&Frame]) -> Self {
        let count = |p: &dyn Fn(&Frame) -> bool| frames.iter().filter(|f| p(f)).count() as f64;
        Normalizers {
            n_energy: count(&|f| f.energy.is_some()),
            n_force_components: frames.iter().filter_map(|f| f.forces.as_ref().map(|x| 3.0 * x.len() as f64)).sum(),
            n_stress: count(&|f| f.stress.is_some() && f.is_fully_periodic()),
            n_structures: frames.len() as f64,
            n_weak: count(&|f| f.energy.is_some() && f.forces.is_some()),
        }
    }
}

/// Weights in effect for one step (PIWSL weights possibly ramped).
#[derive(Clone, Debug)]
pub struct Weights {
    /// `loss.energy_weight`.
    pub energy: f64,
    /// `loss.forces_weight`.
    pub forces: f64,
    /// `loss.stress_weight`.
    pub stress: f64,
    /// `loss.pitc_weight`, ramped.
    pub pitc: f64,
    /// `loss.pisc_weight`, ramped.
    pub pisc: f64,
    /// `loss.weak_label_weight`, ramped.
    pub weak: f64,
    /// `loss.score_matching_weight`, ramped.
    pub score: f64,
    /// `loss.fep_weight`, ramped.
    pub fep: f64,
    /// `loss.configurational_temperature_weight`, ramped.
    pub conf_temperature: f64,
    /// k_B T of the data (eV), from `data.temperature`; 0 when not given.
    pub kt: f64,
}

impl Weights {
    /// The weights of `epoch` (0-based) for data sampled at `temperature` (K, if known): the PIWSL and ensemble
    /// (score, FEP, configurational temperature) weights rise linearly over `ramp_epochs`.
    pub fn at_epoch(cfg: &LossConfig, temperature: Option<f64>, epoch: usize) -> Self {
        let ramp = if cfg.ramp_epochs == 0 { 1.0 } else { ((epoch + 1) as f64 / cfg.ramp_epochs as f64).min(1.0) };
        Weights {
            energy: cfg.energy_weight,
            forces: cfg.forces_weight,
            stress: cfg.stress_weight,
            pitc: cfg.pitc_weight * ramp,
            pisc: cfg.pisc_weight * ramp,
            weak: cfg.weak_label_weight * ramp,
            score: cfg.score_matching_weight * ramp,
            fep: cfg.fep_weight * ramp,
            conf_temperature: cfg.configurational_temperature_weight * ramp,
            kt: temperature.map_or(0.0, |t| crate::units::KB * t),
        }
    }
}

/// Coefficients of the primitive at one configuration.
struct Coeffs {
    a: f64,
    disp: Option<Vec<Vec3>>,
    strain: Option<Mat3>,
}

impl Coeffs {
    fn new() -> Self {
        Coeffs { a: 0.0, disp: None, strain: None }
    }
    fn add_disp(&mut self, n: usize, k: f64, d: &[Vec3]) {
        let v = self.disp.get_or_insert_with(|| vec![[0.0; 3]; n]);
        for (x, y) in v.iter_mut().zip(d) {
            for a in 0..3 {
                x[a] += k * y[a];
            }
        }
    }
}

/// Centred uniform displacement in [−ε, ε]³ per atom.
pub fn displacement(rng: &mut Rng, n: usize, eps: f64) -> Vec<Vec3> {
    displacement_of(PiwslVariant::Pilip, rng, n, eps)
}

/// A displacement as `variant` draws it (PaperV1: ε·U[0, 1) per component, not centred; otherwise centred
/// uniform in [−ε, ε]).
fn displacement_of(variant: PiwslVariant, rng: &mut Rng, n: usize, eps: f64) -> Vec<Vec3> {
    if variant == PiwslVariant::PaperV1 {
        return (0..n).map(|_| [0, 1, 2].map(|_| eps * rng.uniform())).collect();
    }
    let mut d: Vec<Vec3> = (0..n).map(|_| [0, 1, 2].map(|_| eps * (2.0 * rng.uniform() - 1.0))).collect();
    for a in 0..3 {
        let mean = d.iter().map(|x| x[a]).sum::<f64>() / n as f64;
        d.iter_mut().for_each(|x| x[a] -= mean);
    }
    d
}

/// −Σ δ·F = derivative of E along δ.
fn directional(forces: &[Vec3], d: &[Vec3]) -> f64 {
    -forces.iter().zip(d).map(|(f, x)| f[0] * x[0] + f[1] * x[1] + f[2] * x[2]).sum::<f64>()
}

/// Whether the terms of `w` read the model's forces or stress at R; without them a batch needs only energies
/// (energy-only training).
pub fn needs_forces(w: &Weights) -> bool {
    [w.forces, w.stress, w.pitc, w.score, w.conf_temperature].iter().any(|&x| x > 0.0)
}

/// The loss terms (weighted) of one structure and the training primitives whose parameter gradient is theirs.
pub struct StructureLoss {
    /// The weighted loss terms.
    pub terms: LossTerms,
    /// The primitive's coefficients at the structure's own configuration R.
    at_reference: Coeffs,
    /// Configurations besides R whose primitive enters the gradient (displaced ones of PITC/PISC, score probes).
    others: Vec<(Environments, Coeffs)>,
    /// What the structure contributes to the batch's ensemble identities ([`ensemble_identities`]).
    ensemble: EnsembleSample,
}

/// A structure's share of the batch-level identities of the canonical ensemble.
#[derive(Default)]
struct EnsembleSample {
    /// FEP: the exponent −[E(R+Δ) − E(R)]/k_BT and R+Δ.
    fep: Option<(f64, Environments)>,
    /// Configurational temperature: |F|²/3N, k_BT·vᵀHv/3N, F, and the probes R ± hv.
    conf: Option<ConfSample>,
}

struct ConfSample {
    grad_sq: f64,
    kt_curvature: f64,
    forces: Vec<Vec3>,
    /// k_BT/(3N h²): the curvature estimate per unit of the second difference of energies.
    per_energy: f64,
    probes: [Environments; 2],
}

impl StructureLoss {
    /// The primitives of [`Model::accumulate_param_grad`], R (prepared as `env_r`) first.
    pub fn primitives<'a>(&'a self, env_r: &'a Environments) -> impl Iterator<Item = Primitive<'a>> {
        let at = |env, c: &'a Coeffs| Primitive::at(env, c.a, c.disp.as_deref(), c.strain.as_ref());
        std::iter::once(at(env_r, &self.at_reference)).chain(self.others.iter().map(move |(env, c)| at(env, c)))
    }
}

/// Loss terms of one structure at R (prepared as `env_r`, predicted as `pred_r`) and the primitives of their
/// gradient.
#[allow(clippy::too_many_arguments)]
pub fn structure_loss(
    model: &Model,
    frame: &Frame,
    env_r: &Environments,
    pred_r: &Prediction,
    cfg: &LossConfig,
    w: &Weights,
    norm: &Normalizers,
    rng: &mut Rng,
) -> Result<StructureLoss> {
    let mut terms = LossTerms::default();
    let mut cr = Coeffs::new();
    terms.energy = energy_term(frame, pred_r, cfg, w.energy, norm, &mut cr);
    terms.forces = forces_term(frame, pred_r, cfg, w.forces, norm, &mut cr);
    terms.stress = stress_term(frame, pred_r, env_r.volume, w.stress, norm, &mut cr);

    let want_pitc = w.pitc > 0.0;
    let want_weak = w.weak > 0.0 && frame.energy.is_some() && frame.forces.is_some();
    let want_pisc = w.pisc > 0.0;
    // B before C, as the sums were always done
    let mut configs: Vec<(Environments, Coeffs)> = Vec::new();
    if want_pitc || want_weak || want_pisc {
        let n = frame.len();
        let variant = cfg.piwsl_variant;
        let d1 = displacement_of(variant, rng, n, cfg.epsilon);
        let d2 = if want_pisc { Some(displacement_of(variant, rng, n, cfg.epsilon)) } else { None };
        let scale = if cfg.per_atom { 1.0 / n as f64 } else { 1.0 };
        let second_order = want_pitc && cfg.pitc_order == 2;
        let at = |d: Vec<Vec3>| -> Result<(Environments, Displaced)> {
            let env = model.frame_environments(&displaced(frame, &d))?;
            let (energy, forces) = if second_order {
                let p = model.predict(&env);
                (p.energy, Some(p.forces))
            } else {
                (model.energy_of(&env), None)
            };
            Ok((env, Displaced { d, energy, forces, scale, coeffs: Coeffs::new() }))
        };
        // the paper's final code gives PITC a displacement ε times smaller than PISC's, at its own configuration
        let own_pitc = (want_pitc && variant == PiwslVariant::PaperFinal).then(|| d1.iter().map(|x| x.map(|v| v * cfg.epsilon)).collect());
        let (env_c, mut c) = at(d1)?;
        match own_pitc {
            Some(d) => {
                let (env_p, mut p) = at(d)?;
                terms.pitc = pitc_term(pred_r, &mut p, w.pitc, norm, &mut cr);
                configs.push((env_p, p.coeffs));
            }
            None if want_pitc => terms.pitc = pitc_term(pred_r, &mut c, w.pitc, norm, &mut cr),
            None => {}
        }
        if want_weak {
            terms.weak = weak_term(frame, &mut c, w.weak, norm);
        }
        if let Some(d2) = d2 {
            let (loss, env_b, cb) = pisc_term(model, frame, &mut c, &d2, w.pisc, norm)?;
            terms.pisc = loss;
            configs.push((env_b, cb));
        }
        configs.push((env_c, c.coeffs));
    }
    if w.score > 0.0 && w.kt > 0.0 {
        let (loss, probes) = score_term(model, frame, pred_r, cfg.epsilon, w, norm, rng, &mut cr)?;
        terms.score = loss;
        configs.extend(probes);
    }
    let mut ensemble = EnsembleSample::default();
    let n = frame.len();
    if w.fep > 0.0 && w.kt > 0.0 {
        let env = model.frame_environments(&displaced(frame, &displacement(rng, n, cfg.epsilon)))?;
        ensemble.fep = Some((-(model.energy_of(&env) - pred_r.energy) / w.kt, env));
    }
    if w.conf_temperature > 0.0 && w.kt > 0.0 {
        let (curvature, probes) = laplacian_probe(model, frame, pred_r, cfg.epsilon, rng)?;
        let per_component = 1.0 / (3.0 * n as f64);
        ensemble.conf = Some(ConfSample {
            grad_sq: pred_r.forces.iter().flatten().map(|f| f * f).sum::<f64>() * per_component,
            kt_curvature: w.kt * curvature * per_component,
            forces: pred_r.forces.clone(),
            per_energy: w.kt * per_component / (cfg.epsilon * cfg.epsilon),
            probes,
        });
    }
    Ok(StructureLoss { terms, at_reference: cr, others: configs, ensemble })
}

/// The displaced configuration C = R + Δ¹ shared by PITC, weak labels and PISC.
struct Displaced {
    d: Vec<Vec3>,
    /// E(C).
    energy: f64,
    /// F(C), only for second-order PITC.
    forces: Option<Vec<Vec3>>,
    /// 1/N with `per_atom`, else 1.
    scale: f64,
    /// Coefficients of the primitive at C.
    coeffs: Coeffs,
}

/// Per-atom energy error (MSE or Huber): r = (E − E_ref)/N.
fn energy_term(frame: &Frame, pred: &Prediction, cfg: &LossConfig, weight: f64, norm: &Normalizers, cr: &mut Coeffs) -> f64 {
    let (Some(e), true) = (frame.energy, weight > 0.0) else { return 0.0 };
    let nf = frame.len() as f64;
    let r = (pred.energy - e) / nf;
    let (l, dl) = penalty(cfg.energy_loss, cfg.huber_delta, r);
    cr.a += weight * dl / nf / norm.n_energy;
    weight * l / norm.n_energy
}

/// A penalty on the error `r` and its derivative: r² or Huber's (r² within `delta`, 2·delta·|r| − delta² beyond).
fn penalty(kind: Penalty, delta: f64, r: f64) -> (f64, f64) {
    match kind {
        Penalty::Huber if r.abs() > delta => (2.0 * delta * r.abs() - delta * delta, 2.0 * delta * r.signum()),
        Penalty::Huber | Penalty::Mse => (r * r, 2.0 * r),
    }
}

/// Force-component error (squared or Huber, `loss.forces_loss`).
fn forces_term(frame: &Frame, pred: &Prediction, cfg: &LossConfig, weight: f64, norm: &Normalizers, cr: &mut Coeffs) -> f64 {
    let (Some(fref), true) = (&frame.forces, weight > 0.0) else { return 0.0 };
    let n = frame.len();
    let k = weight / norm.n_force_components;
    let mut loss = 0.0;
    let mut v = vec![[0.0; 3]; n];
    for i in 0..n {
        for a in 0..3 {
            let (l, dl) = penalty(cfg.forces_loss, cfg.forces_huber_delta, pred.forces[i][a] - fref[i][a]);
            loss += k * l;
            v[i][a] = k * dl;
        }
    }
    // Σ v·F = −D_v E
    cr.add_disp(n, -1.0, &v);
    loss
}

/// Squared stress-component error (fully periodic structures).
fn stress_term(frame: &Frame, pred: &Prediction, volume: Option<f64>, weight: f64, norm: &Normalizers, cr: &mut Coeffs) -> f64 {
    let (Some(sref), Some(s), Some(vol), true) = (&frame.stress, &pred.stress, volume, weight > 0.0) else { return 0.0 };
    let k = weight / (9.0 * norm.n_stress);
    let mut loss = 0.0;
    let mut c = [[0.0; 3]; 3];
    for a in 0..3 {
        for b in 0..3 {
            let d = s[a][b] - sref[a][b];
            loss += k * d * d;
            // σ_ab = (1/V) ∂E/∂ε_ab, i.e. D_{c/V} E = Σ c_ab σ_ab
            c[a][b] = 2.0 * k * d / vol;
        }
    }
    cr.strain = Some(c);
    loss
}

/// PITC: r = E(C) − [E(R) + D_Δ E(R)] (order 1) or E(C) − [E(R) + ½D_Δ E(R) + ½D_Δ E(C)] (order 2).
fn pitc_term(pred_r: &Prediction, c: &mut Displaced, weight: f64, norm: &Normalizers, cr: &mut Coeffs) -> f64 {
    let n = pred_r.forces.len();
    let d_r = directional(&pred_r.forces, &c.d);
    let target = match &c.forces {
        Some(fc) => pred_r.energy + 0.5 * d_r + 0.5 * directional(fc, &c.d),
        None => pred_r.energy + d_r,
    };
    let r = (c.energy - target) * c.scale;
    let loss = weight * r * r / norm.n_structures;
    let k = 2.0 * weight * r * c.scale / norm.n_structures;
    c.coeffs.a += k;
    cr.a -= k;
    if c.forces.is_some() {
        c.coeffs.add_disp(n, -0.5 * k, &c.d);
        cr.add_disp(n, -0.5 * k, &c.d);
    } else {
        cr.add_disp(n, -k, &c.d);
    }
    loss
}

/// Weak labels: r = E(C) − [E_ref(R) − Δ·F_ref(R)] (structures with energy and forces).
fn weak_term(frame: &Frame, c: &mut Displaced, weight: f64, norm: &Normalizers) -> f64 {
    let (e_ref, f_ref) = (frame.energy.unwrap_or(0.0), frame.forces.as_deref().unwrap_or(&[]));
    let r = (c.energy - (e_ref + directional(f_ref, &c.d))) * c.scale;
    c.coeffs.a += 2.0 * weight * r * c.scale / norm.n_weak;
    weight * r * r / norm.n_weak
}

/// PISC: r = E(C) − [E(B) + D_{Δ¹−Δ²} E(B)] with B = R + Δ²; returns the loss and B with its coefficients.
fn pisc_term(
    model: &Model,
    frame: &Frame,
    c: &mut Displaced,
    d2: &[Vec3],
    weight: f64,
    norm: &Normalizers,
) -> Result<(f64, Environments, Coeffs)> {
    let env_b = model.frame_environments(&displaced(frame, d2))?;
    let p_b = model.predict(&env_b);
    let diff: Vec<Vec3> = c.d.iter().zip(d2).map(|(a, b)| [a[0] - b[0], a[1] - b[1], a[2] - b[2]]).collect();
    let r = (c.energy - (p_b.energy + directional(&p_b.forces, &diff))) * c.scale;
    let loss = weight * r * r / norm.n_structures;
    let k = 2.0 * weight * r * c.scale / norm.n_structures;
    c.coeffs.a += k;
    let mut cb = Coeffs::new();
    cb.a -= k;
    cb.add_disp(frame.len(), -k, &diff);
    Ok((loss, env_b, cb))
}

/// Score matching (Hyvärinen 2005) for structures drawn from the canonical ensemble p ∝ exp(−E_true/k_BT):
/// per structure `½|∇E|² − k_BT·∇²E`, per force component. Its mean over the samples differs from
/// `½⟨|∇E − ∇E_true|²⟩` by a constant (integration by parts), so it is a force loss that needs no force labels;
/// unlike first-order PITC it rewards curvature where the data say there is some. The Laplacian is Hutchinson's
/// estimate with one ±1 probe v per component and a central second difference, vᵀHv ≈ [E(R+hv) − 2E(R) + E(R−hv)]/h²
/// (h = `loss.epsilon`). Returns the loss and the two probe configurations with their coefficients.
#[allow(clippy::too_many_arguments)]
fn score_term(
    model: &Model,
    frame: &Frame,
    pred_r: &Prediction,
    h: f64,
    w: &Weights,
    norm: &Normalizers,
    rng: &mut Rng,
    cr: &mut Coeffs,
) -> Result<(f64, Vec<(Environments, Coeffs)>)> {
    let n = frame.len();
    let k = w.score / (norm.n_structures * 3.0 * n as f64);
    let (curvature, [env_p, env_m]) = laplacian_probe(model, frame, pred_r, h, rng)?;
    let grad_sq: f64 = pred_r.forces.iter().flatten().map(|f| f * f).sum();
    // ∂/∂θ ½|F|² = F·∂F/∂θ = −∂/∂θ D_F E (F held fixed)
    let f: Vec<Vec3> = pred_r.forces.iter().map(|x| x.map(|c| k * c)).collect();
    cr.add_disp(n, -1.0, &f);
    let c = k * w.kt / (h * h);
    cr.a += 2.0 * c;
    let side = || Coeffs { a: -c, disp: None, strain: None };
    Ok((k * (0.5 * grad_sq - w.kt * curvature), vec![(env_p, side()), (env_m, side())]))
}

/// Hutchinson's estimate of ∇²E at R with one ±1 probe v per component and a central second difference,
/// vᵀHv ≈ [E(R+hv) − 2E(R) + E(R−hv)]/h²; returns it and the configurations R + hv, R − hv.
fn laplacian_probe(model: &Model, frame: &Frame, pred_r: &Prediction, h: f64, rng: &mut Rng) -> Result<(f64, [Environments; 2])> {
    let probe: Vec<Vec3> = (0..frame.len()).map(|_| [0, 1, 2].map(|_| if rng.uniform() < 0.5 { -h } else { h })).collect();
    let minus: Vec<Vec3> = probe.iter().map(|d| d.map(|x| -x)).collect();
    let (env_p, env_m) = (model.frame_environments(&displaced(frame, &probe))?, model.frame_environments(&displaced(frame, &minus))?);
    let curvature = (model.energy_of(&env_p) - 2.0 * pred_r.energy + model.energy_of(&env_m)) / (h * h);
    Ok((curvature, [env_p, env_m]))
}

/// The identities of the canonical ensemble that hold over samples, not per structure, as losses of a batch
/// (weights `w.fep`, `w.conf_temperature`): each structure's share was formed by [`structure_loss`]; here the
/// batch means are taken, and the primitives' coefficients of every structure are added to `parts`.
///
/// - FEP (Zwanzig): for Δ drawn independently of R, ⟨exp(−[E(R+Δ) − E(R)]/k_BT)⟩ = 1 (the integral of
///   exp(−E(R+Δ)/k_BT) over R is Z). Loss w·(ln M)² with M the batch mean; to second order in Δ it is the
///   configurational-temperature identity below. Unlike first-order PITC it does not penalise curvature, but a
///   flat surface satisfies it too (measured in `docs/energy-only.md`).
/// - Configurational temperature: ⟨|∇E|²⟩ = k_BT⟨∇²E⟩ (integration by parts). Loss w·(G − L)²/(G² + L²) with
///   G = ⟨|∇E|²⟩/3N and L = k_BT⟨∇²E⟩/3N: relative, so a flat surface does not meet it trivially, though a
///   uniformly scaled-down one does.
pub fn ensemble_identities(parts: &mut [StructureLoss], w: &Weights) -> LossTerms {
    let mut terms = LossTerms::default();
    let fep: Vec<(usize, f64)> = parts.iter().enumerate().filter_map(|(k, p)| p.ensemble.fep.as_ref().map(|(x, _)| (k, *x))).collect();
    if !fep.is_empty() {
        let top = fep.iter().fold(f64::NEG_INFINITY, |a, &(_, x)| a.max(x));
        let sum: f64 = fep.iter().map(|&(_, x)| (x - top).exp()).sum();
        let ln_mean = top + sum.ln() - (fep.len() as f64).ln();
        terms.fep = w.fep * ln_mean * ln_mean;
        for &(k, x) in &fep {
            // ∂(ln M)/∂θ = Σ_s p_s ∂x_s/∂θ, p_s the softmax of the exponents, ∂x_s = −(∂E(R+Δ) − ∂E(R))/k_BT
            let c = 2.0 * w.fep * ln_mean * (x - top).exp() / sum / w.kt;
            let part = &mut parts[k];
            part.at_reference.a += c;
            if let Some((_, env)) = part.ensemble.fep.take() {
                part.others.push((env, Coeffs { a: -c, disp: None, strain: None }));
            }
        }
    }
    let n_conf = parts.iter().filter(|p| p.ensemble.conf.is_some()).count();
    if n_conf > 0 {
        let mean = |f: &dyn Fn(&ConfSample) -> f64| parts.iter().filter_map(|p| p.ensemble.conf.as_ref().map(f)).sum::<f64>() / n_conf as f64;
        let (g, l) = (mean(&|c| c.grad_sq), mean(&|c| c.kt_curvature));
        // w·(G − L)²/(G² + L²): zero only at G = L, scale-free, with a gradient wherever G ≠ L (also when a
        // probe's curvature estimate L is negative)
        let (d, q) = (g - l, g * g + l * l + f64::MIN_POSITIVE);
        terms.conf_temperature = w.conf_temperature * d * d / q;
        let k = w.conf_temperature / (q * q * n_conf as f64);
        let (c_g, c_l) = (k * (2.0 * d * q - 2.0 * d * d * g), k * (-2.0 * d * q - 2.0 * d * d * l));
        for part in parts.iter_mut() {
            let Some(conf) = part.ensemble.conf.take() else { continue };
            let n = conf.forces.len();
            // ∂(|F|²/3N) = −2/(3N)·∂D_F E with F held fixed; ∂L_s = per_energy·(∂E(R+hv) − 2∂E(R) + ∂E(R−hv))
            let f: Vec<Vec3> = conf.forces.iter().map(|x| x.map(|v| 2.0 * c_g * v / (3.0 * n as f64))).collect();
            part.at_reference.add_disp(n, -1.0, &f);
            let a = c_l * conf.per_energy;
            part.at_reference.a -= 2.0 * a;
            for env in conf.probes {
                part.others.push((env, Coeffs { a, disp: None, strain: None }));
            }
        }
    }
    terms
}
