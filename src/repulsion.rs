//! The short-range repulsive prior: the ZBL universal screened nuclear repulsion (Ziegler, Biersack & Littmark
//! 1985, as LAMMPS's `pair_style zbl`) between atoms well inside the shortest distance of their element pair in
//! the training data, switched off smoothly (C²) below it.
//!
//! Why: below the shortest sampled distance a learned model only extrapolates, and its energy stays bounded
//! there (the descriptor is bounded as r → 0), so nothing stops two atoms from fusing in a hot MD run. ZBL grows
//! as 1/r, so the total energy always rises steeply as two atoms collapse. Where the training data are, the
//! prior is zero (with the default, data-derived switch), so it leaves the fit untouched. The switch ends 10 %
//! inside the shortest sampled distance, not at it: ZBL is several eV at bond-like distances, so even the first
//! percent of its ramp would put forces of ~1 eV/Å on validation structures a hundredth of an Å closer than
//! any training structure (measured on rMD17 ethanol with the switch ending at the shortest distance).
//!
//! Pair energy `φ(r) = S(r) · k_e Z_a Z_b / r · Σ_k c_k exp(−d_k r / a)`, `a = 0.46850 Å / (Z_a^0.23 + Z_b^0.23)`,
//! `S = 1` below `r_inner`, `0` above `r_outer`, and `1 − x³(10 − 15x + 6x²)` with `x = (r − r_inner)/(r_outer −
//! r_inner)` between. Over a full neighbour list each directed pair i→j gives `½ φ(r_ij)` to atom i's energy, so
//! per-atom energies, forces and virials follow the same chain rule as the learned part
//! ([`crate::prediction::accumulate`]) and an MD engine's ghost atoms need nothing extra.

use crate::elements::{covalent_radius, symbol};
use crate::error::{Error, Result};
use crate::frame::{Frame, Vec3};
use crate::neighbors::NeighborList;
use serde::{Deserialize, Serialize};

/// Coulomb constant e²/(4πε₀), eV·Å.
const COULOMB: f64 = 14.399_645_3;
/// The universal screening function's coefficients and exponents.
const ZBL_C: [f64; 4] = [0.181_75, 0.509_86, 0.280_22, 0.028_17];
const ZBL_D: [f64; 4] = [3.199_80, 0.942_29, 0.402_90, 0.201_62];

/// Where the data-derived prior ends, as a fraction of the shortest training distance of the element pair.
pub const OUTER_FRACTION: f64 = 0.9;
/// Where the prior reaches full strength, as a fraction of where it ends (when not set).
pub const INNER_FRACTION: f64 = 2.0 / 3.0;

/// Where the prior acts between one pair of elements (Å).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepulsivePair {
    /// Atomic numbers, smaller first.
    pub z: [u32; 2],
    /// Full ZBL below this distance.
    pub r_inner: f64,
    /// Zero above this distance.
    pub r_outer: f64,
}

/// The prior of a model: one switched ZBL term per element pair (`pilip.repulsion` in an exported model).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repulsion {
    /// Every unordered pair of the model's elements, once.
    pub pairs: Vec<RepulsivePair>,
}

