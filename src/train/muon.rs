//! Muon for the networks' weight matrices (`training.optimizer = "muon"`).
//!
//! Adam scales each weight by its own gradient history and cannot see that a layer's gradient is dominated by a
//! few directions: a per-element network's gradient matrix has a handful of large singular values (the
//! directions the loss already follows) and many small ones. Muon (Jordan et al. 2024) keeps a momentum per
//! matrix and steps along its orthogonalised form U Vᵀ (all singular values ≈ 1), so the rare directions move
//! as fast as the common ones. On rMD17 ethanol it takes a third off the force error at equal epochs, with the
//! first-layer preconditioner still in place (whose coordinates Muon works in; without it Muon gains nothing);
//! `docs/benchmarks.md`, session 78. Biases, the output layers (vectors) and the bispectrum compression stay
//! with AdamW, as in the published recipe.
//!
//! U Vᵀ is approximated by five quintic Newton–Schulz steps; each step is a polynomial in GᵀG, so the iteration
//! runs on the small Gram matrix instead of on G ([`orthogonalise`]). The update is scaled by
//! `muon_scale · √max(rows, cols)`, which gives it about the root mean square of an AdamW update (Liu et al.
//! 2025), so the same learning rate and decoupled weight decay serve both.

use super::optim::Adam;
use crate::linalg::gemm;
use crate::model::Model;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// One weight matrix in the parameter vector: row-major `[rows][cols]` from `offset`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Matrix {
    /// First parameter.
    pub offset: usize,
    /// Rows (the layer's inputs).
    pub rows: usize,
    /// Columns (the layer's outputs).
    pub cols: usize,
}

impl Matrix {
    fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.rows * self.cols
    }
}

/// The momentum of the matrices Muon steps (per parameter, zero elsewhere; f32 like Adam's moments) and its
/// coefficients, with serialisable state so that a resumed run continues bit-for-bit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Muon {
    /// Momentum per parameter.
    pub momentum: Vec<f32>,
    /// Momentum coefficient.
    pub beta: f64,
    /// Update scale (× √max(rows, cols)).
    pub scale: f64,
}

/// The coefficients of the quintic Newton–Schulz step (Jordan et al. 2024): it maps singular values in (0, 1]
/// into about [0.7, 1.2] in five steps.
const NS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
/// Newton–Schulz steps per update.
const NS_STEPS: usize = 5;

impl Muon {
    /// Zero momentum for `n` parameters.
    pub fn new(n: usize, beta: f64, scale: f64) -> Self {
        Muon { momentum: vec![0.0; n], beta, scale }
    }

    /// Keeps the momentum of the first `n` parameters only (the others left the parameter vector).
    pub fn truncate(&mut self, n: usize) {
        self.momentum.truncate(n);
    }

    /// Steps the `matrices` of `params` (sorted, disjoint) with gradient `grad_scale · grad`, rate `lr` and
    /// decoupled weight decay `wd`: M ← βM + g, W ← W(1 − lr·wd) − lr · scale · √max(rows, cols) · NS(g + βM)
    /// (Nesterov's form). The other parameters are left as they are (for [`Adam::step`] with [`adam_mask`]).
    /// Each matrix is one task on the pool; the result does not depend on the number of threads.
    pub fn step(&mut self, matrices: &[Matrix], params: &mut [f64], grad: &[f64], grad_scale: f64, lr: f64, wd: f64) {
        let (beta, scale) = (self.beta, self.scale);
        let mut rest: &mut [f32] = &mut self.momentum;
        let mut at = 0;
        let mut momenta = Vec::with_capacity(matrices.len());
        for m in matrices {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(m.offset - at);
            let (mine, tail) = tail.split_at_mut(m.rows * m.cols);
            momenta.push(mine);
            (rest, at) = (tail, m.offset + m.rows * m.cols);
        }
        let updates: Vec<Vec<f64>> = matrices
            .par_iter()
            .zip(momenta)
            .map(|(m, momentum)| {
                let g = &grad[m.range()];
                let mut u: Vec<f64> = momentum
                    .iter_mut()
                    .zip(g)
                    .map(|(v, &g)| {
                        let g = g * grad_scale;
                        let new = beta * *v as f64 + g;
                        *v = new as f32;
                        g + beta * new
                    })
                    .collect();
                orthogonalise(&mut u, m.rows, m.cols);
                let s = scale * (m.rows.max(m.cols) as f64).sqrt();
                u.iter_mut().for_each(|x| *x *= s);
                u
            })
            .collect();
        for (m, u) in matrices.iter().zip(updates) {
            for (p, u) in params[m.range()].iter_mut().zip(u) {
                *p = *p * (1.0 - lr * wd) - lr * u;
            }
        }
    }
}

