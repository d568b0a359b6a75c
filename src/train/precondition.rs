//! A preconditioner for the networks' first layers, as a change of the optimiser's coordinates.
//!
//! The standardised descriptor components of an element are strongly correlated: on rMD17 ethanol the
//! covariance of the hydrogen networks' 1427 inputs has eigenvalues 49, 23, 10, 3.9, … and 98 % of its trace in
//! 16 directions, against ≤ 1 per component and ~1e-4 of the largest at the 65th direction. A first
//! layer trained on such inputs is ill-conditioned along the same directions (its Hessian is close to the inputs'
//! covariance), and Adam's per-weight scaling cannot see a correlation between weights.
//!
//! The optimiser therefore works on W̃ with W = P W̃, P = I + U D Uᵀ: U holds the leading eigenvectors of the
//! inputs' covariance (per element), and D shrinks each such direction of variance λ > c to variance c
//! (d = √(c/λ) − 1). Gradient descent in W̃ moves W by P² ∇W: a step along a high-variance direction is scaled by
//! c/λ, the Newton step of a linear layer there; all other directions are left as they are. The model itself is
//! unchanged — it holds W = P W̃, so checkpoints, export and every other consumer see ordinary weights — and the
//! cost per step is four products of the first layer's size with the rank (in f64, toluene 8 %, uracil, whose
//! four networks read up to 2 600 inputs with up to 48 directions, 25 % of an rMD17 training step; during f32
//! training they run in f32, half that; the gain at equal epochs is 16–23 %, `docs/benchmarks.md`, sessions 49,
//! 53 and 54).
//!
//! The covariance is the first layer's curvature for the energy loss; the force loss sees the inputs' tangents
//! instead (a force is linear in W with J = ∂x/∂r where the energy has x). With `training.precondition_tangents`
//! = β the directions come from a mix of both ([`curvature_estimate`]): a further 3–12 % at equal epochs on
//! rMD17 (session 50).

use crate::linalg::{gemm, Real};
use crate::model::LayerWeights;
use crate::rng::Rng;
use rayon::prelude::*;

/// One network's first layer: where its weights sit in the parameter vector and the low-rank P.
#[derive(Clone, Debug)]
struct Block {
    /// The network (species index) whose first layer this is.
    network: usize,
    offset: usize,
    n_in: usize,
    n_out: usize,
    /// Leading eigenvectors of the inputs' covariance, `[rank][n_in]`, orthonormal rows.
    u: Vec<f64>,
    /// `u` rounded to f32, for the map of f32 training weights.
    u_f32: Vec<f32>,
    /// √(c/λ) per direction: the factor of P along it (1 + d).
    factor: Vec<f64>,
}

/// The coordinate change of all first layers ([module docs](self)).
#[derive(Clone, Debug, Default)]
pub struct FirstLayerPreconditioner {
    blocks: Vec<Block>,
}

impl FirstLayerPreconditioner {
    /// Fits P per network from its inputs over the training atoms (`inputs[s]`, `[atoms][n_in]`), optionally
    /// mixed with the inputs' tangents (`tangents[s]`, the same layout; [`curvature_estimate`]), and its layer
    /// `(offset, n_in, width)` in the parameter vector: at most `rank` directions, those of variance above
    /// `variance` (the standardised inputs have variances ≤ 1 each). `None` when no direction qualifies.
    pub fn fit(inputs: &[Vec<f64>], tangents: Option<(&[Vec<f64>], f64)>, layers: &[(usize, usize, usize)], rank: usize, variance: f64, seed: u64) -> Option<Self> {
        let blocks: Vec<Block> = inputs
            .iter()
            .zip(layers)
            .enumerate()
            .filter_map(|(s, (x, &(offset, n_in, n_out)))| {
                let n = x.len() / n_in.max(1);
                if n < 2 || rank == 0 {
                    return None;
                }
                let c = curvature_estimate(x, tangents.map(|(t, w)| (t[s].as_slice(), w)), n_in);
                let (values, vectors) = leading_eigen(&c, n_in, rank, seed);
                let keep = values.iter().take_while(|&&l| l > variance).count();
                (keep > 0).then(|| Block {
                    network: s,
                    offset,
                    n_in,
                    n_out,
                    u: vectors[..keep * n_in].to_vec(),
                    u_f32: vectors[..keep * n_in].iter().map(|&u| u as f32).collect(),
                    factor: values[..keep].iter().map(|l| (variance / l).sqrt()).collect(),
                })
            })
            .collect();
        (!blocks.is_empty()).then_some(FirstLayerPreconditioner { blocks })
    }