impl Repulsion {
    /// The prior for `species` fitted to `frames`: for each element pair, `r_outer` is `outer` (Å) if it is
    /// positive, else [`OUTER_FRACTION`] × the shortest distance of that pair in `frames` (within `cutoff`; a
    /// pair never that close gets 0.8 × the sum of covalent radii); `r_inner` is `inner` (Å) if it is positive,
    /// else [`INNER_FRACTION`] × `r_outer`.
    pub fn fit(species: &[u32], frames: &[&Frame], cutoff: f64, outer: f64, inner: f64) -> Result<Self> {
        if !(outer >= 0.0 && outer <= cutoff && inner >= 0.0 && inner.is_finite()) {
            return Err(Error::Config(format!(
                "repulsion: outer must be 0 (from the data) or a distance up to the cutoff {cutoff} Å, and inner 0 or a \
                 distance > 0 Å; got outer = {outer}, inner = {inner}"
            )));
        }
        let ns = species.len();
        let mut shortest = vec![f64::INFINITY; ns * ns];
        if outer == 0.0 {
            for f in frames {
                let index: Vec<Option<usize>> = f.numbers.iter().map(|z| species.iter().position(|s| s == z)).collect();
                let nl = NeighborList::for_frame(f, cutoff)?;
                for i in 0..nl.n_atoms() {
                    for nb in nl.of(i) {
                        if let (Some(a), Some(b)) = (index[i], index[nb.j]) {
                            let r = crate::frame::norm(&nb.r);
                            let k = a.min(b) * ns + a.max(b);
                            shortest[k] = shortest[k].min(r);
                        }
                    }
                }
            }
        }
        let mut pairs = Vec::new();
        for a in 0..ns {
            for b in a..ns {
                let (za, zb) = (species[a].min(species[b]), species[a].max(species[b]));
                let r_outer = if outer > 0.0 {
                    outer
                } else if shortest[a * ns + b].is_finite() {
                    OUTER_FRACTION * shortest[a * ns + b]
                } else {
                    (0.8 * (covalent_radius(za) + covalent_radius(zb))).min(cutoff)
                };
                let r_inner = if inner > 0.0 { inner } else { INNER_FRACTION * r_outer };
                if r_inner >= r_outer {
                    let name = |z| symbol(z).unwrap_or("?");
                    return Err(Error::Config(format!(
                        "repulsion.inner = {inner} Å is not below the {}–{} prior's outer end, {r_outer:.3} Å",
                        name(za),
                        name(zb)
                    )));
                }
                pairs.push(RepulsivePair { z: [za, zb], r_inner, r_outer });
            }
        }
        Ok(Repulsion { pairs })
    }

    /// The prior as a lookup table over `species` (a model's species order); an error names what is missing or
    /// malformed.
    pub fn table(&self, species: &[u32], cutoff: f64) -> std::result::Result<RepulsionTable, String> {
        let ns = species.len();
        let mut entries: Vec<Option<ZblPair>> = vec![None; ns * ns];
        for p in &self.pairs {
            let name = format!("{}–{}", symbol(p.z[0]).unwrap_or("?"), symbol(p.z[1]).unwrap_or("?"));
            let (Some(a), Some(b)) = (species.iter().position(|&s| s == p.z[0]), species.iter().position(|&s| s == p.z[1])) else {
                return Err(format!("the repulsion names the pair {name}, not of the model's elements"));
            };
            if !(p.r_inner > 0.0 && p.r_inner < p.r_outer && p.r_outer <= cutoff) {
                return Err(format!(
                    "the repulsion of {name} needs 0 < r_inner < r_outer ≤ cutoff ({cutoff} Å), got {} and {}",
                    p.r_inner, p.r_outer
                ));
            }
            if entries[a * ns + b].is_some() {
                return Err(format!("the repulsion lists the pair {name} twice"));
            }
            let zbl = ZblPair::new(p.z[0], p.z[1], p.r_inner, p.r_outer);
            entries[a * ns + b] = Some(zbl);
            entries[b * ns + a] = Some(zbl);
        }
        let table = entries.into_iter().enumerate().map(|(k, e)| {
            e.ok_or_else(|| {
                let (za, zb) = (species[k / ns], species[k % ns]);
                format!("the repulsion lacks the pair {}–{}", symbol(za).unwrap_or("?"), symbol(zb).unwrap_or("?"))
            })
        });
        let pairs = table.collect::<std::result::Result<Vec<_>, _>>()?;
        let reach = pairs.iter().fold(0.0f64, |m, p| m.max(p.r_outer));
        Ok(RepulsionTable { n_species: ns, pairs, reach2: reach * reach })
    }
}

/// One element pair's switched ZBL term, ready to evaluate.
#[derive(Clone, Copy, Debug)]
struct ZblPair {
    /// k_e Z_a Z_b, eV·Å.
    charge: f64,
    /// 1/a, 1/Å.
    inv_screening: f64,
    r_inner: f64,
    r_outer: f64,
}

