//! Chemical elements: symbols and atomic numbers (H..Og), masses, covalent radii, and the one error message for
//! an element a model does not know.

use crate::error::Error;

const SYMBOLS: [&str; 118] = [
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar", "K",
    "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb",
    "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe", "Cs",
    "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta",
    "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa",
    "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf", "Db", "Sg", "Bh", "Hs", "Mt",
    "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og",
];

/// Atomic number of an element symbol (case-sensitive as in ASE: "Cu", not "CU").
pub fn atomic_number(symbol: &str) -> Option<u32> {
    SYMBOLS.iter().position(|s| *s == symbol).map(|i| i as u32 + 1)
}

/// Element symbol of an atomic number.
pub fn symbol(z: u32) -> Option<&'static str> {
    if z == 0 {
        return None;
    }
    SYMBOLS.get(z as usize - 1).copied()
}

/// The error for atom `i` whose atomic number `z` is not among a model's `species` (shared by the training-time
/// model and the runtime, so users see one message).
pub fn unknown_element(i: usize, z: i64, species: &[u32]) -> Error {
    Error::invalid(format!(
        "atom {i} has atomic number {z}{}, which this model does not know; model species: [{}]",
        u32::try_from(z).ok().and_then(symbol).map(|s| format!(" ({s})")).unwrap_or_default(),
        species.iter().map(|&s| symbol(s).unwrap_or("?")).collect::<Vec<_>>().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        assert_eq!(super::atomic_number("Cu"), Some(29));
        assert_eq!(super::symbol(8), Some("O"));
        assert_eq!(super::atomic_number("Xx"), None);
    }
}

/// Standard atomic weights (amu) of H..Pu, as ASE uses them (rounded); used for molecular dynamics.
const MASSES: [f64; 94] = [
    1.008, 4.0026, 6.94, 9.0122, 10.81, 12.011, 14.007, 15.999, 18.998, 20.180, 22.990, 24.305, 26.982, 28.085,
    30.974, 32.06, 35.45, 39.948, 39.098, 40.078, 44.956, 47.867, 50.942, 51.996, 54.938, 55.845, 58.933, 58.693,
    63.546, 65.38, 69.723, 72.630, 74.922, 78.971, 79.904, 83.798, 85.468, 87.62, 88.906, 91.224, 92.906, 95.95,
    97.0, 101.07, 102.91, 106.42, 107.87, 112.41, 114.82, 118.71, 121.76, 127.60, 126.90, 131.29, 132.91, 137.33,
    138.91, 140.12, 140.91, 144.24, 145.0, 150.36, 151.96, 157.25, 158.93, 162.50, 164.93, 167.26, 168.93, 173.05,
    174.97, 178.49, 180.95, 183.84, 186.21, 190.23, 192.22, 195.08, 196.97, 200.59, 204.38, 207.2, 208.98, 209.0,
    210.0, 222.0, 223.0, 226.0, 227.0, 232.04, 231.04, 238.03, 237.0, 244.0,
];

/// Atomic mass (amu) of an element.
pub fn mass(z: u32) -> Option<f64> {
    MASSES.get((z as usize).checked_sub(1)?).copied()
}

/// Covalent radius (Å, Cordero et al. 2008; sp³ carbon) used to find bonds; 1.2 Å for elements not listed.
pub fn covalent_radius(z: u32) -> f64 {
    match z {
        1 => 0.31,
        5 => 0.84,
        6 => 0.76,
        7 => 0.71,
        8 => 0.66,
        9 => 0.57,
        14 => 1.11,
        15 => 1.07,
        16 => 1.05,
        17 => 1.02,
        35 => 1.20,
        53 => 1.39,
        _ => 1.2,
    }
}
