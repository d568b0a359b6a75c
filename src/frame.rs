//! One atomic structure with optional reference labels.

pub type Vec3 = [f64; 3];
pub type Mat3 = [[f64; 3]; 3];

/// A structure: positions (Å), atomic numbers, optional cell (rows are lattice vectors, Å) with per-axis
/// periodicity, and whichever reference labels the data set has for it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    pub positions: Vec<Vec3>,
    pub numbers: Vec<u32>,
    /// Lattice vectors as rows; `None` for an open system.
    pub cell: Option<Mat3>,
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
    pub fn len(&self) -> usize {
        self.positions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
    /// True when every axis is periodic (stress and virial per volume are only defined then).
    pub fn is_fully_periodic(&self) -> bool {
        self.cell.is_some() && self.pbc.iter().all(|&p| p)
    }
    pub fn volume(&self) -> Option<f64> {
        self.cell.map(|c| det3(&c).abs())
    }
}

pub fn dot(a: &Vec3, b: &Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
pub fn cross(a: &Vec3, b: &Vec3) -> Vec3 {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}
pub fn norm(a: &Vec3) -> f64 {
    dot(a, a).sqrt()
}
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
