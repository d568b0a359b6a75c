//! Multilayer perceptron with SiLU hidden activations and one linear output, evaluated on a batch of atoms.
//!
//! Besides the forward pass and the input gradient (for forces), it implements the one training primitive all
//! losses reduce to: the parameter gradient of `Σ_k a_k·out(x_k) + b_k·∇out(x_k)·u_k` — a forward-mode
//! tangent through the network followed by a reverse pass over both the values and the tangents
//! (reverse-over-forward), written by hand because the descriptor has no parameters and this is all we need.

use crate::linalg::{gemm, Real};

/// A network's weight matrices transposed, each `[out][ld]` with its rows padded by zeros to ld, a multiple of
/// 64 ([`Mlp::transpose_into`]). The input-gradient pass multiplies by every Wᵀ; through matrixmultiply that
/// packs W anew on every call, which a training step makes once per task of 32 atoms (toluene: 5 % of a step).
/// Transposed once per step, the rows go through the layer kernels as they lie.
#[derive(Clone, Debug, Default)]
pub struct TransposedWeights<T> {
    layers: Vec<(usize, Vec<T>)>,
}

/// Network weights: layer k maps `sizes[k]` → `sizes[k+1]`; parameters are stored as W₀ (row-major
/// `[in][out]`), b₀, W₁, b₁, …
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Mlp {
    /// Layer widths, input first, output (1) last.
    pub sizes: Vec<usize>,
    /// All weights and biases, layer by layer.
    pub params: Vec<f64>,
}

/// SiLU of each pre-activation in `z`, with the sigmoids it took (kept for the derivatives).
/// In the pass's precision, like its products: the f32 passes' activations and their derivatives were computed in
/// f64 with a conversion per element (in f32: −3 % per naphthalene epoch on one thread).
fn silu_keeping_sigmoids<T: Real>(z: &[T]) -> (Vec<T>, Vec<T>) {
    let s: Vec<T> = z.iter().map(|&v| v.sigmoid()).collect();
    (z.iter().zip(&s).map(|(&v, &s)| v * s).collect(), s)
}
/// SiLU's first derivative from z and its sigmoid s (the passes keep s so that each exp is taken once).
#[inline]
fn silu_d1<T: Real>(z: T, s: T) -> T {
    let one = T::of(1.0);
    s * (one + z * (one - s))
}
/// SiLU's second derivative from z and its sigmoid s.
#[inline]
fn silu_d2<T: Real>(z: T, s: T) -> T {
    let one = T::of(1.0);
    s * (one - s) * (T::of(2.0) + z * (one - T::of(2.0) * s))
}

impl Mlp {
    /// LeCun-normal initialisation from the given deterministic random stream; output layer scaled down so the
    /// untrained model predicts small energies.
    pub fn new(sizes: &[usize], rng: &mut crate::rng::Rng) -> Self {
        let mut params = Vec::new();
        for k in 0..sizes.len() - 1 {
            let (i, o) = (sizes[k], sizes[k + 1]);
            let std = (1.0 / i as f64).sqrt() * if k + 2 == sizes.len() { 0.1 } else { 1.0 };
            params.extend((0..i * o).map(|_| rng.normal() * std));
            params.extend(std::iter::repeat_n(0.0, o));
        }
        Mlp { sizes: sizes.to_vec(), params }
    }