    /// Directions per network (for the log).
    pub fn ranks(&self) -> Vec<usize> {
        self.blocks.iter().map(|b| b.factor.len()).collect()
    }

    /// Model parameters from the optimiser's: W = P W̃ in every block.
    pub fn to_model(&self, p: &mut [f64]) {
        self.apply(p, |f| f - 1.0);
    }

    /// The optimiser's parameters from the model's: W̃ = P⁻¹ W (once per epoch).
    pub fn to_optimizer(&self, p: &mut [f64]) {
        self.apply(p, |f| 1.0 / f - 1.0);
    }

    /// The gradient in the optimiser's coordinates from the model's: ∇W̃ = Pᵀ ∇W = P ∇W. With `f32` (a gradient
    /// the f32 training passes made) the correction U D Uᵀ ∇W is computed in f32 and added to the f64 gradient:
    /// half the arithmetic, at the precision the gradient had.
    pub fn gradient_to_optimizer(&self, g: &mut [f64], f32: bool) {
        if !f32 {
            return self.apply(g, |f| f - 1.0);
        }
        self.jobs(g).into_par_iter().for_each(|(b, w)| {
            let mut w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
            let y = scaled_projection(b, &b.u_f32, &w32, |f| f - 1.0);
            w32.fill(0.0);
            f32::acc_product_tn(b.n_in, b.factor.len(), b.n_out, &b.u_f32, &y, &mut w32);
            w.iter_mut().zip(&w32).for_each(|(w, c)| *w += *c as f64);
        });
    }

    /// W = P W̃ on network `network`'s first layer alone (`w`, `[n_in][width]`, in the precision the training
    /// passes read): the map of a training step, run by the model on each network's weights as it sets them
    /// ([`crate::model::Model::set_training_weights`]). Nothing for a network without directions.
    pub fn to_model_layer(&self, network: usize, w: LayerWeights<'_>) {
        let Some(b) = self.blocks.iter().find(|b| b.network == network) else { return };
        match w {
            LayerWeights::F32(w) => map_block(b, &b.u_f32, w, |f| f - 1.0),
            LayerWeights::F64(w) => map_block(b, &b.u, w, |f| f - 1.0),
        }
    }

    /// W ← W + U diag(e(factor)) Uᵀ W in every block of the parameter vector `p`, one block per task on the
    /// pool's threads (each block is the same arithmetic whatever the number of threads).
    fn apply(&self, p: &mut [f64], e: impl Fn(f64) -> f64 + Sync) {
        self.jobs(p).into_par_iter().for_each(|(b, w)| map_block(b, &b.u, w, &e));
    }

    /// Each block with its weights in the parameter vector `p` (disjoint slices, for tasks on the threads).
    fn jobs<'a>(&'a self, p: &'a mut [f64]) -> Vec<(&'a Block, &'a mut [f64])> {
        let mut order: Vec<&Block> = self.blocks.iter().collect();
        order.sort_by_key(|b| b.offset);
        let mut jobs: Vec<(&Block, &mut [f64])> = Vec::with_capacity(order.len());
        let (mut rest, mut at) = (p, 0);
        for b in order {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(b.offset - at);
            let (w, tail) = tail.split_at_mut(b.n_in * b.n_out);
            jobs.push((b, w));
            (rest, at) = (tail, b.offset + b.n_in * b.n_out);
        }
        jobs
    }
}