/// The networks' weight matrices Muon steps: those of more than one row and column (not the output layers)
/// whose parameters are all trainable.
pub fn matrices(model: &Model, trainable: Option<&[bool]>) -> Vec<Matrix> {
    model
        .network_matrices()
        .into_iter()
        .map(|(offset, rows, cols, _)| Matrix { offset, rows, cols })
        .filter(|m| m.rows > 1 && m.cols > 1 && trainable.is_none_or(|t| t.get(m.range()).is_some_and(|t| t.iter().all(|&x| x))))
        .collect()
}

/// Which of `n` parameters [`Adam::step`] steps beside Muon: those `trainable` marks (all if `None`) outside the
/// `matrices`.
pub fn adam_mask(n: usize, matrices: &[Matrix], trainable: Option<&[bool]>) -> Vec<bool> {
    let mut mask = trainable.map_or_else(|| vec![true; n], |t| t[..n.min(t.len())].to_vec());
    mask.resize(n, false);
    for m in matrices {
        mask[m.range()].iter_mut().for_each(|x| *x = false);
    }
    mask
}

/// Replaces `g` (`[rows][cols]`) by the result of [`NS_STEPS`] quintic Newton–Schulz steps on g/‖g‖ (an
/// approximation of U Vᵀ of its SVD). A step X ← aX + b(XXᵀ)X + c(XXᵀ)²X is a polynomial in the Gram matrix,
/// so with k = min(rows, cols) and S = GᵀG (tall) the iterate is X_t = G Q_t with the k × k recursion
/// Q_{t+1} = Q_t (a + bM + cM²), M = S Q_t²: two products of G's size instead of two per step. The products run
/// in f32 (published Muon runs them in bfloat16; the update's direction needs no more).
fn orthogonalise(g: &mut [f64], rows: usize, cols: usize) {
    let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
    if !(norm > 0.0 && norm.is_finite()) {
        g.iter_mut().for_each(|x| *x = 0.0);
        return;
    }
    let x: Vec<f32> = g.iter().map(|&v| (v / norm) as f32).collect();
    let (a, b, c) = (NS.0 as f32, NS.1 as f32, NS.2 as f32);
    let tall = rows >= cols;
    let k = rows.min(cols);
    let mut s = vec![0.0f32; k * k];
    if tall {
        gemm(cols, rows, cols, &x, true, &x, false, 0.0, &mut s);
    } else {
        gemm(rows, cols, rows, &x, false, &x, true, 0.0, &mut s);
    }
    let mut q = vec![0.0f32; k * k];
    (0..k).for_each(|i| q[i * k + i] = 1.0);
    let (mut sq, mut m, mut m2) = (vec![0.0f32; k * k], vec![0.0f32; k * k], vec![0.0f32; k * k]);
    for _ in 0..NS_STEPS {
        // Q, S and M are polynomials in S: they commute and are symmetric
        gemm(k, k, k, &s, false, &q, false, 0.0, &mut sq);
        gemm(k, k, k, &sq, false, &q, false, 0.0, &mut m);
        gemm(k, k, k, &m, false, &m, false, 0.0, &mut m2);
        m2.iter_mut().zip(&m).for_each(|(m2, &m)| *m2 = b * m + c * *m2);
        (0..k).for_each(|i| m2[i * k + i] += a);
        gemm(k, k, k, &q, false, &m2, false, 0.0, &mut m);
        std::mem::swap(&mut q, &mut m);
    }
    let mut out = vec![0.0f32; g.len()];
    if tall {
        gemm(rows, cols, cols, &x, false, &q, false, 0.0, &mut out);
    } else {
        gemm(rows, rows, cols, &q, false, &x, false, 0.0, &mut out);
    }
    g.iter_mut().zip(&out).for_each(|(g, &o)| *g = o as f64);
}

