//! What a potential predicts for a structure, and how it is assembled from per-pair energy gradients — the last
//! step of the chain rule, shared by the training-time model and the runtime.
//!
//! Every pair term `g = ∂E/∂r_ij` with `r_ij = x_j − x_i` pushes `+g` on the centre i and `−g` on the neighbour
//! j, and contributes `−r_ij ⊗ g` to the virial `W_ab = −Σ_pairs r_ij,a g_b` (eV; stress = −W/V; the same sign
//! as LAMMPS's `Σ r·f`). The per-atom virial splits each pair term half/half between i and j, so it sums to W.

use crate::frame::{Mat3, Vec3};
use crate::neighbors::NeighborList;

/// Energy and its derivatives for one structure.
#[derive(Clone, Debug, Default)]
pub struct Prediction {
    /// Total energy, eV.
    pub energy: f64,
    /// Per-atom energies, eV; they sum to `energy`.
    pub atomic_energies: Vec<f64>,
    /// −∂E/∂x per atom, eV/Å.
    pub forces: Vec<Vec3>,
    /// W_ab = −Σ_pairs r_ij,a ∂E/∂r_ij,b (eV); for periodic systems stress = −W / V.
    pub virial: Mat3,
    /// eV/Å³, only for fully periodic systems.
    pub stress: Option<Mat3>,
}

/// Stress (eV/Å³) of a periodic cell of volume `v` from its virial: σ = −W / V.
pub fn stress_from_virial(virial: &Mat3, v: f64) -> Mat3 {
    virial.map(|row| row.map(|w| -w / v))
}

/// Adds the pair terms of `nl` to `forces` (indexed by atom), `virial` and, if given, `atomic_virial`
/// (row-major 3×3 per atom). `centers[c]` is the atom index of centre c (None: centre c is atom c).
pub fn accumulate(
    nl: &NeighborList,
    centers: Option<&[usize]>,
    pair_grads: &[Vec3],
    mut forces: Option<&mut [Vec3]>,
    virial: &mut Mat3,
    mut atomic_virial: Option<&mut [[f64; 9]]>,
) {
    let mut p = 0;
    for c in 0..nl.n_atoms() {
        let i = centers.map_or(c, |cs| cs[c]);
        for nb in nl.of(c) {
            let g = pair_grads[p];
            p += 1;
            if let Some(f) = forces.as_deref_mut() {
                for a in 0..3 {
                    f[i][a] += g[a];
                    f[nb.j][a] -= g[a];
                }
            }
            for a in 0..3 {
                for b in 0..3 {
                    let w = -nb.r[a] * g[b];
                    virial[a][b] += w;
                    if let Some(av) = atomic_virial.as_deref_mut() {
                        av[i][3 * a + b] += 0.5 * w;
                        av[nb.j][3 * a + b] += 0.5 * w;
                    }
                }
            }
        }
    }
}
