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

use super::Monomial;
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

impl Default for Bispectrum {
    fn default() -> Self {
        Bispectrum { channels: 8, l_max: 3, trainable: true, three_body: ThreeBody::Full, four_body_channels: 0, compression: Vec::new() }
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

/// One contraction pattern (l1, l2, l3): its monomial terms and channel symmetries.
#[derive(Clone, Debug)]
struct Coupling {
    /// (m1, m2, m3) monomial indices and the coefficient of M[k1][m1]·M[k2][m2]·M[k3][m3].
    terms: Vec<([usize; 3], f64)>,
    /// l1 = l2: keep k1 ≤ k2.
    sym12: bool,
    /// l2 = l3: keep k2 ≤ k3.
    sym23: bool,
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
    max_terms: usize,
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
                    couplings.push(Coupling { terms: terms.into_iter().collect(), sym12: l1 == l2, sym23: l2 == l3 });
                }
            }
        }
        let max_terms = couplings.iter().map(|c| c.terms.len()).max().unwrap_or(0);
        let n_three_body = match b.three_body {
            ThreeBody::Full => 0,
            ThreeBody::Compressed => nw * k * (k + 1) / 2,
        };
        let mut fb = FourBody {
            k,
            k4: b.four_body_k(),
            nc,
            nm: monomials.len(),
            me,
            orders: orders.map(order).collect(),
            compression: b.compression.clone(),
            n_three_body,
            couplings,
            n_features: 0,
            max_terms,
        };
        fb.n_features = n_three_body
            + fb.couplings.iter().map(|cp| fb.channel_pairs(cp).map(|(_, _, k3s)| k3s.len()).sum::<usize>()).sum::<usize>();
        Ok(fb)
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
        self.for_each_three_body(|f, r1, r2| out[f] = dot(&m[r1], &m[r2]));
    }

    /// Their change along the compressed density change `md`: Ṗ_l[k1,k2] = Σ Ṁ[k1]M[k2] + M[k1]Ṁ[k2].
    fn three_body_jvp(&self, m: &[f64], md: &[f64], out: &mut [f64]) {
        self.for_each_three_body(|f, r1, r2| out[f] = dot(&md[r1.clone()], &m[r2.clone()]) + dot(&m[r1], &md[r2]));
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

    /// Scratch values one call of [`FourBody::forward`], [`FourBody::vjp`] or [`FourBody::jvp`] needs.
    pub fn scratch_len(&self) -> usize {
        (4 * self.me + 16 * self.max_terms) * self.k
    }

    /// `m[k][0..me] = Σ_c W_{z,l}[k][c]·a[c][·]` per order (orders 0 stay zero).
    fn compress(&self, z: usize, a: &[f64], m: &mut [f64]) {
        let (k, nc, nm, me) = (self.k, self.nc, self.nm, self.me);
        m[..k * me].fill(0.0);
        for (li, ms) in self.orders.iter().enumerate() {
            let w = &self.compression[(z * self.orders.len() + li) * k * nc..][..k * nc];
            for kk in 0..k {
                let row = &mut m[kk * me + ms.start..kk * me + ms.end];
                for c in 0..nc {
                    let wc = w[kk * nc + c];
                    if wc == 0.0 {
                        continue;
                    }
                    for (x, &y) in row.iter_mut().zip(&a[c * nm + ms.start..c * nm + ms.end]) {
                        *x += wc * y;
                    }
                }
            }
        }
    }

    /// The transpose of [`FourBody::compress`]: `da[c][·] += Σ_k W_{z,l}[k][c]·gm[k][·]`.
    fn compress_transpose(&self, z: usize, gm: &[f64], da: &mut [f64]) {
        let (k, nc, nm, me) = (self.k, self.nc, self.nm, self.me);
        for (li, ms) in self.orders.iter().enumerate() {
            let w = &self.compression[(z * self.orders.len() + li) * k * nc..][..k * nc];
            for kk in 0..k {
                let grow = &gm[kk * me + ms.start..kk * me + ms.end];
                for c in 0..nc {
                    let wc = w[kk * nc + c];
                    for (x, &y) in da[c * nm + ms.start..c * nm + ms.end].iter_mut().zip(grow) {
                        *x += wc * y;
                    }
                }
            }
        }
    }

    /// The channel pairs (k1, k2) of `cp` in feature order, each with the range of its k3.
    fn channel_pairs(&self, cp: &Coupling) -> impl Iterator<Item = (usize, usize, std::ops::Range<usize>)> {
        let (k, sym12, sym23) = (self.k4, cp.sym12, cp.sym23);
        (0..k).flat_map(move |k1| (if sym12 { k1 } else { 0 }..k).map(move |k2| (k1, k2, if sym23 { k2 } else { 0 }..k)))
    }

    /// `out[k][t] = scale_t · m[k][m_t]` for the monomial `m_t` of `slot` (0, 1, 2) of each term t, scale_t the
    /// term's coefficient for slot 0 and 1 otherwise: the factors of one slot as a contiguous `[K][T]` matrix, so
    /// that the products below are plain dot products and element-wise multiplies (they vectorise).
    fn gather(&self, m: &[f64], terms: &[([usize; 3], f64)], slot: usize, out: &mut [f64]) {
        let (me, nt) = (self.me, terms.len());
        for (kk, row) in out.chunks_exact_mut(nt).take(self.k4).enumerate() {
            let mk = &m[kk * me..(kk + 1) * me];
            for (x, (ms, c)) in row.iter_mut().zip(terms) {
                *x = if slot == 0 { c * mk[ms[0]] } else { mk[ms[slot]] };
            }
        }
    }

    /// The transpose of [`FourBody::gather`]: `gm[k][m_t] += scale_t · g[k][t]`.
    fn scatter(&self, g: &[f64], terms: &[([usize; 3], f64)], slot: usize, gm: &mut [f64]) {
        let (me, nt) = (self.me, terms.len());
        for (kk, row) in g.chunks_exact(nt).take(self.k4).enumerate() {
            let gk = &mut gm[kk * me..(kk + 1) * me];
            for (x, (ms, c)) in row.iter().zip(terms) {
                gk[ms[slot]] += if slot == 0 { c * x } else { *x };
            }
        }
    }

    /// Splits `scratch` into two `[K][me]` matrices (M and its gradient or tangent), then N matrices of
    /// `[K][max_terms]`.
    fn split_scratch<'s, const N: usize>(&self, scratch: &'s mut [f64]) -> (&'s mut [f64], &'s mut [f64], [&'s mut [f64]; N]) {
        let (m, rest) = scratch.split_at_mut(self.k * self.me);
        let (m2, mut rest) = rest.split_at_mut(self.k * self.me);
        let kt = self.k * self.max_terms;
        let parts = std::array::from_fn(|_| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(kt);
            rest = tail;
            head
        });
        (m, m2, parts)
    }

    /// The invariants of one atom of centre species `z` with density `a` (`[nc][nm]`, all orders) into `out`.
    pub fn forward(&self, z: usize, a: &[f64], out: &mut [f64], scratch: &mut [f64]) {
        let (m, _, [g1, g2, g3, p]) = self.split_scratch(scratch);
        self.compress(z, a, m);
        self.three_body(m, &mut out[..self.n_three_body]);
        let mut f = self.n_three_body;
        for cp in &self.couplings {
            let nt = cp.terms.len();
            for (slot, g) in [&mut *g1, &mut *g2, &mut *g3].into_iter().enumerate() {
                self.gather(m, &cp.terms, slot, g);
            }
            for (k1, k2, k3s) in self.channel_pairs(cp) {
                let p = &mut p[..nt];
                for ((x, a), b) in p.iter_mut().zip(&g1[k1 * nt..(k1 + 1) * nt]).zip(&g2[k2 * nt..(k2 + 1) * nt]) {
                    *x = a * b;
                }
                for k3 in k3s {
                    out[f] = dot(p, &g3[k3 * nt..(k3 + 1) * nt]);
                    f += 1;
                }
            }
        }
    }

    /// Adds the gradient of `Σ_f g[f]·B_f` with respect to the density to `da` (`[nc][nm]`, all orders).
    pub fn vjp(&self, z: usize, a: &[f64], g: &[f64], da: &mut [f64], scratch: &mut [f64]) {
        let (m, gm, [g1, g2, g3, gg1, gg2, gg3, p, q]) = self.split_scratch(scratch);
        self.compress(z, a, m);
        gm.fill(0.0);
        self.three_body_grad(m, g, gm, None);
        let mut f = self.n_three_body;
        for cp in &self.couplings {
            let nt = cp.terms.len();
            for (slot, g) in [&mut *g1, &mut *g2, &mut *g3].into_iter().enumerate() {
                self.gather(m, &cp.terms, slot, g);
            }
            for gg in [&mut *gg1, &mut *gg2, &mut *gg3] {
                gg[..self.k * nt].fill(0.0);
            }
            for (k1, k2, k3s) in self.channel_pairs(cp) {
                let (a1, a2) = (&g1[k1 * nt..(k1 + 1) * nt], &g2[k2 * nt..(k2 + 1) * nt]);
                let (p, q) = (&mut p[..nt], &mut q[..nt]);
                for ((x, a), b) in p.iter_mut().zip(a1).zip(a2) {
                    *x = a * b;
                }
                q.fill(0.0);
                // B = P·G3[k3]: Ḡ3[k3] += g·P and Q = Σ_k3 g·G3[k3], then Ḡ1[k1] += Q ⊙ G2[k2], Ḡ2[k2] += Q ⊙ G1[k1]
                for k3 in k3s {
                    let gf = g[f];
                    f += 1;
                    if gf == 0.0 {
                        continue;
                    }
                    axpy(gf, p, &mut gg3[k3 * nt..(k3 + 1) * nt]);
                    axpy(gf, &g3[k3 * nt..(k3 + 1) * nt], q);
                }
                for ((x, qt), b) in gg1[k1 * nt..(k1 + 1) * nt].iter_mut().zip(&*q).zip(a2) {
                    *x += qt * b;
                }
                for ((x, qt), b) in gg2[k2 * nt..(k2 + 1) * nt].iter_mut().zip(&*q).zip(a1) {
                    *x += qt * b;
                }
            }
            for (slot, gg) in [&*gg1, &*gg2, &*gg3].into_iter().enumerate() {
                self.scatter(gg, &cp.terms, slot, gm);
            }
        }
        self.compress_transpose(z, gm, da);
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
        let (k, nc, nm, me) = (self.k, self.nc, self.nm, self.me);
        let (gms, rest) = scratch.split_at_mut(2 * k * me);
        let (gm, gmd) = gms.split_at_mut(k * me);
        let (m, md, [g1, g2, g3, d1, d2, d3, gg1, gg2, gg3, gd1, gd2, gd3, p, pd, q, r]) = self.split_scratch(rest);
        self.compress(z, a, m);
        let (tangent, a_dot, gd) = match (a_dot, gd) {
            (Some(a_dot), Some(gd)) => {
                self.compress(z, a_dot, md);
                (true, a_dot, gd)
            }
            _ => (false, a, gb), // placeholders, never read
        };
        gm.fill(0.0);
        gmd.fill(0.0);
        self.three_body_grad(m, gb, gm, tangent.then_some((&*md, gd, &mut *gmd)));
        let mut f = self.n_three_body;
        for cp in &self.couplings {
            let (terms, nt) = (&cp.terms, cp.terms.len());
            for (slot, (g, d)) in [(&mut *g1, &mut *d1), (&mut *g2, &mut *d2), (&mut *g3, &mut *d3)].into_iter().enumerate() {
                self.gather(m, terms, slot, g);
                if tangent {
                    self.gather(md, terms, slot, d);
                }
            }
            for gg in [&mut *gg1, &mut *gg2, &mut *gg3, &mut *gd1, &mut *gd2, &mut *gd3] {
                gg[..k * nt].fill(0.0);
            }
            // J = Σ_f gb_f B_f + gd_f Ḃ_f with B = Σ_t G1 G2 G3 and Ḃ = Σ_t D1 G2 G3 + G1 D2 G3 + G1 G2 D3 (slots as in
            // `gather`): per (k1, k2), P = G1 G2 and Ṗ = D1 G2 + G1 D2; ∂J/∂G3[k3] = gb P + gd Ṗ, ∂J/∂D3[k3] = gd P;
            // Q = Σ_k3 gb G3 + gd D3 and R = Σ_k3 gd G3 carry the rest to slots 1 and 2.
            for (k1, k2, k3s) in self.channel_pairs(cp) {
                let r1 = k1 * nt..(k1 + 1) * nt;
                let r2 = k2 * nt..(k2 + 1) * nt;
                let (p, pd, q, r) = (&mut p[..nt], &mut pd[..nt], &mut q[..nt], &mut r[..nt]);
                for t in 0..nt {
                    p[t] = g1[r1.start + t] * g2[r2.start + t];
                    pd[t] = if tangent { d1[r1.start + t] * g2[r2.start + t] + g1[r1.start + t] * d2[r2.start + t] } else { 0.0 };
                }
                q.fill(0.0);
                r.fill(0.0);
                for k3 in k3s {
                    let (gbf, gdf) = (gb[f], if tangent { gd[f] } else { 0.0 });
                    f += 1;
                    let r3 = k3 * nt..(k3 + 1) * nt;
                    axpy(gbf, p, &mut gg3[r3.clone()]);
                    axpy(gbf, &g3[r3.clone()], q);
                    if tangent {
                        axpy(gdf, pd, &mut gg3[r3.clone()]);
                        axpy(gdf, p, &mut gd3[r3.clone()]);
                        axpy(gdf, &d3[r3.clone()], q);
                        axpy(gdf, &g3[r3], r);
                    }
                }
                for t in 0..nt {
                    let (a1, a2) = (g1[r1.start + t], g2[r2.start + t]);
                    gg1[r1.start + t] += q[t] * a2;
                    gg2[r2.start + t] += q[t] * a1;
                    if tangent {
                        let (b1, b2) = (d1[r1.start + t], d2[r2.start + t]);
                        gg1[r1.start + t] += r[t] * b2;
                        gg2[r2.start + t] += r[t] * b1;
                        gd1[r1.start + t] += r[t] * a2;
                        gd2[r2.start + t] += r[t] * a1;
                    }
                }
            }
            for (slot, (gg, gdd)) in [(&*gg1, &*gd1), (&*gg2, &*gd2), (&*gg3, &*gd3)].into_iter().enumerate() {
                self.scatter(gg, terms, slot, gm);
                if tangent {
                    self.scatter(gdd, terms, slot, gmd);
                }
            }
        }
        // M = W A, Ṁ = W Ȧ: W̄[k][c] += Σ_m M̄[k][m] A[c][m] + Ṁ̄[k][m] Ȧ[c][m] per order
        for (li, ms) in self.orders.iter().enumerate() {
            let w = &mut gw[li * k * nc..(li + 1) * k * nc];
            for kk in 0..k {
                for c in 0..nc {
                    let ac = &a[c * nm + ms.start..c * nm + ms.end];
                    let mut sum: f64 = gm[kk * me + ms.start..kk * me + ms.end].iter().zip(ac).map(|(g, x)| g * x).sum();
                    if tangent {
                        let adc = &a_dot[c * nm + ms.start..c * nm + ms.end];
                        sum += gmd[kk * me + ms.start..kk * me + ms.end].iter().zip(adc).map(|(g, x)| g * x).sum::<f64>();
                    }
                    w[kk * nc + c] += sum;
                }
            }
        }
    }

    /// The change of the invariants along a change `da_dot` of the density (`[nc][nm]`, all orders), into `out`.
    pub fn jvp(&self, z: usize, a: &[f64], da_dot: &[f64], out: &mut [f64], scratch: &mut [f64]) {
        let (m, md, [g1, g2, g3, d1, d2, d3, p, pd]) = self.split_scratch(scratch);
        self.compress(z, a, m);
        self.compress(z, da_dot, md);
        self.three_body_jvp(m, md, &mut out[..self.n_three_body]);
        let mut f = self.n_three_body;
        for cp in &self.couplings {
            let nt = cp.terms.len();
            for (slot, (g, d)) in [(&mut *g1, &mut *d1), (&mut *g2, &mut *d2), (&mut *g3, &mut *d3)].into_iter().enumerate() {
                self.gather(m, &cp.terms, slot, g);
                self.gather(md, &cp.terms, slot, d);
            }
            for (k1, k2, k3s) in self.channel_pairs(cp) {
                let (p, pd) = (&mut p[..nt], &mut pd[..nt]);
                let (a1, a2) = (&g1[k1 * nt..(k1 + 1) * nt], &g2[k2 * nt..(k2 + 1) * nt]);
                let (b1, b2) = (&d1[k1 * nt..(k1 + 1) * nt], &d2[k2 * nt..(k2 + 1) * nt]);
                for t in 0..nt {
                    p[t] = a1[t] * a2[t];
                    pd[t] = b1[t] * a2[t] + a1[t] * b2[t];
                }
                for k3 in k3s {
                    out[f] = dot(pd, &g3[k3 * nt..(k3 + 1) * nt]) + dot(p, &d3[k3 * nt..(k3 + 1) * nt]);
                    f += 1;
                }
            }
        }
    }
}

/// Σ_t x_t y_t, with four partial sums (so that it vectorises).
#[inline(always)]
fn dot(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [0.0f64; 4];
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for t in 0..4 {
            acc[t] += a[t] * b[t];
        }
    }
    let tail: f64 = xr.iter().zip(yr).map(|(a, b)| a * b).sum();
    (acc[0] + acc[2]) + (acc[1] + acc[3]) + tail
}

/// y += a·x.
#[inline(always)]
fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
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
