//! Invariant many-body descriptor: an element-resolved atomic density expanded in smooth radial functions and
//! Cartesian angular monomials, contracted to rotation invariants (a power spectrum).
//!
//! For centre i and neighbour j (species s, distance r, direction û):
//!
//! ```text
//!   A[s,n][m] = Σ_j  R_n(r_ij) · Y_m(û_ij)                     (density coefficients, linear in neighbours)
//!   R_n(r)    = exp(−(r − μ_n)² / 2σ²) · f_c(r),  f_c(r) = (1 − (r/r_c)²)³   (C² at the cutoff)
//!   Y_m(û)    = sqrt(l! / (a! b! c!)) · ûx^a ûy^b ûz^c,  a + b + c = l ≤ l_max
//!   G         = { A[c][l=0] }  ∪  { P_l[c,c'] = Σ_{m ∈ l} A[c][m] A[c'][m],  c ≤ c' }
//! ```
//!
//! With these weights `Σ_{m∈l} Y_m(û)Y_m(v̂) = (û·v̂)^l`, so `P_l` is a sum over neighbour pairs of
//! `R R' cos^l θ`: three-body, invariant under rotations, translations and permutations of equal atoms, and
//! computed at a cost linear in the number of neighbours. The channel index `c = s·n_radial + n` makes it
//! element-aware. Derivatives are analytic: a vector-Jacobian product (forces, virial) and a Jacobian-vector
//! product (the training primitive) — the full Jacobian is never stored.

use crate::frame::{Mat3, Vec3};
use crate::linalg::{gemm_view, View};
use crate::neighbors::NeighborList;

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
}

impl Default for DescriptorSpec {
    fn default() -> Self {
        DescriptorSpec { cutoff: 5.0, r_min: 0.8, n_radial: 8, l_max: 4, radial_width: 0.6 }
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
        Ok(())
    }
}

/// One angular monomial ûx^a ûy^b ûz^c with its weight.
#[derive(Clone, Copy, Debug)]
struct Monomial {
    /// (a, b, c); the hot loops regenerate them in the same order, a test checks that they agree.
    #[cfg_attr(not(test), allow(dead_code))]
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
    /// `l_start[l]..l_start[l+1]` are the monomials of order l.
    l_start: Vec<usize>,
    centers: Vec<f64>,
    inv_two_sigma2: f64,
}

/// Per-neighbour values that the derivatives reuse.
#[derive(Clone, Debug)]
struct PairCache {
    r: f64,
    u: Vec3,
}

/// Descriptors of one structure plus what their derivatives need.
#[derive(Clone, Debug)]
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
}

impl Descriptor {
    /// The descriptor of `spec` for a model with `n_species` elements.
    pub fn new(spec: &DescriptorSpec, n_species: usize) -> Self {
        let mut monomials = Vec::new();
        let mut l_start = vec![0];
        let fact = |k: usize| (1..=k).map(|x| x as f64).product::<f64>();
        for l in 0..=spec.l_max {
            for a in (0..=l).rev() {
                for b in (0..=l - a).rev() {
                    let c = l - a - b;
                    let w = (fact(l) / (fact(a) * fact(b) * fact(c))).sqrt();
                    monomials.push(Monomial { pow: [a, b, c], weight: w });
                }
            }
            l_start.push(monomials.len());
        }
        let n = spec.n_radial;
        let step = (spec.cutoff - spec.r_min) / (n - 1) as f64;
        let centers = (0..n).map(|k| spec.r_min + k as f64 * step).collect();
        let sigma = spec.radial_width * step;
        Descriptor {
            spec: spec.clone(),
            n_species,
            monomials,
            l_start,
            centers,
            inv_two_sigma2: 1.0 / (2.0 * sigma * sigma),
        }
    }

    /// Density channels: one per (neighbour species, radial function).
    pub fn n_channels(&self) -> usize {
        self.n_species * self.spec.n_radial
    }
    fn n_monomials(&self) -> usize {
        self.monomials.len()
    }
    /// Features per atom: the l = 0 densities and the power spectrum of every channel pair and l.
    pub fn n_features(&self) -> usize {
        let c = self.n_channels();
        c + (self.spec.l_max + 1) * c * (c + 1) / 2
    }