    /// The network whose output is `self(x) + other(x)`, as one wider MLP (Δ-learning: a frozen base network
    /// beside a trained correction, exported and run like any other). Hidden layer k is `self`'s units followed
    /// by `other`'s; the weights between the two halves are zero. Also returns, per parameter, whether it is one of
    /// `other`'s (the output bias, shared, counts as `other`'s): the parameters a Δ run trains, so that the zero
    /// blocks stay zero and the sum stays exact. `None` when the two differ in input width or depth.
    pub fn beside(&self, other: &Mlp) -> Option<(Mlp, Vec<bool>)> {
        let (a, b) = (&self.sizes, &other.sizes);
        if a.len() != b.len() || a.len() < 3 || a[0] != b[0] || a.last() != Some(&1) || b.last() != Some(&1) {
            return None;
        }
        let nl = self.n_layers();
        let sizes: Vec<usize> = (0..a.len()).map(|k| if k == 0 || k == nl { a[k] } else { a[k] + b[k] }).collect();
        // A unit of a merged layer: shared by both networks (the input at the first layer, the output at the
        // last), or unit i of `self` (`Base`) or of `other` (`Extra`).
        #[derive(Clone, Copy)]
        enum Unit {
            Shared(usize),
            Base(usize),
            Extra(usize),
        }
        let unit = |i: usize, width_a: usize, shared: bool| match () {
            _ if shared => Unit::Shared(i),
            _ if i < width_a => Unit::Base(i),
            _ => Unit::Extra(i - width_a),
        };
        let mut merged = Mlp { sizes: sizes.clone(), params: Vec::with_capacity(self.n_params() + other.n_params()) };
        let mut is_other = Vec::with_capacity(merged.params.capacity());
        for k in 0..nl {
            let ((wa, ba), (wb, bb)) = (self.layer(k), other.layer(k));
            let (oa, ob) = (a[k + 1], b[k + 1]);
            for r in 0..sizes[k] {
                for c in 0..sizes[k + 1] {
                    let (v, mine) = match (unit(r, a[k], k == 0), unit(c, oa, k + 1 == nl)) {
                        (Unit::Shared(i) | Unit::Base(i), Unit::Shared(j) | Unit::Base(j)) => (self.params[wa + i * oa + j], false),
                        (Unit::Shared(i) | Unit::Extra(i), Unit::Shared(j) | Unit::Extra(j)) => (other.params[wb + i * ob + j], true),
                        _ => (0.0, false), // between the two halves
                    };
                    merged.params.push(v);
                    is_other.push(mine);
                }
            }
            if k + 1 == nl {
                merged.params.push(self.params[ba] + other.params[bb]);
                is_other.push(true);
            } else {
                merged.params.extend_from_slice(&self.params[ba..ba + oa]);
                merged.params.extend_from_slice(&other.params[bb..bb + ob]);
                is_other.extend(std::iter::repeat_n(false, oa).chain(std::iter::repeat_n(true, ob)));
            }
        }
        Some((merged, is_other))
    }

    /// The network reading only the inputs `rows` (indices into the current inputs, increasing): the first
    /// layer keeps those rows of W₀, everything else is unchanged.
    pub fn with_input_rows(&self, rows: impl Iterator<Item = usize>) -> Mlp {
        let o = self.sizes[1];
        let mut params: Vec<f64> = rows.flat_map(|r| self.params[r * o..(r + 1) * o].iter().copied()).collect();
        let kept = params.len() / o;
        params.extend_from_slice(&self.params[self.n_inputs() * o..]);
        let mut sizes = self.sizes.clone();
        sizes[0] = kept;
        Mlp { sizes, params }
    }

    /// The inverse of [`Mlp::with_input_rows`]: the network reading `n_inputs` inputs of which its current ones
    /// are those at `at` (increasing, each below `n_inputs`); the other rows of W₀ are zero.
    pub fn with_inputs_at(&self, at: &[u32], n_inputs: usize) -> Mlp {
        let o = self.sizes[1];
        let mut params = vec![0.0; n_inputs * o];
        for (r, &f) in at.iter().enumerate() {
            params[f as usize * o..(f as usize + 1) * o].copy_from_slice(&self.params[r * o..(r + 1) * o]);
        }
        params.extend_from_slice(&self.params[self.n_inputs() * o..]);
        let mut sizes = self.sizes.clone();
        sizes[0] = n_inputs;
        Mlp { sizes, params }
    }

    /// Input width.
    pub fn n_inputs(&self) -> usize {
        self.sizes[0]
    }
    fn n_layers(&self) -> usize {
        self.sizes.len() - 1
    }
    /// Offsets of (W_k, b_k) in `params`.
    pub(crate) fn layer(&self, k: usize) -> (usize, usize) {
        let mut off = 0;
        for j in 0..k {
            off += self.sizes[j] * self.sizes[j + 1] + self.sizes[j + 1];
        }
        (off, off + self.sizes[k] * self.sizes[k + 1])
    }
    /// Per parameter, whether it belongs to layer `frozen` or above (the layers below it are frozen).
    pub fn trainable_from_layer(&self, frozen: usize) -> Vec<bool> {
        (0..self.n_layers()).flat_map(|k| std::iter::repeat_n(k >= frozen, self.sizes[k] * self.sizes[k + 1] + self.sizes[k + 1])).collect()
    }

