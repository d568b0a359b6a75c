//! `pilip check-forces`: analytic forces and stress against central finite differences of the energy.

use crate::error::Result;
use crate::frame::{strained, Frame};
use crate::model::Model;

/// How far the analytic derivatives are from finite differences on one structure.
#[derive(Clone, Debug)]
pub struct FdReport {
    /// Atoms in the structure.
    pub n_atoms: usize,
    /// The finite-difference step, Å (and strain).
    pub step: f64,
    /// Largest |F_analytic − F_fd| over all components (eV/Å) and where it occurred.
    pub max_force_error: f64,
    /// Atom of the largest force error.
    pub worst_atom: usize,
    /// Axis (0, 1, 2) of the largest force error.
    pub worst_axis: usize,
    /// Largest |F| component, eV/Å (the scale of the error).
    pub max_force: f64,
    /// Largest stress deviation (eV/Å³), periodic systems only.
    pub max_stress_error: Option<f64>,
}

impl std::fmt::Display for FdReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "finite-difference check: {} atoms, step {:e}", self.n_atoms, self.step)?;
        write!(
            f,
            "forces: max |analytic - fd| = {:.3e} eV/Å (atom {}, {}) ; max |F| = {:.3e} eV/Å ; relative {:.2e}",
            self.max_force_error,
            self.worst_atom,
            ["x", "y", "z"][self.worst_axis],
            self.max_force,
            self.max_force_error / self.max_force.max(1e-12)
        )?;
        if let Some(s) = self.max_stress_error {
            write!(f, "\nstress: max |analytic - fd| = {s:.3e} eV/Å³")?;
        }
        Ok(())
    }
}

/// Central differences with step `h` of the training-time model's energy against its forces (and stress, for
/// fully periodic structures).
pub fn finite_difference(model: &Model, frame: &Frame, h: f64) -> Result<FdReport> {
    let p = model.predict_frame(frame)?;
    let energy = |f: &Frame| -> Result<f64> { Ok(model.energy_of(&model.frame_environments(f)?)) };
    let mut rep = FdReport {
        n_atoms: frame.len(),
        step: h,
        max_force_error: 0.0,
        worst_atom: 0,
        worst_axis: 0,
        max_force: p.forces.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs())),
        max_stress_error: None,
    };
    for i in 0..frame.len() {
        for a in 0..3 {
            let mut fp = frame.clone();
            fp.positions[i][a] += h;
            let mut fm = frame.clone();
            fm.positions[i][a] -= h;
            let fd = -(energy(&fp)? - energy(&fm)?) / (2.0 * h);
            let err = (fd - p.forces[i][a]).abs();
            if err > rep.max_force_error {
                rep.max_force_error = err;
                rep.worst_atom = i;
                rep.worst_axis = a;
            }
        }
    }
    if let (Some(s), Some(v)) = (p.stress, frame.volume().filter(|_| frame.is_fully_periodic())) {
        let mut worst = 0.0f64;
        for a in 0..3 {
            for b in 0..3 {
                let fd = (energy(&strained(frame, a, b, h))? - energy(&strained(frame, a, b, -h))?) / (2.0 * h) / v;
                worst = worst.max((fd - s[a][b]).abs());
            }
        }
        rep.max_stress_error = Some(worst);
    }
    Ok(rep)
}