    /// Radial functions R_k(r) and their derivatives. The Gaussians on equally spaced centres are generated by a
    /// recurrence from the nearest centre outwards (g_{k±1} = g_k·q_k, q_{k±1} = q_k·e^{−2αΔ²}): three `exp` per
    /// pair instead of one per function, and no overflow since the factors only shrink away from the peak.
    fn radial(&self, r: f64, out: &mut [f64], dout: &mut [f64]) {
        let rc = self.spec.cutoff;
        let x = r / rc;
        let s = 1.0 - x * x;
        let (fc, dfc) = if x < 1.0 { (s * s * s, -6.0 * x * s * s / rc) } else { (0.0, 0.0) };
        let n = self.centers.len();
        let (alpha, step) = (self.inv_two_sigma2, self.centers[1] - self.centers[0]);
        let k0 = (((r - self.centers[0]) / step).round().max(0.0) as usize).min(n - 1);
        let d0 = r - self.centers[k0];
        let g0 = (-alpha * d0 * d0).exp();
        let mut set = |k: usize, g: f64| {
            let d = r - self.centers[k];
            out[k] = g * fc;
            dout[k] = -2.0 * alpha * d * g * fc + g * dfc;
        };
        set(k0, g0);
        let shrink = (-2.0 * alpha * step * step).exp();
        let (mut g, mut q) = (g0, (alpha * (2.0 * d0 * step - step * step)).exp());
        for k in k0 + 1..n {
            g *= q;
            q *= shrink;
            set(k, g);
        }
        let (mut g, mut q) = (g0, (-alpha * (2.0 * d0 * step + step * step)).exp());
        for k in (0..k0).rev() {
            g *= q;
            q *= shrink;
            set(k, g);
        }
    }

    /// Powers `u_a^k` and their derivatives `k·u_a^(k−1)`, k ≤ l_max, of each component of û. Always inlined, and
    /// zero-initialised (an inline memset) rather than filled from a constant table (a memcpy call per pair).
    #[inline(always)]
    fn powers(&self, u: &Vec3) -> ([[f64; 9]; 3], [[f64; 9]; 3]) {
        let mut pw = [[0.0f64; 9]; 3];
        let mut dpw = [[0.0f64; 9]; 3];
        for a in 0..3 {
            pw[a][0] = 1.0;
            for k in 1..=self.spec.l_max {
                pw[a][k] = pw[a][k - 1] * u[a];
                dpw[a][k] = k as f64 * pw[a][k - 1];
            }
        }
        (pw, dpw)
    }

    /// Calls `f(m, weight, a, b, c)` for every monomial in feature order (l ascending, then a and b descending),
    /// as plain loops: much faster than walking the `monomials` table.
    #[inline(always)]
    fn for_each_monomial(&self, mut f: impl FnMut(usize, f64, usize, usize, usize)) {
        let mut m = 0;
        for l in 0..=self.spec.l_max {
            for a in (0..=l).rev() {
                for b in (0..=l - a).rev() {
                    f(m, self.monomials[m].weight, a, b, l - a - b);
                    m += 1;
                }
            }
        }
    }

    /// Angular functions Y_m(û).
    #[inline(always)]
    fn angular(&self, u: &Vec3, y: &mut [f64]) {
        let (p, _) = self.powers(u);
        self.for_each_monomial(|m, w, a, b, c| y[m] = w * p[0][a] * p[1][b] * p[2][c]);
    }

    /// `(Σ_m s_m Y_m, Σ_m t_m ∇Y_m)` with ∇ with respect to û as a free vector: the angular part of the VJP.
    #[inline(always)]
    fn angular_contract(&self, u: &Vec3, s: &[f64], t: &[f64]) -> (f64, Vec3) {
        let (p, dp) = self.powers(u);
        let (mut sy, mut g) = (0.0, [0.0; 3]);
        self.for_each_monomial(|m, w, a, b, c| {
            let (xa, yb, zc) = (p[0][a], p[1][b], p[2][c]);
            sy += s[m] * w * xa * yb * zc;
            let wt = w * t[m];
            g[0] += wt * dp[0][a] * yb * zc;
            g[1] += wt * xa * dp[1][b] * zc;
            g[2] += wt * xa * yb * dp[2][c];
        });
        (sy, g)
    }

