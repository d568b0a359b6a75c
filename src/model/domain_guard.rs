//! The domain guard: an energy penalty on atomic environments unlike any of the training set's, so that MD
//! does not wander far out of the data into a minimum the networks invented there.
//!
//! A network's energy outside the training data is an extrapolation; on rMD17 salicylic acid it puts a second
//! minimum where the hydroxyl proton sits on the carbonyl oxygen, which the reference method does not have, and
//! 500 K MD falls into it within tens of picoseconds. The guard measures how far an atom's standardised network
//! inputs x lie from the subspace the training atoms of its element span: with V the `components` leading
//! principal directions of those inputs, the residual x − VᵀVx is the classic out-of-distribution measure of a
//! PCA. Its squared length is estimated by a fixed random sketch, `s = |M x|²` with M = S (I − VᵀV) and S a
//! Gaussian matrix of `sketch` rows scaled by 1/√rows (Johnson–Lindenstrauss): a product with `sketch` rows
//! instead of `components` per atom, which is what makes the guard cheap enough for MD, and a smooth quadratic
//! form like the exact residual. Where s exceeds `onset` times the largest score of the element's training
//! atoms, the atom's energy rises as `strength · (s/s_max − onset)²` (eV; zero with a zero gradient at the onset,
//! so forces stay continuous and conservative). Training atoms are untouched (s ≤ s_max); the guard is fitted
//! after training and changes no network weight.

use serde::{Deserialize, Serialize};

/// Training atoms an element needs per principal direction for a guard (fewer: its atoms get none).
pub const MIN_ATOMS_PER_DIRECTION: usize = 4;

/// The fitted guard of a descriptor-and-networks model (per species, in its network's input order).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainGuard {
    /// Where the penalty starts, in units of the largest training score of the element.
    pub onset: f64,
    /// eV: the penalty of an atom at twice the onset's distance past it, per unit of the squared excess.
    pub strength: f64,
    /// Per species: the sketch M = S (I − VᵀV) of the residual off the leading principal directions V of the
    /// standardised network inputs, `[rows][inputs]` row-major.
    pub sketch: Vec<Vec<f64>>,
    /// Per species: how many principal directions V holds (recorded for the metadata).
    pub components: Vec<usize>,
    /// Per species: the largest score s of its training atoms (1 where it had none).
    pub reference: Vec<f64>,
}

impl DomainGuard {
    /// Fits the guard to the standardised network inputs of each species' training atoms (`inputs[s]`,
    /// `[atoms][n_inputs[s]]` row-major): the `components` leading principal directions (at most half the
    /// inputs; none, and no sketch, for an element with fewer than [`MIN_ATOMS_PER_DIRECTION`] × `components`
    /// atoms) by orthogonal iteration on the uncentred second-moment matrix (the standardisation has centred
    /// the inputs), the sketch of `sketch_rows` rows (a fixed seed), then the largest score.
    pub fn fit(inputs: &[Vec<f64>], n_inputs: &[usize], components: usize, sketch_rows: usize, onset: f64, strength: f64) -> Self {
        let mut guard = DomainGuard { onset, strength, sketch: Vec::new(), components: Vec::new(), reference: Vec::new() };
        for (s, (x, &n)) in inputs.iter().zip(n_inputs).enumerate() {
            let atoms = x.len().checked_div(n).unwrap_or(0);
            // an element needs many more atoms than directions: with few, the directions span the atoms
            // themselves, their residuals vanish and s_max says nothing about the next atom; it gets no guard
            let k = if atoms >= MIN_ATOMS_PER_DIRECTION * components { components.min(n / 2) } else { 0 };
            let sketch_rows = if k == 0 { 0 } else { sketch_rows };
            let v = leading_directions(x, atoms, n, k);
            // M = S − (S Vᵀ) V
            let mut rng = crate::rng::Rng::new(0x5eed_0f9a_4d00 ^ s as u64);
            let norm = 1.0 / (sketch_rows.max(1) as f64).sqrt();
            let mut m: Vec<f64> = (0..sketch_rows * n).map(|_| norm * rng.normal()).collect();
            if k > 0 {
                let mut sv = vec![0.0; sketch_rows * k];
                crate::linalg::gemm(sketch_rows, n, k, &m, false, &v, true, 0.0, &mut sv);
                // C = A·B + β·C with β = −1 gives (S Vᵀ) V − S: negated, M
                crate::linalg::gemm(sketch_rows, k, n, &sv, false, &v, false, -1.0, &mut m);
                m.iter_mut().for_each(|a| *a = -*a);
            }
            let s_max = (0..atoms).map(|a| score(&m, &x[a * n..(a + 1) * n]).0).fold(0.0f64, f64::max);
            guard.sketch.push(m);
            guard.components.push(k);
            guard.reference.push(if s_max > 0.0 { s_max } else { 1.0 });
        }
        guard
    }

