//! Network engines: what evaluates the exported networks (per-atom energies and ∂E_i/∂G_i) for the runtime.
//!
//! The runtime computes descriptors and the chain rule itself (f64, Rust); an engine only maps each species'
//! descriptor batch to energies and gradients. The native engine (`native`) is the default; tract runs any valid
//! graph (pure Rust, no download) and checks the native engine when a model loads; ONNX Runtime is optional
//! (`--features ort`).

use crate::error::{Error, Result};
use crate::onnx::metadata::{Dtype, ModelMetadata};
use tract_onnx::pb;
use tract_onnx::prelude::*;

/// The centre atoms of one call: their descriptors and species.
pub struct Batch<'a> {
    /// Row-major `[n_atoms][n_features]`.
    pub features: &'a [f64],
    /// Columns of `features`.
    pub n_features: usize,
    /// The species index of each row (atom).
    pub species: &'a [usize],
}

/// Evaluates all species' networks on a [`Batch`]. Must be callable from several threads at once.
pub trait Engine: Send + Sync {
    /// "native", "tract", "ort".
    fn name(&self) -> &'static str;
    /// Writes each atom's network energy (eV, without the reference energy) to `energies[row]` and its ∂E/∂G to
    /// `gradients[row·F..(row + 1)·F]`.
    fn run(&self, batch: &Batch, energies: &mut [f64], gradients: &mut [f64]) -> Result<()>;
}

/// The descriptors of species `s` as `T` in one pass, zero-padded to at least one row (graphs and kernels need
/// not handle empty tensors; the padded row's outputs are never read). Returns (rows, values).
pub(crate) fn gather<T: Copy + Default>(batch: &Batch, s: usize, convert: fn(f64) -> T) -> (usize, Vec<T>) {
    let nf = batch.n_features;
    let n = rows_of(batch, s).count().max(1);
    let mut v = vec![T::default(); n * nf];
    for (dst, row) in v.chunks_exact_mut(nf).zip(rows_of(batch, s)) {
        for (d, &x) in dst.iter_mut().zip(&batch.features[row * nf..(row + 1) * nf]) {
            *d = convert(x);
        }
    }
    (n, v)
}

/// Copies the outputs of species `s` to the rows of its atoms in one pass; an output shorter than the batch (a
/// graph that does not compute what its signature says) is an error, not an index panic.
pub(crate) fn scatter<T: Copy + Into<f64>>(
    engine: &str,
    batch: &Batch,
    s: usize,
    (e, g): (&[T], &[T]),
    energies: &mut [f64],
    gradients: &mut [f64],
) -> Result<()> {
    let (nf, n) = (batch.n_features, rows_of(batch, s).count());
    if e.len() < n || g.len() < n * nf {
        return Err(engine_error(
            engine,
            format!(
                "the graph returned {} energies and {} gradient values for {} atoms of {nf} features",
                e.len(),
                g.len(),
                n
            ),
        ));
    }
    for (r, row) in rows_of(batch, s).enumerate() {
        energies[row] = e[r].into();
        for (d, &x) in gradients[row * nf..(row + 1) * nf].iter_mut().zip(&g[r * nf..(r + 1) * nf]) {
            *d = x.into();
        }
    }
    Ok(())
}

/// The rows of species `s`, in order.
pub(crate) fn rows_of<'a>(batch: &'a Batch, s: usize) -> impl Iterator<Item = usize> + 'a {
    batch.species.iter().enumerate().filter(move |(_, &sp)| sp == s).map(|(r, _)| r)
}

/// Output `k` of a tract run as values of `T`.
fn output<T: Datum>(outputs: &TVec<TValue>, k: usize) -> std::result::Result<&[T], String> {
    outputs[k].try_as_plain_ram().map_err(|e| e.to_string())?.as_slice::<T>().map_err(|e| e.to_string())
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

    fn run(&self, batch: &Batch, energies: &mut [f64], gradients: &mut [f64]) -> Result<()> {
        let nf = batch.n_features;
        let fail = |e| engine_error("tract", e);
        let mut inputs: TVec<TValue> = TVec::new();
        for s in 0..self.n_species {
            // the gathered vector becomes the tensor's storage (no further copy)
            let tensor = match self.dtype {
                Dtype::F32 => {
                    let (n, v) = gather(batch, s, |x| x as f32);
                    tract_ndarray::Array2::from_shape_vec((n, nf), v).map(Tensor::from)
                }
                Dtype::F64 => {
                    let (n, v) = gather(batch, s, |x| x);
                    tract_ndarray::Array2::from_shape_vec((n, nf), v).map(Tensor::from)
                }
            }
            .map_err(|e| fail(e.to_string()))?;
            inputs.push(tensor.into_tvalue());
        }
        let outputs = self.plan.run(inputs).map_err(|e| fail(e.to_string()))?;
        for s in 0..self.n_species {
            let (e, g) = (2 * s, 2 * s + 1);
            match self.dtype {
                Dtype::F32 => {
                    let (e, g) = (output::<f32>(&outputs, e).map_err(fail)?, output::<f32>(&outputs, g).map_err(fail)?);
                    scatter("tract", batch, s, (e, g), energies, gradients)?;
                }
                Dtype::F64 => {
                    let (e, g) = (output::<f64>(&outputs, e).map_err(fail)?, output::<f64>(&outputs, g).map_err(fail)?);
                    scatter("tract", batch, s, (e, g), energies, gradients)?;
                }
            }
        }
        Ok(())
    }
}
