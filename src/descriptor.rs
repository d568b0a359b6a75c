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
    pow: [usize; 3],
    weight: f64,
}

/// A descriptor for a fixed list of species (the species index of an atom selects its density channels).
#[derive(Clone, Debug)]
pub struct Descriptor {
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
    pub n_atoms: usize,
    pub n_features: usize,
    /// Row-major `[n_atoms][n_features]`.
    pub features: Vec<f64>,
    /// Density coefficients, `[n_atoms][n_channels][n_monomials]`.
    density: Vec<f64>,
    pairs: Vec<PairCache>,
    /// Per pair: radial values and derivatives `[n_radial]` each, then Y and ∇Y.
    radial: Vec<f64>,
    d_radial: Vec<f64>,
    ang: Vec<f64>,
    d_ang: Vec<f64>,
    pub neighbors: NeighborList,
    species_of_neighbor: Vec<usize>,
}

impl Descriptor {
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

    pub fn n_channels(&self) -> usize {
        self.n_species * self.spec.n_radial
    }
    fn n_monomials(&self) -> usize {
        self.monomials.len()
    }
    pub fn n_features(&self) -> usize {
        let c = self.n_channels();
        c + (self.spec.l_max + 1) * c * (c + 1) / 2
    }

    fn radial(&self, r: f64, out: &mut [f64], dout: &mut [f64]) {
        let rc = self.spec.cutoff;
        let x = r / rc;
        let s = 1.0 - x * x;
        let (fc, dfc) = if x < 1.0 { (s * s * s, -6.0 * x * s * s / rc) } else { (0.0, 0.0) };
        for (k, mu) in self.centers.iter().enumerate() {
            let d = r - mu;
            let g = (-d * d * self.inv_two_sigma2).exp();
            let dg = -2.0 * d * self.inv_two_sigma2 * g;
            out[k] = g * fc;
            dout[k] = dg * fc + g * dfc;
        }
    }

    /// Angular functions and their gradient with respect to û (treated as a free vector).
    fn angular(&self, u: &Vec3, y: &mut [f64], dy: &mut [f64]) {
        let l = self.spec.l_max;
        let mut pw = [[1.0f64; 9]; 3];
        for a in 0..3 {
            for k in 1..=l {
                pw[a][k] = pw[a][k - 1] * u[a];
            }
        }
        for (m, mono) in self.monomials.iter().enumerate() {
            let [a, b, c] = mono.pow;
            let w = mono.weight;
            y[m] = w * pw[0][a] * pw[1][b] * pw[2][c];
            dy[3 * m] = if a > 0 { w * a as f64 * pw[0][a - 1] * pw[1][b] * pw[2][c] } else { 0.0 };
            dy[3 * m + 1] = if b > 0 { w * b as f64 * pw[0][a] * pw[1][b - 1] * pw[2][c] } else { 0.0 };
            dy[3 * m + 2] = if c > 0 { w * c as f64 * pw[0][a] * pw[1][b] * pw[2][c - 1] } else { 0.0 };
        }
    }

