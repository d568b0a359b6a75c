//! Loss terms for one structure and their parameter gradient.
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

use crate::config::LossConfig;
use crate::error::Result;
use crate::frame::{Frame, Mat3, Vec3};
use crate::model::Model;
use crate::rng::Rng;

/// Names of the loss terms, in log order.
pub const TERMS: [&str; 6] = ["energy", "forces", "stress", "pitc", "pisc", "weak"];

/// Batch-level normalisers so that each term is a mean over the batch.
#[derive(Clone, Copy, Debug)]
pub struct Normalizers {
    pub n_energy: f64,
    pub n_force_components: f64,
    pub n_stress: f64,
    pub n_structures: f64,
    pub n_weak: f64,
}

impl Normalizers {
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
    pub energy: f64,
    pub forces: f64,
    pub stress: f64,
    pub pitc: f64,
    pub pisc: f64,
    pub weak: f64,
}

impl Weights {
    pub fn at_epoch(cfg: &LossConfig, epoch: usize) -> Self {
        let ramp = if cfg.ramp_epochs == 0 { 1.0 } else { ((epoch + 1) as f64 / cfg.ramp_epochs as f64).min(1.0) };
        Weights {
            energy: cfg.energy_weight,
            forces: cfg.forces_weight,
            stress: cfg.stress_weight,
            pitc: cfg.pitc_weight * ramp,
            pisc: cfg.pisc_weight * ramp,
            weak: cfg.weak_label_weight * ramp,
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
    let mut d: Vec<Vec3> = (0..n).map(|_| [0, 1, 2].map(|_| eps * (2.0 * rng.uniform() - 1.0))).collect();
    for a in 0..3 {
        let mean = d.iter().map(|x| x[a]).sum::<f64>() / n as f64;
        d.iter_mut().for_each(|x| x[a] -= mean);
    }
    d
}

/// `frame` with every atom moved by `d`.
pub(crate) fn displaced(frame: &Frame, d: &[Vec3]) -> Frame {
    let mut g = frame.clone();
    for (x, y) in g.positions.iter_mut().zip(d) {
        for a in 0..3 {
            x[a] += y[a];
        }
    }
    g
}

/// −Σ δ·F = derivative of E along δ.
fn directional(forces: &[Vec3], d: &[Vec3]) -> f64 {
    -forces.iter().zip(d).map(|(f, x)| f[0] * x[0] + f[1] * x[1] + f[2] * x[2]).sum::<f64>()
}

/// Loss values (weighted, as in `TERMS`) of one structure; the parameter gradient is added into `grad`.
#[allow(clippy::too_many_arguments)]
pub fn structure_loss_and_grad(
    model: &Model,
    frame: &Frame,
    cfg: &LossConfig,
    w: &Weights,
    norm: &Normalizers,
    rng: &mut Rng,
    grad: Option<&mut [f64]>,
) -> Result<[f64; 6]> {
    let n = frame.len();
    let nf = n as f64;
    let mut loss = [0.0; 6];
    let env_r = model.frame_environments(frame)?;
    let pred_r = model.predict(&env_r);
    let mut cr = Coeffs::new();

    if let (Some(e), true) = (frame.energy, w.energy > 0.0) {
        let r = (pred_r.energy - e) / nf;
        let (l, dl) = if cfg.energy_loss == "huber" {
            let d = cfg.huber_delta;
            if r.abs() <= d { (r * r, 2.0 * r) } else { (2.0 * d * r.abs() - d * d, 2.0 * d * r.signum()) }
        } else {
            (r * r, 2.0 * r)
        };
        loss[0] = w.energy * l / norm.n_energy;
        cr.a += w.energy * dl / nf / norm.n_energy;
    }
    if let (Some(fref), true) = (&frame.forces, w.forces > 0.0) {
        let k = w.forces / norm.n_force_components;
        let mut v = vec![[0.0; 3]; n];
        for i in 0..n {
            for a in 0..3 {
                let d = pred_r.forces[i][a] - fref[i][a];
                loss[1] += k * d * d;
                v[i][a] = 2.0 * k * d;
            }
        }
        // Σ v·F = −D_v E
        cr.add_disp(n, -1.0, &v);
    }
    if let (Some(sref), Some(s), Some(vol), true) = (&frame.stress, &pred_r.stress, env_r.volume, w.stress > 0.0) {
        let k = w.stress / (9.0 * norm.n_stress);
        let mut c = [[0.0; 3]; 3];
        for a in 0..3 {
            for b in 0..3 {
                let d = s[a][b] - sref[a][b];
                loss[2] += k * d * d;
                // σ_ab = (1/V) ∂E/∂ε_ab, i.e. D_{c/V} E = Σ c_ab σ_ab
                c[a][b] = 2.0 * k * d / vol;
            }
        }
        cr.strain = Some(c);
    }

    let want_pitc = w.pitc > 0.0;
    let want_weak = w.weak > 0.0 && frame.energy.is_some() && frame.forces.is_some();
    let want_pisc = w.pisc > 0.0;
    let mut configs: Vec<(crate::model::Environments, Coeffs)> = Vec::new();
    if want_pitc || want_weak || want_pisc {
        let scale = if cfg.per_atom { 1.0 / nf } else { 1.0 };
        let d1 = displacement(rng, n, cfg.epsilon);
        let d2 = if want_pisc { Some(displacement(rng, n, cfg.epsilon)) } else { None };
        let env_c = model.frame_environments(&displaced(frame, &d1))?;
        let second_order = want_pitc && cfg.pitc_order == 2;
        let (e_c, f_c) = if second_order {
            let p = model.predict(&env_c);
            (p.energy, Some(p.forces))
        } else {
            (model.energy_of(&env_c), None)
        };
        let mut cc = Coeffs::new();
        if want_pitc {
            let d_r = directional(&pred_r.forces, &d1);
            let target = match &f_c {
                Some(fc) => pred_r.energy + 0.5 * d_r + 0.5 * directional(fc, &d1),
                None => pred_r.energy + d_r,
            };
            let r = (e_c - target) * scale;
            loss[3] = w.pitc * r * r / norm.n_structures;
            let k = 2.0 * w.pitc * r * scale / norm.n_structures;
            cc.a += k;
            cr.a -= k;
            if second_order {
                cc.add_disp(n, -0.5 * k, &d1);
                cr.add_disp(n, -0.5 * k, &d1);
            } else {
                cr.add_disp(n, -k, &d1);
            }
        }
        if want_weak {
            let (e_ref, f_ref) = (frame.energy.unwrap_or(0.0), frame.forces.as_deref().unwrap_or(&[]));
            let r = (e_c - (e_ref + directional(f_ref, &d1))) * scale;
            loss[5] = w.weak * r * r / norm.n_weak;
            cc.a += 2.0 * w.weak * r * scale / norm.n_weak;
        }
        if let Some(d2) = d2 {
            let env_b = model.frame_environments(&displaced(frame, &d2))?;
            let p_b = model.predict(&env_b);
            let diff: Vec<Vec3> = d1.iter().zip(&d2).map(|(a, b)| [a[0] - b[0], a[1] - b[1], a[2] - b[2]]).collect();
            let r = (e_c - (p_b.energy + directional(&p_b.forces, &diff))) * scale;
            loss[4] = w.pisc * r * r / norm.n_structures;
            let k = 2.0 * w.pisc * r * scale / norm.n_structures;
            cc.a += k;
            let mut cb = Coeffs::new();
            cb.a -= k;
            cb.add_disp(n, -k, &diff);
            configs.push((env_b, cb));
        }
        configs.push((env_c, cc));
    }
    if let Some(grad) = grad {
        model.accumulate_param_grad(&env_r, cr.a, cr.disp.as_deref(), cr.strain.as_ref(), grad);
        for (env, c) in &configs {
            model.accumulate_param_grad(env, c.a, c.disp.as_deref(), c.strain.as_ref(), grad);
        }
    }
    Ok(loss)
}
