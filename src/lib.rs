//! pilip: physics-informed learned interatomic potentials.
pub mod descriptor;
pub mod elements;
pub mod error;
pub mod frame;
pub mod io;
pub mod model;
pub mod neighbors;
pub mod nn;
pub mod rng;
