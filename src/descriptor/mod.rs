//! Invariant many-body descriptor: an element-resolved atomic density expanded in smooth radial functions and
//! Cartesian angular monomials, contracted to rotation invariants (a power spectrum).
//!
//! For centre i and neighbour j (species s, distance r, direction û):
//!
//! ```text
//!   A[s,n][m] = Σ_j  R_n(r_ij) · Y_m(û_ij)                     (density coefficients, linear in neighbours)
//!   R_n(r)    = exp(−(r − μ_n)² / 2σ_s²) · f_c(r),  f_c(r) = (1 − (r/r_c)²)³   (C² at the cutoff; σ_s may
//!               depend on the neighbour's element s)
//!   Y_m(û)    = sqrt(l! / (a! b! c!)) · ûx^a ûy^b ûz^c,  a + b + c = l ≤ l_max
//!   G         = { A[c][l=0] }  ∪  { P_l[c,c'] = Σ_{m ∈ l} A[c][m] A[c'][m],  c ≤ c' }
//! ```
//!
//! With these weights `Σ_{m∈l} Y_m(û)Y_m(v̂) = (û·v̂)^l`, so `P_l` is a sum over neighbour pairs of
//! `R R' cos^l θ`: three-body, invariant under rotations, translations and permutations of equal atoms, and
//! computed at a cost linear in the number of neighbours. The channel index `c = s·n_radial + n` makes it
//! element-aware. Derivatives are analytic: a vector-Jacobian product (forces, virial) and a Jacobian-vector
//! product (the training primitive) — the full Jacobian is never stored.
//!
//! The bispectrum family appends four-body invariants of the same density ([`four_body`]); they are computed in
//! the same per-atom passes, and their gradient joins ∂E/∂A before the VJP goes to the pairs.

pub mod four_body;

use crate::frame::{Mat3, Vec3};
use crate::linalg::{gemm_view, Isa, View};
use crate::neighbors::NeighborList;
use four_body::{Bispectrum, FourBody};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Descriptor hyper-parameters (the `[descriptor]` config section).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DescriptorSpec {
    /// Cutoff radius r_c, Å.
    pub cutoff: f64,
    /// Centre of the first radial Gaussian, Å.
    pub r_min: f64,
    /// Number of radial functions per neighbour element.
    pub n_radial: usize,
    /// Highest angular order l (0 gives a two-body radial descriptor only... plus its products).
    pub l_max: usize,
    /// Gaussian width in units of the spacing between centres.
    pub radial_width: f64,
    /// Widths (in spacings) for the channels of neighbours of the listed elements, by symbol; the others have
    /// `radial_width`. Each neighbour element has its own channels, so its Gaussians can be narrower where its
    /// distances crowd together (carbon–carbon in aromatic rings) at no cost per pair. Elements not in a model
    /// are ignored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub radial_width_by_element: BTreeMap<String, f64>,
    /// λ ≥ 0: the Gaussians are equally spaced (and equally wide) in u(r) = (r_c/λ)(1 − e^{−λ r / r_c}) instead
    /// of r, which puts them closer together (and makes them narrower) at short range, where bonds are and
    /// forces are largest, and further apart near the cutoff. 0: equally spaced in r (files before the key).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub radial_scale: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for DescriptorSpec {
    fn default() -> Self {
        DescriptorSpec { cutoff: 5.0, r_min: 0.8, n_radial: 8, l_max: 4, radial_width: 0.6, radial_width_by_element: BTreeMap::new(), radial_scale: 0.0 }
    }
}

impl DescriptorSpec {
    /// Range checks; the message names the key (`descriptor.…`).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.cutoff > 0.0 && self.cutoff.is_finite()) {
            return Err(format!("descriptor.cutoff must be > 0 Å, got {}", self.cutoff));
        }
        if !(self.r_min >= 0.0 && self.r_min < self.cutoff) {
            return Err(format!("descriptor.r_min must be in [0, cutoff), got {}", self.r_min));
        }
        if self.n_radial < 2 || self.n_radial > 32 {
            return Err(format!("descriptor.n_radial must be in 2..=32, got {}", self.n_radial));
        }
        if self.l_max > 8 {
            return Err(format!("descriptor.l_max must be in 0..=8, got {}", self.l_max));
        }
        if !(self.radial_width > 0.0) {
            return Err(format!("descriptor.radial_width must be > 0, got {}", self.radial_width));
        }
        for (symbol, &w) in &self.radial_width_by_element {
            if crate::elements::atomic_number(symbol).is_none() {
                return Err(format!("descriptor.radial_width_by_element: '{symbol}' is not an element symbol"));
            }
            if !(w > 0.0 && w.is_finite()) {
                return Err(format!("descriptor.radial_width_by_element.{symbol} must be > 0, got {w}"));
            }
        }
        if !(0.0..=10.0).contains(&self.radial_scale) {
            return Err(format!("descriptor.radial_scale must be in [0, 10] (0: equally spaced Gaussians), got {}", self.radial_scale));
        }
        Ok(())
    }

    /// The Gaussian width (in spacings) of the channels of neighbours of element `z`.
    pub fn radial_width_of(&self, z: u32) -> f64 {
        let symbol = crate::elements::symbol(z).unwrap_or("");
        self.radial_width_by_element.get(symbol).copied().unwrap_or(self.radial_width)
    }

    /// The radial coordinate the Gaussians are equally spaced in, u(r), and du/dr (see `radial_scale`).
    #[inline(always)]
    pub fn radial_coordinate(&self, r: f64) -> (f64, f64) {
        if self.radial_scale == 0.0 {
            return (r, 1.0);
        }
        let e = (-self.radial_scale * r / self.cutoff).exp();
        (self.cutoff / self.radial_scale * (1.0 - e), e)
    }
}

/// One angular monomial ûx^a ûy^b ûz^c with its weight.
#[derive(Clone, Copy, Debug)]
struct Monomial {
    /// (a, b, c); the hot loops regenerate them in the same order, a test checks that they agree.
    pow: [usize; 3],
    weight: f64,
}

/// A descriptor for a fixed list of species (the species index of an atom selects its density channels).
#[derive(Clone, Debug)]
pub struct Descriptor {
    /// The hyper-parameters it was built from.
    pub spec: DescriptorSpec,
    n_species: usize,
    monomials: Vec<Monomial>,
    /// The per-pair monomials (orders l_max − 1 and l_max, see [`Descriptor::top`]) grouped by (a, b):
    /// `(a, b, range)` into `column_m` (monomial index), `column_c` (its power of z) and `column_w` (its weight).
    columns: Vec<(usize, usize, std::ops::Range<usize>)>,
    column_m: Vec<usize>,
    column_c: Vec<usize>,
    column_w: Vec<f64>,
    /// The first monomial that neighbours contribute to directly: the orders l_max − 1 and l_max. Because
    /// ûx² + ûy² + ûz² = 1, a monomial of order l is the sum of three of order l + 2, so the lower orders of the
    /// density are sums of higher ones, formed once per atom (`traces`) instead of once per pair: 25 instead of
    /// 35 functions per pair at l_max = 4, the same descriptor up to rounding.
    top: usize,
    /// For each monomial m < `top`: the three monomials of order l + 2 whose sum it is, with the weight ratio
    /// w_m / w_m' (`A[m] = Σ ratio·A[m']`).
    traces: Vec<[(usize, f64); 3]>,
    /// Centres of the Gaussians in the radial coordinate u ([`DescriptorSpec::radial_coordinate`]).
    centers: Vec<f64>,
    /// Per neighbour species: α = 1/2σ² of its Gaussians and e^{−2αΔ²}, the ratio of consecutive factors of the
    /// Gaussian recurrence.
    widths: Vec<(f64, f64)>,
    /// Spacing of the centres (in u), its inverse and 1 / r_c.
    step: f64,
    inv_step: f64,
    inv_cutoff: f64,
    /// The instruction set the kernels run with on this CPU (detected once).
    isa: Isa,
    /// The four-body invariants appended to the power spectrum (the bispectrum family), if any.
    four_body: Option<Arc<FourBody>>,
}

/// How the kernels compute a·b + c: fused (one rounding) where the CPU has FMA, else a product and a sum; and how
/// they mirror a symmetric matrix (AVX2 4 × 4 transposes where FMA, and so AVX2, is there).
trait MulAdd {
    fn madd(a: f64, b: f64, c: f64) -> f64;

    /// Copies the upper triangle of the row-major `n` × `n` matrix `w` onto its lower one.
    #[inline(always)]
    fn mirror_upper(w: &mut [f64], n: usize) {
        for r in 1..n {
            for c in 0..r {
                w[r * n + c] = w[c * n + r];
            }
        }
    }

    /// `out[r][c] = x[r][c] + x[c][r]` for c ≥ r at least (row-major `n` × `n`, n a multiple of 4; the entries
    /// below the diagonal blocks are left as they are).
    #[inline(always)]
    fn symmetric_sum(x: &[f64], n: usize, out: &mut [f64]) {
        for r in 0..n {
            for c in r..n {
                out[r * n + c] = x[r * n + c] + x[c * n + r];
            }
        }
    }

    /// `at[k][c] = x[c][ms.start + k]` for k < ms.len() and c < nc, zero for nc ≤ c < w: the columns `ms` of the
    /// `[nc][nm]` matrix `x` as rows of `w` values (w ≥ nc).
    #[inline(always)]
    fn transpose_columns(x: &[f64], nc: usize, nm: usize, ms: std::ops::Range<usize>, w: usize, at: &mut [f64]) {
        for (row, m) in at.chunks_exact_mut(w).zip(ms) {
            for (c, v) in row.iter_mut().enumerate() {
                *v = if c < nc { x[c * nm + m] } else { 0.0 };
            }
        }
    }
}

/// a·b + c with two roundings.
struct Plain;
impl MulAdd for Plain {
    #[inline(always)]
    fn madd(a: f64, b: f64, c: f64) -> f64 {
        a * b + c
    }
}

/// The transpose of a 4 × 4 block held as four AVX rows of four f64 (its columns, as rows). A macro, not a
/// function: it expands inside `Fused`'s methods, in code compiled for AVX2 (vector values never cross a call).
#[cfg(target_arch = "x86_64")]
macro_rules! transpose4 {
    ($r:expr) => {{
        let r = $r;
        let (t0, t1) = (_mm256_unpacklo_pd(r[0], r[1]), _mm256_unpackhi_pd(r[0], r[1]));
        let (t2, t3) = (_mm256_unpacklo_pd(r[2], r[3]), _mm256_unpackhi_pd(r[2], r[3]));
        [
            _mm256_permute2f128_pd::<0x20>(t0, t2),
            _mm256_permute2f128_pd::<0x20>(t1, t3),
            _mm256_permute2f128_pd::<0x31>(t0, t2),
            _mm256_permute2f128_pd::<0x31>(t1, t3),
        ]
    }};
}

/// a·b + c with one rounding (only called from code compiled for FMA).
struct Fused;
impl MulAdd for Fused {
    #[inline(always)]
    fn madd(a: f64, b: f64, c: f64) -> f64 {
        a.mul_add(b, c)
    }

