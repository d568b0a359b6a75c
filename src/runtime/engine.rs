//! Network engines: what evaluates the exported networks (per-atom energies and ∂E_i/∂G_i) for the runtime.
//!
//! The runtime computes descriptors and the chain rule itself (f64, Rust); an engine only maps each species'
//! descriptor batch to energies and gradients. tract is the default (pure Rust, no download); ONNX Runtime is
//! optional (`--features ort`).

use crate::error::{Error, Result};
use crate::onnx::metadata::{Dtype, ModelMetadata};
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// Network outputs of one species: energies `[n]` (eV, without the reference energy) and ∂E/∂G `[n][F]`.
pub type SpeciesOutput = (Vec<f64>, Vec<f64>);

/// Evaluates all species' networks; `batches[s]` holds the raw descriptors of the atoms of species s, row-major
/// `[n_s][F]`, and may be empty. Must be callable from several threads at once.
pub trait Engine: Send + Sync {
    /// "tract", "ort".
    fn name(&self) -> &'static str;
    /// Per species: energies `[n_s]` and ∂E/∂G `[n_s][F]` of the batch.
    fn run(&self, batches: &[Vec<f64>], n_features: usize) -> Result<Vec<SpeciesOutput>>;
}

/// One species' descriptors as `T`, zero-padded to at least one row (graphs and kernels need not handle empty
/// tensors; the padded row's outputs are dropped by [`unpadded`]). Returns (rows, values).
pub(crate) fn padded<T: Copy + Default>(batch: &[f64], n_features: usize, convert: fn(f64) -> T) -> (usize, Vec<T>) {
    let n = (batch.len() / n_features).max(1);
    let mut v: Vec<T> = batch.iter().map(|&x| convert(x)).collect();
    v.resize(n * n_features, T::default());
    (n, v)
}

/// Energies and gradients of the real atoms of a species whose batch held `batch_len` values; an output
/// shorter than that (a graph that does not compute what its signature says) is an error, not an index panic.
pub(crate) fn unpadded(
    engine: &str,
    mut energies: Vec<f64>,
    mut gradients: Vec<f64>,
    batch_len: usize,
    n_features: usize,
) -> Result<SpeciesOutput> {
    let rows = batch_len / n_features;
    if energies.len() < rows || gradients.len() < batch_len {
        return Err(engine_error(
            engine,
            format!(
                "the graph returned {} energies and {} gradient values for {rows} atoms of {n_features} features",
                energies.len(),
                gradients.len()
            ),
        ));
    }
    energies.truncate(rows);
    gradients.truncate(batch_len);
    Ok((energies, gradients))
}

fn engine_error(engine: &str, e: impl std::fmt::Display) -> Error {
    Error::engine(format!("{engine} engine failed while evaluating the network: {e}"))
}

/// tract-onnx: the graph is optimised once at load; each call runs a fresh state of the shared plan.
pub struct TractEngine {
    plan: Arc<TypedRunnableModel>,
    dtype: Dtype,
    n_species: usize,
}

impl TractEngine {
    /// Optimises the decoded graph for repeated runs.
    pub fn new(proto: &pb::ModelProto, meta: &ModelMetadata, source: &str) -> Result<Self> {
        let fail = |stage: &str, e: TractError| {
            Error::model(format!("{source}: tract could not {stage} the model graph: {e:#}"))
        };
        // Graphs reach tract only after `onnx::decode`'s structural checks; a panic in its shape inference on a
        // graph that still slips through is reported as a malformed model, like any other refusal.
        let build = std::panic::catch_unwind(|| -> Result<Arc<TypedRunnableModel>> {
            let model = tract_onnx::onnx().model_for_proto_model(proto).map_err(|e| fail("read", e))?;
            let model = model.into_optimized().map_err(|e| fail("optimise", e))?;
            model.into_runnable().map_err(|e| fail("prepare", e))
        });
        let plan = build.map_err(|_| Error::model(format!("{source}: tract could not read the model graph (malformed)")))??;
        Ok(TractEngine { plan, dtype: meta.dtype, n_species: meta.species.len() })
    }
}

impl Engine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn run(&self, batches: &[Vec<f64>], nf: usize) -> Result<Vec<SpeciesOutput>> {
        debug_assert_eq!(batches.len(), self.n_species);
        let mut inputs: TVec<TValue> = TVec::new();
        for b in batches {
            let tensor = match self.dtype {
                Dtype::F32 => {
                    let (n, v) = padded(b, nf, |x| x as f32);
                    Tensor::from_shape(&[n, nf], &v)
                }
                Dtype::F64 => {
                    let (n, v) = padded(b, nf, |x| x);
                    Tensor::from_shape(&[n, nf], &v)
                }
            }
            .map_err(|e| engine_error("tract", e))?;
            inputs.push(tensor.into_tvalue());
        }
        let outputs = self.plan.run(inputs).map_err(|e| engine_error("tract", e))?;
        let to_f64 = |t: &TValue| -> Result<Vec<f64>> {
            let view = t.try_as_plain_ram().map_err(|e| engine_error("tract", e))?;
            Ok(match self.dtype {
                Dtype::F32 => view.as_slice::<f32>().map_err(|e| engine_error("tract", e))?.iter().map(|&x| x as f64).collect(),
                Dtype::F64 => view.as_slice::<f64>().map_err(|e| engine_error("tract", e))?.to_vec(),
            })
        };
        (0..batches.len())
            .map(|s| unpadded("tract", to_f64(&outputs[2 * s])?, to_f64(&outputs[2 * s + 1])?, batches[s].len(), nf))
            .collect()
    }
}
