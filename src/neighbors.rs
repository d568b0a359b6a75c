//! O(N) cell-list neighbour search for open and periodic (triclinic) systems.
//!
//! Periodic images are generated explicitly, so a cell smaller than the cutoff works: an atom can see several
//! images of the same neighbour (and of itself). Each pair stores the vector `r_ij = x_j(image) − x_i`; the
//! descriptor depends only on these vectors, which is what makes forces and virial exact for any cell.

use crate::error::{Error, Result};
use crate::frame::{cross, inv3, norm, Frame, Mat3, Vec3};

/// Atoms closer than this (Å) are refused, naming them: overlapping atoms, or coordinates not in Å.
pub const MIN_DISTANCE: f64 = 0.1;

/// Most periodic images (atoms × images of the cell) one list may need (~32 B each).
pub const MAX_IMAGES: usize = 10_000_000;

/// Most neighbour pairs one list may hold: with the descriptor's per-pair data (~250 B per pair) about 2.5 GB.
/// A larger request (a cell given in the wrong unit, atoms piled up) is refused before memory runs out, instead
/// of aborting the host program (LAMMPS, Python) when an allocation fails.
pub const MAX_PAIRS: usize = 10_000_000;

/// One directed neighbour of a centre atom.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbor {
    /// Index of the neighbour atom (its original index, not of an image).
    pub j: usize,
    /// `x_j + shift − x_i`, Å.
    pub r: Vec3,
}

/// Full neighbour list (both i→j and j→i), grouped by centre atom.
#[derive(Clone, Debug)]
pub struct NeighborList {
    /// Å.
    pub cutoff: f64,
    offsets: Vec<usize>,
    neighbors: Vec<Neighbor>,
}

impl Default for NeighborList {
    /// No centres (and no allocation: the runtime swaps lists in and out of its buffers every MD step).
    fn default() -> Self {
        NeighborList { cutoff: 0.0, offsets: Vec::new(), neighbors: Vec::new() }
    }
}

