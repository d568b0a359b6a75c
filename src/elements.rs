//! Chemical element symbols and atomic numbers (H..Og).

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

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        assert_eq!(super::atomic_number("Cu"), Some(29));
        assert_eq!(super::symbol(8), Some("O"));
        assert_eq!(super::atomic_number("Xx"), None);
    }
}
