//! From per-pair energy gradients to forces and virials — the last step of the chain rule, shared by the
//! training-time model and the runtime.
//!
//! Every pair term `g = ∂E/∂r_ij` with `r_ij = x_j − x_i` pushes `+g` on the centre i and `−g` on the neighbour
//! j, and contributes `−r_ij ⊗ g` to the virial `W_ab = −Σ_pairs r_ij,a g_b` (eV; stress = −W/V; the same sign
//! as LAMMPS's `Σ r·f`). The per-atom virial splits each pair term half/half between i and j, so it sums to W.

use crate::frame::{Mat3, Vec3};
use crate::neighbors::NeighborList;

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
