//! The native engine (the default): each species' network read back out of the model's graph and run, forward and
//! backward, by fused Rust kernels.
//!
//! The networks are read out of the graph (`onnx::networks`: the chain of MatMul, Add and SiLU nodes that export
//! writes), so the runtime can evaluate energies and ∂E/∂G in one pass with its own grow-only buffers: no
//! allocation per call, no tensor bookkeeping, and register-blocked products that stay fast for the few atoms of a
//! species in a small molecule (generic engines tile 64 rows or more). The read networks are checked against the
//! graph itself, run by tract on probe inputs, when the model is loaded: a graph that is not pilip's chain, or
//! that disagrees, is refused with a message that names engine "tract", which runs any graph.

use super::engine::{rows_of, Batch, Engine, TractEngine};
use crate::error::{Error, Result};
use crate::linalg::Isa;
use crate::onnx::metadata::{Dtype, ModelMetadata};
use crate::onnx::networks::{read_networks, GuardWeights, NetworkWeights};
use std::ops::{Add, Div, Mul, Neg, Sub};
use std::sync::Mutex;
use tract_onnx::pb;

/// Rows (atoms) of one register block of the products.
const ROWS: usize = 4;

/// Builds the native engine of a decoded model and checks it against the graph (run by tract) on probe inputs.
pub fn load(proto: &pb::ModelProto, meta: &ModelMetadata, source: &str) -> Result<Box<dyn Engine>> {
    let refuse = |why: String| {
        Error::model(format!(
            "{source}: the native engine cannot run this graph ({why}); load it with engine \"tract\", which runs any valid graph"
        ))
    };
    let lifted = read_networks(proto, meta).map_err(refuse)?;
    let engine: Box<dyn Engine> = match meta.dtype {
        Dtype::F32 => Box::new(Native::<f32>::new(&lifted)),
        Dtype::F64 => Box::new(Native::<f64>::new(&lifted)),
    };
    let reference = TractEngine::new(proto, meta, source)?;
    check_against(engine.as_ref(), &reference, meta).map_err(refuse)?;
    Ok(engine)
}