impl ZblPair {
    fn new(za: u32, zb: u32, r_inner: f64, r_outer: f64) -> Self {
        let screening = 0.468_50 / ((za as f64).powf(0.23) + (zb as f64).powf(0.23));
        ZblPair { charge: COULOMB * za as f64 * zb as f64, inv_screening: 1.0 / screening, r_inner, r_outer }
    }

    /// (φ(r), dφ/dr) of the switched term; zero from `r_outer` on.
    fn energy_and_derivative(&self, r: f64) -> (f64, f64) {
        if r >= self.r_outer {
            return (0.0, 0.0);
        }
        let (mut screen, mut d_screen) = (0.0, 0.0);
        for (c, d) in ZBL_C.iter().zip(ZBL_D) {
            let e = c * (-d * r * self.inv_screening).exp();
            screen += e;
            d_screen -= d * self.inv_screening * e;
        }
        let coulomb = self.charge / r;
        let phi = coulomb * screen;
        let d_phi = coulomb * d_screen - phi / r;
        if r <= self.r_inner {
            return (phi, d_phi);
        }
        let width = self.r_outer - self.r_inner;
        let x = (r - self.r_inner) / width;
        let s = 1.0 - x * x * x * (10.0 - 15.0 * x + 6.0 * x * x);
        let ds = -30.0 * x * x * (1.0 - x) * (1.0 - x) / width;
        (phi * s, d_phi * s + phi * ds)
    }
}

/// [`Repulsion`] over a model's species, indexed by species index.
#[derive(Clone, Debug)]
pub struct RepulsionTable {
    n_species: usize,
    pairs: Vec<ZblPair>,
    /// The largest `r_outer`, squared: pairs beyond it are skipped at the cost of one comparison.
    reach2: f64,
}

impl RepulsionTable {
    /// Adds the prior to the per-centre energies `atomic` and the per-pair gradients `pair_grads` (∂E/∂r_ij in
    /// the order of `nl`). `species[j]` is atom j's species index; centre c is atom `centers[c]` (None: atom c).
    pub fn add(&self, nl: &NeighborList, species: &[usize], centers: Option<&[usize]>, atomic: &mut [f64], pair_grads: &mut [Vec3]) {
        self.for_each_pair(nl, species, centers, |c, p, r, phi, d_phi_over_r| {
            atomic[c] += 0.5 * phi;
            for a in 0..3 {
                pair_grads[p][a] += 0.5 * d_phi_over_r * r[a];
            }
        });
    }

    /// The largest `r_outer` (Å): a neighbour list with this cutoff holds every pair the prior acts on.
    pub fn reach(&self) -> f64 {
        self.reach2.sqrt()
    }

    /// The prior's energy of a structure (eV) from its full neighbour list.
    pub fn energy(&self, nl: &NeighborList, species: &[usize]) -> f64 {
        let mut e = 0.0;
        self.for_each_pair(nl, species, None, |_, _, _, phi, _| e += 0.5 * phi);
        e
    }