impl NeighborList {
    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.offsets.len() * std::mem::size_of::<usize>() + self.neighbors.len() * std::mem::size_of::<Neighbor>()
    }
    /// Neighbours of centre `i`.
    pub fn of(&self, i: usize) -> &[Neighbor] {
        &self.neighbors[self.offsets[i]..self.offsets[i + 1]]
    }
    /// Centre atoms.
    pub fn n_atoms(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
    /// Directed pairs (each bond counted from both ends).
    pub fn n_pairs(&self) -> usize {
        self.neighbors.len()
    }

    /// A list given by the caller (an MD engine's): `offsets[c]..offsets[c+1]` are centre c's neighbours.
    pub fn from_parts(cutoff: f64, offsets: Vec<usize>, neighbors: Vec<Neighbor>) -> Self {
        debug_assert!(offsets.first() == Some(&0) && offsets.last() == Some(&neighbors.len()));
        NeighborList { cutoff, offsets, neighbors }
    }

    /// `offsets[c]..offsets[c+1]` index centre c's pairs (length `n_atoms() + 1`).
    pub fn offsets(&self) -> &[usize] {
        &self.offsets
    }

    /// The list's buffers, to be refilled for the next call without allocating (see [`NeighborList::from_parts`]).
    pub fn into_parts(self) -> (Vec<usize>, Vec<Neighbor>) {
        (self.offsets, self.neighbors)
    }

    /// [`NeighborList::build`] of a frame.
    pub fn for_frame(frame: &Frame, cutoff: f64) -> Result<Self> {
        Self::build(&frame.positions, frame.cell.as_ref(), frame.pbc, cutoff)
    }

    /// All pairs closer than `cutoff`, with periodic images along the periodic axes of `cell` (rows are
    /// lattice vectors; required when any `pbc` is set).
    pub fn build(positions: &[Vec3], cell: Option<&Mat3>, pbc: [bool; 3], cutoff: f64) -> Result<Self> {
        if !(cutoff > 0.0 && cutoff.is_finite()) {
            return Err(Error::invalid(format!("cutoff must be a positive number, got {cutoff}")));
        }
        if let Some((i, _)) = positions.iter().enumerate().find(|(_, p)| p.iter().any(|x| !x.is_finite())) {
            return Err(Error::invalid(format!("position of atom {i} is not finite")));
        }
        let periodic = pbc.iter().any(|&p| p);
        // Images: (original index, Cartesian position). Real atoms come first with their (wrapped) positions.
        let mut images: Vec<(usize, Vec3)> = Vec::with_capacity(positions.len());
        let centers: Vec<Vec3>;
        if periodic {
            let cell = cell.ok_or_else(|| Error::invalid("periodic boundary conditions need a cell"))?;
            if let Some(x) = cell.iter().flatten().find(|x| !x.is_finite()) {
                return Err(Error::invalid(format!("the cell has a non-finite entry ({x})")));
            }
            let vol = crate::frame::det3(cell).abs();
            // Also refuses volumes that overflow: every comparison below must see finite numbers.
            let inv = inv3(cell)
                .filter(|_| vol.is_finite() && vol > 0.0)
                .ok_or_else(|| Error::invalid(format!("the cell is singular or overflows (volume {vol:e} Å³)")))?;
            let mut reps = [0i64; 3];
            let mut pad = [0.0; 3];
            let mut heights = [f64::INFINITY; 3];
            for a in 0..3 {
                if pbc[a] {
                    let h = vol / norm(&cross(&cell[(a + 1) % 3], &cell[(a + 2) % 3]));
                    heights[a] = h;
                    pad[a] = cutoff / h;
                    reps[a] = pad[a].ceil().min(1e9) as i64;
                }
            }
            // Bound the work before allocating: every image of an atom within the cutoff of the cell is built.
            let per_atom: f64 = (0..3).map(|a| if pbc[a] { 1.0 + 2.0 * pad[a] } else { 1.0 }).product();
            let images_needed = positions.len() as f64 * per_atom;
            if !(images_needed <= MAX_IMAGES as f64) {
                let h = heights.iter().copied().fold(f64::INFINITY, f64::min);
                return Err(Error::invalid(format!(
                    "the periodic cell is too small for the cutoff: its shortest height is {h:.3} Å against a cutoff of \
                     {cutoff} Å, so {per_atom:.2e} periodic images of each of the {} atoms ({images_needed:.2e} in all) \
                     would be needed, above the limit of {MAX_IMAGES:.0e}; is the cell given in Å?",
                    positions.len()
                )));
            }
            let frac: Vec<Vec3> = positions
                .iter()
                .map(|p| {
                    let mut f = [0.0; 3];
                    for a in 0..3 {
                        f[a] = p[0] * inv[0][a] + p[1] * inv[1][a] + p[2] * inv[2][a];
                        if pbc[a] {
                            f[a] -= f[a].floor();
                        }
                    }
                    f
                })
                .collect();
            let to_cart = |f: &Vec3| -> Vec3 {
                let mut x = [0.0; 3];
                for (a, xa) in x.iter_mut().enumerate() {
                    *xa = f[0] * cell[0][a] + f[1] * cell[1][a] + f[2] * cell[2][a];
                }
                x
            };
            centers = frac.iter().map(to_cart).collect();
            images.extend(centers.iter().enumerate().map(|(i, x)| (i, *x)));
            for s0 in -reps[0]..=reps[0] {
                for s1 in -reps[1]..=reps[1] {
                    for s2 in -reps[2]..=reps[2] {
                        if s0 == 0 && s1 == 0 && s2 == 0 {
                            continue;
                        }
                        let s = [s0 as f64, s1 as f64, s2 as f64];
                        for (j, f) in frac.iter().enumerate() {
                            let g = [f[0] + s[0], f[1] + s[1], f[2] + s[2]];
                            if (0..3).all(|a| !pbc[a] || (g[a] >= -pad[a] && g[a] < 1.0 + pad[a])) {
                                images.push((j, to_cart(&g)));
                            }
                        }
                    }
                }
            }
        } else {
            centers = positions.to_vec();
            images.extend(positions.iter().enumerate().map(|(i, x)| (i, *x)));
        }

        // Bin the images on a grid with bins at least `cutoff` wide.
        let mut lo = [f64::INFINITY; 3];
        let mut hi = [f64::NEG_INFINITY; 3];
        for (_, x) in &images {
            for a in 0..3 {
                lo[a] = lo[a].min(x[a]);
                hi[a] = hi[a].max(x[a]);
            }
        }
        let mut dims = [1usize; 3];
        for a in 0..3 {
            dims[a] = (((hi[a] - lo[a]) / cutoff).floor() as usize).clamp(1, 1 << 10);
        }
        // Keep the grid no larger than a few bins per image (a sparse molecule in a huge box).
        while dims[0] * dims[1] * dims[2] > 8 * images.len() + 64 {
            let a = (0..3).max_by_key(|&a| dims[a]).unwrap_or(0);
            dims[a] = dims[a].div_ceil(2);
        }
        let bin_of = |x: &Vec3| -> [usize; 3] {
            let mut b = [0usize; 3];
            for a in 0..3 {
                let w = (hi[a] - lo[a]) / dims[a] as f64;
                let k = if w > 0.0 { ((x[a] - lo[a]) / w) as usize } else { 0 };
                b[a] = k.min(dims[a] - 1);
            }
            b
        };
        let flat = |b: [usize; 3]| (b[0] * dims[1] + b[1]) * dims[2] + b[2];
        let nbins = dims[0] * dims[1] * dims[2];
        let mut start = vec![0usize; nbins + 1];
        let bins: Vec<usize> = images.iter().map(|(_, x)| flat(bin_of(x))).collect();
        for &b in &bins {
            start[b + 1] += 1;
        }
        for b in 0..nbins {
            start[b + 1] += start[b];
        }
        let mut fill = start.clone();
        let mut sorted = vec![0usize; images.len()];
        for (k, &b) in bins.iter().enumerate() {
            sorted[fill[b]] = k;
            fill[b] += 1;
        }

        let rc2 = cutoff * cutoff;
        let mut offsets = Vec::with_capacity(centers.len() + 1);
        let mut neighbors = Vec::new();
        offsets.push(0);
        for (i, xi) in centers.iter().enumerate() {
            let b = bin_of(xi);
            let range = |a: usize| b[a].saturating_sub(1)..=(b[a] + 1).min(dims[a] - 1);
            let first = neighbors.len();
            for b0 in range(0) {
                for b1 in range(1) {
                    for b2 in range(2) {
                        let f = flat([b0, b1, b2]);
                        for &k in &sorted[start[f]..start[f + 1]] {
                            if k == i {
                                continue; // the atom itself (the only image with index i < n_atoms)
                            }
                            let (j, xj) = images[k];
                            let r = [xj[0] - xi[0], xj[1] - xi[1], xj[2] - xi[2]];
                            let d2 = r[0] * r[0] + r[1] * r[1] + r[2] * r[2];
                            if d2 < rc2 {
                                if d2 < MIN_DISTANCE * MIN_DISTANCE {
                                    return Err(too_close(i, j, d2.sqrt(), j == i));
                                }
                                if neighbors.len() >= MAX_PAIRS {
                                    return Err(Error::invalid(format!(
                                        "more than {MAX_PAIRS:.0e} neighbour pairs within the cutoff of {cutoff} Å for {} \
                                         atoms (found by atom {i} of them): the atoms are far denser than any material; \
                                         are the positions and cell given in Å?",
                                        centers.len()
                                    )));
                                }
                                neighbors.push(Neighbor { j, r });
                            }
                        }
                    }
                }
            }
            // Deterministic order independent of binning details.
            neighbors[first..].sort_by(|a, b| {
                a.j.cmp(&b.j).then_with(|| a.r.partial_cmp(&b.r).unwrap_or(std::cmp::Ordering::Equal))
            });
            offsets.push(neighbors.len());
        }
        Ok(NeighborList { cutoff, offsets, neighbors })
    }
}

