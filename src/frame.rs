//! One atomic structure with optional reference labels, the small 3-D geometry it needs, and the structures
//! derived from it (strained cells, supercells).

use crate::error::{Error, Result};

/// A Cartesian vector, Å (or eV/Å for forces).
pub type Vec3 = [f64; 3];
/// A 3×3 matrix, row-major (cells: lattice vectors as rows).
pub type Mat3 = [[f64; 3]; 3];

/// A structure: positions (Å), atomic numbers, optional cell (rows are lattice vectors, Å) with per-axis
/// periodicity, and whichever reference labels the data set has for it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    /// Cartesian positions, Å.
    pub positions: Vec<Vec3>,
    /// Atomic numbers.
    pub numbers: Vec<u32>,
    /// Lattice vectors as rows; `None` for an open system.
    pub cell: Option<Mat3>,
    /// Periodicity along each lattice vector.
    pub pbc: [bool; 3],
    /// Reference total energy, eV.
    pub energy: Option<f64>,
    /// Reference forces, eV/Å.
    pub forces: Option<Vec<Vec3>>,
    /// Reference stress, eV/Å³, full 3×3 (ASE sign: stress = −virial / volume).
    pub stress: Option<Mat3>,
    /// Other per-frame key=value pairs, kept verbatim so the writer can round-trip them.
    pub info: Vec<(String, String)>,
}

impl Frame {
    /// Number of atoms.
    pub fn len(&self) -> usize {
        self.positions.len()
    }
    /// True for a structure without atoms.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
    /// True when every axis is periodic (stress and virial per volume are only defined then).
    pub fn is_fully_periodic(&self) -> bool {
        self.cell.is_some() && self.pbc.iter().all(|&p| p)
    }
    /// Cell volume, Å³ (`None` without a cell).
    pub fn volume(&self) -> Option<f64> {
        self.cell.map(|c| det3(&c).abs())
    }
}

/// `frame` with cell and positions strained by (I + t·sym(e_ab)): the deformation whose energy derivative is the
/// virial component W_ab (finite-difference checks of stress and virial).
pub fn strained(frame: &Frame, a: usize, b: usize, t: f64) -> Frame {
    let mut e: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    e[a][b] += t / 2.0;
    e[b][a] += t / 2.0;
    let apply = |v: &[f64; 3]| [0, 1, 2].map(|r| e[r][0] * v[0] + e[r][1] * v[1] + e[r][2] * v[2]);
    let mut g = frame.clone();
    g.positions = frame.positions.iter().map(apply).collect();
    g.cell = frame.cell.map(|c| [apply(&c[0]), apply(&c[1]), apply(&c[2])]);
    g
}

/// `frame` with every atom moved by `d[k]`.
pub fn displaced(frame: &Frame, d: &[Vec3]) -> Frame {
    let mut g = frame.clone();
    for (x, y) in g.positions.iter_mut().zip(d) {
        for a in 0..3 {
            x[a] += y[a];
        }
    }
    g
}

/// The fully periodic `frame` repeated n×n×n times (labels dropped).
pub fn supercell(frame: &Frame, n: usize) -> Result<Frame> {
    let cell = match (frame.cell, frame.is_fully_periodic()) {
        (Some(c), true) => c,
        _ => return Err(Error::invalid("a supercell needs a fully periodic structure")),
    };
    let mut out = Frame { cell: Some(cell.map(|row| row.map(|x| x * n as f64))), pbc: [true; 3], ..Default::default() };
    for a in 0..n {
        for b in 0..n {
            for c in 0..n {
                let shift: Vec3 = std::array::from_fn(|k| a as f64 * cell[0][k] + b as f64 * cell[1][k] + c as f64 * cell[2][k]);
                for (p, &z) in frame.positions.iter().zip(&frame.numbers) {
                    out.positions.push(std::array::from_fn(|k| p[k] + shift[k]));
                    out.numbers.push(z);
                }
            }
        }
    }
    Ok(out)
}

/// a·b
pub fn dot(a: &Vec3, b: &Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
/// a×b
pub fn cross(a: &Vec3, b: &Vec3) -> Vec3 {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}
/// |a|
pub fn norm(a: &Vec3) -> f64 {
    dot(a, a).sqrt()
}
/// Determinant of a 3×3 matrix.
pub fn det3(m: &Mat3) -> f64 {
    dot(&m[0], &cross(&m[1], &m[2]))
}
/// Inverse of a 3×3 matrix, `None` if singular.
pub fn inv3(m: &Mat3) -> Option<Mat3> {
    let d = det3(m);
    if d.abs() < 1e-12 {
        return None;
    }
    let c0 = cross(&m[1], &m[2]);
    let c1 = cross(&m[2], &m[0]);
    let c2 = cross(&m[0], &m[1]);
    // inverse = adj / det; columns of inverse are the cross products
    let mut inv = [[0.0; 3]; 3];
    for r in 0..3 {
        inv[r][0] = c0[r] / d;
        inv[r][1] = c1[r] / d;
        inv[r][2] = c2[r] / d;
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn inverse() {
        let m = [[3.0, 0.1, 0.0], [0.5, 2.0, 0.2], [-0.3, 0.4, 4.0]];
        let i = inv3(&m).unwrap();
        for r in 0..3 {
            for c in 0..3 {
                let v: f64 = (0..3).map(|k| m[r][k] * i[k][c]).sum();
                assert!((v - if r == c { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
    }
}