    /// Number of weights and biases.
    pub fn n_params(&self) -> usize {
        self.params.len()
    }

    /// Pre-activations `z_k` of every layer for `n` inputs (`x` is `[n][in]`; the last one is the output) and the
    /// sigmoids σ(z_k) of the hidden layers. `w` is [`Mlp::params`] or a copy of them in another precision
    /// ([`Mlp::params_f32`]).
    fn forward_z<T: Real>(&self, w: &[T], x: &[T], n: usize) -> (Vec<Vec<T>>, Vec<Vec<T>>) {
        let mut zs: Vec<Vec<T>> = Vec::with_capacity(self.n_layers());
        let mut sigmoids: Vec<Vec<T>> = Vec::with_capacity(self.n_layers());
        let mut h: Vec<T> = Vec::new();
        for k in 0..self.n_layers() {
            let (wo, bo) = self.layer(k);
            let (i, o) = (self.sizes[k], self.sizes[k + 1]);
            let mut z = Vec::with_capacity(n * o);
            for _ in 0..n {
                z.extend_from_slice(&w[bo..bo + o]);
            }
            let input = if k == 0 { x } else { &h };
            T::acc_product(n, i, o, input, &w[wo..wo + i * o], &mut z);
            if k + 1 < self.n_layers() {
                let s;
                (h, s) = silu_keeping_sigmoids(&z);
                sigmoids.push(s);
            }
            zs.push(z);
        }
        (zs, sigmoids)
    }

    /// Outputs for `n` inputs.
    pub fn forward(&self, x: &[f64], n: usize) -> Vec<f64> {
        self.forward_in(&self.params, x, n)
    }

    /// [`Mlp::forward`] with the weights `w` (`params` or [`Mlp::params_f32`]) in their precision.
    pub fn forward_in<T: Real>(&self, w: &[T], x: &[T], n: usize) -> Vec<T> {
        self.forward_z(w, x, n).0.pop().unwrap_or_default()
    }

    /// Outputs and their gradient with respect to the inputs (`[n][in]`).
    pub fn forward_with_input_grad(&self, x: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
        let (out, dx, _) = self.forward_with_input_grad_in(&self.params, None, x, n);
        (out, dx)
    }

    /// [`Mlp::forward_with_input_grad`] with the weights `w` (`params` or [`Mlp::params_f32`]) in their precision,
    /// and optionally the same weights transposed ([`Mlp::transpose_into`]) for the products with Wᵀ; also
    /// returns the first layer's pre-activations (`[n][sizes[1]]`), which the parameter gradient at the same
    /// inputs can reuse ([`Mlp::stacked_param_and_input_grad`]).
    pub fn forward_with_input_grad_in<T: Real>(
        &self,
        w: &[T],
        transposed: Option<&TransposedWeights<T>>,
        x: &[T],
        n: usize,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (mut zs, sigmoids) = self.forward_z(w, x, n);
        let nl = self.n_layers();
        let out = zs.pop().unwrap_or_default();
        let mut dz = vec![T::of(1.0); n];
        for k in (0..nl).rev() {
            let (wo, _) = self.layer(k);
            let (i, o) = (self.sizes[k], self.sizes[k + 1]);
            let mut dh = match transposed.and_then(|t| t.layers.get(k)) {
                Some(&(ld, ref wt)) => {
                    let mut padded = vec![T::default(); n * ld];
                    T::acc_product(n, o, ld, &dz, wt, &mut padded);
                    // rows of ld values, of which the first i are the layer's inputs (all of them for a hidden layer)
                    if ld == i { padded } else { padded.chunks_exact(ld).flat_map(|p| &p[..i]).copied().collect() }
                }
                None => {
                    let mut dh = vec![T::default(); n * i];
                    gemm(n, o, i, &dz, false, &w[wo..wo + i * o], true, 0.0, &mut dh);
                    dh
                }
            };
            if k > 0 {
                for ((d, &zv), &s) in dh.iter_mut().zip(&zs[k - 1]).zip(&sigmoids[k - 1]) {
                    *d = *d * silu_d1(zv, s);
                }
            }
            dz = dh;
        }
        // the first layer's pre-activations, or the output's for a network without hidden layers
        let z0 = zs.into_iter().next().unwrap_or_else(|| out.clone());
        (out, dz, z0)
    }