    /// The penalty (eV) of one atom of species `s` with network inputs `x`, and, if `grad` is given, its
    /// gradient with respect to `x` added into `grad`.
    pub fn energy(&self, s: usize, x: &[f64], grad: Option<&mut [f64]>) -> f64 {
        let (score, p) = score(&self.sketch[s], x);
        let excess = score / self.reference[s] - self.onset;
        if excess <= 0.0 {
            return 0.0;
        }
        if let Some(g) = grad {
            // ∂s/∂x = 2 Mᵀ (M x)
            let c = 4.0 * self.strength * excess / self.reference[s];
            for (row, pj) in self.sketch[s].chunks_exact(x.len().max(1)).zip(&p) {
                g.iter_mut().zip(row).for_each(|(gi, m)| *gi += c * pj * m);
            }
        }
        self.strength * excess * excess
    }

    /// Checks the shapes against the networks' input counts.
    pub fn check(&self, n_inputs: &[usize]) -> Result<(), String> {
        let ns = n_inputs.len();
        if self.sketch.len() != ns || self.reference.len() != ns || self.components.len() != ns {
            return Err(format!("domain guard has {} species, the model {ns}", self.sketch.len()));
        }
        for (s, (m, &n)) in self.sketch.iter().zip(n_inputs).enumerate() {
            if n > 0 && m.len() % n != 0 {
                return Err(format!("domain guard sketch of species {s}: {} values are not rows of {n} inputs", m.len()));
            }
            if self.reference[s].is_nan() || self.reference[s] <= 0.0 || m.iter().any(|x| !x.is_finite()) {
                return Err(format!("domain guard of species {s}: reference {} must be > 0 and the sketch finite", self.reference[s]));
            }
        }
        if !(self.onset >= 0.0 && self.strength >= 0.0 && self.onset.is_finite() && self.strength.is_finite()) {
            return Err(format!("domain guard onset {} and strength {} must be finite and ≥ 0", self.onset, self.strength));
        }
        Ok(())
    }
}

/// The score |M x|² of one atom with inputs `x` under the sketch `m` (`[rows][x.len()]`), and the sketch values M x.
fn score(m: &[f64], x: &[f64]) -> (f64, Vec<f64>) {
    let p: Vec<f64> = m.chunks_exact(x.len().max(1)).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect();
    (p.iter().map(|v| v * v).sum(), p)
}

/// The `k` leading eigenvectors (rows, orthonormal) of `XᵀX` for `x` of `atoms` rows of `n` (orthogonal iteration
/// from a fixed start, `linalg::leading_eigen`). The score only depends on the subspace, which 30 iterations settle
/// to well within what the onset's factor of 2 can notice.
fn leading_directions(x: &[f64], atoms: usize, n: usize, k: usize) -> Vec<f64> {
    if k == 0 {
        return Vec::new();
    }
    let mut c = vec![0.0; n * n];
    crate::linalg::gemm(n, atoms, n, x, true, x, false, 0.0, &mut c);
    let mut rng = crate::rng::Rng::new(0x5eed_0f9a_4d00);
    let start = (0..k * n).map(|_| rng.normal()).collect();
    crate::linalg::leading_eigen(&c, n, start, k, 30).1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs that vary in two of five directions only: the guard learns those two, is zero on the data and
    /// grows off them, and its gradient matches finite differences.
    #[test]
    fn guard_is_zero_on_the_data_and_rises_off_it_with_exact_gradient() {
        let mut rng = crate::rng::Rng::new(3);
        let n = 5;
        let mut x = Vec::new();
        for _ in 0..200 {
            let (a, b) = (rng.normal(), rng.normal());
            let noise: Vec<f64> = (0..n).map(|_| 1e-3 * rng.normal()).collect();
            x.extend([a + b + noise[0], a - b + noise[1], 0.5 * a + noise[2], noise[3], 2.0 * b + noise[4]]);
        }
        let g = DomainGuard::fit(&[x.clone()], &[n], 2, 8, 2.0, 0.1);
        assert!(g.check(&[n]).is_ok());
        for a in 0..200 {
            assert_eq!(g.energy(0, &x[a * n..(a + 1) * n], None), 0.0);
        }
        // a point on the data's plane plus an orthogonal step far beyond the training residuals
        let p = [0.3, -0.2, 0.4, 0.05, 0.1];
        let e = g.energy(0, &p, None);
        assert!(e > 1.0, "off-domain penalty {e}");
        let mut grad = vec![0.0; n];
        g.energy(0, &p, Some(&mut grad));
        for i in 0..n {
            let h = 1e-6;
            let (mut a, mut b) = (p, p);
            a[i] += h;
            b[i] -= h;
            let fd = (g.energy(0, &a, None) - g.energy(0, &b, None)) / (2.0 * h);
            assert!((fd - grad[i]).abs() <= 1e-5 * (1.0 + fd.abs()), "component {i}: {fd} vs {}", grad[i]);
        }
        // too few atoms for two directions (7 < 4 × 2): no guard for the element, whatever the input
        let few = DomainGuard::fit(&[x[..7 * n].to_vec()], &[n], 2, 8, 2.0, 0.1);
        assert!(few.sketch[0].is_empty() && few.components[0] == 0);
        assert_eq!(few.energy(0, &p, None), 0.0);
    }
}