    /// Y_m(û) and the directional derivatives ∇Y_m·v (v a free vector): the angular part of the JVP.
    #[inline(always)]
    fn angular_directional(&self, u: &Vec3, v: &Vec3, y: &mut [f64], dy: &mut [f64]) {
        let (p, dp) = self.powers(u);
        self.for_each_monomial(|m, w, a, b, c| {
            let (xa, yb, zc) = (p[0][a], p[1][b], p[2][c]);
            y[m] = w * xa * yb * zc;
            dy[m] = w * (dp[0][a] * yb * zc * v[0] + xa * dp[1][b] * zc * v[1] + xa * yb * dp[2][c] * v[2]);
        });
    }

    /// Computes descriptors of the centre atoms of `neighbors`. `species[j]` is the species index (0..n_species)
    /// of atom j; it covers every neighbour index (an MD engine's ghost atoms too).
    pub fn compute(&self, species: &[usize], mut neighbors: NeighborList) -> Descriptors {
        if self.n_species > 1 {
            neighbors.sort_neighbors_by(|j| species[j]);
        }
        let n = neighbors.n_atoms();
        let nr = self.spec.n_radial;
        let nm = self.n_monomials();
        let nc = self.n_channels();
        let np = neighbors.n_pairs();
        let mut d = Descriptors {
            n_atoms: n,
            n_features: self.n_features(),
            features: vec![0.0; n * self.n_features()],
            density: vec![0.0; n * nc * nm],
            pairs: Vec::with_capacity(np),
            radial: vec![0.0; np * nr],
            d_radial: vec![0.0; np * nr],
            species_of_neighbor: Vec::with_capacity(np),
            neighbors,
        };
        // Per centre and run of neighbours of one species s: A_s (n_radial × n_m) += R_sᵀ Y_s, one small gemm.
        let mut ys = Vec::new();
        let mut pbuf = vec![0.0; nc * nc];
        let mut p0 = 0;
        for i in 0..n {
            let a_i = &mut d.density[i * nc * nm..(i + 1) * nc * nm];
            let np_i = d.neighbors.of(i).len();
            for (k, nb) in d.neighbors.of(i).iter().enumerate() {
                let p = p0 + k;
                let r = crate::frame::norm(&nb.r);
                let u = [nb.r[0] / r, nb.r[1] / r, nb.r[2] / r];
                self.radial(r, &mut d.radial[p * nr..(p + 1) * nr], &mut d.d_radial[p * nr..(p + 1) * nr]);
                d.pairs.push(PairCache { r, u });
                d.species_of_neighbor.push(species[nb.j]);
            }
            for (s, run) in species_runs(&d.species_of_neighbor[p0..p0 + np_i]) {
                let (q0, q1) = (p0 + run.start, p0 + run.end);
                ys.resize((q1 - q0) * nm, 0.0);
                for (p, y) in (q0..q1).zip(ys.chunks_exact_mut(nm)) {
                    self.angular(&d.pairs[p].u, y);
                }
                let a_s = &mut a_i[s * nr * nm..(s + 1) * nr * nm];
                crate::linalg::gemm(nr, q1 - q0, nm, &d.radial[q0 * nr..q1 * nr], true, &ys, false, 1.0, a_s);
            }
            p0 += np_i;
            let g = &mut d.features[i * d.n_features..(i + 1) * d.n_features];
            self.contract(a_i, g, &mut pbuf);
        }
        d
    }

