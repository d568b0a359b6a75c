//! The curvature probe beside the losses: how curved a trained model is along random directions, against the
//! curvature the data imply. First-order PITC penalises exactly this curvature (`docs/results.md`), so the
//! comparison says whether a model is rougher than the true surface (PITC can help) or flatter (it cannot).

use crate::error::Result;
use crate::frame::{displaced, Frame, Vec3};
use crate::model::Model;
use crate::rng::Rng;
use crate::train::loss::displacement;
use crate::units::KB;

/// Displacement amplitude (Å) of the probe: small enough that the cubic term is negligible.
pub const PROBE_EPSILON: f64 = 0.005;

/// Mean over `frames` of the model's curvature along one random centred direction Δ per frame,
/// 2[E(R+Δ) − E(R) + Δ·F(R)] / |Δ|² = ΔᵀHΔ/|Δ|² + O(ε) (eV/Å²); its expectation is tr(H)/3N.
pub fn random_direction_curvature(model: &Model, frames: &[Frame]) -> Result<f64> {
    let mut rng = Rng::new(0x5eed);
    let mut sum = 0.0;
    for f in frames {
        let d = displacement(&mut rng, f.positions.len(), PROBE_EPSILON);
        sum += directional_curvature(model, f, &d)?;
    }
    Ok(sum / frames.len().max(1) as f64)
}

/// 2[E(R+Δ) − E(R) + Δ·F(R)] / |Δ|² (eV/Å²): the first-order Taylor residual that PITC penalises, scaled to a
/// curvature.
pub fn directional_curvature(model: &Model, frame: &Frame, d: &[Vec3]) -> Result<f64> {
    let p = model.predict_frame(frame)?;
    let e_c = model.predict_frame(&displaced(frame, d))?.energy;
    let d_dot_f: f64 = d.iter().zip(&p.forces).map(|(a, b)| a[0] * b[0] + a[1] * b[1] + a[2] * b[2]).sum();
    let d2: f64 = d.iter().map(|a| a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sum();
    Ok(2.0 * (e_c - p.energy + d_dot_f) / d2)
}

/// The reference surface's mean curvature tr(H)/3N estimated from its forces: for canonical sampling at
/// temperature T, ⟨F_i²⟩ = k_BT ⟨∂²E/∂x_i²⟩ (integration by parts), so tr(H)/3N ≈ ⟨F²⟩ / k_BT (eV/Å²).
pub fn thermal_curvature(frames: &[Frame], temperature_k: f64) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for f in frames.iter().filter_map(|f| f.forces.as_ref()) {
        sum += f.iter().map(|x| x[0] * x[0] + x[1] * x[1] + x[2] * x[2]).sum::<f64>();
        n += 3 * f.len();
    }
    sum / n.max(1) as f64 / (KB * temperature_k)
}