/// W ← W + U diag(e(factor)) Uᵀ W on one block's weights `w` where they lie: Y = U W (rank × width), then
/// W += Uᵀ diag(e) Y, with `u` the block's U in the weights' precision.
fn map_block<T: Real>(b: &Block, u: &[T], w: &mut [T], e: impl Fn(f64) -> f64) {
    let y = scaled_projection(b, u, w, e);
    T::acc_product_tn(b.n_in, b.factor.len(), b.n_out, u, &y, w);
}

/// diag(e(factor)) U W (rank × width): the first half of a block's map.
fn scaled_projection<T: Real>(b: &Block, u: &[T], w: &[T], e: impl Fn(f64) -> f64) -> Vec<T> {
    let mut y = vec![T::default(); b.factor.len() * b.n_out];
    T::acc_product(b.factor.len(), b.n_in, b.n_out, u, w, &mut y);
    for (row, f) in y.chunks_mut(b.n_out).zip(&b.factor) {
        let s = e(*f);
        row.iter_mut().for_each(|v| *v = T::of(v.f64() * s));
    }
    y
}

/// The input-side curvature of a first layer `[n_in][n_in]`: the covariance C_x of the inputs `x`, the
/// energy loss's factor, and with `tangents` = (t, β) the mix (1 − β) C_x + β (tr C_x / tr M_t) M_t, where M_t is
/// the second moment of the inputs' tangents along random displacements, Σ_k J_k J_kᵀ: the factor of the force
/// loss, whose gradient with respect to W pairs J_k with the network's output gradient. Scaled to C_x's trace, the
/// mix keeps the meaning of `training.precondition_variance`.
fn curvature_estimate(x: &[f64], tangents: Option<(&[f64], f64)>, n_in: usize) -> Vec<f64> {
    let mut c = second_moment(x, n_in, true);
    if let Some((t, beta)) = tangents.filter(|&(t, beta)| beta > 0.0 && t.len() == x.len()) {
        let m = second_moment(t, n_in, false);
        let trace = |c: &[f64]| (0..n_in).map(|i| c[i * n_in + i]).sum::<f64>();
        let (tc, tm) = (trace(&c), trace(&m));
        if tm > 0.0 {
            let scale = beta * tc / tm;
            c.iter_mut().zip(&m).for_each(|(c, m)| *c = (1.0 - beta) * *c + scale * m);
        }
    }
    c
}

/// `[n_in][n_in]` second moment of the rows of `x`, about their mean if `centred` (the covariance).
fn second_moment(x: &[f64], n_in: usize, centred: bool) -> Vec<f64> {
    let n = x.len() / n_in;
    let mut mean = vec![0.0; n_in];
    if centred {
        for row in x.chunks(n_in) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v / n as f64);
        }
    }
    let centred: Vec<f64> = x.chunks(n_in).flat_map(|row| row.iter().zip(&mean).map(|(v, m)| v - m)).collect();
    let mut c = vec![0.0; n_in * n_in];
    gemm(n_in, n, n_in, &centred, true, &centred, false, 0.0, &mut c);
    c.iter_mut().for_each(|v| *v /= n as f64);
    c
}

