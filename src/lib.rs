//! pilip: physics-informed learned interatomic potentials.
#[allow(non_camel_case_types)]
pub mod c_api;
pub mod check;
pub mod config;
pub mod dataset;
pub mod descriptor;
pub mod elements;
pub mod error;
pub mod forces;
pub mod frame;
pub mod io;
pub mod linalg;
pub mod md;
pub mod metrics;
pub mod model;
pub mod neighbors;
pub mod nn;
pub mod onnx;
pub mod piwsl_bench;
pub mod plot;
pub mod rng;
pub mod runtime;
pub mod train;
