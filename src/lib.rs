//! pilip: physics-informed learned interatomic potentials — train a potential on extended-XYZ data, export it
//! as one self-describing ONNX file, and evaluate it through the runtime (also behind the C ABI of `libpilip`).
//!
//! The layers, from the bottom (each module imports only modules of lower layers; `docs/architecture.md` has
//! the picture and `tests/architecture.rs` checks it):
//!
//! 0. [`error`], [`units`], [`rng`] — 1. [`frame`], [`elements`], `linalg` — 2. [`io`], [`neighbors`]
//! 3. physics: [`descriptor`], [`nn`], [`prediction`], [`repulsion`], [`family`]
//! 4. the trainable model: [`model`]
//! 5. the file format: [`onnx`]
//! 6. evaluation of exported models: [`runtime`]
//! 7. evaluation against labels: [`metrics`], [`check`]
//! 8. writing exported models: [`export`]
//! 9. – 11. training: [`config`], [`dataset`], [`train`]
//! 12. the C ABI: [`c_api`]
//!
//! The command-line tools (benchmarks, MD robustness, the PIWSL suite, plots) live in the `pilip` binary
//! (`src/bin/pilip/`), not in the library.
#![warn(missing_docs)]

#[allow(non_camel_case_types)]
pub mod c_api;
pub mod check;
pub mod config;
pub mod dataset;
pub mod descriptor;
pub mod elements;
pub mod error;
pub mod export;
pub mod family;
pub mod frame;
pub mod io;
mod linalg;
pub mod metrics;
pub mod model;
pub mod neighbors;
pub mod nn;
pub mod onnx;
pub mod prediction;
pub mod repulsion;
pub mod rng;
pub mod runtime;
pub mod train;
pub mod units;

pub use config::Config;
pub use error::{Error, Result};
pub use export::export;
pub use family::Family;
pub use frame::{Frame, Mat3, Vec3};
pub use metrics::Metrics;
pub use model::Model;
pub use onnx::metadata::{Dtype, ModelMetadata};
pub use prediction::Prediction;
pub use runtime::{EngineKind, Potential, RuntimeOptions};
pub use train::{train, TrainOptions, TrainSummary};