/// The optimiser state for `n` parameters as `training.optimizer` asks: Adam's (AdamW's for Muon's other
/// parameters) and, for Muon, its momentum.
pub fn optimizer_state(t: &crate::config::TrainingConfig, n: usize) -> (Adam, Option<Muon>) {
    use crate::config::Optimizer;
    let adam = Adam::new(n, t.optimizer != Optimizer::Adam, t.weight_decay);
    let muon = (t.optimizer == Optimizer::Muon).then(|| Muon::new(n, t.muon_momentum, t.muon_scale));
    (adam, muon)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five Newton–Schulz steps on the matrix itself (the textbook form the Gram recursion replaces).
    fn direct(g: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let norm = g.iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut x: Vec<f64> = g.iter().map(|v| v / norm).collect();
        let (a, b, c) = NS;
        for _ in 0..NS_STEPS {
            let mut xxt = vec![0.0; rows * rows];
            gemm(rows, cols, rows, &x, false, &x, true, 0.0, &mut xxt);
            let mut p = vec![0.0; rows * rows];
            gemm(rows, rows, rows, &xxt, false, &xxt, false, 0.0, &mut p);
            p.iter_mut().zip(&xxt).for_each(|(p, s)| *p = b * s + c * *p);
            let mut next: Vec<f64> = x.iter().map(|v| a * v).collect();
            gemm(rows, rows, cols, &p, false, &x, false, 1.0, &mut next);
            x = next;
        }
        x
    }

    #[test]
    fn the_gram_recursion_is_the_newton_schulz_iteration_and_orthogonalises() {
        let mut rng = crate::rng::Rng::new(2);
        for (r, c) in [(40, 8), (8, 40), (16, 16)] {
            let g: Vec<f64> = (0..r * c).map(|_| rng.normal()).collect();
            let mut o = g.clone();
            orthogonalise(&mut o, r, c);
            let d = direct(&g, r, c);
            let err = o.iter().zip(&d).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-3, "{r}x{c}: {err}"); // f32 products
            // a tall or wide random matrix is well conditioned: its singular values all land near 1 (a square
            // one has some near 0, which five steps do not lift all the way)
            if r != c {
                let k = r.min(c);
                let mut gram = vec![0.0; k * k];
                if r > c {
                    gemm(c, r, c, &o, true, &o, false, 0.0, &mut gram);
                } else {
                    gemm(r, c, r, &o, false, &o, true, 0.0, &mut gram);
                }
                (0..k).for_each(|i| assert!((gram[i * k + i] - 1.0).abs() < 0.5, "{r}x{c}: {}", gram[i * k + i]));
            }
        }
        let mut zero = vec![0.0; 12];
        orthogonalise(&mut zero, 3, 4);
        assert!(zero.iter().all(|&x| x == 0.0));
    }

    /// A step moves exactly the matrices, by the scaled orthogonal update plus the decay; the momentum
    /// accumulates; and the parameters between and after the matrices are left to Adam's mask.
    #[test]
    fn a_step_moves_the_matrices_only_and_keeps_momentum() {
        let mut rng = crate::rng::Rng::new(5);
        let matrices = [Matrix { offset: 3, rows: 6, cols: 2 }, Matrix { offset: 17, rows: 2, cols: 3 }];
        let n = 26;
        let p0: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let g: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mut muon = Muon::new(n, 0.9, 0.2);
        let mut p = p0.clone();
        muon.step(&matrices, &mut p, &g, 0.5, 0.1, 0.01);
        let mask = adam_mask(n, &matrices, None);
        for i in 0..n {
            assert_eq!(p[i] == p0[i], mask[i], "parameter {i}");
            assert_eq!(muon.momentum[i] == 0.0, mask[i], "momentum {i}");
            if !mask[i] {
                assert!((muon.momentum[i] as f64 - 0.5 * g[i]).abs() < 1e-6);
            }
        }
        // the first matrix's update: −lr·(0.2·√6·NS((1 + β)·0.5·g) + wd·W)
        let m = matrices[0];
        let mut u: Vec<f64> = g[m.range()].iter().map(|g| 1.9 * 0.5 * g).collect();
        orthogonalise(&mut u, m.rows, m.cols);
        for (i, j) in m.range().enumerate() {
            let want = p0[j] * (1.0 - 0.1 * 0.01) - 0.1 * 0.2 * 6f64.sqrt() * u[i];
            assert!((p[j] - want).abs() < 1e-12, "{j}: {} {want}", p[j]); // the same f32 products
        }
        let frozen: Vec<bool> = (0..n).map(|i| i < 10).collect();
        assert_eq!(adam_mask(n, &matrices, Some(&frozen)).iter().filter(|&&x| x).count(), 3);
    }
}