    /// Four rows at a time: each 4 × 4 block of the upper triangle is transposed in registers and stored to its
    /// mirror; the rows past the last whole block (n not divisible by 4) element by element. Element by element
    /// the strided stores were a tenth to a fifth of the VJP (naphthalene, uracil).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn mirror_upper(w: &mut [f64], n: usize) {
        use std::arch::x86_64::*;
        assert!(w.len() >= n * n);
        let (p, full) = (w.as_mut_ptr(), n / 4 * 4);
        // SAFETY: `Fused` runs only in code compiled for AVX2 + FMA on a CPU that has them (`Isa::detect`), and
        // every access is to a row r < full at columns [c, c + 4) with c + 4 ≤ full ≤ n, inside the n × n
        // asserted above.
        unsafe {
            for bi in (0..full).step_by(4) {
                for bj in (bi..full).step_by(4) {
                    let r = [0, 1, 2, 3].map(|k| _mm256_loadu_pd(p.add((bi + k) * n + bj)));
                    let c = transpose4!(r);
                    if bj > bi {
                        for (k, ck) in c.iter().enumerate() {
                            _mm256_storeu_pd(p.add((bj + k) * n + bi), *ck);
                        }
                    } else {
                        // a block on the diagonal: row k keeps its entries from column k on
                        _mm256_storeu_pd(p.add((bi + 1) * n + bi), _mm256_blend_pd::<0b1110>(c[1], r[1]));
                        _mm256_storeu_pd(p.add((bi + 2) * n + bi), _mm256_blend_pd::<0b1100>(c[2], r[2]));
                        _mm256_storeu_pd(p.add((bi + 3) * n + bi), _mm256_blend_pd::<0b1000>(c[3], r[3]));
                    }
                }
            }
        }
        for r in full..n {
            for c in 0..r {
                w[r * n + c] = w[c * n + r];
            }
        }
    }

    /// Block (i, j) of the sum is block (i, j) plus the transpose of block (j, i), transposed in registers.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn symmetric_sum(x: &[f64], n: usize, out: &mut [f64]) {
        use std::arch::x86_64::*;
        assert!(n.is_multiple_of(4) && x.len() >= n * n && out.len() >= n * n);
        let (p, q) = (x.as_ptr(), out.as_mut_ptr());
        // SAFETY: as in `mirror_upper`: AVX2 is there, and every access is inside the n × n asserted above.
        unsafe {
            for bi in (0..n).step_by(4) {
                for bj in (bi..n).step_by(4) {
                    let c = transpose4!([0, 1, 2, 3].map(|k| _mm256_loadu_pd(p.add((bj + k) * n + bi))));
                    for (k, ck) in c.iter().enumerate() {
                        let at = (bi + k) * n + bj;
                        _mm256_storeu_pd(q.add(at), _mm256_add_pd(_mm256_loadu_pd(p.add(at)), *ck));
                    }
                }
            }
        }
    }

    /// Whole 4 × 4 blocks transposed in registers, the ragged edges (orders of 1, 3, 6, 10, 15 monomials;
    /// channel counts not divisible by 4) element by element.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn transpose_columns(x: &[f64], nc: usize, nm: usize, ms: std::ops::Range<usize>, w: usize, at: &mut [f64]) {
        use std::arch::x86_64::*;
        let (len, m0) = (ms.len(), ms.start);
        assert!(w >= nc && ms.end <= nm && x.len() >= nc * nm && at.len() >= len * w);
        let (full_k, full_c) = (len / 4 * 4, nc / 4 * 4);
        let (p, q) = (x.as_ptr(), at.as_mut_ptr());
        // SAFETY: as in `mirror_upper`: AVX2 is there; the loads read x[c][m0 + k..m0 + k + 4] with c < nc and
        // m0 + k + 4 ≤ ms.end ≤ nm, the stores write at[k][c..c + 4] with k < len and c + 4 ≤ nc ≤ w, all inside
        // the lengths asserted above.
        unsafe {
            for k in (0..full_k).step_by(4) {
                for c0 in (0..full_c).step_by(4) {
                    let c = transpose4!([0, 1, 2, 3].map(|i| _mm256_loadu_pd(p.add((c0 + i) * nm + m0 + k))));
                    for (i, ci) in c.iter().enumerate() {
                        _mm256_storeu_pd(q.add((k + i) * w + c0), *ci);
                    }
                }
            }
        }
        for (k, row) in at.chunks_exact_mut(w).take(len).enumerate() {
            let first = if k < full_k { full_c } else { 0 };
            for (c, v) in row.iter_mut().enumerate().skip(first) {
                *v = if c < nc { x[c * nm + m0 + k] } else { 0.0 };
            }
        }
    }
}

/// Per-neighbour values that the derivatives reuse.
#[derive(Clone, Copy, Debug, Default)]
struct PairCache {
    r: f64,
    u: Vec3,
}

