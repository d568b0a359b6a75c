//! Physical constants in pilip's units (eV, Å, fs, amu, K), defined once.

/// Boltzmann constant, eV/K (CODATA 2018).
pub const KB: f64 = 8.617_333_262e-5;

/// 1 eV/amu expressed in Å²/fs² (the acceleration unit of velocity Verlet in eV, Å, fs, amu).
pub const EV_PER_AMU: f64 = 9.648_533_212e-3;