    /// The weights and biases rounded to f32, for the networks' training passes in single precision.
    pub fn params_f32(&self) -> Vec<f32> {
        self.params.iter().map(|&p| p as f32).collect()
    }

    /// Writes into `t` the weight matrices of `w` (this network's layout) transposed, `[out][ld]` with the rows
    /// padded by zeros to ld = a multiple of 64 ([`TransposedWeights`]).
    pub fn transpose_into<T: Real>(&self, w: &[T], t: &mut TransposedWeights<T>) {
        t.layers.resize_with(self.n_layers(), Default::default);
        for (k, (ld, wt)) in t.layers.iter_mut().enumerate() {
            let (wo, _) = self.layer(k);
            let (i, o) = (self.sizes[k], self.sizes[k + 1]);
            *ld = i.div_ceil(64) * 64;
            wt.clear();
            wt.resize(o * *ld, T::default());
            // 16 rows of W at a time: each row of Wᵀ gets 16 consecutive values (element by element the writes
            // went to 64 different rows, and this took a quarter of what it saves)
            for (b, rows) in w[wo..wo + i * o].chunks(16 * o).enumerate() {
                let r0 = 16 * b;
                for (c, out) in wt.chunks_exact_mut(*ld).enumerate() {
                    for (q, row) in rows.chunks_exact(o).enumerate() {
                        out[r0 + q] = row[c];
                    }
                }
            }
        }
    }

    /// Accumulates into `grad` the parameter gradient of `Σ_k a[k]·out(x_k) + b[k]·(∇out(x_k)·u_k)`.
    /// `u` (`[n][in]`) may be `None` when every `b[k]` is zero.
    pub fn param_grad(&self, x: &[f64], u: Option<&[f64]>, a: &[f64], b: &[f64], n: usize, grad: &mut [f64]) {
        self.param_and_input_grad(x, u, a, b, n, grad, None)
    }

    /// [`Mlp::param_grad`], and with `input_grads = Some((xbar, ubar))` also the gradient of the same objective
    /// with respect to the inputs x and their tangents u (`[n][in]` each; `ubar` stays untouched without `u`):
    /// what a trainable layer below the network needs.
    #[allow(clippy::too_many_arguments)]
    pub fn param_and_input_grad(
        &self,
        x: &[f64],
        u: Option<&[f64]>,
        a: &[f64],
        b: &[f64],
        n: usize,
        grad: &mut [f64],
        input_grads: Option<(&mut [f64], &mut [f64])>,
    ) {
        match u {
            None => self.stacked_param_and_input_grad(&self.params, x, n, false, None, a, b, grad, input_grads),
            Some(u) => self.stacked_param_and_input_grad(&self.params, &[x, u].concat(), n, true, None, a, b, grad, input_grads),
        }
    }