/// Calls a kernel (generic over `M: MulAdd, const NR, const L`) with the fastest code for this CPU and descriptor
/// shape: AVX2 + FMA through its `#[target_feature]` wrapper, with the common shapes (n_radial 6 or 8, l_max 3 or 4)
/// compiled in as constants; portable code elsewhere.
macro_rules! dispatch {
    ($self:ident, $kernel:ident, $avx2:ident, ($($arg:expr),*)) => {
        match ($self.isa, $self.spec.n_radial, $self.spec.l_max) {
            (Isa::Portable, _, _) => $self.$kernel::<Plain, DYN, DYN>($($arg),*),
            // SAFETY (all arms): `Isa::detect` found these features on this CPU.
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2Fma, 8, 4) => unsafe { $self.$avx2::<8, 4>($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2Fma, 6, 4) => unsafe { $self.$avx2::<6, 4>($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2Fma, 8, 3) => unsafe { $self.$avx2::<8, 3>($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2Fma, 6, 3) => unsafe { $self.$avx2::<6, 3>($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2Fma, _, _) => unsafe { $self.$avx2::<DYN, DYN>($($arg),*) },
        }
    };
}

/// "Not fixed at compile time" for the shape parameters of the kernels: `NR` (n_radial) and `L` (l_max) are
/// either the model's values, compiled in for the common shapes (loops unrolled, no bounds checks), or `DYN`.
const DYN: usize = usize::MAX;

/// Up to this many density channels (n_species × n_radial) the invariants and their derivative run in column
/// kernels whose accumulators stay in registers (channels padded to 8, 16, 24 or 32); beyond, blocked matrix
/// products (measured: aspirin, 24 channels: 314 → 287 µs per call against the matrix products).
const REGISTER_CHANNELS: usize = 32;

/// The padded channel count of the column kernels (a multiple of 8, at most [`REGISTER_CHANNELS`]).
fn register_width(nc: usize) -> usize {
    nc.div_ceil(8) * 8
}

/// Powers 0..=8 of the three components of a unit vector.
type Powers = [[f64; 9]; 3];

/// Most angular monomials of any valid `l_max` (8): Σ_{l≤8} (l+1)(l+2)/2. Per-pair angular scratch lives on the
/// stack with this size.
const MAX_MONOMIALS: usize = 165;

/// Atoms per work item when a call runs on several threads (results do not depend on it: atoms are independent).
const ATOMS_PER_TASK: usize = 32;

/// Atoms per chunk of [`Descriptor::evaluate_into`]: enough chunks for the threads of a rank to share (8 for 2048
/// atoms), large enough that the engine's per-call overhead stays small (measured on 2048 Cu atoms: 64 and 128
/// were 3–6 % slower, 256–512 the fastest). Fixed, so that results do not depend on the number of threads.
const EVAL_CHUNK: usize = 256;

/// Descriptors of one structure plus what their derivatives need. Reusable: [`Descriptor::compute_into`] refills
/// the buffers of a previous call without allocating when the system has not grown.
#[derive(Clone, Debug, Default)]
pub struct Descriptors {
    /// Centre atoms (rows).
    pub n_atoms: usize,
    /// Features per atom (columns).
    pub n_features: usize,
    /// Row-major `[n_atoms][n_features]`.
    pub features: Vec<f64>,
    /// Density coefficients, `[n_atoms][n_channels][n_monomials]`.
    density: Vec<f64>,
    pairs: Vec<PairCache>,
    /// Per pair: radial values and derivatives, `[n_radial]` each. Angular functions are recomputed from the
    /// pair direction when derivatives need them: caching them (~1 KB per pair) made large systems memory-bound.
    radial: Vec<f64>,
    d_radial: Vec<f64>,
    /// The neighbour list the descriptors were computed from (neighbours sorted by species).
    pub neighbors: NeighborList,
    species_of_neighbor: Vec<usize>,
    /// Species index of each centre (the four-body compression depends on it).
    centre_species: Vec<usize>,
    /// Scratch of the invariants (n_channels² per work item).
    scratch: Vec<f64>,
}

impl Descriptors {
    /// Bytes held on the heap (an estimate: vectors by length), to bound caches of descriptors.
    pub fn heap_bytes(&self) -> usize {
        let floats = self.features.len() + self.density.len() + self.radial.len() + self.d_radial.len() + self.scratch.len();
        floats * 8
            + self.pairs.len() * std::mem::size_of::<PairCache>()
            + self.neighbors.heap_bytes()
            + (self.species_of_neighbor.len() + self.centre_species.len()) * std::mem::size_of::<usize>()
    }

    /// The density coefficients of centre i, `[n_channels][n_monomials]` (all orders).
    pub fn density_of(&self, i: usize) -> &[f64] {
        let na = self.density.len() / self.n_atoms.max(1);
        &self.density[i * na..(i + 1) * na]
    }
}

impl Descriptor {
    /// The descriptor of `spec` for a model of the elements `species` (atomic numbers, in the model's order).
    pub fn new(spec: &DescriptorSpec, species: &[u32]) -> Self {
        let n_species = species.len();
        let mut monomials = Vec::new();
        let fact = |k: usize| (1..=k).map(|x| x as f64).product::<f64>();
        for l in 0..=spec.l_max {
            for a in (0..=l).rev() {
                for b in (0..=l - a).rev() {
                    let c = l - a - b;
                    let w = (fact(l) / (fact(a) * fact(b) * fact(c))).sqrt();
                    monomials.push(Monomial { pow: [a, b, c], weight: w });
                }
            }
        }
        let index = |pow: [usize; 3]| monomials.iter().position(|mo: &Monomial| mo.pow == pow).unwrap_or(0);
        let top_order = spec.l_max.saturating_sub(1);
        let (mut columns, mut column_m, mut column_c, mut column_w) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for a in 0..=spec.l_max {
            for b in 0..=spec.l_max - a {
                let start = column_m.len();
                for c in top_order.saturating_sub(a + b)..=spec.l_max - a - b {
                    let m = index([a, b, c]);
                    column_m.push(m);
                    column_c.push(c);
                    column_w.push(monomials[m].weight);
                }
                columns.push((a, b, start..column_m.len()));
            }
        }
        let top = order_range(top_order).start;
        let traces = monomials[..top]
            .iter()
            .map(|mo| {
                let [a, b, c] = mo.pow;
                [[a + 2, b, c], [a, b + 2, c], [a, b, c + 2]].map(|pow| {
                    let m = index(pow);
                    (m, mo.weight / monomials[m].weight)
                })
            })
            .collect();
        let n = spec.n_radial;
        let (u_min, u_max) = (spec.radial_coordinate(spec.r_min).0, spec.radial_coordinate(spec.cutoff).0);
        let step = (u_max - u_min) / (n - 1) as f64;
        let centers = (0..n).map(|k| u_min + k as f64 * step).collect();
        let widths = species
            .iter()
            .map(|&z| {
                let sigma = spec.radial_width_of(z) * step;
                let alpha = 1.0 / (2.0 * sigma * sigma);
                (alpha, (-2.0 * alpha * step * step).exp())
            })
            .collect();
        Descriptor {
            spec: spec.clone(),
            n_species,
            monomials,
            columns,
            column_m,
            column_c,
            column_w,
            top,
            traces,
            isa: Isa::detect(),
            centers,
            widths,
            step,
            inv_step: 1.0 / step,
            inv_cutoff: 1.0 / spec.cutoff,
            four_body: None,
        }
    }

    /// The descriptor of a model of either family: with the four-body invariants of `four_body` when given.
    pub fn with_optional_four_body(spec: &DescriptorSpec, species: &[u32], four_body: Option<&Bispectrum>) -> crate::error::Result<Self> {
        let d = Descriptor::new(spec, species);
        match four_body {
            Some(b) => d.with_four_body(b),
            None => Ok(d),
        }
    }

    /// This descriptor with the four-body invariants of `b` appended to each atom's features (the bispectrum
    /// family). Fails when `b`'s compression does not fit this descriptor.
    pub fn with_four_body(mut self, b: &Bispectrum) -> crate::error::Result<Self> {
        b.validate(self.spec.l_max).map_err(crate::error::Error::model)?;
        self.four_body = Some(Arc::new(FourBody::new(b, self.n_species, self.n_channels(), &self.monomials, self.spec.l_max, order_range)?));
        Ok(self)
    }

    /// Fits the compression of `b` to the densities of `structures` (see [`Bispectrum::fit`]).
    pub fn fit_compression<'a>(&self, b: &mut Bispectrum, structures: impl Iterator<Item = &'a Descriptors>) {
        let atoms = structures.flat_map(|d| (0..d.n_atoms).map(move |i| (d.centre_species[i], d.density_of(i))));
        b.fit(self.n_species, self.n_channels(), self.n_monomials(), b.compressed_orders(self.spec.l_max), order_range, atoms);
    }

    /// Density channels: one per (neighbour species, radial function).
    pub fn n_channels(&self) -> usize {
        self.n_species * self.spec.n_radial
    }
    fn n_monomials(&self) -> usize {
        self.monomials.len()
    }
    /// Features per atom: the l = 0 densities and the power spectrum of every channel pair and l, then the
    /// four-body invariants, if any.
    pub fn n_features(&self) -> usize {
        self.n_power_spectrum_features() + self.four_body.as_ref().map_or(0, |fb| fb.n_features())
    }

    /// The four-body part (bispectrum family), if any.
    pub fn four_body(&self) -> Option<&FourBody> {
        self.four_body.as_deref()
    }

    /// The l = 0 densities and the power spectrum: the first features of each atom (the four-body ones follow).
    /// Without the full power spectrum (a bispectrum model whose three-body part is compressed), the l = 0
    /// densities only.
    pub fn n_power_spectrum_features(&self) -> usize {
        let c = self.n_channels();
        c + if self.full_power_spectrum() { (self.spec.l_max + 1) * c * (c + 1) / 2 } else { 0 }
    }

    /// Whether the power spectrum over every channel pair is part of the features (all but the bispectrum models
    /// with a compressed three-body part).
    fn full_power_spectrum(&self) -> bool {
        self.four_body.as_ref().is_none_or(|fb| !fb.compresses_three_body())
    }

    /// Scratch values per work item of a forward pass: the invariants of one atom as a matrix, then the
    /// four-body part's.
    fn forward_scratch(&self) -> usize {
        self.contract_scratch() + self.four_body.as_ref().map_or(0, |fb| fb.scratch_len())
    }

    /// Scratch of [`Descriptor::contract`]: an order's block of the density transposed (its l_max + 1 choose 2
    /// monomials × [`REGISTER_CHANNELS`]) or, for more channels, one invariant matrix.
    fn contract_scratch(&self) -> usize {
        let widest_order = (self.spec.l_max + 1) * (self.spec.l_max + 2) / 2;
        (self.n_channels() * self.n_channels()).max((widest_order + REGISTER_CHANNELS) * REGISTER_CHANNELS)
    }

    /// Radial functions R_k(r) and their derivatives. The Gaussians on equally spaced centres are generated by a
    /// recurrence from the nearest centre outwards (g_{k±1} = g_k·q_k, q_{k±1} = q_k·e^{−2αΔ²}): two `exp` per
    /// pair instead of one per function, and no overflow since the factors only shrink away from the peak.
    #[inline(always)]
    fn radial(&self, r: f64, neighbour_species: usize, out: &mut [f64], dout: &mut [f64]) {
        // products by precomputed inverses: divisions were a tenth of the forward pass
        let inv_rc = self.inv_cutoff;
        let x = r * inv_rc;
        let s = 1.0 - x * x;
        let (fc, dfc) = if x < 1.0 { (s * s * s, -6.0 * x * s * s * inv_rc) } else { (0.0, 0.0) };
        let (u, du) = self.spec.radial_coordinate(r);
        let n = self.centers.len();
        let ((alpha, shrink), step) = (self.widths[neighbour_species], self.step);
        // the nearest centre (x + ½ truncated: `round` is a slow call where SSE4.1 is not assumed)
        let k0 = ((((u - self.centers[0]) * self.inv_step + 0.5).max(0.0)) as usize).min(n - 1);
        let d0 = u - self.centers[k0];
        let g0 = (-alpha * d0 * d0).exp();
        let two_alpha_fc_du = 2.0 * alpha * fc * du;
        let mut set = |k: usize, g: f64| {
            let d = u - self.centers[k];
            out[k] = g * fc;
            dout[k] = g * (dfc - two_alpha_fc_du * d);
        };
        set(k0, g0);
        // q_up·q_down = e^{−2αΔ²} = shrink: two `exp` per pair
        let q_up = (alpha * (2.0 * d0 * step - step * step)).exp();
        let (mut g, mut q) = (g0, q_up);
        for k in k0 + 1..n {
            g *= q;
            q *= shrink;
            set(k, g);
        }
        let (mut g, mut q) = (g0, shrink / q_up);
        for k in (0..k0).rev() {
            g *= q;
            q *= shrink;
            set(k, g);
        }
    }

    /// n_radial, or `NR` when compiled in.
    #[inline(always)]
    fn nr_of<const NR: usize>(&self) -> usize {
        if NR != DYN { NR } else { self.spec.n_radial }
    }

    /// l_max, or `L` when compiled in.
    #[inline(always)]
    fn l_of<const L: usize>(&self) -> usize {
        if L != DYN { L } else { self.spec.l_max }
    }

    /// The number of monomials, a constant when `L` is compiled in.
    #[inline(always)]
    fn nm_of<const L: usize>(&self) -> usize {
        if L != DYN { order_range(L).end } else { self.n_monomials() }
    }

    /// Powers `u_a^k`, k ≤ l_max, of each component of û into `pw` (entries above l_max are left as they are).
    #[inline(always)]
    fn powers<const L: usize>(&self, u: &Vec3, pw: &mut Powers) {
        for a in 0..3 {
            pw[a][0] = 1.0;
            for k in 1..=self.l_of::<L>() {
                pw[a][k] = pw[a][k - 1] * u[a];
            }
        }
    }

    /// [`Descriptor::powers`] and their derivatives `k·u_a^(k−1)` into `dpw`.
    #[inline(always)]
    fn powers_and_derivatives<const L: usize>(&self, u: &Vec3, pw: &mut Powers, dpw: &mut Powers) {
        const K: [f64; 9] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        for a in 0..3 {
            pw[a][0] = 1.0;
            dpw[a][0] = 0.0;
            for k in 1..=self.l_of::<L>() {
                pw[a][k] = pw[a][k - 1] * u[a];
                dpw[a][k] = K[k] * pw[a][k - 1];
            }
        }
    }

    /// The first per-pair monomial ([`Descriptor::top`]), a constant when `L` is compiled in.
    #[inline(always)]
    fn top_of<const L: usize>(&self) -> usize {
        if L != DYN { order_range(L.saturating_sub(1)).start } else { self.top }
    }

    /// Calls `f(m, weight, a, b, c)` for every monomial of order ≥ `l0` in feature order (l ascending, then a and
    /// b descending), as plain loops: much faster than walking the `monomials` table.
    #[inline(always)]
    fn for_each_monomial<const L: usize>(&self, l0: usize, mut f: impl FnMut(usize, f64, usize, usize, usize)) {
        let mut m = order_range(l0).start;
        for l in l0..=self.l_of::<L>() {
            for a in (0..=l).rev() {
                for b in (0..=l - a).rev() {
                    f(m, self.monomials[m].weight, a, b, l - a - b);
                    m += 1;
                }
            }
        }
    }

    /// The per-pair angular functions Y_m(û), m ≥ `top` (entries below are left as they are); `p` is scratch.
    #[inline(always)]
    fn angular<const L: usize>(&self, u: &Vec3, y: &mut [f64], p: &mut Powers) {
        self.powers::<L>(u, p);
        self.for_each_monomial::<L>(self.l_of::<L>().saturating_sub(1), |m, w, a, b, c| y[m] = w * p[0][a] * p[1][b] * p[2][c]);
    }

    /// Completes a density `[n_channels][nm]` whose orders l_max − 1 and l_max are set: every lower order is the
    /// sum of three monomials two orders up (`traces`), filled from the top down.
    #[inline(always)]
    fn fill_lower<const L: usize>(&self, a: &mut [f64]) {
        let (nm, top) = (self.nm_of::<L>(), self.top_of::<L>());
        for row in a.chunks_exact_mut(nm) {
            for m in (0..top).rev() {
                let [(m1, w1), (m2, w2), (m3, w3)] = self.traces[m];
                row[m] = w1 * row[m1] + w2 * row[m2] + w3 * row[m3];
            }
        }
    }

    /// The transpose of [`Descriptor::fill_lower`]: adds the gradient of every lower order to the three
    /// monomials two orders up, from the bottom up, so that only orders l_max − 1 and l_max carry it to the pairs.
    #[inline(always)]
    fn fold_lower<const L: usize>(&self, da: &mut [f64]) {
        let (nm, top) = (self.nm_of::<L>(), self.top_of::<L>());
        for row in da.chunks_exact_mut(nm) {
            for m in 0..top {
                let g = row[m];
                for (m2, w) in self.traces[m] {
                    row[m2] += w * g;
                }
            }
        }
    }

    /// `(Σ_m s_m Y_m, Σ_m t_m ∇Y_m)` over the per-pair monomials (m ≥ `top`) with ∇ with respect to û as a free
    /// vector: the angular part of the VJP. Both are polynomials in (x, y, z): per (a, b) group the z-polynomial
    /// (one or two terms) and its derivative are summed, then multiplied by x^a y^b and its x and y derivatives.
    /// `p`, `dp` are scratch.
    #[inline(always)]
    fn angular_contract<M: MulAdd, const L: usize>(&self, u: &Vec3, s: &[f64], t: &[f64], p: &mut Powers, dp: &mut Powers) -> (f64, Vec3) {
        self.powers_and_derivatives::<L>(u, p, dp);
        let (mut sy, mut gx, mut gy, mut gz) = (0.0, 0.0, 0.0, 0.0);
        for (a, b, range) in &self.columns {
            let (ms, cs, ws) = (&self.column_m[range.clone()], &self.column_c[range.clone()], &self.column_w[range.clone()]);
            let (mut q, mut dq, mut r) = (0.0, 0.0, 0.0);
            for ((&m, &c), &w) in ms.iter().zip(cs).zip(ws) {
                let (tw, sw) = (t[m] * w, s[m] * w);
                q = M::madd(tw, p[2][c], q);
                dq = M::madd(tw, dp[2][c], dq);
                r = M::madd(sw, p[2][c], r);
            }
            let (xa, yb) = (p[0][*a], p[1][*b]);
            let xy = xa * yb;
            sy = M::madd(xy, r, sy);
            gx = M::madd(dp[0][*a] * yb, q, gx);
            gy = M::madd(xa * dp[1][*b], q, gy);
            gz = M::madd(xy, dq, gz);
        }
        (sy, [gx, gy, gz])
    }

    /// Y_m(û) and the directional derivatives ∇Y_m·v (v a free vector) of the orders l0..=l_max: the angular part
    /// of the JVP.
    #[inline(always)]
    fn angular_directional<const L: usize>(&self, u: &Vec3, v: &Vec3, l0: usize, y: &mut [f64], dy: &mut [f64]) {
        // the powers of each component and their derivatives along v (k u_a^(k−1) v_a): the product rule then
        // costs a few products per monomial instead of three triple products
        let (mut p, mut dp): (Powers, Powers) = ([[0.0; 9]; 3], [[0.0; 9]; 3]);
        self.powers_and_derivatives::<L>(u, &mut p, &mut dp);
        for (d, va) in dp.iter_mut().zip(v) {
            for x in d.iter_mut().take(self.l_of::<L>() + 1) {
                *x *= va;
            }
        }
        self.for_each_monomial::<L>(l0, |m, w, a, b, c| {
            let (xy, wz) = (p[0][a] * p[1][b], w * p[2][c]);
            let dxy = dp[0][a] * p[1][b] + p[0][a] * dp[1][b];
            y[m] = xy * wz;
            dy[m] = dxy * wz + w * xy * dp[2][c];
        });
    }

    /// Computes descriptors of the centre atoms of `neighbors`. `species[j]` is the species index (0..n_species)
    /// of atom j; it covers every neighbour index (an MD engine's ghost atoms too).
    pub fn compute(&self, species: &[usize], neighbors: NeighborList) -> Descriptors {
        let mut d = Descriptors::default();
        self.compute_into(species, neighbors, &mut d, false);
        d
    }

    /// [`Descriptor::compute`] into the buffers of `d` (no allocation when they are large enough). With
    /// `parallel`, atoms are shared among the threads of the current rayon pool; the results are bit-identical to
    /// a serial call (each atom's values are computed by one thread, in the same order).
    pub fn compute_into(&self, species: &[usize], neighbors: NeighborList, d: &mut Descriptors, parallel: bool) {
        self.prepare(neighbors, d, species, None);
        let (n, nr, nf, na) = (d.n_atoms, self.spec.n_radial, self.n_features(), self.n_channels() * self.n_monomials());
        let nl = &d.neighbors;
        let per_task = self.forward_scratch();
        let parallel = parallel && n > ATOMS_PER_TASK;
        let tasks: Vec<Task> =
            if parallel { tasks(nl.offsets(), ATOMS_PER_TASK).collect() } else { vec![Task { atoms: 0..n, pairs: 0..d.pairs.len() }] };
        d.scratch.resize(tasks.len() * per_task, 0.0);
        let bufs = (&mut d.features, &mut d.density, &mut d.pairs, &mut d.radial, &mut d.d_radial, &mut d.species_of_neighbor);
        let mut carver = Carver::new((nf, na, nr), bufs, &mut d.scratch, per_task);
        let work: Vec<_> = tasks.iter().map(|t| (t, carver.next(t))).collect();
        let centres = &d.centre_species;
        let run = |(t, mut out): (&Task, AtomsOut)| self.dispatch_forward(nl, species, centres, t.atoms.clone(), &mut out);
        if parallel {
            use rayon::prelude::*;
            work.into_par_iter().for_each(run);
        } else {
            work.into_iter().for_each(run);
        }
    }

    /// Recomputes the four-body invariants of `d` (computed by a descriptor of the same shape) from its density,
    /// with this descriptor's compression: what a trained compression's change leaves to redo, since the
    /// neighbour list, the density and the per-pair values do not depend on it. Nothing without four-body
    /// invariants.
    pub fn refresh_four_body(&self, d: &mut Descriptors) {
        let Some(fb) = &self.four_body else { return };
        let (nf, nps) = (self.n_features(), self.n_power_spectrum_features());
        let na = self.n_channels() * self.n_monomials();
        d.scratch.resize(fb.scratch_len(), 0.0);
        for ((row, a), &z) in d.features.chunks_exact_mut(nf).zip(d.density.chunks_exact(na)).zip(&d.centre_species) {
            fb.forward(z, a, &mut row[nps..], &mut d.scratch);
        }
    }

    /// Sizes the whole-system buffers of `d` for `neighbors` (allocating only when they grow) and takes the list
    /// ([`Descriptor::take_list`]).
    fn prepare(&self, neighbors: NeighborList, d: &mut Descriptors, species: &[usize], centres: Option<&[usize]>) {
        let (n, np) = (neighbors.n_atoms(), neighbors.n_pairs());
        let (nr, nf, na) = (self.spec.n_radial, self.n_features(), self.n_channels() * self.n_monomials());
        d.features.resize(n * nf, 0.0);
        d.density.resize(n * na, 0.0);
        d.pairs.resize(np, PairCache::default());
        d.radial.resize(np * nr, 0.0);
        d.d_radial.resize(np * nr, 0.0);
        d.species_of_neighbor.resize(np, 0);
        self.take_list(neighbors, d, species, centres);
    }

    /// Puts `neighbors` into `d` with its sizes and records the species of each centre (centre c is atom
    /// `centres[c]`, or atom c).
    fn take_list(&self, neighbors: NeighborList, d: &mut Descriptors, species: &[usize], centres: Option<&[usize]>) {
        let n = neighbors.n_atoms();
        d.n_atoms = n;
        d.n_features = self.n_features();
        d.neighbors = neighbors;
        d.centre_species.clear();
        d.centre_species.extend((0..n).map(|c| species[centres.map_or(c, |cs| cs[c])]));
    }

    /// Descriptors, the network and the VJP in one pass over chunks of [`EVAL_CHUNK`] atoms: with `parallel` the
    /// chunks — network included — are shared among the threads of the current rayon pool.
    /// `network(species, features, energies, de_dg)` gets a chunk's centre species and descriptors
    /// (`[n][n_features]`) and fills its energies `[n]` and ∂E/∂G. Fills `energies` (per centre) and `grads`
    /// (∂E/∂r_ij in neighbour-list order); `d` keeps the neighbour list and the centres' species. A chunk's
    /// descriptors, density and per-pair values live in a [`ChunkBuffers`] of `buffers` that the next chunk
    /// reuses (one per thread at work), so they stay in cache and the memory does not grow with the system. The
    /// chunks do not depend on the number of threads, so neither do the results.
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate_into<N>(
        &self,
        species: &[usize],
        centres: Option<&[usize]>,
        neighbors: NeighborList,
        d: &mut Descriptors,
        energies: &mut Vec<f64>,
        grads: &mut Vec<Vec3>,
        buffers: &mut Vec<ChunkBuffers>,
        parallel: bool,
        network: N,
    ) -> crate::error::Result<()>
    where
        N: Fn(&[usize], &[f64], &mut [f64], &mut [f64]) -> crate::error::Result<()> + Sync,
    {
        self.take_list(neighbors, d, species, centres);
        let n = d.n_atoms;
        energies.resize(n, 0.0);
        grads.resize(d.neighbors.n_pairs(), [0.0; 3]);
        let (nl, centre_species) = (&d.neighbors, &d.centre_species);
        let (mut energies, mut grads) = (&mut energies[..], &mut grads[..]);
        // each chunk's piece of the outputs, cut off one after the other (a one-thread call allocates nothing)
        let chunks = tasks(nl.offsets(), EVAL_CHUNK)
            .map(move |t| (take(&mut energies, t.atoms.len()), take(&mut grads, t.pairs.len()), t));
        let run = |(energies, grads, t): (&mut [f64], &mut [Vec3], Task), b: &mut ChunkBuffers| {
            let (mut out, de_dg) = b.sized(self, &t);
            self.dispatch_forward(nl, species, centre_species, t.atoms.clone(), &mut out);
            network(&centre_species[t.atoms.clone()], out.features, energies, de_dg)?;
            let inp = AtomsIn {
                density: out.density,
                dg: de_dg,
                pairs: out.pairs,
                radial: out.radial,
                d_radial: out.d_radial,
                species_of_neighbor: out.species_of_neighbor,
                centre_species: &centre_species[t.atoms.clone()],
                kept: false,
            };
            self.dispatch_backward(nl, inp, t.atoms, grads, out.scratch);
            Ok(())
        };
        if buffers.is_empty() {
            buffers.push(ChunkBuffers::default());
        }
        if !parallel || n <= EVAL_CHUNK {
            let mut chunks = chunks;
            return chunks.try_for_each(|c| run(c, &mut buffers[0]));
        }
        // threads take a chunk's buffers from the pool and put them back
        use rayon::prelude::*;
        let pool = std::sync::Mutex::new(std::mem::take(buffers));
        let result = chunks.collect::<Vec<_>>().into_par_iter().try_for_each(|c| {
            let mut b = pool.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default();
            let r = run(c, &mut b);
            if let Ok(mut p) = pool.lock() {
                p.push(b);
            }
            r
        });
        *buffers = pool.into_inner().unwrap_or_default();
        result
    }

    /// The forward pass over `atoms`, compiled for this CPU and shape (see [`dispatch!`]).
    fn dispatch_forward(&self, nl: &NeighborList, species: &[usize], centres: &[usize], atoms: std::ops::Range<usize>, out: &mut AtomsOut) {
        dispatch!(self, forward, forward_avx2, (nl, species, centres, atoms, out))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2<const NR: usize, const L: usize>(&self, nl: &NeighborList, species: &[usize], centres: &[usize], atoms: std::ops::Range<usize>, out: &mut AtomsOut) {
        self.forward::<Fused, NR, L>(nl, species, centres, atoms, out)
    }

    /// Density, invariants and per-pair caches of `atoms`; `out` holds exactly their rows and pairs, `centres`
    /// the species of every centre.
    #[inline(always)]
    fn forward<M: MulAdd, const NR: usize, const L: usize>(&self, nl: &NeighborList, species: &[usize], centres: &[usize], atoms: std::ops::Range<usize>, out: &mut AtomsOut) {
        let (nr, nm, nf, top) = (self.nr_of::<NR>(), self.nm_of::<L>(), self.n_features(), self.top_of::<L>());
        let (na, nps) = (self.n_channels() * nm, self.n_power_spectrum_features());
        let first_pair = nl.offsets()[atoms.start];
        let (mut y1, mut y2) = ([0.0; MAX_MONOMIALS], [0.0; MAX_MONOMIALS]);
        let (mut y_prev, mut y_cur) = (&mut y1[..nm], &mut y2[..nm]);
        let mut pw: Powers = [[0.0; 9]; 3];
        for (k, i) in atoms.enumerate() {
            let a_i = &mut out.density[k * na..(k + 1) * na];
            a_i.fill(0.0);
            let p0 = nl.offsets()[i] - first_pair;
            // A[s, k][m] += R_k(r) Y_m(û) for m ≥ top, two neighbours of one species at a time (each row is loaded
            // and stored once for both; the sums keep the neighbour order, so the result is that of one at a time).
            let mut pending: Option<(usize, usize)> = None;
            for (q, nb) in nl.of(i).iter().enumerate() {
                let p = p0 + q;
                let r = crate::frame::norm(&nb.r);
                let u = [nb.r[0] / r, nb.r[1] / r, nb.r[2] / r];
                let s = species[nb.j];
                self.radial(r, s, &mut out.radial[p * nr..(p + 1) * nr], &mut out.d_radial[p * nr..(p + 1) * nr]);
                self.angular::<L>(&u, y_cur, &mut pw);
                out.pairs[p] = PairCache { r, u };
                out.species_of_neighbor[p] = s;
                match pending {
                    Some((pp, ps)) if ps == s => {
                        let (r1, r2) = (&out.radial[pp * nr..(pp + 1) * nr], &out.radial[p * nr..(p + 1) * nr]);
                        accumulate::<M, 2>(&mut a_i[s * nr * nm..(s + 1) * nr * nm], top, [(r1, &y_prev[top..]), (r2, &y_cur[top..])]);
                        pending = None;
                    }
                    Some((pp, ps)) => {
                        accumulate::<M, 1>(&mut a_i[ps * nr * nm..(ps + 1) * nr * nm], top, [(&out.radial[pp * nr..(pp + 1) * nr], &y_prev[top..])]);
                        std::mem::swap(&mut y_prev, &mut y_cur);
                        pending = Some((p, s));
                    }
                    None => {
                        std::mem::swap(&mut y_prev, &mut y_cur);
                        pending = Some((p, s));
                    }
                }
            }
            if let Some((pp, ps)) = pending {
                accumulate::<M, 1>(&mut a_i[ps * nr * nm..(ps + 1) * nr * nm], top, [(&out.radial[pp * nr..(pp + 1) * nr], &y_prev[top..])]);
            }
            self.fill_lower::<L>(a_i);
            let (power_spectrum, four_body) = out.features[k * nf..(k + 1) * nf].split_at_mut(nps);
            let (p, fb_scratch) = out.scratch.split_at_mut(self.contract_scratch());
            self.contract::<M, L>(a_i, power_spectrum, p);
            if let Some(fb) = &self.four_body {
                fb.forward(centres[i], a_i, four_body, fb_scratch);
            }
        }
    }

    /// The order-l block (`[n_channels][n_l]`, row stride n_monomials) of a `[n_channels][n_monomials]` matrix.
    fn block_l<'a>(&self, a: &'a [f64], l: usize) -> View<'a> {
        View { data: &a[order_range(l).start..], rs: self.n_monomials(), cs: 1 }
    }

    /// Its transpose.
    fn block_l_t<'a>(&self, a: &'a [f64], l: usize) -> View<'a> {
        View { data: &a[order_range(l).start..], rs: 1, cs: self.n_monomials() }
    }

    /// Density coefficients → invariants: the l = 0 densities, then P_l[c, c'] = Σ_{m∈l} A[c][m] A[c'][m] for
    /// c ≤ c', l ascending.
    /// Up to [`REGISTER_CHANNELS`] channels each P_l is formed column by column in registers ([`gram_columns`]);
    /// more make it a matrix product worth blocking (`p`: scratch of [`Descriptor::contract_scratch`]).
    #[inline(always)]
    fn contract<M: MulAdd, const L: usize>(&self, a: &[f64], g: &mut [f64], p: &mut [f64]) {
        let nc = self.n_channels();
        let nm = self.nm_of::<L>();
        for c in 0..nc {
            g[c] = a[c * nm];
        }
        if !self.full_power_spectrum() {
            return;
        }
        let (l_max, g) = (self.l_of::<L>(), &mut g[nc..]);
        match register_width(nc) {
            8 => return gram_columns::<M, 8>(a, nm, nc, l_max, g, p),
            16 => return gram_columns::<M, 16>(a, nm, nc, l_max, g, p),
            24 => return gram_columns::<M, 24>(a, nm, nc, l_max, g, p),
            32 => return gram_columns::<M, 32>(a, nm, nc, l_max, g, p),
            _ => {}
        }
        let mut f = 0;
        for l in 0..=l_max {
            gemm_view(nc, order_range(l).len(), nc, self.block_l(a, l), self.block_l_t(a, l), 0.0, p, nc);
            for c in 0..nc {
                g[f..f + nc - c].copy_from_slice(&p[c * nc + c..(c + 1) * nc]);
                f += nc - c;
            }
        }
    }

    /// Vector-Jacobian product: given ∂E/∂G per atom (`[n_atoms][n_features]`), returns ∂E/∂r_ij for every
    /// neighbour pair in neighbour-list order.
    pub fn vjp(&self, d: &Descriptors, dg: &[f64]) -> Vec<Vec3> {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        self.vjp_into(d, dg, &mut out, &mut scratch, false);
        out
    }

    /// [`Descriptor::vjp`] into `out`, with `scratch` reused between calls (no allocation when both are large
    /// enough); `parallel` as in [`Descriptor::compute_into`].
    pub fn vjp_into(&self, d: &Descriptors, dg: &[f64], out: &mut Vec<Vec3>, scratch: &mut Vec<f64>, parallel: bool) {
        let per_task = self.backward_scratch();
        out.resize(d.pairs.len(), [0.0; 3]);
        let nl = &d.neighbors;
        let all = Task { atoms: 0..d.n_atoms, pairs: 0..d.pairs.len() };
        if !parallel || d.n_atoms <= ATOMS_PER_TASK {
            scratch.resize(per_task, 0.0);
            self.dispatch_backward(nl, self.atoms_in(d, dg, &all), all.atoms, out, scratch);
            return;
        }
        let tasks: Vec<Task> = tasks(nl.offsets(), ATOMS_PER_TASK).collect();
        scratch.resize(tasks.len() * per_task, 0.0);
        let mut rest = &mut out[..];
        let work: Vec<_> =
            tasks.iter().map(|t| (t, take(&mut rest, t.pairs.len()))).zip(scratch.chunks_exact_mut(per_task)).collect();
        use rayon::prelude::*;
        work.into_par_iter().for_each(|((t, grads), da)| self.dispatch_backward(nl, self.atoms_in(d, dg, t), t.atoms.clone(), grads, da));
    }

    /// Scratch values of one backward pass: a density, 4 × n_monomials and the (padded) symmetric weights of one
    /// order.
    fn backward_scratch(&self) -> usize {
        let (nc, nm) = (self.n_channels(), self.n_monomials());
        nc * nm + 4 * nm + nc.max(REGISTER_CHANNELS).pow(2) + self.four_body.as_ref().map_or(0, |fb| fb.scratch_len())
    }

    /// The rows and pairs of a task's atoms in `d`, and their ∂E/∂G from `dg` (`[n_atoms][n_features]`).
    fn atoms_in<'a>(&self, d: &'a Descriptors, dg: &'a [f64], t: &Task) -> AtomsIn<'a> {
        let (nr, nf, na) = (self.spec.n_radial, self.n_features(), self.n_channels() * self.n_monomials());
        let (a, p) = (&t.atoms, &t.pairs);
        AtomsIn {
            density: &d.density[a.start * na..a.end * na],
            dg: &dg[a.start * nf..a.end * nf],
            pairs: &d.pairs[p.clone()],
            radial: &d.radial[p.start * nr..p.end * nr],
            d_radial: &d.d_radial[p.start * nr..p.end * nr],
            species_of_neighbor: &d.species_of_neighbor[p.clone()],
            centre_species: &d.centre_species[a.clone()],
            kept: true,
        }
    }

    /// The VJP over `atoms`, compiled for this CPU and shape (see [`dispatch!`]).
    fn dispatch_backward(&self, nl: &NeighborList, inp: AtomsIn, atoms: std::ops::Range<usize>, grads: &mut [Vec3], da: &mut [f64]) {
        dispatch!(self, backward, backward_avx2, (nl, inp, atoms, grads, da))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_avx2<const NR: usize, const L: usize>(&self, nl: &NeighborList, inp: AtomsIn, atoms: std::ops::Range<usize>, grads: &mut [Vec3], da: &mut [f64]) {
        self.backward::<Fused, NR, L>(nl, inp, atoms, grads, da)
    }

    /// ∂E/∂r_ij of the pairs of `atoms` (`inp` holds exactly their rows and pairs, `grads` their pairs);
    /// `scratch` holds [`Descriptor::backward_scratch`] values.
    #[inline(always)]
    fn backward<M: MulAdd, const NR: usize, const L: usize>(&self, nl: &NeighborList, inp: AtomsIn, atoms: std::ops::Range<usize>, grads: &mut [Vec3], scratch: &mut [f64]) {
        let (nm, nr, nf, top) = (self.nm_of::<L>(), self.nr_of::<NR>(), self.n_features(), self.top_of::<L>());
        let nc = self.n_species * nr;
        let na = nc * nm;
        let first_pair = nl.offsets()[atoms.start];
        let (da, rest) = scratch.split_at_mut(na);
        let (rho, rest) = rest.split_at_mut(nm);
        let (drho, rest) = rest.split_at_mut(nm);
        let (rho2, rest) = rest.split_at_mut(nm);
        let (drho2, rest) = rest.split_at_mut(nm);
        let (wsym, fb_scratch) = rest.split_at_mut(nc.max(REGISTER_CHANNELS).pow(2));
        let nps = self.n_power_spectrum_features();
        // up to REGISTER_CHANNELS channels W_l is stored with rows padded to `width` (8, 16, 24 or 32)
        let width = register_width(nc);
        let stride = if nc > REGISTER_CHANNELS { nc } else { width };
        wsym.fill(0.0); // the padding stays zero; every other entry is rewritten per atom and order
        let (mut pw, mut dpw): (Powers, Powers) = ([[0.0; 9]; 3], [[0.0; 9]; 3]);
        // the orders of the full power spectrum (none when the bispectrum part compresses the three-body terms)
        let full_orders = if self.full_power_spectrum() { self.l_of::<L>() + 1 } else { 0 };
        for (k, i) in atoms.enumerate() {
            let a = &inp.density[k * na..(k + 1) * na];
            let g = &inp.dg[k * nf..(k + 1) * nf];
            if inp.kept {
                if k == 0 {
                    prefetch(a);
                    prefetch(g);
                }
                // the next atom's rows arrive while this one computes
                if let (Some(a), Some(g)) = (inp.density.get((k + 1) * na..(k + 2) * na), inp.dg.get((k + 1) * nf..(k + 2) * nf)) {
                    prefetch(a);
                    prefetch(g);
                }
            }
            // dA = ∂(G·g)/∂A: the l = 0 densities directly; P_l[c, c'] contributes g·A[c'] to A[c] and g·A[c] to
            // A[c'] (2g·A[c] on the diagonal).
            da.fill(0.0);
            for c in 0..nc {
                da[c * nm] += g[c];
            }
            let mut f = nc;
            for l in 0..full_orders {
                let ms = order_range(l);
                // dA_l += W_l A_l with W_l symmetric: g off the diagonal, 2g on it. The rows of the upper triangle
                // are contiguous in g; the lower triangle is their mirror.
                for c in 0..nc {
                    wsym[c * stride + c..c * stride + nc].copy_from_slice(&g[f..f + nc - c]);
                    wsym[c * stride + c] *= 2.0;
                    f += nc - c;
                }
                M::mirror_upper(&mut wsym[..stride * stride], stride);
                match width {
                    8 => column_products::<M, 8>(a, nm, nc, wsym, ms, da),
                    16 => column_products::<M, 16>(a, nm, nc, wsym, ms, da),
                    24 => column_products::<M, 24>(a, nm, nc, wsym, ms, da),
                    32 => column_products::<M, 32>(a, nm, nc, wsym, ms, da),
                    _ => {
                        let w = View { data: wsym, rs: nc, cs: 1 };
                        gemm_view(nc, nc, ms.len(), w, self.block_l(a, l), 1.0, &mut da[ms.start..], nm);
                    }
                }
            }
            if let Some(fb) = &self.four_body {
                fb.vjp(inp.centre_species[k], a, &g[nps..], da, fb_scratch);
            }
            self.fold_lower::<L>(da);
            // Per pair: ρ = Σ_k R_k dA[s,k], ρ' = Σ_k R'_k dA[s,k] (orders l_max − 1 and l_max); then the angular
            // contraction.
            // Two neighbours of one species at a time share the loads of dA's rows.
            let (mut p, p_end) = (nl.offsets()[i] - first_pair, nl.offsets()[i + 1] - first_pair);
            while p < p_end {
                let s = inp.species_of_neighbor[p];
                let da_s = &da[s * nr * nm..(s + 1) * nr * nm];
                let radial = |p: usize| (&inp.radial[p * nr..(p + 1) * nr], &inp.d_radial[p * nr..(p + 1) * nr]);
                let twin = p + 1 < p_end && inp.species_of_neighbor[p + 1] == s;
                if twin {
                    radial_combinations::<M, 2>(da_s, nm, top, [radial(p), radial(p + 1)], [(&mut *rho, &mut *drho), (&mut *rho2, &mut *drho2)]);
                } else {
                    radial_combinations::<M, 1>(da_s, nm, top, [radial(p)], [(&mut *rho, &mut *drho)]);
                }
                for (q, (rho, drho)) in [(&*rho, &*drho), (&*rho2, &*drho2)].into_iter().enumerate().take(if twin { 2 } else { 1 }) {
                    let PairCache { r, u } = inp.pairs[p + q];
                    let (radial_part, gu) = self.angular_contract::<M, L>(&u, drho, rho, &mut pw, &mut dpw);
                    let (ug, inv_r) = (u[0] * gu[0] + u[1] * gu[1] + u[2] * gu[2], 1.0 / r);
                    grads[p + q] = [
                        u[0] * radial_part + (gu[0] - u[0] * ug) * inv_r,
                        u[1] * radial_part + (gu[1] - u[1] * ug) * inv_r,
                        u[2] * radial_part + (gu[2] - u[2] * ug) * inv_r,
                    ];
                }
                p += if twin { 2 } else { 1 };
            }
        }
    }

    /// Jacobian-vector product: the change of every atom's descriptor along the tangent that moves atom k by
    /// `displacement[k]` and strains the system by `strain` (pair vector r ↦ r + strain·r). Returns
    /// `[n_atoms][n_features]`.
    pub fn jvp(&self, d: &Descriptors, displacement: Option<&[Vec3]>, strain: Option<&Mat3>) -> Vec<f64> {
        self.jvp_with_density(d, displacement, strain, None)
    }

    /// [`Descriptor::jvp`], and with `density_tangent` also the change of every atom's density coefficients
    /// (`[n_atoms][n_channels][n_monomials]`, all orders): what a trained compression needs.
    pub fn jvp_with_density(&self, d: &Descriptors, displacement: Option<&[Vec3]>, strain: Option<&Mat3>, density_tangent: Option<&mut Vec<f64>>) -> Vec<f64> {
        dispatch!(self, jvp_kernel, jvp_avx2, (d, displacement, strain, density_tangent))
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn jvp_avx2<const NR: usize, const L: usize>(&self, d: &Descriptors, displacement: Option<&[Vec3]>, strain: Option<&Mat3>, density_tangent: Option<&mut Vec<f64>>) -> Vec<f64> {
        self.jvp_kernel::<Fused, NR, L>(d, displacement, strain, density_tangent)
    }

    /// The JVP, in the forward pass's manner: each pair adds the tangent of its two top orders to the density
    /// tangent dA (the lower orders are their traces, [`Descriptor::fill_lower`]), and dP_l = M + Mᵀ with
    /// M = dA_l A_lᵀ, formed column by column in registers up to [`REGISTER_CHANNELS`] channels
    /// ([`gram_tangent_columns`]).
    #[inline(always)]
    fn jvp_kernel<M: MulAdd, const NR: usize, const L: usize>(&self, d: &Descriptors, displacement: Option<&[Vec3]>, strain: Option<&Mat3>, mut density_tangent: Option<&mut Vec<f64>>) -> Vec<f64> {
        if let Some(t) = density_tangent.as_deref_mut() {
            t.clear();
        }
        let (nr, nm, top) = (self.nr_of::<NR>(), self.nm_of::<L>(), self.top_of::<L>());
        let nc = self.n_channels();
        let nf = d.n_features;
        let mut out = vec![0.0; d.n_atoms * nf];
        let mut dda = vec![0.0; nc * nm];
        let width = register_width(nc);
        let mut columns = vec![0.0; if nc <= REGISTER_CHANNELS { (nm + 2 * width) * width } else { nc * nc }];
        let mut fb_scratch = vec![0.0; self.four_body.as_ref().map_or(0, |fb| fb.scratch_len())];
        // the angular values and radial tangents of up to two pairs at a time
        let (mut y, mut dy) = ([[0.0; MAX_MONOMIALS]; 2], [[0.0; MAX_MONOMIALS]; 2]);
        let mut drad_t = [vec![0.0; nr], vec![0.0; nr]];
        let mut p = 0;
        let full_orders = if self.full_power_spectrum() { self.l_of::<L>() + 1 } else { 0 };
        for i in 0..d.n_atoms {
            prefetch(&d.density[i * nc * nm..(i + 1) * nc * nm]); // read after the pairs below
            dda.fill(0.0);
            let neighbors = d.neighbors.of(i);
            let mut q = 0;
            while q < neighbors.len() {
                // two neighbours of one species share one pass over dA's rows (the same additions in the same order)
                let s = d.species_of_neighbor[p];
                let twin = q + 1 < neighbors.len() && d.species_of_neighbor[p + 1] == s;
                let n_pairs = if twin { 2 } else { 1 };
                for t in 0..n_pairs {
                    let nb = &neighbors[q + t];
                    let mut tv = [0.0; 3];
                    if let Some(disp) = displacement {
                        for ax in 0..3 {
                            tv[ax] = disp[nb.j][ax] - disp[i][ax];
                        }
                    }
                    if let Some(c) = strain {
                        for ax in 0..3 {
                            tv[ax] += c[ax][0] * nb.r[0] + c[ax][1] * nb.r[1] + c[ax][2] * nb.r[2];
                        }
                    }
                    let PairCache { r, u } = d.pairs[p + t];
                    let tr = u[0] * tv[0] + u[1] * tv[1] + u[2] * tv[2];
                    let tp = [(tv[0] - u[0] * tr) / r, (tv[1] - u[1] * tr) / r, (tv[2] - u[2] * tr) / r];
                    for (x, &dr) in drad_t[t].iter_mut().zip(&d.d_radial[(p + t) * nr..(p + t + 1) * nr]) {
                        *x = dr * tr;
                    }
                    self.angular_directional::<L>(&u, &tp, self.l_of::<L>().saturating_sub(1), &mut y[t][..nm], &mut dy[t][..nm]);
                }
                // dA[s, k][m] += R'_k (û·t) Y_m + R_k ∇Y_m·t⊥/r for m ≥ top
                let rows = &mut dda[s * nr * nm..(s + 1) * nr * nm];
                let rad = |t: usize| &d.radial[(p + t) * nr..(p + t + 1) * nr];
                if twin {
                    accumulate::<M, 4>(rows, top, [(&drad_t[0], &y[0][top..nm]), (rad(0), &dy[0][top..nm]), (&drad_t[1], &y[1][top..nm]), (rad(1), &dy[1][top..nm])]);
                } else {
                    accumulate::<M, 2>(rows, top, [(&drad_t[0], &y[0][top..nm]), (rad(0), &dy[0][top..nm])]);
                }
                p += n_pairs;
                q += n_pairs;
            }
            self.fill_lower::<L>(&mut dda);
            let a = &d.density[i * nc * nm..(i + 1) * nc * nm];
            if let Some(t) = density_tangent.as_deref_mut() {
                t.extend_from_slice(&dda);
            }
            let g = &mut out[i * nf..(i + 1) * nf];
            for c in 0..nc {
                g[c] = dda[c * nm];
            }
            if let Some(fb) = &self.four_body {
                let nps = self.n_power_spectrum_features();
                fb.jvp(d.centre_species[i], a, &dda, &mut g[nps..], &mut fb_scratch);
            }
            if full_orders == 0 {
                continue;
            }
            let g = &mut g[nc..];
            match width {
                8 => gram_tangent_columns::<M, 8>(a, &dda, nm, nc, full_orders - 1, g, &mut columns),
                16 => gram_tangent_columns::<M, 16>(a, &dda, nm, nc, full_orders - 1, g, &mut columns),
                24 => gram_tangent_columns::<M, 24>(a, &dda, nm, nc, full_orders - 1, g, &mut columns),
                32 => gram_tangent_columns::<M, 32>(a, &dda, nm, nc, full_orders - 1, g, &mut columns),
                _ => {
                    // dP_l = M + Mᵀ with M = dA_l A_lᵀ
                    let mut f = 0;
                    for l in 0..full_orders {
                        let nl = order_range(l).len();
                        gemm_view(nc, nl, nc, self.block_l(&dda, l), self.block_l_t(a, l), 0.0, &mut columns, nc);
                        for c in 0..nc {
                            for c2 in c..nc {
                                g[f] = columns[c * nc + c2] + columns[c2 * nc + c];
                                f += 1;
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// Asks for `data` in the cache ahead of its use. The densities a training run keeps (tens of MB) come from
/// memory, and the column kernels read an atom's row by row, n_monomials apart: a pattern the hardware
/// prefetcher does not follow, so the first load of every row waited for memory.
#[inline(always)]
fn prefetch(data: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    for line in data.chunks(8) {
        // SAFETY: a prefetch is a hint that never faults, and SSE is part of x86_64.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// The indices of the monomials of order l: they are ordered by l, with (l + 1)(l + 2)/2 of each order.
#[inline(always)]
const fn order_range(l: usize) -> std::ops::Range<usize> {
    l * (l + 1) * (l + 2) / 6..(l + 1) * (l + 2) * (l + 3) / 6
}

/// For each of N pairs (radial values R, R'): ρ_m = Σ_k R_k dA[k][m] and ρ'_m = Σ_k R'_k dA[k][m] for
/// m in start..nm (`da` is `[n_radial][nm]`, `out[p]` = (ρ, ρ') of pair p). Eight m at a time are held in
/// registers over the k loop and each dA row is loaded once for all N pairs; every element sums k in ascending
/// order.
#[inline(always)]
fn radial_combinations<M: MulAdd, const N: usize>(da: &[f64], nm: usize, start: usize, radial: [(&[f64], &[f64]); N], out: [(&mut [f64], &mut [f64]); N]) {
    const B: usize = 8;
    let n_radial = radial[0].0.len();
    let full = start + (nm - start) / B * B;
    let mut out = out;
    for m in (start..full).step_by(B) {
        let mut acc = [[[0.0f64; B]; 2]; N];
        for k in 0..n_radial {
            let row: &[f64; B] = da[k * nm + m..k * nm + m + B].try_into().unwrap_or(&[0.0; B]);
            for (acc, (r, dr)) in acc.iter_mut().zip(&radial) {
                for t in 0..B {
                    acc[0][t] = M::madd(r[k], row[t], acc[0][t]);
                    acc[1][t] = M::madd(dr[k], row[t], acc[1][t]);
                }
            }
        }
        for (acc, (rho, drho)) in acc.iter().zip(out.iter_mut()) {
            rho[m..m + B].copy_from_slice(&acc[0]);
            drho[m..m + B].copy_from_slice(&acc[1]);
        }
    }
    for m in full..nm {
        for ((r, dr), (rho, drho)) in radial.iter().zip(out.iter_mut()) {
            let (mut a, mut b) = (0.0, 0.0);
            for k in 0..n_radial {
                a = M::madd(r[k], da[k * nm + m], a);
                b = M::madd(dr[k], da[k * nm + m], b);
            }
            rho[m] = a;
            drho[m] = b;
        }
    }
}

/// `rows[k][start + m] += r_p[k]·y_p[m]` for the N pairs p = (r_p, y_p) in order (`rows` is `[n_radial][nm]`,
/// y_p has nm − start entries), with one pass over the rows for all of them.
#[inline(always)]
fn accumulate<M: MulAdd, const N: usize>(rows: &mut [f64], start: usize, pairs: [(&[f64], &[f64]); N]) {
    let len = pairs[0].1.len();
    // slices of one known length: no bounds checks in the inner loop, which then vectorises along m
    let ys: [&[f64]; N] = std::array::from_fn(|p| &pairs[p].1[..len]);
    for (k, row) in rows.chunks_exact_mut(start + len).enumerate() {
        let row = &mut row[start..];
        let rk: [f64; N] = std::array::from_fn(|p| pairs[p].0[k]);
        for m in 0..len {
            let mut v = row[m];
            for p in 0..N {
                v = M::madd(rk[p], ys[p][m], v);
            }
            row[m] = v;
        }
    }
}

/// P_l[c, c'] = Σ_{m∈l} A[c][m] A[c'][m] for every order l ≤ `l_max` and c ≤ c', written to `g` order by order,
/// row by row of the upper triangle, from the columns of A_l A_lᵀ ([`product_columns`]; `at` is its scratch,
/// then the columns `[nc][W]`). P_l is symmetric, so the part of row c from the diagonal on is the same part of
/// column c, contiguous: copied, where scattering each column's entries to their rows was a tenth of the pass.
#[inline(always)]
fn gram_columns<M: MulAdd, const W: usize>(a: &[f64], nm: usize, nc: usize, l_max: usize, g: &mut [f64], at: &mut [f64]) {
    let mut f = 0;
    for l in 0..=l_max {
        let ms = order_range(l);
        let (at, cols) = at.split_at_mut(ms.len() * W);
        // (24 channels two at a time: 3× slower when the columns were scattered, no faster since)
        product_columns::<M, W, 16>(a, a, nm, nc, ms, at, |c2, acc| cols[c2 * W..(c2 + 1) * W].copy_from_slice(acc));
        for c in 0..nc {
            g[f..f + nc - c].copy_from_slice(&cols[c * W + c..c * W + nc]);
            f += nc - c;
        }
    }
}

/// The tangent of [`gram_columns`]: dP_l[c, c2] = M[c][c2] + M[c2][c] for c ≤ c2, l ≤ `l_max`, into `g` in the
/// same order, with M = dA_l A_lᵀ ([`product_columns`]; `at` holds dA's transposed block `[m][W]`, then M's
/// columns `[W][W]` and M + Mᵀ `[W][W]`).
#[inline(always)]
fn gram_tangent_columns<M: MulAdd, const W: usize>(a: &[f64], da: &[f64], nm: usize, nc: usize, l_max: usize, g: &mut [f64], at: &mut [f64]) {
    let mut f = 0;
    for l in 0..=l_max {
        let ms = order_range(l);
        let (at_da, cols) = at.split_at_mut(ms.len() * W);
        let (cols, sym) = cols.split_at_mut(W * W);
        product_columns::<M, W, 24>(da, a, nm, nc, ms, at_da, |c2, acc| cols[c2 * W..(c2 + 1) * W].copy_from_slice(acc));
        // row c of the upper triangle of M + Mᵀ is contiguous in `sym`
        M::symmetric_sum(cols, W, sym);
        for c in 0..nc {
            g[f..f + nc - c].copy_from_slice(&sym[c * W + c..c * W + nc]);
            f += nc - c;
        }
    }
}

/// Column c2 of X_l A_lᵀ (entry c = Σ_{m∈ms} X[c][m] A[c2][m]; `x`, `a` are `[nc][nm]`) for every c2, passed to
/// `column(c2, ·)`. X's block is transposed once into `at` (`[m][W]`, zero-padded; by 4 × 4 register blocks with
/// AVX2, [`MulAdd::transpose_columns`]: element by element it was a tenth of the JVP); a column is accumulated in
/// registers (one vector per four channels) and each A[c2][m] is one broadcast. Each sum runs over m in order with
/// the same multiply-adds as a dot product, so the values are those of one.
#[inline(always)]
fn product_columns<M: MulAdd, const W: usize, const TWIN_WIDTH: usize>(
    x: &[f64],
    a: &[f64],
    nm: usize,
    nc: usize,
    ms: std::ops::Range<usize>,
    at: &mut [f64],
    mut column: impl FnMut(usize, &[f64; W]),
) {
    M::transpose_columns(x, nc, nm, ms.clone(), W, at);
    // two columns at a time up to TWIN_WIDTH channels (twice the accumulator chains, one load of each row of X
    // for both); wider rows would not leave AVX2 enough registers
    let twins = if W <= TWIN_WIDTH { nc / 2 * 2 } else { 0 };
    for c2 in (0..twins).step_by(2) {
        let mut acc = [[0.0f64; W]; 2];
        let (a0, a1) = (&a[c2 * nm..(c2 + 1) * nm], &a[(c2 + 1) * nm..(c2 + 2) * nm]);
        for (row, m) in at.chunks_exact(W).zip(ms.clone()) {
            let (v0, v1) = (a0[m], a1[m]);
            for t in 0..W {
                acc[0][t] = M::madd(row[t], v0, acc[0][t]);
                acc[1][t] = M::madd(row[t], v1, acc[1][t]);
            }
        }
        column(c2, &acc[0]);
        column(c2 + 1, &acc[1]);
    }
    for c2 in twins..nc {
        let mut acc = [0.0f64; W];
        for (row, m) in at.chunks_exact(W).zip(ms.clone()) {
            let v = a[c2 * nm + m];
            for t in 0..W {
                acc[t] = M::madd(row[t], v, acc[t]);
            }
        }
        column(c2, &acc);
    }
}

/// For each monomial m of `ms`: adds the column `W · A[·][m]` of a symmetric product with few channels to
/// `da[·][m]` (`a`, `da` are `[nc][nm]`; `w` holds W's rows padded to `W` with zeros). The accumulator of a
/// column stays in registers (one vector per four channels) and each A[c][m] is one broadcast load, so neither
/// matrix is transposed; the columns are independent, so their chains overlap.
#[inline(always)]
fn column_products<M: MulAdd, const W: usize>(a: &[f64], nm: usize, nc: usize, w: &[f64], ms: std::ops::Range<usize>, da: &mut [f64]) {
    for m in ms {
        let mut acc = [0.0f64; W];
        for (c2, row) in w.chunks_exact(W).take(nc).enumerate() {
            let x = a[c2 * nm + m];
            for t in 0..W {
                acc[t] = M::madd(row[t], x, acc[t]);
            }
        }
        for (c, &v) in acc.iter().take(nc).enumerate() {
            da[c * nm + m] += v;
        }
    }
}

/// The per-atom output rows and per-pair slots of a range of atoms.
struct AtomsOut<'a> {
    features: &'a mut [f64],
    density: &'a mut [f64],
    pairs: &'a mut [PairCache],
    radial: &'a mut [f64],
    d_radial: &'a mut [f64],
    species_of_neighbor: &'a mut [usize],
    /// Scratch of the forward or backward pass of one atom at a time.
    scratch: &'a mut [f64],
}

/// The per-atom rows and per-pair values of a range of atoms, as the VJP reads them.
struct AtomsIn<'a> {
    density: &'a [f64],
    /// ∂E/∂G of the atoms.
    dg: &'a [f64],
    pairs: &'a [PairCache],
    radial: &'a [f64],
    d_radial: &'a [f64],
    species_of_neighbor: &'a [usize],
    /// Species of each of the atoms.
    centre_species: &'a [usize],
    /// Whether the rows are a whole data set's kept descriptors, mostly out of the caches, which the VJP then
    /// prefetches ([`prefetch`]); a chunk just computed (an MD step) is in them, and the prefetch would only cost.
    kept: bool,
}

/// The buffers of one chunk of [`Descriptor::evaluate_into`] (descriptors and their gradient, density, per-pair
/// values, scratch), grown to the largest chunk and reused.
#[derive(Default)]
pub struct ChunkBuffers {
    features: Vec<f64>,
    de_dg: Vec<f64>,
    density: Vec<f64>,
    pairs: Vec<PairCache>,
    radial: Vec<f64>,
    d_radial: Vec<f64>,
    species_of_neighbor: Vec<usize>,
    scratch: Vec<f64>,
}

impl ChunkBuffers {
    /// The buffers sized for task `t` of `descriptor`: the forward pass's outputs and ∂E/∂G.
    fn sized<'a>(&'a mut self, descriptor: &Descriptor, t: &Task) -> (AtomsOut<'a>, &'a mut [f64]) {
        let (atoms, pairs) = (t.atoms.len(), t.pairs.len());
        let (nr, nf, na) = (descriptor.spec.n_radial, descriptor.n_features(), descriptor.n_channels() * descriptor.n_monomials());
        let per_task = descriptor.backward_scratch().max(descriptor.forward_scratch());
        fn fit<T: Clone + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
            if v.len() < len {
                v.resize(len, T::default());
            }
            &mut v[..len]
        }
        let out = AtomsOut {
            features: fit(&mut self.features, atoms * nf),
            density: fit(&mut self.density, atoms * na),
            pairs: fit(&mut self.pairs, pairs),
            radial: fit(&mut self.radial, pairs * nr),
            d_radial: fit(&mut self.d_radial, pairs * nr),
            species_of_neighbor: fit(&mut self.species_of_neighbor, pairs),
            scratch: fit(&mut self.scratch, per_task),
        };
        (out, fit(&mut self.de_dg, atoms * nf))
    }
}

/// A work item of a multi-threaded call: a range of centre atoms and the range of their pairs.
struct Task {
    atoms: std::ops::Range<usize>,
    pairs: std::ops::Range<usize>,
}

/// Consecutive ranges of `size` atoms covering all centres of a list with these `offsets`.
fn tasks(offsets: &[usize], size: usize) -> impl Iterator<Item = Task> + '_ {
    let n = offsets.len().saturating_sub(1);
    (0..n).step_by(size).map(move |a0| {
        let a1 = (a0 + size).min(n);
        Task { atoms: a0..a1, pairs: offsets[a0]..offsets[a1] }
    })
}

/// The descriptor buffers of [`Descriptors`] that a forward pass writes: features, density, pair caches, radial
/// values and derivatives, neighbour species.
type Buffers<'a> = (&'a mut Vec<f64>, &'a mut Vec<f64>, &'a mut Vec<PairCache>, &'a mut Vec<f64>, &'a mut Vec<f64>, &'a mut Vec<usize>);

/// Cuts the rows and pairs of consecutive tasks off the front of the descriptor buffers (`strides` = features,
/// density values per atom and radial values per pair) and `per_task` values of scratch for each.
struct Carver<'a> {
    strides: (usize, usize, usize),
    per_task: usize,
    /// What is left of every buffer.
    rest: AtomsOut<'a>,
}

impl<'a> Carver<'a> {
    fn new(strides: (usize, usize, usize), bufs: Buffers<'a>, scratch: &'a mut [f64], per_task: usize) -> Self {
        let (features, density, pairs, radial, d_radial, species_of_neighbor) = bufs;
        Carver { strides, per_task, rest: AtomsOut { features, density, pairs, radial, d_radial, species_of_neighbor, scratch } }
    }

    /// The pieces of the next task, `t` (tasks must come in order).
    fn next(&mut self, t: &Task) -> AtomsOut<'a> {
        let ((nf, na, nr), atoms, pairs, r) = (self.strides, t.atoms.len(), t.pairs.len(), &mut self.rest);
        AtomsOut {
            features: take(&mut r.features, atoms * nf),
            density: take(&mut r.density, atoms * na),
            pairs: take(&mut r.pairs, pairs),
            radial: take(&mut r.radial, pairs * nr),
            d_radial: take(&mut r.d_radial, pairs * nr),
            species_of_neighbor: take(&mut r.species_of_neighbor, pairs),
            scratch: take(&mut r.scratch, self.per_task),
        }
    }
}

/// The first `len` values of `s`, which keeps the rest.
fn take<'a, T>(s: &mut &'a mut [T], len: usize) -> &'a mut [T] {
    let (head, tail) = std::mem::take(s).split_at_mut(len);
    *s = tail;
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Descriptor, Vec<Vec3>, Vec<usize>) {
        setup_with(4, 3)
    }

    /// Two species (H, O) with `n_radial` functions each (2·n_radial density channels); O's Gaussians are
    /// narrower than H's.
    fn setup_with(n_radial: usize, l_max: usize) -> (Descriptor, Vec<Vec3>, Vec<usize>) {
        // equally spaced Gaussians (even n_radial) and Gaussians crowded towards short range (odd)
        let radial_scale = if n_radial % 2 == 0 { 0.0 } else { 2.0 };
        let radial_width_by_element = [("O".to_string(), 0.7)].into();
        let spec = DescriptorSpec { cutoff: 3.5, r_min: 0.7, n_radial, l_max, radial_width: 1.0, radial_width_by_element, radial_scale };
        let pos = vec![[0.0, 0.0, 0.0], [1.1, 0.2, -0.1], [-0.4, 1.3, 0.5], [0.3, -0.6, 1.4], [1.5, 1.2, 1.0]];
        (Descriptor::new(&spec, &[1, 8]), pos, vec![0, 1, 1, 0, 1])
    }

    fn compute(d: &Descriptor, pos: &[Vec3], sp: &[usize]) -> Descriptors {
        d.compute(sp, NeighborList::build(pos, None, [false; 3], d.spec.cutoff).unwrap())
    }

    #[test]
    fn angular_weights_give_powers_of_cosine() {
        let (d, _, _) = setup();
        let u = [0.6, 0.0, 0.8];
        let w = [0.48, 0.6, 0.64f64];
        let nm = d.n_monomials();
        let (mut yu, mut yw) = (vec![0.0; nm], vec![0.0; nm]);
        let mut dy = vec![0.0; nm];
        d.angular_directional::<DYN>(&u, &[0.0; 3], 0, &mut yu, &mut dy);
        d.angular_directional::<DYN>(&w, &[0.0; 3], 0, &mut yw, &mut dy);
        let cos = u[0] * w[0] + u[1] * w[1] + u[2] * w[2];
        for l in 0..=3 {
            let s: f64 = order_range(l).map(|m| yu[m] * yw[m]).sum();
            assert!((s - cos.powi(l as i32)).abs() < 1e-12);
        }
        // the table order and the loop order agree
        for (m, mono) in d.monomials.iter().enumerate() {
            let [a, b, c] = mono.pow;
            assert!((yu[m] - mono.weight * u[0].powi(a as i32) * u[1].powi(b as i32) * u[2].powi(c as i32)).abs() < 1e-15);
        }
    }

    #[test]
    fn radial_recurrence_equals_direct_gaussians() {
        for radial_scale in [0.0, 2.5] {
            // neighbours of C (species 1) have Gaussians 0.9 spacings wide, the others (H, N) 0.4
            let radial_width_by_element = [("C".to_string(), 0.9), ("Cu".to_string(), 0.2)].into();
            let spec = DescriptorSpec { cutoff: 6.0, r_min: 0.5, n_radial: 12, l_max: 2, radial_width: 0.4, radial_width_by_element, radial_scale };
            let d = Descriptor::new(&spec, &[1, 6, 7]);
            let (mut g, mut dg) = (vec![0.0; 12], vec![0.0; 12]);
            // the Gaussians by their definition: equally spaced in u from u(r_min) to u(r_c), `width` spacings wide
            let u = |r: f64| if radial_scale == 0.0 { r } else { 6.0 / radial_scale * (1.0 - (-radial_scale * r / 6.0).exp()) };
            let step = (u(6.0) - u(0.5)) / 11.0;
            let gaussians = |r: f64, width: f64| -> Vec<f64> {
                let fc = (1.0 - (r / 6.0).powi(2)).powi(3);
                (0..12).map(|k| (-(u(r) - u(0.5) - k as f64 * step).powi(2) / (2.0 * (width * step).powi(2))).exp() * fc).collect()
            };
            for (s, width) in [(0, 0.4), (1, 0.9), (2, 0.4)] {
                for &r in &[0.3, 0.5, 1.234, 2.77, 4.0, 5.5, 5.999] {
                    d.radial(r, s, &mut g, &mut dg);
                    let want = gaussians(r, width);
                    let h = 1e-6;
                    let (up, down) = (gaussians(r + h, width), gaussians(r - h, width));
                    for k in 0..12 {
                        assert!((g[k] - want[k]).abs() < 1e-12 * want[k] + 1e-16, "λ {radial_scale} s {s} r {r} k {k}: {} vs {}", g[k], want[k]);
                        let fd = (up[k] - down[k]) / (2.0 * h);
                        assert!((dg[k] - fd).abs() < 1e-6 * (1.0 + fd.abs()), "λ {radial_scale} s {s} r {r} k {k}: {} vs {fd}", dg[k]);
                    }
                }
            }
            // with λ > 0 the centres crowd towards short range: the first spacing in r is the narrowest
            let r_of = |uk: f64| if radial_scale == 0.0 { uk } else { -6.0 / radial_scale * (1.0 - uk * radial_scale / 6.0).ln() };
            let (first, last) = (r_of(u(0.5) + step) - 0.5, 6.0 - r_of(u(6.0) - step));
            assert!(if radial_scale == 0.0 { (first - last).abs() < 1e-12 } else { first < 0.5 * last }, "{first} {last}");
        }
    }

    #[test]
    fn jvp_and_vjp_match_finite_differences() {
        // 8, 16, 22, 32, 34 and 36 channels: column kernels of width 8, 16, 24 and 32, and the matrix-product
        // path with the VJP's weights mirrored by 4 × 4 blocks and a ragged edge (34) and by blocks alone (36)
        for n_radial in [4, 8, 11, 16, 17, 18] {
            jvp_and_vjp_match_finite_differences_with(n_radial, 3);
        }
        // every l_max: the per-pair orders (l_max − 1, l_max) and the traces below them
        for l_max in [0, 1, 2, 4, 5] {
            jvp_and_vjp_match_finite_differences_with(6, l_max);
        }
    }

    /// The invariants are P_l[c, c'] = Σ_{m∈l} A[c][m] A[c'][m] (c ≤ c', row by row, l ascending) after the l = 0
    /// densities, for every width of the column kernels (6, 16, 22, 32 channels) and the matrix-product path (34).
    #[test]
    fn invariants_are_the_gram_matrices_of_the_density() {
        for n_radial in [3, 8, 11, 16, 17] {
            let (d, pos, sp) = setup_with(n_radial, 4);
            let desc = compute(&d, &pos, &sp);
            let (nc, nm, nf) = (d.n_channels(), d.n_monomials(), d.n_features());
            for i in 0..pos.len() {
                let a = desc.density_of(i);
                let mut want: Vec<f64> = (0..nc).map(|c| a[c * nm]).collect();
                for l in 0..=4 {
                    for c in 0..nc {
                        for c2 in c..nc {
                            want.push(order_range(l).map(|m| a[c * nm + m] * a[c2 * nm + m]).sum());
                        }
                    }
                }
                let got = &desc.features[i * nf..i * nf + want.len()];
                for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() < 1e-12 * (1.0 + w.abs()), "{nc} channels, atom {i}, feature {k}: {g} vs {w}");
                }
            }
        }
    }

    /// The density built from the two highest orders and traces equals the direct sum over neighbours of every
    /// monomial.
    #[test]
    fn lower_orders_from_traces_equal_direct_sums() {
        for l_max in [2, 3, 4, 6] {
            let (d, pos, sp) = setup_with(5, l_max);
            let desc = compute(&d, &pos, &sp);
            let (nm, nr) = (d.n_monomials(), d.spec.n_radial);
            assert!(d.top > 0 && d.top < nm);
            let (mut y, mut dy) = (vec![0.0; nm], vec![0.0; nm]);
            let mut direct = vec![0.0; desc.density.len()];
            let mut p = 0;
            for i in 0..pos.len() {
                for _ in desc.neighbors.of(i) {
                    d.angular_directional::<DYN>(&desc.pairs[p].u, &[0.0; 3], 0, &mut y, &mut dy);
                    let s = desc.species_of_neighbor[p];
                    for k in 0..nr {
                        for m in 0..nm {
                            direct[((i * d.n_species + s) * nr + k) * nm + m] += desc.radial[p * nr + k] * y[m];
                        }
                    }
                    p += 1;
                }
            }
            for (k, (a, b)) in desc.density.iter().zip(&direct).enumerate() {
                assert!((a - b).abs() < 1e-13 * (1.0 + b.abs()), "l_max {l_max}, entry {k}: {a} vs {b}");
            }
        }
    }

    fn jvp_and_vjp_match_finite_differences_with(n_radial: usize, l_max: usize) {
        let (d, pos, sp) = setup_with(n_radial, l_max);
        check_derivatives(&d, &pos, &sp);
    }

    /// A descriptor with four-body invariants of `channels` compressed channels up to order `l4`, with a
    /// random compression; with `compressed`, the three-body invariants of those channels (orders 0..=l_max)
    /// replace the full power spectrum, and only the first `channels − 1` enter the four-body products.
    fn with_random_four_body(d: Descriptor, channels: usize, l4: usize, compressed: bool) -> Descriptor {
        let mut rng = crate::rng::Rng::new(7);
        let mut b = Bispectrum { channels, l_max: l4, trainable: false, ..Default::default() };
        if compressed {
            b.three_body = four_body::ThreeBody::Compressed;
            b.four_body_channels = channels - 1;
        }
        let n = b.compression_len(2, d.n_channels(), d.spec.l_max);
        b.compression = (0..n).map(|_| rng.normal()).collect();
        d.with_four_body(&b).unwrap()
    }

    #[test]
    fn four_body_invariants_match_finite_differences() {
        for (nr, l, k, l4, compressed) in [(3, 3, 2, 2, false), (4, 3, 3, 3, false), (3, 4, 2, 4, false), (3, 4, 3, 2, true), (4, 3, 4, 3, true), (3, 3, 9, 3, false)] {
            let (d, pos, sp) = setup_with(nr, l);
            let d = with_random_four_body(d, k, l4, compressed);
            assert!(d.n_features() > d.n_power_spectrum_features());
            if compressed {
                // the l = 0 densities, K(K+1)/2 three-body invariants per order 0..=l_max, the four-body ones
                assert_eq!(d.n_power_spectrum_features(), d.n_channels());
                assert!(d.n_features() > d.n_channels() + (l + 1) * k * (k + 1) / 2);
            }
            check_derivatives(&d, &pos, &sp);
        }
    }

    #[test]
    fn compressed_three_body_invariants_are_the_gram_matrices_of_the_compressed_density() {
        let (d, pos, sp) = setup_with(4, 3);
        let d = with_random_four_body(d, 3, 2, true);
        let fb = d.four_body().unwrap();
        let base = compute(&d, &pos, &sp);
        let (nm, nc, nf) = (d.n_monomials(), d.n_channels(), d.n_features());
        let mut rng = crate::rng::Rng::new(7); // the compression of `with_random_four_body`
        let w: Vec<f64> = (0..fb.compression_block() * 2).map(|_| rng.normal()).collect();
        for i in 0..base.n_atoms {
            let (z, a) = (base.centre_species[i], base.density_of(i));
            let row = &base.features[i * nf..(i + 1) * nf];
            let mut f = nc;
            for l in 0..=3 {
                let wl = &w[(z * 4 + l) * 3 * nc..][..3 * nc];
                let m = |k: usize, mi: usize| (0..nc).map(|c| wl[k * nc + c] * a[c * nm + mi]).sum::<f64>();
                for k1 in 0..3 {
                    for k2 in k1..3 {
                        let p: f64 = order_range(l).map(|mi| m(k1, mi) * m(k2, mi)).sum();
                        assert!((row[f] - p).abs() < 1e-10 * (1.0 + p.abs()), "atom {i}, l {l}, ({k1}, {k2}): {} vs {p}", row[f]);
                        f += 1;
                    }
                }
            }
        }
    }

    #[test]
    fn four_body_invariants_are_invariant_and_not_trivial() {
        for compressed in [false, true] {
            four_body_invariance(compressed);
        }
    }

    fn four_body_invariance(compressed: bool) {
        let (d, pos, sp) = setup_with(4, 4);
        let d = with_random_four_body(d, 3, 4, compressed);
        let base = compute(&d, &pos, &sp);
        // a proper rotation and a reflection (the invariants are O(3)-invariant: every index is contracted)
        let (c, s) = (0.6f64, 0.8f64);
        for rot in [[[c, -s, 0.0], [s * 0.6, c * 0.6, -0.8], [s * 0.8, c * 0.8, 0.6]], [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]] {
            let moved: Vec<Vec3> = pos.iter().map(|p| std::array::from_fn(|a| (0..3).map(|b| rot[a][b] * p[b]).sum::<f64>() + 0.3)).collect();
            let other = compute(&d, &moved, &sp);
            let nps = d.n_power_spectrum_features();
            for (k, (x, y)) in base.features.iter().zip(&other.features).enumerate() {
                assert!((x - y).abs() < 1e-10 * (1.0 + x.abs()), "feature {k} ({}): {x} vs {y}", if k % d.n_features() >= nps { "four-body" } else { "power spectrum" });
            }
        }
        // the four-body features carry information: not all zero, and they change when one atom moves
        let nf = d.n_features();
        let fb = |f: &[f64]| f.chunks(nf).flat_map(|r| r[d.n_power_spectrum_features()..].to_vec()).collect::<Vec<_>>();
        assert!(fb(&base.features).iter().any(|x| x.abs() > 1e-3));
        let mut pos2 = pos.clone();
        pos2[2][0] += 0.1;
        let moved = compute(&d, &pos2, &sp);
        assert!(fb(&base.features).iter().zip(fb(&moved.features)).any(|(x, y)| (x - y).abs() > 1e-6));
    }

    fn check_derivatives(d: &Descriptor, pos: &[Vec3], sp: &[usize]) {
        let (d, pos, sp) = (d.clone(), pos.to_vec(), sp.to_vec());
        let base = compute(&d, &pos, &sp);
        let nf = base.n_features;
        let disp: Vec<Vec3> = (0..pos.len()).map(|k| [0.3 * k as f64 - 0.5, 0.2, -0.1 * k as f64]).collect();
        let strain = [[0.1, 0.02, -0.03], [0.02, -0.05, 0.04], [0.0, 0.01, 0.07]];
        let jv = d.jvp(&base, Some(&disp), Some(&strain));
        let h = 1e-5;
        let moved = |t: f64| -> Vec<Vec3> {
            pos.iter()
                .zip(&disp)
                .map(|(p, v)| {
                    let mut x = [0.0; 3];
                    for a in 0..3 {
                        x[a] = p[a] + t * v[a] + t * (0..3).map(|b| strain[a][b] * p[b]).sum::<f64>();
                    }
                    x
                })
                .collect()
        };
        let gp = compute(&d, &moved(h), &sp).features;
        let gm = compute(&d, &moved(-h), &sp).features;
        let scale = base.features.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for k in 0..gp.len() {
            let fd = (gp[k] - gm[k]) / (2.0 * h);
            assert!((fd - jv[k]).abs() < 1e-7 * scale.max(1.0), "feature {k}: fd {fd} jvp {}", jv[k]);
        }
        // VJP is the transpose: <w, J t> == <J^T w, t>
        let w: Vec<f64> = (0..pos.len() * nf).map(|k| ((k * 7919) % 13) as f64 / 13.0 - 0.4).collect();
        let lhs: f64 = w.iter().zip(&jv).map(|(a, b)| a * b).sum();
        let g = d.vjp(&base, &w);
        let mut rhs = 0.0;
        let mut p = 0;
        for i in 0..pos.len() {
            for nb in base.neighbors.of(i) {
                for a in 0..3 {
                    let t = disp[nb.j][a] - disp[i][a] + (0..3).map(|b| strain[a][b] * nb.r[b]).sum::<f64>();
                    rhs += g[p][a] * t;
                }
                p += 1;
            }
        }
        assert!((lhs - rhs).abs() < 1e-10 * lhs.abs().max(1.0), "{lhs} vs {rhs}");
    }
}
