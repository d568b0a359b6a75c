//! Four-body invariants of the bispectrum family: full contractions of three Cartesian moment tensors of
//! compressed density channels (the moment-tensor / ACE construction at body order four).
//!
//! ```text
//!   M_l[k]            = Σ_c W_{z,l}[k][c] · A_l[c]          (K compressed channels per centre element z and order l)
//!   B_{l1 l2 l3}[k1,k2,k3] = Σ  T1[p,q] · T2[p,r] · T3[q,r],   T1 = M_{l1}[k1], T2 = M_{l2}[k2], T3 = M_{l3}[k3]
//! ```
//!
//! Each tensor is the symmetric Cartesian tensor Σ_j R(r_ij) û_ij^{⊗l} whose independent components the density
//! stores as weighted monomials. p, q, r are multi-indices of n12 = (l1+l2−l3)/2, n13 = (l1+l3−l2)/2 and
//! n23 = (l2+l3−l1)/2 Cartesian indices: every index of a tensor is contracted with one of another tensor, so B is a
//! rotation invariant, and being cubic in the density it is a sum over neighbour triples: four-body. The
//! orders run over 1 ≤ l1 ≤ l2 ≤ l3 ≤ `l_max` with l1 + l2 + l3 even and l3 ≤ l1 + l2; when two orders are equal
//! the contraction is symmetric in their channels and only k1 ≤ k2 (or k2 ≤ k3) is kept.
//!
//! W compresses the n_elements × n_radial density channels to K before the products, so the number of features
//! grows as K³ and not as (n_elements × n_radial)³: the "chemical channel compression" of MACE/ACE. W starts at the
//! principal components of the channels' rotation-invariant covariance (per centre element and order), is trained
//! with the networks by default, and is stored in the model (`docs/model.md`).
//!
//! With `three_body = "compressed"` the three-body invariants come from the same compressed channels as well,
//! P_l[k1,k2] = Σ_{m∈l} M_l[k1][m] M_l[k2][m] for l = 0..=descriptor.l_max, in place of the descriptor's power
//! spectrum over every element-resolved channel pair: the features then grow as K² + K4³ instead of
//! (n_elements × n_radial)², and W acts as learned radial functions per element pair for both body orders.

use super::{Fused, Isa, MulAdd, Plain, Monomial};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The four-body part of a bispectrum model (the `[bispectrum]` config section, plus the fitted compression).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bispectrum {
    /// K: compressed channels per order (the features grow as K³).
    pub channels: usize,
    /// Highest order of the contracted tensors (≤ the descriptor's l_max).
    pub l_max: usize,
    /// Train W with the networks (after its PCA start) instead of keeping it fixed (default: ethanol test force
    /// MAE 12.4 → 11.0 meV/Å, docs/benchmarks.md).
    pub trainable: bool,
    /// A training setting: with `trainable`, W is trained for this fraction of the run's epochs and then kept,
    /// so that the rest of the run takes the cheaper step of fixed invariants (1: the whole run). A model's own
    /// copy is always 1 (what it records is whether its W is still trained).
    #[serde(skip_serializing_if = "is_one")]
    pub trained_fraction: f64,
    /// Where the three-body invariants come from (see [`ThreeBody`]).
    #[serde(skip_serializing_if = "ThreeBody::is_full")]
    pub three_body: ThreeBody,
    /// K4 ≤ K: the first this many compressed channels enter the four-body products (0: all K). Lets the cheap
    /// three-body part use more channels than the K4³-sized four-body part.
    #[serde(skip_serializing_if = "is_zero")]
    pub four_body_channels: usize,
    /// W, `[n_species][l ∈ compressed_orders][channels][n_density_channels]`; empty until fitted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compression: Vec<f64>,
}

/// The source of the three-body invariants of a bispectrum model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreeBody {
    /// The descriptor's power spectrum over every element-resolved channel pair and order 0..=l_max.
    #[default]
    Full,
    /// The power spectrum of the K compressed channels, orders 0..=descriptor.l_max (the l = 0 densities stay
    /// element-resolved).
    Compressed,
}

impl ThreeBody {
    fn is_full(&self) -> bool {
        *self == ThreeBody::Full
    }
}