    /// [`Mlp::param_and_input_grad`] with the weights `w` (`params` or [`Mlp::params_f32`], whose precision
    /// every product and the gradient take) and the inputs given stacked: `xu` is x (`[n][in]`) followed, when
    /// `tangent`, by u (`[n][in]`), the layout every layer works in. `z0`, the first layer's pre-activations at
    /// x from a forward pass with the same weights ([`Mlp::forward_with_input_grad_in`]), saves recomputing them:
    /// the widest product of the pass, one of five over the first layer's weights in a training step.
    #[allow(clippy::too_many_arguments)]
    pub fn stacked_param_and_input_grad<T: Real>(
        &self,
        w: &[T],
        xu: &[T],
        n: usize,
        tangent: bool,
        z0: Option<&[T]>,
        a: &[T],
        b: &[T],
        grad: &mut [T],
        input_grads: Option<(&mut [T], &mut [T])>,
    ) {
        let nl = self.n_layers();
        // Values and tangents go through each layer as one stacked matrix of m rows (values first, then the
        // tangents when there are any), so every weight matrix is read once per pass instead of twice.
        let m = if tangent { 2 * n } else { n };
        // Forward. hs[k − 1] is the stacked input of layer k ≥ 1 (layer 0 reads `xu`), zs[k] its stacked
        // pre-activation (the tangent rows carry no bias).
        let mut zs: Vec<Vec<T>> = Vec::with_capacity(nl);
        let mut hs: Vec<Vec<T>> = Vec::with_capacity(nl);
        let mut sigmoids: Vec<Vec<T>> = Vec::with_capacity(nl); // σ of the value rows of each hidden layer
        for k in 0..nl {
            let (wo, bo) = self.layer(k);
            let (i, o) = (self.sizes[k], self.sizes[k + 1]);
            let mut z = vec![T::default(); m * o];
            match z0.filter(|z0| k == 0 && z0.len() == n * o) {
                Some(z0) => {
                    z[..n * o].copy_from_slice(z0);
                    T::acc_product(m - n, i, o, &xu[n * i..], &w[wo..wo + i * o], &mut z[n * o..]);
                }
                None => {
                    for row in z[..n * o].chunks_exact_mut(o) {
                        row.copy_from_slice(&w[bo..bo + o]);
                    }
                    let input = if k == 0 { xu } else { &hs[k - 1] };
                    T::acc_product(m, i, o, input, &w[wo..wo + i * o], &mut z);
                }
            }
            if k + 1 < nl {
                let (zv, dz) = z.split_at(n * o);
                let (mut h, s) = silu_keeping_sigmoids(zv);
                h.extend(zv.iter().zip(dz).zip(&s).map(|((&zv, &d), &s)| silu_d1(zv, s) * d));
                hs.push(h);
                sigmoids.push(s);
            }
            zs.push(z);
        }
        // Reverse over values (z̄, the first n rows) and tangents (dz̄, the last n) together.
        let mut zbar: Vec<T> = a.to_vec();
        if tangent {
            zbar.extend_from_slice(b);
        }
        for k in (0..nl).rev() {
            let (wo, bo) = self.layer(k);
            let (i, o) = (self.sizes[k], self.sizes[k + 1]);
            // W̄ += hᵀ z̄ + dhᵀ dz̄ (one product over the stacked rows); b̄ += Σ z̄
            let input = if k == 0 { xu } else { &hs[k - 1] };
            T::acc_product_tn(i, m, o, input, &zbar, &mut grad[wo..wo + i * o]);
            for row in zbar[..n * o].chunks_exact(o) {
                for (g, &z) in grad[bo..bo + o].iter_mut().zip(row) {
                    *g = *g + z;
                }
            }
            let wk = &w[wo..wo + i * o];
            if k == 0 {
                // x̄ = z̄₀ W₀ᵀ, ū = dz̄₀ W₀ᵀ (the inputs enter z₀ and its tangent linearly)
                if let Some((xbar, ubar)) = input_grads {
                    let mut bar = vec![T::default(); m * i];
                    gemm(m, o, i, &zbar, false, wk, true, 0.0, &mut bar);
                    xbar.copy_from_slice(&bar[..n * i]);
                    if tangent {
                        ubar.copy_from_slice(&bar[n * i..]);
                    }
                }
                break;
            }
            let mut hbar = vec![T::default(); m * i];
            gemm(m, o, i, &zbar, false, wk, true, 0.0, &mut hbar);
            let z = &zs[k - 1][..n * i];
            let s = &sigmoids[k - 1];
            if tangent {
                let (hv, dh) = hbar.split_at_mut(n * i);
                let dz = &zs[k - 1][n * i..];
                for q in 0..n * i {
                    let (d1, d2) = (silu_d1(z[q], s[q]), silu_d2(z[q], s[q]));
                    hv[q] = hv[q] * d1 + dh[q] * d2 * dz[q];
                    dh[q] = dh[q] * d1;
                }
            } else {
                for q in 0..n * i {
                    hbar[q] = hbar[q] * silu_d1(z[q], s[q]);
                }
            }
            zbar = hbar;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_grad_and_param_grad_match_finite_differences() {
        let mut rng = crate::rng::Rng::new(3);
        let mut net = Mlp::new(&[5, 7, 4, 1], &mut rng);
        for p in net.params.iter_mut() {
            *p += 0.3 * rng.normal(); // non-trivial biases and output layer
        }
        let n = 3;
        let x: Vec<f64> = (0..n * 5).map(|_| rng.normal()).collect();
        let u: Vec<f64> = (0..n * 5).map(|_| rng.normal()).collect();
        let a = [0.7, -1.2, 0.4];
        let b = [1.5, 0.3, -0.8];
        let h = 1e-6;
        let (out, dx) = net.forward_with_input_grad(&x, n);
        assert_eq!(out, net.forward(&x, n));
        for q in 0..x.len() {
            let mut xp = x.clone();
            xp[q] += h;
            let mut xm = x.clone();
            xm[q] -= h;
            let fd = (net.forward(&xp, n)[q / 5] - net.forward(&xm, n)[q / 5]) / (2.0 * h);
            assert!((fd - dx[q]).abs() < 1e-8, "input {q}: {fd} vs {}", dx[q]);
        }
        let objective = |net: &Mlp| -> f64 {
            let (o, d) = net.forward_with_input_grad(&x, n);
            (0..n).map(|k| a[k] * o[k] + b[k] * (0..5).map(|c| d[k * 5 + c] * u[k * 5 + c]).sum::<f64>()).sum()
        };
        let mut g = vec![0.0; net.n_params()];
        net.param_grad(&x, Some(&u), &a, &b, n, &mut g);
        let mut g0 = vec![0.0; net.n_params()];
        net.param_grad(&x, None, &a, &[0.0; 3], n, &mut g0);
        for q in 0..net.n_params() {
            let mut p = net.clone();
            p.params[q] += h;
            let mut m = net.clone();
            m.params[q] -= h;
            let fd = (objective(&p) - objective(&m)) / (2.0 * h);
            assert!((fd - g[q]).abs() < 1e-7 * (1.0 + fd.abs()), "param {q}: {fd} vs {}", g[q]);
            let fd0 = a.iter().enumerate().map(|(k, ak)| ak * (p.forward(&x, n)[k] - m.forward(&x, n)[k])).sum::<f64>() / (2.0 * h);
            assert!((fd0 - g0[q]).abs() < 1e-7 * (1.0 + fd0.abs()));
        }
        // the same objective's gradient with respect to the inputs and their tangents
        let objective_at = |x: &[f64], u: &[f64]| -> f64 {
            let (o, d) = net.forward_with_input_grad(x, n);
            (0..n).map(|k| a[k] * o[k] + b[k] * (0..5).map(|c| d[k * 5 + c] * u[k * 5 + c]).sum::<f64>()).sum()
        };
        let (mut xbar, mut ubar) = (vec![0.0; n * 5], vec![0.0; n * 5]);
        let mut g1 = vec![0.0; net.n_params()];
        net.param_and_input_grad(&x, Some(&u), &a, &b, n, &mut g1, Some((&mut xbar, &mut ubar)));
        assert_eq!(g1, g);
        for q in 0..x.len() {
            let shifted = |v: &[f64], t: f64| -> Vec<f64> { let mut w = v.to_vec(); w[q] += t; w };
            let fdx = (objective_at(&shifted(&x, h), &u) - objective_at(&shifted(&x, -h), &u)) / (2.0 * h);
            let fdu = (objective_at(&x, &shifted(&u, h)) - objective_at(&x, &shifted(&u, -h))) / (2.0 * h);
            assert!((fdx - xbar[q]).abs() < 1e-7 * (1.0 + fdx.abs()), "x {q}: {fdx} vs {}", xbar[q]);
            assert!((fdu - ubar[q]).abs() < 1e-7 * (1.0 + fdu.abs()), "u {q}: {fdu} vs {}", ubar[q]);
        }
    }

    /// The input gradient through the transposed weights (layer kernels where the CPU has them, matrixmultiply
    /// otherwise) against the f64 pass, for widths that are and are not multiples of 64 and row counts around
    /// the kernels' blocks of six.
    #[test]
    fn input_grad_through_transposed_weights_matches_the_f64_pass() {
        let mut rng = crate::rng::Rng::new(11);
        for sizes in [[70usize, 64, 64, 1], [128, 64, 32, 1], [5, 7, 4, 1]] {
            let mut net = Mlp::new(&sizes, &mut rng);
            for p in net.params.iter_mut() {
                *p += 0.2 * rng.normal();
            }
            let w32 = net.params_f32();
            let mut t = TransposedWeights::default();
            net.transpose_into(&w32, &mut t);
            for n in [1, 6, 7, 32] {
                let x: Vec<f64> = (0..n * sizes[0]).map(|_| rng.normal()).collect();
                let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let (out, dx) = net.forward_with_input_grad(&x, n);
                let (out32, dx32, _) = net.forward_with_input_grad_in(&w32, Some(&t), &x32, n);
                let scale = dx.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                assert!(scale > 1e-3);
                for (a, b) in dx.iter().zip(&dx32) {
                    assert!((a - *b as f64).abs() < 2e-5 * scale, "{sizes:?} n {n}: {a} vs {b}");
                }
                for (a, b) in out.iter().zip(&out32) {
                    assert!((a - *b as f64).abs() < 2e-5 * (1.0 + a.abs()), "{sizes:?} n {n}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn beside_is_the_sum_of_the_two_networks_and_marks_the_second() {
        let mut rng = crate::rng::Rng::new(5);
        let mut base = Mlp::new(&[4, 6, 3, 1], &mut rng);
        let mut delta = Mlp::new(&[4, 2, 5, 1], &mut rng);
        for p in base.params.iter_mut().chain(delta.params.iter_mut()) {
            *p += 0.2 * rng.normal();
        }
        let (merged, is_delta) = base.beside(&delta).expect("same input width and depth");
        assert_eq!(merged.sizes, vec![4, 8, 8, 1]);
        assert_eq!(is_delta.len(), merged.n_params());
        assert_eq!(is_delta.iter().filter(|&&d| d).count(), delta.n_params());
        let n = 3;
        let x: Vec<f64> = (0..n * 4).map(|_| rng.normal()).collect();
        let (sum, dsum) = {
            let ((ob, gb), (od, gd)) = (base.forward_with_input_grad(&x, n), delta.forward_with_input_grad(&x, n));
            (ob.iter().zip(&od).map(|(p, q)| p + q).collect::<Vec<_>>(), gb.iter().zip(&gd).map(|(p, q)| p + q).collect::<Vec<_>>())
        };
        let (out, dx) = merged.forward_with_input_grad(&x, n);
        for (p, q) in out.iter().zip(&sum).chain(dx.iter().zip(&dsum)) {
            assert!((p - q).abs() < 1e-12, "{p} vs {q}");
        }
        // the parameters not marked are the base's (or the zero blocks): moving only marked ones leaves the base
        let mut moved = merged.clone();
        for (p, &d) in moved.params.iter_mut().zip(&is_delta) {
            if d {
                *p += 0.5;
            }
        }
        let mut zero_delta = delta.clone();
        zero_delta.params.iter_mut().for_each(|p| *p = 0.0);
        let (without, _) = base.beside(&zero_delta).expect("same shapes");
        let mut only_base = moved.clone();
        for ((p, &d), w) in only_base.params.iter_mut().zip(&is_delta).zip(&without.params) {
            if d {
                *p = *w;
            }
        }
        assert_eq!(only_base.forward(&x, n), base.forward(&x, n));
        assert!(base.beside(&Mlp::new(&[4, 2, 1], &mut rng)).is_none(), "depths differ");
        assert!(base.beside(&Mlp::new(&[5, 2, 5, 1], &mut rng)).is_none(), "inputs differ");
    }
}
