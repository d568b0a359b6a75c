//! ONNX Runtime engine (cargo feature `ort`), loaded at run time from a `libonnxruntime.so` — for example the
//! one in PyPI's `onnxruntime` wheel (`onnxruntime/capi/libonnxruntime.so.*`). ONNX Runtime allows one
//! environment per process, so it is created once; a session runs one call at a time (calls from several
//! threads are serialised by a mutex).

use crate::error::{Error, Result};
use crate::onnx::metadata::{Dtype, ModelMetadata};
use crate::runtime::engine::{gather, scatter, Batch, Engine};
use ort::session::Session;
use ort::value::Tensor;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The process's ONNX Runtime environment and the library it came from, once one has loaded. Only a success is
/// kept: after a wrong path (a typo, a missing file) a later load with the right path still works.
static ENVIRONMENT: Mutex<Option<(PathBuf, &'static ort::environment::Environment)>> = Mutex::new(None);

/// Where to find libonnxruntime: the `ort_library` option, else `ORT_DYLIB_PATH`.
fn library_path(option: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = option {
        return Ok(p.to_path_buf());
    }
    std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).ok_or_else(|| {
        Error::engine(
            "engine 'ort' needs the ONNX Runtime library: set the option \"ort_library\" or the environment \
             variable ORT_DYLIB_PATH to libonnxruntime.so (e.g. from `pip install onnxruntime`: \
             site-packages/onnxruntime/capi/libonnxruntime.so.1.*)",
        )
    })
}

fn environment(option: Option<&Path>) -> Result<&'static ort::environment::Environment> {
    let path = library_path(option)?;
    let mut loaded = ENVIRONMENT.lock().map_err(|_| Error::engine("ONNX Runtime: a previous load panicked"))?;
    if let Some((from, env)) = loaded.as_ref() {
        if *from != path {
            return Err(Error::engine(format!(
                "ONNX Runtime is already loaded from {} in this process; cannot also load {}",
                from.display(),
                path.display()
            )));
        }
        return Ok(env);
    }
    if !path.is_file() {
        return Err(Error::engine(format!("ONNX Runtime library {} does not exist", path.display())));
    }
    let env = ort::init_from(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| b.with_name("pilip").build().map_err(|e| e.to_string()))
        .map_err(|e| Error::engine(format!("could not load ONNX Runtime from {}: {e}", path.display())))?;
    // One environment per process for the process's lifetime (ONNX Runtime's own rule).
    let env: &'static ort::environment::Environment = Box::leak(Box::new(env));
    *loaded = Some((path, env));
    Ok(env)
}

/// One ONNX Runtime session of a model.
pub struct OrtEngine {
    session: Mutex<Session>,
    dtype: Dtype,
    n_species: usize,
}

impl OrtEngine {
    /// A session of the model in `bytes` with `threads` intra-op threads.
    pub fn new(bytes: &[u8], meta: &ModelMetadata, library: Option<&Path>, threads: usize, source: &str) -> Result<Self> {
        let env = environment(library)?;
        let fail = |e: ort::Error| Error::model(format!("{source}: ONNX Runtime could not load the model: {e}"));
        let session = Session::builder(env)
            .map_err(fail)?
            .with_intra_threads(threads.max(1))
            .map_err(|e| fail(e.into()))?
            .commit_from_memory(bytes)
            .map_err(fail)?;
        Ok(OrtEngine { session: Mutex::new(session), dtype: meta.dtype, n_species: meta.species.len() })
    }
}

fn ort_error(e: impl std::fmt::Display) -> Error {
    Error::engine(format!("ort engine failed while evaluating the network: {e}"))
}

impl Engine for OrtEngine {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn run(&self, batch: &Batch, energies: &mut [f64], gradients: &mut [f64]) -> Result<()> {
        let nf = batch.n_features as i64;
        let mut inputs: Vec<ort::session::SessionInputValue> = Vec::with_capacity(self.n_species);
        for s in 0..self.n_species {
            let value = match self.dtype {
                Dtype::F32 => {
                    let (n, v) = gather(batch, s, |x| x as f32);
                    Tensor::from_array(([n as i64, nf], v)).map_err(ort_error)?.into_dyn()
                }
                Dtype::F64 => {
                    let (n, v) = gather(batch, s, |x| x);
                    Tensor::from_array(([n as i64, nf], v)).map_err(ort_error)?.into_dyn()
                }
            };
            inputs.push(value.into());
        }
        let mut session = self.session.lock().map_err(|_| ort_error("a previous call panicked"))?;
        let outputs = session.run(inputs.as_slice()).map_err(ort_error)?;
        for s in 0..self.n_species {
            match self.dtype {
                Dtype::F32 => {
                    let e = outputs[2 * s].try_extract_tensor::<f32>().map_err(ort_error)?.1;
                    let g = outputs[2 * s + 1].try_extract_tensor::<f32>().map_err(ort_error)?.1;
                    scatter("ort", batch, s, (e, g), energies, gradients)?;
                }
                Dtype::F64 => {
                    let e = outputs[2 * s].try_extract_tensor::<f64>().map_err(ort_error)?.1;
                    let g = outputs[2 * s + 1].try_extract_tensor::<f64>().map_err(ort_error)?.1;
                    scatter("ort", batch, s, (e, g), energies, gradients)?;
                }
            }
        }
        Ok(())
    }
}