/// Runs `engine` and the graph (`reference`) on the same probe descriptors: 5 atoms per species (a full row
/// block and a padded one) of uniform values in [−1, 1]. Their energies and gradients must agree to the graph's
/// precision relative to the largest value.
fn check_against(engine: &dyn Engine, reference: &dyn Engine, meta: &ModelMetadata) -> std::result::Result<(), String> {
    let (ns, nf) = (meta.species.len(), meta.n_features);
    let n = 5 * ns;
    let mut rng = crate::rng::Rng::new(17);
    let features: Vec<f64> = (0..n * nf).map(|_| 2.0 * rng.uniform() - 1.0).collect();
    let species: Vec<usize> = (0..n).map(|r| r % ns).collect();
    let batch = Batch { features: &features, n_features: nf, species: &species };
    let run = |e: &dyn Engine| -> std::result::Result<(Vec<f64>, Vec<f64>), String> {
        let (mut energies, mut gradients) = (vec![0.0; n], vec![0.0; n * nf]);
        e.run(&batch, &mut energies, &mut gradients).map_err(|e| e.to_string())?;
        Ok((energies, gradients))
    };
    let (got, want) = (run(engine)?, run(reference)?);
    let tol = match meta.dtype {
        Dtype::F32 => 1e-4,
        Dtype::F64 => 1e-10,
    };
    for (what, a, b) in [("energies", &got.0, &want.0), ("gradients", &got.1, &want.1)] {
        let scale = b.iter().fold(f64::MIN_POSITIVE, |m, x| m.max(x.abs()));
        let worst = a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        if !(worst <= tol * scale) {
            return Err(format!("its {what} differ from the graph's by {:.1e} relative on probe inputs", worst / scale));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Kernels

/// The floating-point types the networks run in (the graph's dtype).
trait Real:
    Copy + Default + PartialOrd + Send + Sync + 'static + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> + Neg<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    /// Columns of one register block: two 256-bit vectors.
    const BLOCK: usize;
    fn of(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// a·b + c with one rounding (only called from code compiled for FMA).
    fn fused(self, b: Self, c: Self) -> Self;
    /// e^x, vectorisable (no calls, no branches) and accurate to a few ulp.
    fn exp<const FUSED: bool>(self) -> Self;
}

/// a·b + c: fused where the CPU has FMA, else a product and a sum.
#[inline(always)]
fn madd<T: Real, const FUSED: bool>(a: T, b: T, c: T) -> T {
    if FUSED {
        a.fused(b, c)
    } else {
        a * b + c
    }
}

/// Σ c_k r^k by Horner's rule, coefficients from the highest power down.
#[inline(always)]
fn horner<T: Real, const FUSED: bool>(r: T, coefficients: &[T]) -> T {
    coefficients.iter().skip(1).fold(coefficients[0], |p, &c| madd::<T, FUSED>(p, r, c))
}

// e^x: f32 in `linalg::exp_f32` (shared with the training passes), f64 below in the same manner with ln 2 in
// two parts and 1.5·2⁵² as the rounding constant.
impl Real for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    const BLOCK: usize = 16;
    #[inline(always)]
    fn of(x: f64) -> f32 {
        x as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn fused(self, b: f32, c: f32) -> f32 {
        self.mul_add(b, c)
    }
    #[inline(always)]
    fn exp<const FUSED: bool>(self) -> f32 {
        crate::linalg::exp_f32::<FUSED>(self)
    }
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const BLOCK: usize = 8;
    #[inline(always)]
    fn of(x: f64) -> f64 {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn fused(self, b: f64, c: f64) -> f64 {
        self.mul_add(b, c)
    }
    #[inline(always)]
    fn exp<const FUSED: bool>(self) -> f64 {
        const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5·2⁵²
        let x = self.clamp(-708.0, 709.0);
        let t = madd::<f64, FUSED>(x, std::f64::consts::LOG2_E, MAGIC);
        let n = t - MAGIC;
        let r = madd::<f64, FUSED>(n, -6.931_471_803_691_238_2e-1, x);
        let r = madd::<f64, FUSED>(n, -1.908_214_929_270_587_7e-10, r);
        const C: [f64; 14] = {
            let mut c = [1.0; 14];
            let mut k = 13;
            while k > 1 {
                // c[13 − k] = 1/k!
                let mut f = 1.0;
                let mut j = 2;
                while j <= k {
                    f *= j as f64;
                    j += 1;
                }
                c[13 - k] = 1.0 / f;
                k -= 1;
            }
            c
        };
        horner::<f64, FUSED>(r, &C) * f64::from_bits(t.to_bits().wrapping_add(1023) << 52)
    }
}

/// C = bias + A·B for row-major A `[rows][k]`, B `[k][n]`, C `[rows][n]` (rows = C.len() / n, a multiple of
/// [`ROWS`]; n a multiple of `NB`). Each block of ROWS × NB outputs stays in registers while B's rows stream by.
#[inline(always)]
fn gemm<T: Real, const FUSED: bool, const NB: usize>(a: &[T], k: usize, b: &[T], n: usize, bias: Option<&[T]>, c: &mut [T]) {
    for (r0, c_rows) in c.chunks_exact_mut(ROWS * n).enumerate() {
        let a_rows: [&[T]; ROWS] = std::array::from_fn(|q| &a[(r0 * ROWS + q) * k..(r0 * ROWS + q + 1) * k]);
        for n0 in (0..n).step_by(NB) {
            let mut acc = [[T::ZERO; NB]; ROWS];
            if let Some(bias) = bias {
                for row in acc.iter_mut() {
                    row.copy_from_slice(&bias[n0..n0 + NB]);
                }
            }
            for kk in 0..k {
                let b_row = &b[kk * n + n0..kk * n + n0 + NB];
                for (row, a_row) in acc.iter_mut().zip(&a_rows) {
                    let x = a_row[kk];
                    for (o, &w) in row.iter_mut().zip(b_row) {
                        *o = madd::<T, FUSED>(x, w, *o);
                    }
                }
            }
            for (q, row) in acc.iter().enumerate() {
                c_rows[q * n + n0..q * n + n0 + NB].copy_from_slice(row);
            }
        }
    }
}

/// SiLU in place: `z` becomes the sigmoid s = 1/(1 + e^−z), `h` = z·s.
#[inline(always)]
fn silu<T: Real, const FUSED: bool>(z: &mut [T], h: &mut [T]) {
    for (z, h) in z.iter_mut().zip(h.iter_mut()) {
        let s = T::ONE / (T::ONE + (-*z).exp::<FUSED>());
        *h = *z * s;
        *z = s;
    }
}

/// SiLU'(z) = s + h·(1 − s) from the sigmoid s and the activation h.
#[inline(always)]
fn silu_derivative<T: Real, const FUSED: bool>(s: T, h: T) -> T {
    madd::<T, FUSED>(h, T::ONE - s, s)
}

/// A SiLU layer, zero-padded to a multiple of the register block in both dimensions (padded units have zero
/// weights in and out, so they change nothing).
struct Layer<T> {
    /// Padded inputs and outputs.
    k: usize,
    n: usize,
    /// `[k][n]`.
    w: Vec<T>,
    /// `[n][k]`: the backward pass streams it row by row like the forward pass streams `w`.
    wt: Vec<T>,
    b: Vec<T>,
}

/// A species' domain guard (`onnx::networks::GuardWeights`) on the network's gathered inputs: the sketch
/// values p = M x are one more blocked product of the rows the first layer reads, with Mᵀ ⊙ mask as its
/// weights and −M (mean) as its bias; the gradient is formed in f64, only for atoms past the onset.
struct Guard<T> {
    /// Mᵀ ⊙ mask on the read components, `[fp][padded]`, and the bias −M·mean (`[padded]`).
    w: Vec<T>,
    b: Vec<T>,
    padded: usize,
    /// Per guarded component: its descriptor index, mask and masked mean.
    cols: Vec<(usize, f64, f64)>,
    /// M on the guarded components, `[rows][cols]` (f64, for the gradient).
    sketch: Vec<f64>,
    rows: usize,
    inv_ref: f64,
    onset: f64,
    strength: f64,
}

impl<T: Real> Guard<T> {
    /// The guard of `g` for a network reading `read` (descriptor indices, padded to `fp` rows).
    fn new(g: &GuardWeights, read: &[usize], fp: usize, pad: impl Fn(usize) -> usize) -> Self {
        let nf = g.mask.len();
        let rows = g.sketch.len() / nf.max(1);
        let padded = pad(rows);
        let (mut w, mut b) = (vec![T::ZERO; fp * padded], vec![T::ZERO; padded]);
        for j in 0..rows {
            let m = &g.sketch[j * nf..(j + 1) * nf];
            for (pos, &f) in read.iter().enumerate() {
                w[pos * padded + j] = T::of(m[f] * g.mask[f]);
            }
            b[j] = T::of(-read.iter().map(|&f| m[f] * g.mean[f]).sum::<f64>());
        }
        let cols: Vec<(usize, f64, f64)> = read.iter().filter(|&&f| g.mask[f] != 0.0).map(|&f| (f, g.mask[f], g.mean[f])).collect();
        let sketch = (0..rows).flat_map(|j| cols.iter().map(move |&(f, _, _)| g.sketch[j * nf + f])).collect();
        Guard { w, b, padded, cols, sketch, rows, inv_ref: g.inv_ref, onset: g.onset, strength: g.strength }
    }
}

/// One species' network in the graph's precision.
struct Network<T> {
    /// The descriptor components the first layer reads, when its weights ignore some (all-zero rows of W₀, as
    /// in the files of models trained with `model.drop_features_below`): only these are gathered into the
    /// first product, which is the widest, and the others' gradients are zero. `None`: all of them.
    reads: Option<Vec<usize>>,
    hidden: Vec<Layer<T>>,
    /// scale·W_L (padded): ∂E/∂h of the last hidden layer, the same for every atom.
    out_w: Vec<T>,
    /// scale·b_L.
    out_b: T,
    /// The domain guard, evaluated with the network's gathered inputs.
    guard: Option<Guard<T>>,
}

impl<T: Real> Network<T> {
    fn new(lifted: &NetworkWeights, nb: usize) -> Self {
        let pad = |n: usize| n.div_ceil(nb) * nb;
        let (last, hidden) = lifted.layers.split_last().expect("lift returns at least two layers");
        let (w0, _, n_features, width) = &hidden[0];
        // the inputs of the first layer (and of a domain guard, which reads the same components)
        let guarded = |i: usize| lifted.guard.as_ref().is_some_and(|g| g.mask[i] != 0.0);
        let read: Vec<usize> = (0..*n_features).filter(|&i| w0[i * width..(i + 1) * width].iter().any(|&w| w != 0.0) || guarded(i)).collect();
        let reads = (!read.is_empty() && read.len() < *n_features).then_some(read);
        let hidden = hidden
            .iter()
            .enumerate()
            .map(|(layer, (w, b, n_in, n_out))| {
                // the first layer's inputs are the components it reads
                let rows: Vec<usize> = match &reads {
                    Some(read) if layer == 0 => read.clone(),
                    _ => (0..*n_in).collect(),
                };
                let (k, n) = (pad(rows.len()), pad(*n_out));
                let (mut wp, mut wt, mut bp) = (vec![T::ZERO; k * n], vec![T::ZERO; n * k], vec![T::ZERO; n]);
                for (i, &r) in rows.iter().enumerate() {
                    for o in 0..*n_out {
                        wp[i * n + o] = T::of(w[r * n_out + o]);
                        wt[o * k + i] = T::of(w[r * n_out + o]);
                    }
                }
                for o in 0..*n_out {
                    bp[o] = T::of(b[o]);
                }
                Layer { k, n, w: wp, wt, b: bp }
            })
            .collect::<Vec<_>>();
        let n_last = hidden.last().map_or(0, |l| l.n);
        let mut out_w = vec![T::ZERO; n_last];
        for (o, &w) in out_w.iter_mut().zip(&last.0) {
            *o = T::of(w * lifted.scale);
        }
        let all: Vec<usize> = (0..*n_features).collect();
        let fp = hidden[0].k;
        let guard = lifted.guard.as_ref().map(|g| Guard::new(g, reads.as_deref().unwrap_or(&all), fp, pad));
        Network { reads, hidden, out_w, out_b: T::of(last.1[0] * lifted.scale), guard }
    }

    /// Adds the domain guard's energy and ∂E/∂G of the atoms `rows` (as the graph computes them) from the
    /// gathered inputs `s.x`: one blocked product gives every score; the gradient is formed (in f64, from the
    /// sketch values recomputed in f64) only for the atoms past the onset, which MD inside the training domain
    /// never has.
    #[inline(always)]
    fn add_guard<const FUSED: bool, const NB: usize>(&self, batch: &Batch, rows: &[usize], s: &mut Buffers<T>, energies: &mut [f64], gradients: &mut [f64]) {
        let Some(g) = &self.guard else { return };
        let (nf, fp, n) = (batch.n_features, self.hidden[0].k, g.cols.len());
        let rp = rows.len().div_ceil(ROWS) * ROWS;
        s.spare.resize(rp * g.padded, T::ZERO);
        gemm::<T, FUSED, NB>(&s.x[..rp * fp], fp, &g.w, g.padded, Some(&g.b), &mut s.spare);
        s.guard.resize(g.rows, 0.0);
        for (&row, p) in rows.iter().zip(s.spare.chunks_exact(g.padded)) {
            let score: f64 = p[..g.rows].iter().map(|a| a.to_f64() * a.to_f64()).sum();
            let u = (score * g.inv_ref - g.onset).max(0.0);
            if u <= 0.0 {
                continue;
            }
            // p again in f64, then E = κu², ∂E/∂G = (4κu / s_max) (Mᵀ p) ⊙ mask
            let feat = &batch.features[row * nf..(row + 1) * nf];
            for (pj, m) in s.guard.iter_mut().zip(g.sketch.chunks_exact(n)) {
                *pj = m.iter().zip(&g.cols).map(|(m, &(f, mask, mean))| m * (feat[f] * mask - mean)).sum::<f64>();
            }
            let score: f64 = s.guard.iter().map(|a| a * a).sum();
            let u = (score * g.inv_ref - g.onset).max(0.0);
            energies[row] += g.strength * u * u;
            let c = 4.0 * g.strength * g.inv_ref * u;
            let out = &mut gradients[row * nf..(row + 1) * nf];
            for (m, &pj) in g.sketch.chunks_exact(n).zip(s.guard.iter()) {
                for (mv, &(f, mask, _)) in m.iter().zip(&g.cols) {
                    out[f] += c * pj * mv * mask;
                }
            }
        }
    }

    /// Energies and ∂E/∂G of the atoms `rows` of `batch`, written to `energies[row]` and `gradients[row·F..]`.
    #[inline(always)]
    fn evaluate<const FUSED: bool, const NB: usize>(&self, batch: &Batch, rows: &[usize], s: &mut Buffers<T>, energies: &mut [f64], gradients: &mut [f64]) {
        let (nf, fp) = (batch.n_features, self.hidden[0].k);
        let rp = rows.len().div_ceil(ROWS) * ROWS;
        s.x.resize(rp * fp, T::ZERO);
        for (q, x) in s.x.chunks_exact_mut(fp).enumerate() {
            match rows.get(q) {
                Some(&row) => {
                    let g = &batch.features[row * nf..(row + 1) * nf];
                    let used = match &self.reads {
                        None => {
                            x.iter_mut().zip(g).for_each(|(x, &g)| *x = T::of(g));
                            nf
                        }
                        Some(read) => {
                            x.iter_mut().zip(read).for_each(|(x, &f)| *x = T::of(g[f]));
                            read.len()
                        }
                    };
                    x[used..].fill(T::ZERO);
                }
                None => x.fill(T::ZERO),
            }
        }
        // forward: s.sig[k] holds the sigmoids of layer k, s.h[k] its activations
        let depth = self.hidden.len();
        s.sig.resize_with(depth, Vec::new);
        s.h.resize_with(depth, Vec::new);
        for (k, layer) in self.hidden.iter().enumerate() {
            let (done, rest) = s.h.split_at_mut(k);
            let input = if k == 0 { &s.x } else { &done[k - 1] };
            let (z, h) = (&mut s.sig[k], &mut rest[0]);
            z.resize(rp * layer.n, T::ZERO);
            h.resize(rp * layer.n, T::ZERO);
            gemm::<T, FUSED, NB>(input, layer.k, &layer.w, layer.n, Some(&layer.b), z);
            silu::<T, FUSED>(z, h);
        }
        let n_last = self.hidden[depth - 1].n;
        for (&row, h) in rows.iter().zip(s.h[depth - 1].chunks_exact(n_last)) {
            let e = h.iter().zip(&self.out_w).fold(self.out_b, |e, (&h, &w)| madd::<T, FUSED>(h, w, e));
            energies[row] = e.to_f64();
        }
        // backward: δ of the last hidden layer, then through each layer to the inputs
        s.delta.resize(rp * n_last, T::ZERO);
        for ((d, sig), h) in s.delta.chunks_exact_mut(n_last).zip(s.sig[depth - 1].chunks_exact(n_last)).zip(s.h[depth - 1].chunks_exact(n_last)) {
            for (((d, &w), &sg), &h) in d.iter_mut().zip(&self.out_w).zip(sig).zip(h) {
                *d = w * silu_derivative::<T, FUSED>(sg, h);
            }
        }
        for k in (1..depth).rev() {
            let layer = &self.hidden[k];
            s.spare.resize(rp * layer.k, T::ZERO);
            gemm::<T, FUSED, NB>(&s.delta, layer.n, &layer.wt, layer.k, None, &mut s.spare);
            for ((d, &sg), &h) in s.spare.iter_mut().zip(&s.sig[k - 1]).zip(&s.h[k - 1]) {
                *d = *d * silu_derivative::<T, FUSED>(sg, h);
            }
            std::mem::swap(&mut s.delta, &mut s.spare);
        }
        let first = &self.hidden[0];
        s.spare.resize(rp * fp, T::ZERO);
        gemm::<T, FUSED, NB>(&s.delta, first.n, &first.wt, fp, None, &mut s.spare);
        for (&row, g) in rows.iter().zip(s.spare.chunks_exact(fp)) {
            let out = &mut gradients[row * nf..(row + 1) * nf];
            match &self.reads {
                None => out.iter_mut().zip(g).for_each(|(out, &g)| *out = g.to_f64()),
                Some(read) => {
                    out.fill(0.0);
                    read.iter().zip(g).for_each(|(&f, &g)| out[f] = g.to_f64());
                }
            }
        }
        self.add_guard::<FUSED, NB>(batch, rows, s, energies, gradients);
    }
}

/// The grow-only buffers of one call (one per thread that is inside the engine at the same time).
struct Buffers<T> {
    /// The rows of the species being evaluated.
    rows: Vec<usize>,
    /// Its descriptors `[rows][F padded]`.
    x: Vec<T>,
    sig: Vec<Vec<T>>,
    h: Vec<Vec<T>>,
    delta: Vec<T>,
    spare: Vec<T>,
    /// The domain guard's inputs, projections and one residual (f64).
    guard: Vec<f64>,
}

impl<T> Default for Buffers<T> {
    fn default() -> Self {
        Buffers { rows: Vec::new(), x: Vec::new(), sig: Vec::new(), h: Vec::new(), delta: Vec::new(), spare: Vec::new(), guard: Vec::new() }
    }
}

/// The native engine in precision `T`.
struct Native<T> {
    networks: Vec<Network<T>>,
    isa: Isa,
    /// Buffers of finished calls, reused by the next ones.
    buffers: Mutex<Vec<Buffers<T>>>,
}

impl<T: Real> Native<T> {
    fn new(lifted: &[NetworkWeights]) -> Self {
        Native { networks: lifted.iter().map(|l| Network::new(l, T::BLOCK)).collect(), isa: Isa::detect(), buffers: Mutex::new(Vec::new()) }
    }

    fn evaluate<const NB: usize>(&self, network: &Network<T>, batch: &Batch, rows: &[usize], s: &mut Buffers<T>, energies: &mut [f64], gradients: &mut [f64]) {
        match self.isa {
            Isa::Portable => network.evaluate::<false, NB>(batch, rows, s, energies, gradients),
            // SAFETY: `Isa::detect` found AVX2 and FMA on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { evaluate_avx2::<T, NB>(network, batch, rows, s, energies, gradients) },
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn evaluate_avx2<T: Real, const NB: usize>(network: &Network<T>, batch: &Batch, rows: &[usize], s: &mut Buffers<T>, energies: &mut [f64], gradients: &mut [f64]) {
    network.evaluate::<true, NB>(batch, rows, s, energies, gradients)
}

impl<T: Real> Engine for Native<T> {
    fn name(&self) -> &'static str {
        "native"
    }

    fn run(&self, batch: &Batch, energies: &mut [f64], gradients: &mut [f64]) -> Result<()> {
        let mut s = self.buffers.lock().map_err(|_| Error::engine("a previous call panicked"))?.pop().unwrap_or_default();
        let mut rows = std::mem::take(&mut s.rows);
        for (species, network) in self.networks.iter().enumerate() {
            rows.clear();
            rows.extend(rows_of(batch, species));
            if rows.is_empty() {
                continue;
            }
            match T::BLOCK {
                16 => self.evaluate::<16>(network, batch, &rows, &mut s, energies, gradients),
                _ => self.evaluate::<8>(network, batch, &rows, &mut s, energies, gradients),
            }
        }
        s.rows = rows;
        if let Ok(mut pool) = self.buffers.lock() {
            pool.push(s);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorisable exponentials against the standard library's over the range the sigmoid uses.
    #[test]
    fn exponentials_are_accurate_to_a_few_ulp() {
        let mut worst = (0.0f64, 0.0f64);
        for i in 0..=200_000 {
            let x = -80.0 + 160.0 * i as f64 / 200_000.0;
            let (a32, b32) = (<f32 as Real>::exp::<false>(x as f32) as f64, (x as f32).exp() as f64);
            let (a64, b64) = (<f64 as Real>::exp::<false>(x), x.exp());
            worst.0 = worst.0.max(((a32 - b32) / b32).abs());
            worst.1 = worst.1.max(((a64 - b64) / b64).abs());
        }
        assert!(worst.0 < 4.0 * f32::EPSILON as f64, "f32 exp relative error {:.2e}", worst.0);
        assert!(worst.1 < 4.0 * f64::EPSILON, "f64 exp relative error {:.2e}", worst.1);
        // beyond the clamp: saturates instead of overflowing to inf or NaN
        assert!(<f32 as Real>::exp::<false>(1000.0).is_finite() && <f32 as Real>::exp::<false>(-1000.0) >= 0.0);
        assert!(<f64 as Real>::exp::<false>(1e6).is_finite());
    }

    /// The register-blocked product against a plain triple loop, with padded rows and several column blocks.
    #[test]
    fn blocked_product_matches_the_definition() {
        let (rows, k, n) = (8, 37, 32);
        let mut rng = crate::rng::Rng::new(3);
        let a: Vec<f64> = (0..rows * k).map(|_| rng.normal()).collect();
        let b: Vec<f64> = (0..k * n).map(|_| rng.normal()).collect();
        let bias: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mut c = vec![0.0; rows * n];
        gemm::<f64, false, 8>(&a, k, &b, n, Some(&bias), &mut c);
        for r in 0..rows {
            for o in 0..n {
                let want = bias[o] + (0..k).map(|i| a[r * k + i] * b[i * n + o]).sum::<f64>();
                assert!((c[r * n + o] - want).abs() < 1e-12, "C[{r}][{o}] = {} vs {want}", c[r * n + o]);
            }
        }
    }
}