    /// Computes descriptors of the centre atoms of `neighbors`. `species[j]` is the species index (0..n_species)
    /// of atom j; it covers every neighbour index (an MD engine's ghost atoms too).
    pub fn compute(&self, species: &[usize], neighbors: NeighborList) -> Descriptors {
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
            ang: vec![0.0; np * nm],
            d_ang: vec![0.0; np * nm * 3],
            species_of_neighbor: Vec::with_capacity(np),
            neighbors,
        };
        let mut p = 0;
        for i in 0..n {
            let a_i = &mut d.density[i * nc * nm..(i + 1) * nc * nm];
            for nb in d.neighbors.of(i) {
                let r = crate::frame::norm(&nb.r);
                let u = [nb.r[0] / r, nb.r[1] / r, nb.r[2] / r];
                let s = species[nb.j];
                self.radial(r, &mut d.radial[p * nr..(p + 1) * nr], &mut d.d_radial[p * nr..(p + 1) * nr]);
                self.angular(&u, &mut d.ang[p * nm..(p + 1) * nm], &mut d.d_ang[p * nm * 3..(p + 1) * nm * 3]);
                let rad = &d.radial[p * nr..(p + 1) * nr];
                let y = &d.ang[p * nm..(p + 1) * nm];
                for (k, rk) in rad.iter().enumerate() {
                    let row = &mut a_i[(s * nr + k) * nm..(s * nr + k + 1) * nm];
                    for (am, ym) in row.iter_mut().zip(y) {
                        *am += rk * ym;
                    }
                }
                d.pairs.push(PairCache { r, u });
                d.species_of_neighbor.push(s);
                p += 1;
            }
            let g = &mut d.features[i * d.n_features..(i + 1) * d.n_features];
            self.contract(a_i, g);
        }
        d
    }

    /// Copies the order-l block of a `[n_channels][n_monomials]` matrix into a contiguous `[n_channels][n_l]`.
    fn gather_l(&self, a: &[f64], l: usize, out: &mut Vec<f64>) {
        let nm = self.n_monomials();
        let ms = self.l_start[l]..self.l_start[l + 1];
        out.clear();
        for c in 0..self.n_channels() {
            out.extend_from_slice(&a[c * nm + ms.start..c * nm + ms.end]);
        }
    }

    /// Density coefficients → invariants: P_l = A_l A_lᵀ (upper triangle).
    fn contract(&self, a: &[f64], g: &mut [f64]) {
        let nc = self.n_channels();
        let nm = self.n_monomials();
        for c in 0..nc {
            g[c] = a[c * nm];
        }
        let mut al = Vec::new();
        let mut p = vec![0.0; nc * nc];
        let mut f = nc;
        for l in 0..=self.spec.l_max {
            let nl = self.l_start[l + 1] - self.l_start[l];
            self.gather_l(a, l, &mut al);
            crate::linalg::gemm(nc, nl, nc, &al, false, &al, true, 0.0, &mut p);
            for c in 0..nc {
                g[f..f + nc - c].copy_from_slice(&p[c * nc + c..(c + 1) * nc]);
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
        let mut out = Vec::with_capacity(d.pairs.len());
        let mut da = vec![0.0; nc * nm];
        let mut wsym = vec![0.0; nc * nc];
        let mut al = Vec::new();
        let mut dal = vec![0.0; nc * nm];
        let mut rho = vec![0.0; nm];
        let mut drho = vec![0.0; nm];
        let mut p = 0;
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
                self.gather_l(a, l, &mut al);
                crate::linalg::gemm(nc, nc, nl, &wsym, false, &al, false, 0.0, &mut dal);
                for c in 0..nc {
                    for (k, m) in ms.clone().enumerate() {
                        da[c * nm + m] += dal[c * nl + k];
                    }
                }
            }
            for _ in d.neighbors.of(i) {
                let s = d.species_of_neighbor[p];
                let rad = &d.radial[p * nr..(p + 1) * nr];
                let drad = &d.d_radial[p * nr..(p + 1) * nr];
                rho.iter_mut().for_each(|x| *x = 0.0);
                drho.iter_mut().for_each(|x| *x = 0.0);
                for k in 0..nr {
                    let row = &da[(s * nr + k) * nm..(s * nr + k + 1) * nm];
                    for m in 0..nm {
                        rho[m] += row[m] * rad[k];
                        drho[m] += row[m] * drad[k];
                    }
                }
                let y = &d.ang[p * nm..(p + 1) * nm];
                let dy = &d.d_ang[p * nm * 3..(p + 1) * nm * 3];
                let mut radial_part = 0.0;
                let mut gu = [0.0; 3];
                for m in 0..nm {
                    radial_part += drho[m] * y[m];
                    for ax in 0..3 {
                        gu[ax] += rho[m] * dy[3 * m + ax];
                    }
                }
                let PairCache { r, u } = d.pairs[p];
                let ug = u[0] * gu[0] + u[1] * gu[1] + u[2] * gu[2];
                out.push([
                    u[0] * radial_part + (gu[0] - u[0] * ug) / r,
                    u[1] * radial_part + (gu[1] - u[1] * ug) / r,
                    u[2] * radial_part + (gu[2] - u[2] * ug) / r,
                ]);
                p += 1;
            }
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
        let (mut al, mut dal, mut mm) = (Vec::new(), Vec::new(), vec![0.0; nc * nc]);
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
                let y = &d.ang[p * nm..(p + 1) * nm];
                let dy = &d.d_ang[p * nm * 3..(p + 1) * nm * 3];
                for k in 0..nr {
                    let row = &mut dda[(s * nr + k) * nm..(s * nr + k + 1) * nm];
                    let (rk, drk) = (rad[k], drad[k] * tr);
                    for m in 0..nm {
                        let dyt = dy[3 * m] * tp[0] + dy[3 * m + 1] * tp[1] + dy[3 * m + 2] * tp[2];
                        row[m] += drk * y[m] + rk * dyt;
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
                self.gather_l(a, l, &mut al);
                self.gather_l(&dda, l, &mut dal);
                crate::linalg::gemm(nc, nl, nc, &dal, false, &al, true, 0.0, &mut mm);
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
        let (mut yu, mut yw, mut dy) = (vec![0.0; nm], vec![0.0; nm], vec![0.0; 3 * nm]);
        d.angular(&u, &mut yu, &mut dy);
        d.angular(&w, &mut yw, &mut dy);
        let cos = u[0] * w[0] + u[1] * w[1] + u[2] * w[2];
        for l in 0..=3 {
            let s: f64 = (d.l_start[l]..d.l_start[l + 1]).map(|m| yu[m] * yw[m]).sum();
            assert!((s - cos.powi(l as i32)).abs() < 1e-12);
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