    /// Calls `f(centre, pair index, r_ij, φ, φ'/r)` for every directed pair of `nl` within reach of the prior.
    #[inline(always)]
    fn for_each_pair(&self, nl: &NeighborList, species: &[usize], centers: Option<&[usize]>, mut f: impl FnMut(usize, usize, &Vec3, f64, f64)) {
        let mut p = 0;
        for c in 0..nl.n_atoms() {
            let si = species[centers.map_or(c, |cs| cs[c])];
            for nb in nl.of(c) {
                let r2 = nb.r[0] * nb.r[0] + nb.r[1] * nb.r[1] + nb.r[2] * nb.r[2];
                if r2 < self.reach2 {
                    let r = r2.sqrt();
                    let (phi, d_phi) = self.pairs[si * self.n_species + species[nb.j]].energy_and_derivative(r);
                    f(c, p, &nb.r, phi, d_phi / r);
                }
                p += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LAMMPS's `pair_style zbl` without its switch, for Si–Si at 1 Å: E = 14.399645·196/1 · Σ c_k e^{−d_k/a}.
    #[test]
    fn zbl_matches_the_universal_formula_and_its_derivative() {
        let pair = ZblPair::new(14, 14, 2.0, 3.0);
        let a = 0.4685 / (2.0 * 14f64.powf(0.23));
        let r = 1.0;
        let want: f64 = 14.399_645_3 * 196.0 / r * ZBL_C.iter().zip(ZBL_D).map(|(c, d)| c * (-d * r / a).exp()).sum::<f64>();
        let (phi, d_phi) = pair.energy_and_derivative(r);
        assert!((phi - want).abs() < 1e-9 * want, "{phi} vs {want}");
        for r in [0.3, 1.0, 1.99, 2.0, 2.2, 2.5, 2.9, 2.999] {
            let h = 1e-6;
            let fd = (pair.energy_and_derivative(r + h).0 - pair.energy_and_derivative(r - h).0) / (2.0 * h);
            let (_, d) = pair.energy_and_derivative(r);
            assert!((d - fd).abs() <= 1e-6 * (1.0 + fd.abs()), "r = {r}: {d} vs {fd}");
        }
        assert!(d_phi < 0.0);
        assert_eq!(pair.energy_and_derivative(3.0), (0.0, 0.0));
        // C² at both ends of the switch: the derivative is continuous there (checked above through r_inner) and
        // vanishes at r_outer
        assert!(pair.energy_and_derivative(3.0 - 1e-7).1.abs() < 1e-9);
    }

    #[test]
    fn the_switch_follows_the_data_and_every_pair_is_listed() {
        let frame = Frame {
            numbers: vec![1, 8, 1],
            positions: vec![[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [1.2, 0.93, 0.0]],
            ..Default::default()
        };
        let rep = Repulsion::fit(&[1, 8], &[&frame], 5.0, 0.0, 0.0).unwrap();
        let oh = rep.pairs.iter().find(|p| p.z == [1, 8]).unwrap();
        assert!((oh.r_outer - 0.9 * 0.96).abs() < 1e-12 && (oh.r_inner - 0.6 * 0.96).abs() < 1e-12);
        let hh = rep.pairs.iter().find(|p| p.z == [1, 1]).unwrap();
        assert!((hh.r_outer - 0.9 * (1.2f64.powi(2) + 0.93f64.powi(2)).sqrt()).abs() < 1e-12);
        // O–O never occurs: covalent radii
        let oo = rep.pairs.iter().find(|p| p.z == [8, 8]).unwrap();
        assert!((oo.r_outer - 0.8 * 1.32).abs() < 1e-12 && (oo.r_inner - 2.0 / 3.0 * oo.r_outer).abs() < 1e-12);
        // explicit ends apply to every pair, and an inner end beyond an outer one is refused by pair
        let fixed = Repulsion::fit(&[1, 8], &[&frame], 5.0, 1.5, 1.0).unwrap();
        assert!(fixed.pairs.iter().all(|p| p.r_outer == 1.5 && p.r_inner == 1.0));
        let err = Repulsion::fit(&[1, 8], &[&frame], 5.0, 0.0, 0.95).unwrap_err().to_string();
        assert!(err.contains("H–O") && err.contains("0.864"), "{err}");
        let table = rep.table(&[8, 1], 5.0).unwrap();
        // zero on the data it was fitted to
        let nl = NeighborList::for_frame(&frame, 5.0).unwrap();
        assert_eq!(table.energy(&nl, &[1, 0, 1]), 0.0);
        let missing = Repulsion { pairs: rep.pairs[..2].to_vec() }.table(&[1, 8], 5.0).unwrap_err();
        assert!(missing.contains("lacks the pair O–O"), "{missing}");
        let mut twice = rep.clone();
        twice.pairs.push(rep.pairs[0].clone());
        assert!(twice.table(&[1, 8], 5.0).unwrap_err().contains("twice"));
        let mut inverted = rep.clone();
        inverted.pairs[0].r_inner = 2.0;
        assert!(inverted.table(&[1, 8], 5.0).unwrap_err().contains("0 < r_inner < r_outer"));
        assert!(Repulsion::fit(&[1, 8], &[&frame], 5.0, 6.0, 0.0).is_err());
    }
}