fn is_zero(x: &usize) -> bool {
    *x == 0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

impl Default for Bispectrum {
    fn default() -> Self {
        Bispectrum {
            channels: 8,
            l_max: 3,
            trainable: true,
            trained_fraction: 1.0,
            three_body: ThreeBody::Full,
            four_body_channels: 0,
            compression: Vec::new(),
        }
    }
}

impl Bispectrum {
    /// Range checks of the config values; the message names the key (`bispectrum.…`).
    pub fn validate(&self, descriptor_l_max: usize) -> std::result::Result<(), String> {
        if !(1..=32).contains(&self.channels) {
            return Err(format!("bispectrum.channels must be in 1..=32, got {}", self.channels));
        }
        if self.four_body_channels > self.channels || self.four_body_channels > 16 {
            return Err(format!(
                "bispectrum.four_body_channels must be at most bispectrum.channels ({}) and 16 (0: all channels), got {}",
                self.channels, self.four_body_channels
            ));
        }
        if self.four_body_channels == 0 && self.channels > 16 {
            return Err(format!(
                "bispectrum.channels = {} needs bispectrum.four_body_channels ≤ 16 (the four-body features grow as its cube)",
                self.channels
            ));
        }
        if !(self.trained_fraction > 0.0 && self.trained_fraction <= 1.0) {
            return Err(format!(
                "bispectrum.trained_fraction must be in (0, 1] (the share of the run's epochs that train the compression), got {}",
                self.trained_fraction
            ));
        }
        if !(2..=4).contains(&self.l_max) || self.l_max > descriptor_l_max {
            return Err(format!(
                "bispectrum.l_max must be in 2..=4 and at most descriptor.l_max ({descriptor_l_max}), got {}",
                self.l_max
            ));
        }
        Ok(())
    }

    /// The compressed channels that enter the four-body products (K4).
    pub fn four_body_k(&self) -> usize {
        if self.four_body_channels == 0 { self.channels } else { self.four_body_channels }
    }

    /// The orders W compresses: 1..=`l_max` for the four-body products, or every order of the descriptor when
    /// the three-body part is compressed too.
    pub fn compressed_orders(&self, descriptor_l_max: usize) -> std::ops::RangeInclusive<usize> {
        match self.three_body {
            ThreeBody::Full => 1..=self.l_max,
            ThreeBody::Compressed => 0..=self.l_max.max(descriptor_l_max),
        }
    }

    /// Values of W for `n_species` elements and `n_channels` density channels.
    pub fn compression_len(&self, n_species: usize, n_channels: usize, descriptor_l_max: usize) -> usize {
        n_species * self.compressed_orders(descriptor_l_max).count() * self.channels * n_channels
    }

    /// Fits the compression: for each centre element and order l, the rotation-invariant covariance
    /// C[c][c'] = Σ_atoms Σ_{m∈l} A[c][m]·A[c'][m] is scaled to unit diagonal and its leading `channels`
    /// eigenvectors (divided by the channel scales) become the rows of W. `atoms` yields (centre species, density
    /// row `[n_channels][nm]`); `order` gives the monomial range of an order.
    /// `orders` is [`Bispectrum::compressed_orders`].
    pub fn fit<'a>(
        &mut self,
        n_species: usize,
        n_channels: usize,
        nm: usize,
        orders: std::ops::RangeInclusive<usize>,
        order: impl Fn(usize) -> std::ops::Range<usize>,
        atoms: impl Iterator<Item = (usize, &'a [f64])>,
    ) {
        let (nc, k, nl) = (n_channels, self.channels, orders.clone().count());
        let mut cov = vec![0.0; n_species * nl * nc * nc];
        for (z, a) in atoms {
            for (li, l) in orders.clone().enumerate() {
                let c = &mut cov[((z * nl) + li) * nc * nc..][..nc * nc];
                for c1 in 0..nc {
                    for c2 in c1..nc {
                        let s: f64 = order(l).map(|m| a[c1 * nm + m] * a[c2 * nm + m]).sum();
                        c[c1 * nc + c2] += s;
                    }
                }
            }
        }
        self.compression = vec![0.0; n_species * nl * k * nc];
        for block in 0..n_species * nl {
            let c = &mut cov[block * nc * nc..(block + 1) * nc * nc];
            for c1 in 0..nc {
                for c2 in 0..c1 {
                    c[c1 * nc + c2] = c[c2 * nc + c1];
                }
            }
            let max_diag = (0..nc).map(|i| c[i * nc + i]).fold(0.0f64, f64::max);
            if max_diag <= 0.0 {
                continue; // an element absent from the data: its features stay zero
            }
            let inv: Vec<f64> = (0..nc).map(|i| if c[i * nc + i] > 1e-12 * max_diag { 1.0 / c[i * nc + i].sqrt() } else { 0.0 }).collect();
            let corr: Vec<f64> = (0..nc * nc).map(|e| c[e] * inv[e / nc] * inv[e % nc]).collect();
            let (_, vectors) = crate::linalg::symmetric_eigen(&corr, nc);
            let w = &mut self.compression[block * k * nc..(block + 1) * k * nc];
            for row in 0..k.min(nc) {
                for col in 0..nc {
                    w[row * nc + col] = vectors[row * nc + col] * inv[col];
                }
            }
        }
    }
}

/// One contraction pattern (l1, l2, l3): its monomial terms and channel symmetries. Term t is the coefficient
/// c_t times M[k1][m1]·M[k2][m2]·M[k3][m3], stored per slot as `index` (m1, m2, m3) and `scale` (c_t for slot 0).
#[derive(Clone, Debug)]
struct Coupling {
    /// The number of terms rounded up to a multiple of 4 (the row length of the factor matrices).
    ntp: usize,
    /// (k1, k2, first k3) of each channel pair, in feature order (k1 ≤ k2 when l1 = l2, k2 ≤ k3 when l2 = l3: the
    /// contraction is symmetric in those channels).
    pairs: Vec<(usize, usize, usize)>,
    /// Per slot, the monomial each term reads, and the term's scale: its coefficient for slot 0, 1 otherwise.
    index: [Vec<usize>; 3],
    scale: [Vec<f64>; 3],
    /// Per slot, the terms grouped by the monomial they read: (monomial, range in `scatter_terms`).
    scatter_targets: [Vec<(usize, std::ops::Range<usize>)>; 3],
    /// Per slot, (term, scale) in the order of `scatter_targets`.
    scatter_terms: [Vec<(usize, f64)>; 3],
}

impl Coupling {
    fn new(terms: Vec<([usize; 3], f64)>, pairs: Vec<(usize, usize, usize)>) -> Coupling {
        let index: [Vec<usize>; 3] = [0, 1, 2].map(|slot| terms.iter().map(|(ms, _)| ms[slot]).collect());
        let scale: [Vec<f64>; 3] = [0, 1, 2].map(|slot| terms.iter().map(|&(_, c)| if slot == 0 { c } else { 1.0 }).collect());
        let (mut scatter_targets, mut scatter_terms): ([Vec<_>; 3], [Vec<_>; 3]) = Default::default();
        for slot in 0..3 {
            let mut by_monomial: std::collections::BTreeMap<usize, Vec<(usize, f64)>> = Default::default();
            for (t, (&m, &c)) in index[slot].iter().zip(&scale[slot]).enumerate() {
                by_monomial.entry(m).or_default().push((t, c));
            }
            for (m, list) in by_monomial {
                let start = scatter_terms[slot].len();
                scatter_terms[slot].extend(list);
                scatter_targets[slot].push((m, start..scatter_terms[slot].len()));
            }
        }
        Coupling { ntp: terms.len().div_ceil(4) * 4, pairs, index, scale, scatter_targets, scatter_terms }
    }
}

/// The four-body invariants of a [`Bispectrum`], ready to evaluate (built once per descriptor).
#[derive(Clone, Debug)]
pub struct FourBody {
    /// Compressed channels (rows of W per order).
    k: usize,
    /// The first this many enter the four-body products.
    k4: usize,
    nc: usize,
    /// Row length of the density (all monomials of the descriptor).
    nm: usize,
    /// Monomials of the compressed orders: the row length of M.
    me: usize,
    /// Monomial ranges of the compressed orders ([`Bispectrum::compressed_orders`]).
    orders: Vec<std::ops::Range<usize>>,
    compression: Vec<f64>,
    /// The compressed three-body invariants come first (`three_body = "compressed"`): their number.
    n_three_body: usize,
    couplings: Vec<Coupling>,
    n_features: usize,
    /// K4 rounded up to a multiple of 4, and the largest padded term count and channel-pair count of the couplings:
    /// the sizes of the per-coupling matrices.
    kp: usize,
    ntp_max: usize,
    npairs_max: usize,
    isa: Isa,
}

impl FourBody {
    /// The invariants of `b` (already validated) for a density of `nc` channels over `monomials` (the
    /// descriptor's, in its order, orders 0..=`descriptor_l_max`); `order(l)` is the monomial range of order l.
    /// Fails when the compression does not fit these sizes (a model file whose metadata was edited).
    pub(super) fn new(
        b: &Bispectrum,
        n_species: usize,
        nc: usize,
        monomials: &[Monomial],
        descriptor_l_max: usize,
        order: impl Fn(usize) -> std::ops::Range<usize>,
    ) -> Result<Self> {
        let (k, lmax, orders) = (b.channels, b.l_max, b.compressed_orders(descriptor_l_max));
        let (lw, nw) = (*orders.end(), orders.clone().count());
        let want = b.compression_len(n_species, nc, descriptor_l_max);
        if b.compression.len() != want || k == 0 || lmax == 0 || order(lw).end > monomials.len() {
            return Err(Error::model(format!(
                "the bispectrum compression has {} values, expected {want} ({n_species} elements × {nw} orders × {k} channels × {nc} density channels)",
                b.compression.len()
            )));
        }
        if b.compression.iter().any(|w| !w.is_finite()) {
            return Err(Error::model("the bispectrum compression contains a non-finite value"));
        }
        let me = order(lw).end;
        let index = |pow: [usize; 3]| monomials[..me].iter().position(|m| m.pow == pow);
        let mut couplings = Vec::new();
        for l1 in 1..=lmax {
            for l2 in l1..=lmax {
                for l3 in l2..=lmax {
                    if (l1 + l2 + l3) % 2 == 1 || l3 > l1 + l2 {
                        continue;
                    }
                    let (n12, n13, n23) = ((l1 + l2 - l3) / 2, (l1 + l3 - l2) / 2, (l2 + l3 - l1) / 2);
                    let total = n12 + n13 + n23;
                    let mut terms: std::collections::BTreeMap<[usize; 3], f64> = Default::default();
                    for code in 0..3usize.pow(total as u32) {
                        let digit = |i: usize| (code / 3usize.pow(i as u32)) % 3;
                        let count = |ranges: [std::ops::Range<usize>; 2]| {
                            let mut pow = [0; 3];
                            for i in ranges.into_iter().flatten() {
                                pow[digit(i)] += 1;
                            }
                            pow
                        };
                        let (p, q, r) = (0..n12, n12..n12 + n13, n12 + n13..total);
                        let pows = [count([p.clone(), q.clone()]), count([p, r.clone()]), count([q, r])];
                        let ms = pows.map(|pw| index(pw).unwrap_or(usize::MAX));
                        if ms.contains(&usize::MAX) {
                            continue; // unreachable: every monomial of order ≤ l_max is in the table
                        }
                        // the tensor component is the monomial divided by its weight
                        let c = 1.0 / ms.iter().map(|&m| monomials[m].weight).product::<f64>();
                        *terms.entry(ms).or_default() += c;
                    }
                    let pairs = Self::channel_pairs(b.four_body_k(), l1 == l2, l2 == l3);
                    couplings.push(Coupling::new(terms.into_iter().collect(), pairs));
                }
            }
        }
        let k4 = b.four_body_k();
        let n_four_body: usize = couplings.iter().flat_map(|cp| cp.pairs.iter().map(|&(_, _, k3)| k4 - k3)).sum();
        let n_three_body = match b.three_body {
            ThreeBody::Full => 0,
            ThreeBody::Compressed => nw * k * (k + 1) / 2,
        };
        Ok(FourBody {
            k,
            k4,
            nc,
            nm: monomials.len(),
            me,
            orders: orders.map(order).collect(),
            compression: b.compression.clone(),
            n_three_body,
            kp: k4.div_ceil(4) * 4,
            ntp_max: couplings.iter().map(|c| c.ntp).max().unwrap_or(0),
            npairs_max: couplings.iter().map(|c| c.pairs.len()).max().unwrap_or(0),
            couplings,
            n_features: n_three_body + n_four_body,
            isa: Isa::detect(),
        })
    }

    /// Features per atom (the compressed three-body invariants, if any, then the four-body ones).
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Whether the three-body invariants are the compressed channels' (and the descriptor's power spectrum is
    /// left out).
    pub fn compresses_three_body(&self) -> bool {
        self.n_three_body > 0
    }

    /// Calls `f(feature, row1, row2)` for each compressed three-body invariant P_l[k1,k2] (l over the compressed
    /// orders, k1 ≤ k2), with the ranges of M's rows k1 and k2 at order l; nothing without compressed three-body
    /// invariants.
    fn for_each_three_body(&self, mut f: impl FnMut(usize, std::ops::Range<usize>, std::ops::Range<usize>)) {
        if self.n_three_body == 0 {
            return;
        }
        let mut feature = 0;
        for ms in &self.orders {
            let at = |k: usize| k * self.me + ms.start..k * self.me + ms.end;
            for k1 in 0..self.k {
                for k2 in k1..self.k {
                    f(feature, at(k1), at(k2));
                    feature += 1;
                }
            }
        }
    }

    /// P_l[k1,k2] = Σ_{m∈l} M[k1][m]·M[k2][m] into `out`.
    fn three_body(&self, m: &[f64], out: &mut [f64]) {
        self.for_each_three_body(|f, r1, r2| out[f] = dot::<Plain>(&m[r1], &m[r2]));
    }

    /// Their change along the compressed density change `md`: Ṗ_l[k1,k2] = Σ Ṁ[k1]M[k2] + M[k1]Ṁ[k2].
    fn three_body_jvp(&self, m: &[f64], md: &[f64], out: &mut [f64]) {
        self.for_each_three_body(|f, r1, r2| out[f] = dot::<Plain>(&md[r1.clone()], &m[r2.clone()]) + dot::<Plain>(&m[r1], &md[r2]));
    }

    /// Adds the gradient of `Σ_f gb[f]·P_f + gd[f]·Ṗ_f` with respect to M to `gm` and, with a tangent
    /// (`md`, `gd`, `gmd` all given), with respect to Ṁ to `gmd`.
    fn three_body_grad(&self, m: &[f64], gb: &[f64], gm: &mut [f64], mut tangent: Option<(&[f64], &[f64], &mut [f64])>) {
        self.for_each_three_body(|f, r1, r2| {
            // P = M1·M2: ∂/∂M1 = g M2, ∂/∂M2 = g M1 (2g M1 when k1 = k2, from both terms); with a tangent
            // Ṗ = Ṁ1·M2 + M1·Ṁ2 also ∂/∂M1 += h Ṁ2, ∂/∂M2 += h Ṁ1, ∂/∂Ṁ1 += h M2, ∂/∂Ṁ2 += h M1
            for (a, b) in [(r1.clone(), r2.clone()), (r2, r1)] {
                match tangent.as_mut() {
                    None => a.zip(b).for_each(|(x, i)| gm[x] += gb[f] * m[i]),
                    Some((md, gd, gmd)) => a.zip(b).for_each(|(x, i)| {
                        gm[x] += gb[f] * m[i];
                        gm[x] += gd[f] * md[i];
                        gmd[x] += gd[f] * m[i];
                    }),
                }
            }
        });
    }

    /// Scratch values one call of [`FourBody::forward`], [`FourBody::vjp`], [`FourBody::jvp`] or
    /// [`FourBody::compression_grad`] needs.
    pub fn scratch_len(&self) -> usize {
        4 * self.k * self.me + self.work_len()
    }

    /// `m[k][0..me] = Σ_c W_{z,l}[k][c]·a[c][·]` per order (orders 0 stay zero).
    #[inline(always)]
    fn compress<M: MulAdd>(&self, z: usize, a: &[f64], m: &mut [f64]) {
        let (k, nc, nm, me) = (self.k, self.nc, self.nm, self.me);
        m[..k * me].fill(0.0);
        for (li, ms) in self.orders.iter().enumerate() {
            let w = &self.compression[(z * self.orders.len() + li) * k * nc..][..k * nc];
            gemm_acc::<M>(k, nc, ms.len(), w, nc, 1, &a[ms.start..], nm, &mut m[ms.start..], me);
        }
    }

    /// The transpose of [`FourBody::compress`]: `da[c][·] += Σ_k W_{z,l}[k][c]·gm[k][·]`.
    #[inline(always)]
    fn compress_transpose<M: MulAdd>(&self, z: usize, gm: &[f64], da: &mut [f64]) {
        let (k, nc, nm, me) = (self.k, self.nc, self.nm, self.me);
        for (li, ms) in self.orders.iter().enumerate() {
            let w = &self.compression[(z * self.orders.len() + li) * k * nc..][..k * nc];
            gemm_acc::<M>(nc, k, ms.len(), w, 1, nc, &gm[ms.start..], me, &mut da[ms.start..], nm);
        }
    }

    /// The channel pairs (k1, k2) of a coupling with these symmetries in feature order, each with its first k3.
    fn channel_pairs(k: usize, sym12: bool, sym23: bool) -> Vec<(usize, usize, usize)> {
        (0..k).flat_map(move |k1| (if sym12 { k1 } else { 0 }..k).map(move |k2| (k1, k2, if sym23 { k2 } else { 0 }))).collect()
    }

    /// `out[k][t] = scale_t · m[k][m_t]` (row stride `ntp`) for the monomial `m_t` of `slot` (0, 1, 2) of each term
    /// t, scale_t the term's coefficient for slot 0 and 1 otherwise: the factors of one slot as a `[Kp][ntp]`
    /// matrix, zero beyond the K4 channels and the terms, so that the products below are small matrix products.
    #[inline(always)]
    fn gather(&self, m: &[f64], cp: &Coupling, slot: usize, out: &mut [f64]) {
        out[..self.kp * cp.ntp].fill(0.0);
        // four channels at a time share each term's index and scale
        let blocked = self.k4 / 4 * 4;
        for kk in (0..blocked).step_by(4) {
            self.gather_rows::<4>(m, cp, slot, kk, out);
        }
        for kk in blocked..self.k4 {
            self.gather_rows::<1>(m, cp, slot, kk, out);
        }
    }

    /// Rows kk..kk + R of [`FourBody::gather`].
    #[inline(always)]
    fn gather_rows<const R: usize>(&self, m: &[f64], cp: &Coupling, slot: usize, kk: usize, out: &mut [f64]) {
        let (me, ntp) = (self.me, cp.ntp);
        let rows: [&[f64]; R] = std::array::from_fn(|r| &m[(kk + r) * me..(kk + r + 1) * me]);
        let block = &mut out[kk * ntp..(kk + R) * ntp];
        for (t, (&i, &c)) in cp.index[slot].iter().zip(&cp.scale[slot]).enumerate() {
            for (r, row) in rows.iter().enumerate() {
                block[r * ntp + t] = c * row[i];
            }
        }
    }

    /// The same factors transposed, `out[t][k]` (row stride Kp), for products over the terms (unscaled: slot 2).
    #[inline(always)]
    fn gather_t(&self, m: &[f64], cp: &Coupling, slot: usize, out: &mut [f64]) {
        let (me, kp) = (self.me, self.kp);
        out[..cp.ntp * kp].fill(0.0);
        for kk in 0..self.k4 {
            let mk = &m[kk * me..(kk + 1) * me];
            for (t, &i) in cp.index[slot].iter().enumerate() {
                out[t * kp + kk] = mk[i];
            }
        }
    }

    /// The transpose of [`FourBody::gather`]: `gm[k][m] += Σ_{t: m_t = m} scale_t · g[k][t]`, summed per monomial
    /// before the one store (adding term by term made a chain of stores and loads of the same few values).
    #[inline(always)]
    fn scatter(&self, g: &[f64], cp: &Coupling, slot: usize, gm: &mut [f64]) {
        // four channels at a time share each term's index and scale
        let blocked = self.k4 / 4 * 4;
        for kk in (0..blocked).step_by(4) {
            self.scatter_rows::<4>(g, cp, slot, kk, gm);
        }
        for kk in blocked..self.k4 {
            self.scatter_rows::<1>(g, cp, slot, kk, gm);
        }
    }

    /// Rows kk..kk + R of [`FourBody::scatter`]; each channel's sums keep the order of `scatter_terms`.
    #[inline(always)]
    fn scatter_rows<const R: usize>(&self, g: &[f64], cp: &Coupling, slot: usize, kk: usize, gm: &mut [f64]) {
        let (me, ntp) = (self.me, cp.ntp);
        let rows: [&[f64]; R] = std::array::from_fn(|r| &g[(kk + r) * ntp..(kk + r + 1) * ntp]);
        for (m, range) in &cp.scatter_targets[slot] {
            let mut sums = [0.0; R];
            for &(t, c) in &cp.scatter_terms[slot][range.clone()] {
                for (sum, row) in sums.iter_mut().zip(&rows) {
                    *sum += c * row[t];
                }
            }
            for (r, sum) in sums.iter().enumerate() {
                gm[(kk + r) * me + m] += sum;
            }
        }
    }

    /// `p[pair][t] = g1[k1][t]·g2[k2][t]` over the coupling's channel pairs and, with the tangents `d1`, `d2`,
    /// `pd[pair][t] = d1[k1][t]·g2[k2][t] + g1[k1][t]·d2[k2][t]`.
    #[inline(always)]
    fn pair_products<M: MulAdd>(cp: &Coupling, g1: &[f64], g2: &[f64], p: &mut [f64], tangent: Option<(&[f64], &[f64], &mut [f64])>) {
        let ntp = cp.ntp;
        for (pi, &(k1, k2, _)) in cp.pairs.iter().enumerate() {
            let (a1, a2) = (&g1[k1 * ntp..][..ntp], &g2[k2 * ntp..][..ntp]);
            for ((x, a), b) in p[pi * ntp..][..ntp].iter_mut().zip(a1).zip(a2) {
                *x = a * b;
            }
        }
        if let Some((d1, d2, pd)) = tangent {
            for (pi, &(k1, k2, _)) in cp.pairs.iter().enumerate() {
                let (a1, a2, b1, b2) = (&g1[k1 * ntp..][..ntp], &g2[k2 * ntp..][..ntp], &d1[k1 * ntp..][..ntp], &d2[k2 * ntp..][..ntp]);
                for (t, x) in pd[pi * ntp..][..ntp].iter_mut().enumerate() {
                    *x = M::madd(b1[t], a2[t], a1[t] * b2[t]);
                }
            }
        }
    }

    /// The coupling's features `g[f..]` (k3 from each pair's first to K4) as a dense `[pairs][Kp]` matrix, zero
    /// elsewhere; returns the next feature.
    #[inline(always)]
    fn spread(&self, cp: &Coupling, g: &[f64], f: usize, out: &mut [f64]) -> usize {
        let (kp, k4) = (self.kp, self.k4);
        let mut f = f;
        for (pi, &(_, _, k3)) in cp.pairs.iter().enumerate() {
            let row = &mut out[pi * kp..(pi + 1) * kp];
            row.fill(0.0);
            row[k3..k4].copy_from_slice(&g[f..f + k4 - k3]);
            f += k4 - k3;
        }
        f
    }

    /// Reads the features back out of a `[pairs][Kp]` matrix ([`FourBody::spread`]'s inverse); returns the next
    /// feature.
    #[inline(always)]
    fn collect(&self, cp: &Coupling, full: &[f64], f: usize, out: &mut [f64]) -> usize {
        let (kp, k4) = (self.kp, self.k4);
        let mut f = f;
        for (pi, &(_, _, k3)) in cp.pairs.iter().enumerate() {
            out[f..f + k4 - k3].copy_from_slice(&full[pi * kp + k3..pi * kp + k4]);
            f += k4 - k3;
        }
        f
    }

    /// The invariants of one atom of centre species `z` with density `a` (`[nc][nm]`, all orders) into `out`.
    pub fn forward(&self, z: usize, a: &[f64], out: &mut [f64], scratch: &mut [f64]) {
        match self.isa {
            Isa::Portable => self.forward_with::<Plain>(z, a, out, scratch),
            // SAFETY: `Isa::detect` found these features on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { self.forward_avx2(z, a, out, scratch) },
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn forward_avx2(&self, z: usize, a: &[f64], out: &mut [f64], scratch: &mut [f64]) {
        self.forward_with::<Fused>(z, a, out, scratch)
    }

    /// B[pair][k3] = Σ_t P[pair][t]·G3[k3][t] with P = G1[k1] ⊙ G2[k2]: one product of a `[pairs][T]` and a
    /// `[T][Kp]` matrix per coupling.
    #[inline(always)]
    fn forward_with<M: MulAdd>(&self, z: usize, a: &[f64], out: &mut [f64], scratch: &mut [f64]) {
        let (m, rest) = scratch.split_at_mut(self.k * self.me);
        let w = self.work(rest);
        self.compress::<M>(z, a, m);
        self.three_body(m, &mut out[..self.n_three_body]);
        let (kp, mut f) = (self.kp, self.n_three_body);
        for cp in &self.couplings {
            let (ntp, np) = (cp.ntp, cp.pairs.len());
            self.gather(m, cp, 0, w.g[0]);
            self.gather(m, cp, 1, w.g[1]);
            self.gather_t(m, cp, 2, w.g3t);
            Self::pair_products::<M>(cp, w.g[0], w.g[1], w.p, None);
            gemm_set::<M>(np, ntp, kp, w.p, ntp, 1, w.g3t, kp, w.b, kp);
            f = self.collect(cp, w.b, f, out);
        }
    }

    /// Adds the gradient of `Σ_f g[f]·B_f` with respect to the density to `da` (`[nc][nm]`, all orders).
    pub fn vjp(&self, z: usize, a: &[f64], g: &[f64], da: &mut [f64], scratch: &mut [f64]) {
        match self.isa {
            Isa::Portable => self.vjp_with::<Plain>(z, a, g, da, scratch),
            // SAFETY: `Isa::detect` found these features on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { self.vjp_avx2(z, a, g, da, scratch) },
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn vjp_avx2(&self, z: usize, a: &[f64], g: &[f64], da: &mut [f64], scratch: &mut [f64]) {
        self.vjp_with::<Fused>(z, a, g, da, scratch)
    }

    #[inline(always)]
    fn vjp_with<M: MulAdd>(&self, z: usize, a: &[f64], g: &[f64], da: &mut [f64], scratch: &mut [f64]) {
        let (m, rest) = scratch.split_at_mut(self.k * self.me);
        let (gm, rest) = rest.split_at_mut(self.k * self.me);
        let mut w = self.work(rest);
        self.compress::<M>(z, a, m);
        gm.fill(0.0);
        self.three_body_grad(m, g, gm, None);
        let mut f = self.n_three_body;
        for cp in &self.couplings {
            for slot in 0..3 {
                self.gather(m, cp, slot, w.g[slot]);
            }
            f = self.coupling_vjp::<M>(cp, g, f, &mut w, gm);
        }
        self.compress_transpose::<M>(z, gm, da);
    }

    /// Adds the gradient of `Σ g[f]·B_f` over one coupling's features (from `f`; returns the next) with respect
    /// to M to `gm`, from the factors already gathered into `w.g`.
    #[inline(always)]
    fn coupling_vjp<M: MulAdd>(&self, cp: &Coupling, g: &[f64], f: usize, w: &mut Work, gm: &mut [f64]) -> usize {
        let (kp, ntp, np) = (self.kp, cp.ntp, cp.pairs.len());
        Self::pair_products::<M>(cp, w.g[0], w.g[1], w.p, None);
        let f = self.spread(cp, g, f, w.gb);
        // B = Σ_t P G3: Ḡ3 = g_Bᵀ P, and Q = g_B G3 carries the rest to slots 1 and 2 (Ḡ1 += Q ⊙ G2, Ḡ2 += Q ⊙ G1)
        gemm_set::<M>(kp, np, ntp, w.gb, 1, kp, w.p, ntp, w.gbar[2], ntp);
        gemm_set::<M>(np, kp, ntp, w.gb, kp, 1, w.g[2], ntp, w.q, ntp);
        let [gb1, gb2, _] = &mut w.gbar;
        gb1[..kp * ntp].fill(0.0);
        gb2[..kp * ntp].fill(0.0);
        Self::spread_to_slots::<M>(cp, w.q, [&*w.g[0], &*w.g[1]], [&mut **gb1, &mut **gb2]);
        for slot in 0..3 {
            self.scatter(w.gbar[slot], cp, slot, gm);
        }
        f
    }

    /// `out1[k1] += q[pair] ⊙ x2[k2]` and `out2[k2] += q[pair] ⊙ x1[k1]` over the channel pairs (`[x1, x2]`,
    /// `[out1, out2]`): the gradient of P = X1[k1] ⊙ X2[k2] along Q.
    #[inline(always)]
    fn spread_to_slots<M: MulAdd>(cp: &Coupling, q: &[f64], x: [&[f64]; 2], out: [&mut [f64]; 2]) {
        let ntp = cp.ntp;
        let [o1, o2] = out;
        for (pi, &(k1, k2, _)) in cp.pairs.iter().enumerate() {
            let qr = &q[pi * ntp..][..ntp];
            for (t, y) in o1[k1 * ntp..][..ntp].iter_mut().enumerate() {
                *y = M::madd(qr[t], x[1][k2 * ntp + t], *y);
            }
            for (t, y) in o2[k2 * ntp..][..ntp].iter_mut().enumerate() {
                *y = M::madd(qr[t], x[0][k1 * ntp + t], *y);
            }
        }
    }

    /// Values of the compression per centre species (one block of `W`).
    pub fn compression_block(&self) -> usize {
        self.orders.len() * self.k * self.nc
    }

    /// Adds to `gw` (centre species z's block of W, [`FourBody::compression_block`] values) the gradient with
    /// respect to W of `Σ_f gb[f]·B_f + gd[f]·Ḃ_f`, where Ḃ is the change of the invariants along the density change
    /// `a_dot` (both `None` when there is no tangent): the four-body part of the training primitive when W is
    /// trained.
    #[allow(clippy::too_many_arguments)]
    pub fn compression_grad(&self, z: usize, a: &[f64], a_dot: Option<&[f64]>, gb: &[f64], gd: Option<&[f64]>, gw: &mut [f64], scratch: &mut [f64]) {
        let tangent = a_dot.zip(gd);
        match self.isa {
            Isa::Portable => self.compression_grad_with::<Plain>(z, a, tangent, gb, gw, scratch),
            // SAFETY: `Isa::detect` found these features on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { self.compression_grad_avx2(z, a, tangent, gb, gw, scratch) },
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn compression_grad_avx2(&self, z: usize, a: &[f64], tangent: Option<(&[f64], &[f64])>, gb: &[f64], gw: &mut [f64], scratch: &mut [f64]) {
        self.compression_grad_with::<Fused>(z, a, tangent, gb, gw, scratch)
    }

    #[inline(always)]
    fn compression_grad_with<M: MulAdd>(&self, z: usize, a: &[f64], tangent: Option<(&[f64], &[f64])>, gb: &[f64], gw: &mut [f64], scratch: &mut [f64]) {
        let (k, kp, nc, nm, me) = (self.k, self.kp, self.nc, self.nm, self.me);
        let (gm, rest) = scratch.split_at_mut(k * me);
        let (gmd, rest) = rest.split_at_mut(k * me);
        let (m, rest) = rest.split_at_mut(k * me);
        let (md, rest) = rest.split_at_mut(k * me);
        let mut w = self.work(rest);
        self.compress::<M>(z, a, m);
        if let Some((a_dot, _)) = tangent {
            self.compress::<M>(z, a_dot, md);
        }
        gm.fill(0.0);
        gmd.fill(0.0);
        self.three_body_grad(m, gb, gm, tangent.map(|(_, gd)| (&*md, gd, &mut *gmd)));
        let mut f = self.n_three_body;
        for cp in &self.couplings {
            let (ntp, np) = (cp.ntp, cp.pairs.len());
            for slot in 0..3 {
                self.gather(m, cp, slot, w.g[slot]);
            }
            let Some((_, gd)) = tangent else {
                f = self.coupling_vjp::<M>(cp, gb, f, &mut w, gm);
                continue;
            };
            for slot in 0..3 {
                self.gather(md, cp, slot, w.d[slot]);
            }
            Self::pair_products::<M>(cp, w.g[0], w.g[1], w.p, Some((&*w.d[0], &*w.d[1], &mut *w.pd)));
            self.spread(cp, gb, f, w.gb);
            f = self.spread(cp, gd, f, w.gd);
            // J = Σ_f gb_f B_f + gd_f Ḃ_f with B = Σ_t G1 G2 G3 and Ḃ = Σ_t D1 G2 G3 + G1 D2 G3 + G1 G2 D3 (slots as in
            // `gather`): with P = G1 G2 and Ṗ = D1 G2 + G1 D2 per pair, Ḡ3 = gbᵀP + gdᵀṖ and D̄3 = gdᵀP;
            // Q = gb G3 + gd D3 and R = gd G3 carry the rest to slots 1 and 2.
            gemm_set::<M>(kp, np, ntp, w.gb, 1, kp, w.p, ntp, w.gbar[2], ntp);
            gemm_acc::<M>(kp, np, ntp, w.gd, 1, kp, w.pd, ntp, w.gbar[2], ntp);
            gemm_set::<M>(kp, np, ntp, w.gd, 1, kp, w.p, ntp, w.dbar[2], ntp);
            gemm_set::<M>(np, kp, ntp, w.gb, kp, 1, w.g[2], ntp, w.q, ntp);
            gemm_acc::<M>(np, kp, ntp, w.gd, kp, 1, w.d[2], ntp, w.q, ntp);
            gemm_set::<M>(np, kp, ntp, w.gd, kp, 1, w.g[2], ntp, w.r, ntp);
            for gg in w.gbar[..2].iter_mut().chain(&mut w.dbar[..2]) {
                gg[..kp * ntp].fill(0.0);
            }
            // P = G1 G2 along Q; Ṗ = D1 G2 + G1 D2 along R: Ḡ1 += R ⊙ D2, Ḡ2 += R ⊙ D1, D̄1 += R ⊙ G2, D̄2 += R ⊙ G1
            {
                let [gb1, gb2, _] = &mut w.gbar;
                Self::spread_to_slots::<M>(cp, w.q, [&*w.g[0], &*w.g[1]], [&mut **gb1, &mut **gb2]);
                Self::spread_to_slots::<M>(cp, w.r, [&*w.d[0], &*w.d[1]], [&mut **gb1, &mut **gb2]);
                let [db1, db2, _] = &mut w.dbar;
                Self::spread_to_slots::<M>(cp, w.r, [&*w.g[0], &*w.g[1]], [&mut **db1, &mut **db2]);
            }
            for slot in 0..3 {
                self.scatter(w.gbar[slot], cp, slot, gm);
                self.scatter(w.dbar[slot], cp, slot, gmd);
            }
        }
        // M = W A, Ṁ = W Ȧ: W̄[k][c] += Σ_m M̄[k][m] A[c][m] + Ṁ̄[k][m] Ȧ[c][m] per order
        for (li, ms) in self.orders.iter().enumerate() {
            let w = &mut gw[li * k * nc..(li + 1) * k * nc];
            for kk in 0..k {
                for c in 0..nc {
                    let mut sum = dot::<M>(&gm[kk * me + ms.start..kk * me + ms.end], &a[c * nm + ms.start..c * nm + ms.end]);
                    if let Some((a_dot, _)) = tangent {
                        sum += dot::<M>(&gmd[kk * me + ms.start..kk * me + ms.end], &a_dot[c * nm + ms.start..c * nm + ms.end]);
                    }
                    w[kk * nc + c] += sum;
                }
            }
        }
    }

    /// The change of the invariants along a change `da_dot` of the density (`[nc][nm]`, all orders), into `out`.
    pub fn jvp(&self, z: usize, a: &[f64], da_dot: &[f64], out: &mut [f64], scratch: &mut [f64]) {
        match self.isa {
            Isa::Portable => self.jvp_with::<Plain>(z, a, da_dot, out, scratch),
            // SAFETY: `Isa::detect` found these features on this CPU.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { self.jvp_avx2(z, a, da_dot, out, scratch) },
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn jvp_avx2(&self, z: usize, a: &[f64], da_dot: &[f64], out: &mut [f64], scratch: &mut [f64]) {
        self.jvp_with::<Fused>(z, a, da_dot, out, scratch)
    }

    /// Ḃ = Σ_t Ṗ G3 + P D3 per coupling, Ṗ = D1 G2 + G1 D2.
    #[inline(always)]
    fn jvp_with<M: MulAdd>(&self, z: usize, a: &[f64], da_dot: &[f64], out: &mut [f64], scratch: &mut [f64]) {
        let (m, rest) = scratch.split_at_mut(self.k * self.me);
        let (md, rest) = rest.split_at_mut(self.k * self.me);
        let w = self.work(rest);
        self.compress::<M>(z, a, m);
        self.compress::<M>(z, da_dot, md);
        self.three_body_jvp(m, md, &mut out[..self.n_three_body]);
        let (kp, mut f) = (self.kp, self.n_three_body);
        for cp in &self.couplings {
            let (ntp, np) = (cp.ntp, cp.pairs.len());
            for slot in 0..2 {
                self.gather(m, cp, slot, w.g[slot]);
                self.gather(md, cp, slot, w.d[slot]);
            }
            self.gather_t(m, cp, 2, w.g3t);
            self.gather_t(md, cp, 2, w.d3t);
            Self::pair_products::<M>(cp, w.g[0], w.g[1], w.p, Some((&*w.d[0], &*w.d[1], &mut *w.pd)));
            gemm_set::<M>(np, ntp, kp, w.pd, ntp, 1, w.g3t, kp, w.b, kp);
            gemm_acc::<M>(np, ntp, kp, w.p, ntp, 1, w.d3t, kp, w.b, kp);
            f = self.collect(cp, w.b, f, out);
        }
    }

    /// The sizes of [`Work`]'s three kinds of matrix: `[Kp][ntp]` (or transposed), `[pairs][ntp]`, `[pairs][Kp]`.
    fn work_sizes(&self) -> (usize, usize, usize) {
        (self.kp * self.ntp_max, self.npairs_max * self.ntp_max, self.npairs_max * self.kp)
    }

    /// The values [`FourBody::work`] takes: 14, 4 and 3 matrices of the sizes of [`FourBody::work_sizes`].
    fn work_len(&self) -> usize {
        let (kt, pt, pk) = self.work_sizes();
        14 * kt + 4 * pt + 3 * pk
    }

    /// Splits scratch (after the `[K][me]` matrices a call keeps in front) into the per-coupling matrices
    /// ([`FourBody::work_len`] values).
    fn work<'s>(&self, scratch: &'s mut [f64]) -> Work<'s> {
        let (kt, pt, pk) = self.work_sizes();
        let mut rest = scratch;
        let mut take = |n: usize| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
            rest = tail;
            head
        };
        Work {
            g: [take(kt), take(kt), take(kt)],
            d: [take(kt), take(kt), take(kt)],
            gbar: [take(kt), take(kt), take(kt)],
            dbar: [take(kt), take(kt), take(kt)],
            g3t: take(kt),
            d3t: take(kt),
            p: take(pt),
            pd: take(pt),
            q: take(pt),
            r: take(pt),
            gb: take(pk),
            gd: take(pk),
            b: take(pk),
        }
    }
}

/// The per-coupling matrices of one call, each sized for the largest coupling: the factors of the three slots
/// (`[Kp][ntp]`) and their tangents, the gradients with respect to both, the third slot transposed (`[ntp][Kp]`),
/// the pair products P, Ṗ and the gradients Q, R carried back through them (`[pairs][ntp]`), and the features or
/// their gradients as dense `[pairs][Kp]` matrices.
struct Work<'s> {
    g: [&'s mut [f64]; 3],
    d: [&'s mut [f64]; 3],
    gbar: [&'s mut [f64]; 3],
    dbar: [&'s mut [f64]; 3],
    g3t: &'s mut [f64],
    d3t: &'s mut [f64],
    p: &'s mut [f64],
    pd: &'s mut [f64],
    q: &'s mut [f64],
    r: &'s mut [f64],
    gb: &'s mut [f64],
    gd: &'s mut [f64],
    b: &'s mut [f64],
}

/// C += A·B for the small matrices of the four-body products: A is m × l with A[i][p] = `a[i·rsa + p·csa]` (a
/// transposed operand is a choice of strides), B is l × n row-major (row stride `ldb`), C m × n row-major (row
/// stride `ldc`). Blocks of 4 rows × 8 columns keep their accumulators in registers (two AVX2 vectors per row).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm_acc<M: MulAdd>(m: usize, l: usize, n: usize, a: &[f64], rsa: usize, csa: usize, b: &[f64], ldb: usize, c: &mut [f64], ldc: usize) {
    gemm::<M, true>(m, l, n, a, rsa, csa, b, ldb, c, ldc)
}

/// C = A·B, as [`gemm_acc`] (C's old values are not read).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm_set<M: MulAdd>(m: usize, l: usize, n: usize, a: &[f64], rsa: usize, csa: usize, b: &[f64], ldb: usize, c: &mut [f64], ldc: usize) {
    gemm::<M, false>(m, l, n, a, rsa, csa, b, ldb, c, ldc)
}

/// C = A·B, plus C's old values with `ADD`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm<M: MulAdd, const ADD: bool>(m: usize, l: usize, n: usize, a: &[f64], rsa: usize, csa: usize, b: &[f64], ldb: usize, c: &mut [f64], ldc: usize) {
    if m == 0 || n == 0 {
        return;
    }
    if l == 0 {
        if !ADD {
            (0..m).for_each(|i| c[i * ldc..i * ldc + n].fill(0.0));
        }
        return;
    }
    assert!(a.len() > (m - 1) * rsa + (l - 1) * csa && b.len() >= (l - 1) * ldb + n && c.len() >= (m - 1) * ldc + n, "four-body product: operands too short");
    let mut i = 0;
    while i + 4 <= m {
        gemm_rows::<M, ADD, 4>(i, l, n, a, rsa, csa, b, ldb, c, ldc);
        i += 4;
    }
    while i < m {
        gemm_rows::<M, ADD, 1>(i, l, n, a, rsa, csa, b, ldb, c, ldc);
        i += 1;
    }
}

/// Rows i..i+R of [`gemm`], in column blocks of 8, 4 and 1.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm_rows<M: MulAdd, const ADD: bool, const R: usize>(i: usize, l: usize, n: usize, a: &[f64], rsa: usize, csa: usize, b: &[f64], ldb: usize, c: &mut [f64], ldc: usize) {
    let mut j = 0;
    while j + 8 <= n {
        gemm_tile::<M, ADD, R, 8>(i, j, l, a, rsa, csa, b, ldb, c, ldc);
        j += 8;
    }
    if j + 4 <= n {
        gemm_tile::<M, ADD, R, 4>(i, j, l, a, rsa, csa, b, ldb, c, ldc);
        j += 4;
    }
    while j < n {
        gemm_tile::<M, ADD, R, 1>(i, j, l, a, rsa, csa, b, ldb, c, ldc);
        j += 1;
    }
}

/// One R × W block of C at (i, j): C[i..i+R][j..j+W] += Σ_p A[·][p] B[p][j..j+W].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm_tile<M: MulAdd, const ADD: bool, const R: usize, const W: usize>(i: usize, j: usize, l: usize, a: &[f64], rsa: usize, csa: usize, b: &[f64], ldb: usize, c: &mut [f64], ldc: usize) {
    // SAFETY (all accesses): `gemm_acc` checked that A reaches (m−1)·rsa + (l−1)·csa, B (l−1)·ldb + n − 1 and C
    // (m−1)·ldc + n − 1, and i + R ≤ m, j + W ≤ n here.
    let mut acc = [[0.0f64; W]; R];
    for (r, row) in acc.iter_mut().enumerate().filter(|_| ADD) {
        for (q, x) in row.iter_mut().enumerate() {
            *x = unsafe { *c.get_unchecked((i + r) * ldc + j + q) };
        }
    }
    for p in 0..l {
        let bv: [f64; W] = std::array::from_fn(|q| unsafe { *b.get_unchecked(p * ldb + j + q) });
        for (r, row) in acc.iter_mut().enumerate() {
            let av = unsafe { *a.get_unchecked((i + r) * rsa + p * csa) };
            for (x, &bq) in row.iter_mut().zip(&bv) {
                *x = M::madd(av, bq, *x);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (q, x) in row.iter().enumerate() {
            unsafe { *c.get_unchecked_mut((i + r) * ldc + j + q) = *x };
        }
    }
}

/// Σ_t x_t y_t, with four partial sums (so that it vectorises).
#[inline(always)]
fn dot<M: MulAdd>(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [0.0f64; 4];
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for t in 0..4 {
            acc[t] = M::madd(a[t], b[t], acc[t]);
        }
    }
    let tail: f64 = xr.iter().zip(yr).map(|(a, b)| a * b).sum();
    (acc[0] + acc[2]) + (acc[1] + acc[3]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitted_compression_decorrelates_the_channels_in_order_of_variance() {
        // densities of 5 channels over 3 monomials of "order 1", correlated through a random mixing
        let (nc, nm, k) = (5, 3, 3);
        let mut rng = crate::rng::Rng::new(5);
        let mix: Vec<f64> = (0..nc * nc).map(|_| rng.normal()).collect();
        let atoms: Vec<Vec<f64>> = (0..200)
            .map(|_| {
                let z: Vec<f64> = (0..nc * nm).map(|_| rng.normal()).collect();
                (0..nc * nm).map(|e| (0..nc).map(|j| mix[(e / nm) * nc + j] * z[j * nm + e % nm]).sum()).collect()
            })
            .collect();
        let mut b = Bispectrum { channels: k, l_max: 1, trainable: false, ..Default::default() };
        b.fit(1, nc, nm, 1..=1, |_| 0..nm, atoms.iter().map(|a| (0, &a[..])));
        let w = &b.compression;
        let compressed = |a: &[f64], row: usize, m: usize| (0..nc).map(|c| w[row * nc + c] * a[c * nm + m]).sum::<f64>();
        let cov = |r1: usize, r2: usize| atoms.iter().map(|a| (0..nm).map(|m| compressed(a, r1, m) * compressed(a, r2, m)).sum::<f64>()).sum::<f64>();
        for r1 in 0..k {
            for r2 in 0..r1 {
                assert!(cov(r1, r2).abs() < 1e-9 * cov(r1, r1), "rows {r1}, {r2} correlated");
            }
            if r1 > 0 {
                assert!(cov(r1, r1) <= cov(r1 - 1, r1 - 1) * (1.0 + 1e-9), "variance not descending");
            }
        }
    }
}