    /// The order-l block (`[n_channels][n_l]`, row stride n_monomials) of a `[n_channels][n_monomials]` matrix.
    fn block_l<'a>(&self, a: &'a [f64], l: usize) -> View<'a> {
        View { data: &a[self.l_start[l]..], rs: self.n_monomials(), cs: 1 }
    }

    /// Its transpose.
    fn block_l_t<'a>(&self, a: &'a [f64], l: usize) -> View<'a> {
        View { data: &a[self.l_start[l]..], rs: 1, cs: self.n_monomials() }
    }

    fn n_l(&self, l: usize) -> usize {
        self.l_start[l + 1] - self.l_start[l]
    }

    /// Density coefficients → invariants: P_l = A_l A_lᵀ (upper triangle). `p` is scratch of n_channels².
    fn contract(&self, a: &[f64], g: &mut [f64], p: &mut [f64]) {
        let nc = self.n_channels();
        let nm = self.n_monomials();
        for c in 0..nc {
            g[c] = a[c * nm];
        }
        let mut f = nc;
        for l in 0..=self.spec.l_max {
            gemm_view(nc, self.n_l(l), nc, self.block_l(a, l), self.block_l_t(a, l), 0.0, p, nc);
            for c in 0..nc {
                for (gf, pc) in g[f..f + nc - c].iter_mut().zip(&p[c * nc + c..(c + 1) * nc]) {
                    *gf = *pc;
                }
                f += nc - c;
            }
        }
    }

    /// Vector-Jacobian product: given ∂E/∂G per atom (`[n_atoms][n_features]`), returns ∂E/∂r_ij for every
    /// neighbour pair in neighbour-list order.
    pub fn vjp(&self, d: &Descriptors, dg: &[f64]) -> Vec<Vec3> {
        let nc = self.n_channels();
        let nm = self.n_monomials();
        let nr = self.spec.n_radial;
        let mut out = vec![[0.0; 3]; d.pairs.len()];
        let mut da = vec![0.0; nc * nm];
        let mut wsym = vec![0.0; nc * nc];
        let (mut rho, mut drho) = (Vec::new(), Vec::new());
        let mut p0 = 0;
        for i in 0..d.n_atoms {
            let a = &d.density[i * nc * nm..(i + 1) * nc * nm];
            let g = &dg[i * d.n_features..(i + 1) * d.n_features];
            da.iter_mut().for_each(|x| *x = 0.0);
            for c in 0..nc {
                da[c * nm] += g[c];
            }
            // ∂P_l/∂A_l contracted with g: dA_l = W_l A_l, W_l symmetric with g on the off-diagonal, 2g on it.
            let mut f = nc;
            for l in 0..=self.spec.l_max {
                let ms = self.l_start[l]..self.l_start[l + 1];
                let nl = ms.len();
                for c in 0..nc {
                    for c2 in c..nc {
                        let w = g[f];
                        f += 1;
                        wsym[c * nc + c2] = w;
                        wsym[c2 * nc + c] = w;
                    }
                    wsym[c * nc + c] *= 2.0;
                }
                let w = View { data: &wsym, rs: nc, cs: 1 };
                gemm_view(nc, nc, nl, w, self.block_l(a, l), 1.0, &mut da[ms.start..], nm);
            }
            // Per run of neighbours of one species s: ρ = R_s dA_s and ρ' = R'_s dA_s (n_s × n_m), two small gemms.
            let np_i = d.neighbors.of(i).len();
            for (s, run) in species_runs(&d.species_of_neighbor[p0..p0 + np_i]) {
                let (q0, q1) = (p0 + run.start, p0 + run.end);
                let n_s = q1 - q0;
                rho.resize(n_s * nm, 0.0);
                drho.resize(n_s * nm, 0.0);
                let da_s = &da[s * nr * nm..(s + 1) * nr * nm];
                crate::linalg::gemm(n_s, nr, nm, &d.radial[q0 * nr..q1 * nr], false, da_s, false, 0.0, &mut rho);
                crate::linalg::gemm(n_s, nr, nm, &d.d_radial[q0 * nr..q1 * nr], false, da_s, false, 0.0, &mut drho);
                for (k, p) in (q0..q1).enumerate() {
                    let PairCache { r, u } = d.pairs[p];
                    let (radial_part, gu) =
                        self.angular_contract(&u, &drho[k * nm..(k + 1) * nm], &rho[k * nm..(k + 1) * nm]);
                    let ug = u[0] * gu[0] + u[1] * gu[1] + u[2] * gu[2];
                    out[p] = [
                        u[0] * radial_part + (gu[0] - u[0] * ug) / r,
                        u[1] * radial_part + (gu[1] - u[1] * ug) / r,
                        u[2] * radial_part + (gu[2] - u[2] * ug) / r,
                    ];
                }
            }
            p0 += np_i;
        }
        out
    }

    /// Jacobian-vector product: the change of every atom's descriptor along the tangent that moves atom k by
    /// `displacement[k]` and strains the system by `strain` (pair vector r ↦ r + strain·r). Returns
    /// `[n_atoms][n_features]`.
    pub fn jvp(&self, d: &Descriptors, displacement: Option<&[Vec3]>, strain: Option<&Mat3>) -> Vec<f64> {
        let nc = self.n_channels();
        let nm = self.n_monomials();
        let nr = self.spec.n_radial;
        let nf = d.n_features;
        let mut out = vec![0.0; d.n_atoms * nf];
        let mut dda = vec![0.0; nc * nm];
        let mut mm = vec![0.0; nc * nc];
        let (mut y, mut dy) = (vec![0.0; nm], vec![0.0; nm]);
        let mut p = 0;
        for i in 0..d.n_atoms {
            dda.iter_mut().for_each(|x| *x = 0.0);
            for nb in d.neighbors.of(i) {
                let mut t = [0.0; 3];
                if let Some(disp) = displacement {
                    for ax in 0..3 {
                        t[ax] = disp[nb.j][ax] - disp[i][ax];
                    }
                }
                if let Some(c) = strain {
                    for ax in 0..3 {
                        t[ax] += c[ax][0] * nb.r[0] + c[ax][1] * nb.r[1] + c[ax][2] * nb.r[2];
                    }
                }
                let PairCache { r, u } = d.pairs[p];
                let tr = u[0] * t[0] + u[1] * t[1] + u[2] * t[2];
                let tp = [(t[0] - u[0] * tr) / r, (t[1] - u[1] * tr) / r, (t[2] - u[2] * tr) / r];
                let s = d.species_of_neighbor[p];
                let rad = &d.radial[p * nr..(p + 1) * nr];
                let drad = &d.d_radial[p * nr..(p + 1) * nr];
                self.angular_directional(&u, &tp, &mut y, &mut dy);
                for k in 0..nr {
                    let row = &mut dda[(s * nr + k) * nm..(s * nr + k + 1) * nm];
                    let (rk, drk) = (rad[k], drad[k] * tr);
                    for ((dm, ym), dym) in row.iter_mut().zip(&y).zip(&dy) {
                        *dm += drk * ym + rk * dym;
                    }
                }
                p += 1;
            }
            let a = &d.density[i * nc * nm..(i + 1) * nc * nm];
            let g = &mut out[i * nf..(i + 1) * nf];
            for c in 0..nc {
                g[c] = dda[c * nm];
            }
            // dP_l = dA_l A_lᵀ + A_l dA_lᵀ = M + Mᵀ
            let mut f = nc;
            for l in 0..=self.spec.l_max {
                let nl = self.l_start[l + 1] - self.l_start[l];
                gemm_view(nc, nl, nc, self.block_l(&dda, l), self.block_l_t(a, l), 0.0, &mut mm, nc);
                for c in 0..nc {
                    for c2 in c..nc {
                        g[f] = mm[c * nc + c2] + mm[c2 * nc + c];
                        f += 1;
                    }
                }
            }
        }
        out
    }
}