/// The error for atoms `i` and `j` closer than [`MIN_DISTANCE`] (`image`: j is a periodic image of i).
pub fn too_close(i: usize, j: usize, distance: f64, image: bool) -> Error {
    let which = if image { format!("atom {i} and its own periodic image") } else { format!("atoms {i} and {j}") };
    Error::invalid(format!(
        "{which} are {distance:.4} Å apart, closer than {MIN_DISTANCE} Å: overlapping atoms, or positions/cell not \
         given in Å"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force over a generous range of images.
    fn brute(pos: &[Vec3], cell: &Mat3, rc: f64) -> Vec<Vec<(usize, [i64; 3])>> {
        let n = 6i64;
        let mut out = vec![Vec::new(); pos.len()];
        for i in 0..pos.len() {
            for j in 0..pos.len() {
                for a in -n..=n {
                    for b in -n..=n {
                        for c in -n..=n {
                            if i == j && a == 0 && b == 0 && c == 0 {
                                continue;
                            }
                            let s = [a as f64, b as f64, c as f64];
                            let mut r = [0.0; 3];
                            for k in 0..3 {
                                r[k] = pos[j][k] - pos[i][k] + s[0] * cell[0][k] + s[1] * cell[1][k] + s[2] * cell[2][k];
                            }
                            if norm(&r) < rc {
                                out[i].push((j, [a, b, c]));
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn small_triclinic_cell_matches_brute_force() {
        let cell = [[2.6, 0.0, 0.0], [0.9, 2.4, 0.0], [-0.4, 0.5, 2.8]];
        let pos = vec![[0.1, 0.2, 0.3], [1.5, 1.1, 1.7], [3.9, -0.7, 2.0]]; // last one outside the cell
        let rc = 4.3;
        let nl = NeighborList::build(&pos, Some(&cell), [true; 3], rc).unwrap();
        let bf = brute(&pos, &cell, rc);
        for i in 0..pos.len() {
            assert_eq!(nl.of(i).len(), bf[i].len(), "atom {i}");
            let mut d1: Vec<f64> = nl.of(i).iter().map(|n| norm(&n.r)).collect();
            let mut d2: Vec<f64> = bf[i]
                .iter()
                .map(|(j, s)| {
                    let mut r = [0.0; 3];
                    for k in 0..3 {
                        r[k] = pos[*j][k] - pos[i][k]
                            + (0..3).map(|a| s[a] as f64 * cell[a][k]).sum::<f64>();
                    }
                    norm(&r)
                })
                .collect();
            d1.sort_by(|a, b| a.partial_cmp(b).unwrap());
            d2.sort_by(|a, b| a.partial_cmp(b).unwrap());
            for (a, b) in d1.iter().zip(&d2) {
                assert!((a - b).abs() < 1e-10);
            }
        }
        // several images of the same neighbour, including self-images
        assert!(nl.of(0).iter().filter(|n| n.j == 0).count() >= 6);
    }

    #[test]
    fn open_system_and_mixed_pbc() {
        let pos = vec![[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [10.0, 0.0, 0.0]];
        let nl = NeighborList::build(&pos, None, [false; 3], 2.0).unwrap();
        assert_eq!(nl.of(0).len(), 1);
        assert_eq!(nl.of(2).len(), 0);
        // periodic along x only, cell length 11 → atom 2 sees atom 0 through the boundary at distance 1
        let cell = [[11.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]];
        let nl = NeighborList::build(&pos, Some(&cell), [true, false, false], 2.0).unwrap();
        assert_eq!(nl.of(2).len(), 1);
        assert_eq!(nl.of(0).len(), 2);
        assert!(NeighborList::build(&[[f64::NAN, 0.0, 0.0]], None, [false; 3], 2.0).is_err());
    }
}
