//! pilip: physics-informed learned interatomic potentials.
pub mod check;
pub mod config;
pub mod dataset;
pub mod descriptor;
pub mod elements;
pub mod error;
pub mod frame;
pub mod io;
pub mod linalg;
pub mod metrics;
pub mod model;
pub mod neighbors;
pub mod nn;
pub mod plot;
pub mod rng;
pub mod train;