/// Maximal runs of equal species in a centre's (species-sorted) neighbour list: (species, index range).
fn species_runs(species: &[usize]) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        let s = *species.get(start)?;
        let len = species[start..].iter().take_while(|&&x| x == s).count();
        let run = start..start + len;
        start += len;
        Some((s, run))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Descriptor, Vec<Vec3>, Vec<usize>) {
        let spec = DescriptorSpec { cutoff: 3.5, r_min: 0.7, n_radial: 4, l_max: 3, radial_width: 1.0 };
        let pos = vec![[0.0, 0.0, 0.0], [1.1, 0.2, -0.1], [-0.4, 1.3, 0.5], [0.3, -0.6, 1.4], [1.5, 1.2, 1.0]];
        (Descriptor::new(&spec, 2), pos, vec![0, 1, 1, 0, 1])
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
        d.angular(&u, &mut yu);
        d.angular(&w, &mut yw);
        let cos = u[0] * w[0] + u[1] * w[1] + u[2] * w[2];
        for l in 0..=3 {
            let s: f64 = (d.l_start[l]..d.l_start[l + 1]).map(|m| yu[m] * yw[m]).sum();
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
        let spec = DescriptorSpec { cutoff: 6.0, r_min: 0.5, n_radial: 12, l_max: 2, radial_width: 0.4 };
        let d = Descriptor::new(&spec, 1);
        let (mut g, mut dg) = (vec![0.0; 12], vec![0.0; 12]);
        for &r in &[0.3, 0.5, 1.234, 2.77, 4.0, 5.5, 5.999] {
            d.radial(r, &mut g, &mut dg);
            let x = r / 6.0;
            let fc = (1.0 - x * x).powi(3);
            for k in 0..12 {
                let want = (-(r - d.centers[k]).powi(2) * d.inv_two_sigma2).exp() * fc;
                assert!((g[k] - want).abs() < 1e-13 * want + 1e-16, "r {r} k {k}: {} vs {want}", g[k]);
            }
        }
    }

    #[test]
    fn jvp_and_vjp_match_finite_differences() {
        let (d, pos, sp) = setup();
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