/// The `k` largest eigenvalues of the symmetric `c` (`[n][n]`) in descending order and their eigenvectors as
/// rows `[k][n]`: orthogonal iteration with k + 8 vectors from a seeded random start, 40 iterations.
fn leading_eigen(c: &[f64], n: usize, k: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let m = (k + 8).min(n);
    let mut rng = Rng::new(seed);
    let start = (0..m * n).map(|_| rng.normal()).collect();
    let (mut values, mut vectors) = crate::linalg::leading_eigen(c, n, start, m, 40);
    values.truncate(k.min(m));
    vectors.truncate(k.min(m) * n);
    (values, vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewer_atoms_than_inputs_give_orthonormal_directions() {
        // 10 atoms, 40 inputs: a covariance of rank ≤ 9 and a 31-dimensional null space
        let mut rng = Rng::new(5);
        let x: Vec<f64> = (0..10 * 40).map(|k| rng.normal() * (1.0 + (k % 40) as f64)).collect();
        let p = FirstLayerPreconditioner::fit(&[x], None, &[(0, 40, 3)], 64, 0.5, 1).expect("directions");
        let b = &p.blocks[0];
        let r = b.factor.len();
        assert!((1..=9).contains(&r), "{r}");
        for i in 0..r {
            for j in 0..r {
                let d: f64 = (0..40).map(|k| b.u[i * 40 + k] * b.u[j * 40 + k]).sum();
                assert!((d - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "{i} {j} {d}");
            }
            assert!(b.factor[i] > 0.0 && b.factor[i] < 1.0);
        }
        let w0: Vec<f64> = (0..120).map(|k| (k as f64 * 0.37).sin()).collect();
        let mut w = w0.clone();
        p.to_model(&mut w);
        p.to_optimizer(&mut w);
        assert!(w.iter().zip(&w0).all(|(a, b)| (a - b).abs() < 1e-5), "not inverse");
    }

    #[test]
    fn the_tangents_share_decides_which_direction_leads() {
        // inputs vary along x (variance 9), their tangents along y; the mix keeps the inputs' trace
        let mut rng = Rng::new(4);
        let x: Vec<f64> = (0..2000).flat_map(|_| [3.0 * rng.normal(), 0.1 * rng.normal()]).collect();
        let t: Vec<f64> = (0..2000).flat_map(|_| [0.0, 50.0 * rng.normal()]).collect();
        let leading = |beta: f64| {
            let p = FirstLayerPreconditioner::fit(std::slice::from_ref(&x), Some((std::slice::from_ref(&t), beta)), &[(0, 2, 1)], 1, 0.5, 2).expect("a direction");
            let b = &p.blocks[0];
            (b.u[0].abs(), b.u[1].abs(), b.factor[0])
        };
        let (ux, uy, f) = leading(0.0);
        assert!(ux > 0.999 && uy < 0.05, "{ux} {uy}");
        assert!((f - (0.5f64 / 9.0).sqrt()).abs() < 0.02, "{f}");
        // β = 1: the tangents alone, scaled to the inputs' trace (≈ 9.01)
        let (ux, uy, f) = leading(1.0);
        assert!(uy > 0.999 && ux < 0.05, "{ux} {uy}");
        assert!((f - (0.5f64 / 9.01).sqrt()).abs() < 0.02, "{f}");
        // β = 0.3: 0.7 × 9 along x against 0.3 × 9 along y
        let (ux, _, f) = leading(0.3);
        assert!(ux > 0.999 && (f - (0.5f64 / 6.3).sqrt()).abs() < 0.02, "{ux} {f}");
    }

    #[test]
    fn maps_are_inverse_and_shrink_the_leading_direction() {
        // inputs along (1, 1, 0) with variance 50, the rest small
        let mut rng = Rng::new(3);
        let x: Vec<f64> = (0..400)
            .flat_map(|_| {
                let (a, b, c) = (rng.normal() * 5.0, rng.normal() * 0.1, rng.normal() * 0.1);
                [a + b, a - b, c]
            })
            .collect();
        let p = FirstLayerPreconditioner::fit(&[x], None, &[(1, 3, 2)], 2, 1.0, 7).expect("one direction");
        assert_eq!(p.ranks(), vec![1]);
        let w0: Vec<f64> = vec![9.0, 0.3, -0.2, 0.5, 1.1, 0.7, -0.4, 2.0];
        let mut w = w0.clone();
        p.to_model(&mut w);
        assert_eq!(w[0], 9.0);
        // the (1, 1, 0) component of each column shrinks by √(1/50), the (1, −1, 0) and z ones stay
        let along = |w: &[f64], c: usize| (w[1 + c] + w[3 + c]) / 2f64.sqrt();
        let across = |w: &[f64], c: usize| (w[1 + c] - w[3 + c]) / 2f64.sqrt();
        for c in 0..2 {
            let ratio = along(&w, c) / along(&w0, c);
            assert!((ratio - (1.0f64 / 50.0).sqrt()).abs() < 0.02, "{ratio}");
            assert!((across(&w, c) - across(&w0, c)).abs() < 0.02 * along(&w0, c).abs());
            assert!((w[5 + c] - w0[5 + c]).abs() < 0.02 * along(&w0, c).abs());
        }
        p.to_optimizer(&mut w);
        for (a, b) in w.iter().zip(&w0) {
            assert!((a - b).abs() < 1e-12 * 9.0, "{a} {b}");
        }
        // the gradient map is P itself
        let mut g = w0.clone();
        p.gradient_to_optimizer(&mut g, false);
        let mut m = w0.clone();
        p.to_model(&mut m);
        assert_eq!(g, m);
        // and in f32 to its rounding
        let mut g = w0.clone();
        p.gradient_to_optimizer(&mut g, true);
        assert!(g.iter().zip(&m).all(|(a, b)| (a - b).abs() < 1e-6 * 9.0), "{g:?} {m:?}");
        assert_ne!(g, w0);
    }

    #[test]
    fn every_block_gets_its_own_map_and_nothing_else_moves() {
        // two networks whose first layers sit at offsets 10 (4 inputs × 3) and 0 (3 inputs × 2), listed in that
        // order, with other parameters around and between them
        let mut rng = Rng::new(11);
        let sample = |n_in: usize, rng: &mut Rng| -> Vec<f64> {
            (0..300).flat_map(|_| {
                let a = 4.0 * rng.normal();
                (0..n_in).map(|k| a * (1.0 + k as f64) + 0.1 * rng.normal()).collect::<Vec<_>>()
            }).collect()
        };
        let x = [sample(4, &mut rng), sample(3, &mut rng)];
        let layers = [(10, 4, 3), (0, 3, 2)];
        let p = FirstLayerPreconditioner::fit(&x, None, &layers, 2, 0.5, 3).expect("directions");
        assert_eq!(p.blocks.len(), 2);
        let w0: Vec<f64> = (0..25).map(|k| (k as f64 * 0.71).cos()).collect();
        let mut w = w0.clone();
        p.to_model(&mut w);
        // the reference: (I + U diag(f − 1) Uᵀ) W per block, W stored [n_in][n_out]
        let mut expected = w0.clone();
        for b in &p.blocks {
            for i in 0..b.n_in {
                for c in 0..b.n_out {
                    let mut v = 0.0;
                    for (r, f) in b.factor.iter().enumerate() {
                        let uw: f64 = (0..b.n_in).map(|j| b.u[r * b.n_in + j] * w0[b.offset + j * b.n_out + c]).sum();
                        v += b.u[r * b.n_in + i] * (f - 1.0) * uw;
                    }
                    expected[b.offset + i * b.n_out + c] += v;
                }
            }
        }
        for (k, (a, e)) in w.iter().zip(&expected).enumerate() {
            assert!((a - e).abs() < 1e-12, "parameter {k}: {a} against {e}");
        }
        assert!(w.iter().zip(&w0).filter(|(a, b)| a != b).count() >= 12, "the maps changed too little");
        assert_eq!((&w[6..10], &w[22..]), (&w0[6..10], &w0[22..]));
        // the same map on one network's layer at a time, as the model runs it in a step: in f64 the same bits, in
        // f32 to its rounding
        for (network, &(offset, n_in, n_out)) in layers.iter().enumerate() {
            let range = offset..offset + n_in * n_out;
            let mut layer = w0[range.clone()].to_vec();
            p.to_model_layer(network, LayerWeights::F64(&mut layer));
            assert_eq!(layer, w[range.clone()]);
            let mut layer: Vec<f32> = w0[range.clone()].iter().map(|&v| v as f32).collect();
            p.to_model_layer(network, LayerWeights::F32(&mut layer));
            for (a, e) in layer.iter().zip(&w[range]) {
                assert!((*a as f64 - e).abs() < 1e-6, "{a} against {e}");
            }
        }
        let mut untouched = vec![1.0; 6];
        p.to_model_layer(7, LayerWeights::F64(&mut untouched));
        assert_eq!(untouched, vec![1.0; 6]);
    }
}
