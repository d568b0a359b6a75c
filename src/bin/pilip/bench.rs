//! `pilip bench` and `pilip bench-runtime`: timings of energy + forces evaluations on one structure (benchmarks,
//! not tests: they print figures, `docs/benchmarks.md` collects them).

use pilip::error::Result;
use pilip::export::to_onnx;
use pilip::frame::Frame;
use pilip::model::Model;
use pilip::onnx::metadata::Dtype;
use pilip::runtime::{EngineKind, Potential, RuntimeOptions};
use prost::Message;

/// Timing of energy + forces evaluations on one structure (one thread), split into the parts of a call.
#[derive(Clone, Debug)]
pub struct Timing {
    pub n_atoms: usize,
    pub n_pairs: usize,
    pub repeats: usize,
    /// Median seconds per full call (neighbour list, descriptor, network, forces and virial).
    pub total: f64,
    /// Median seconds for the neighbour list + descriptor alone.
    pub environments: f64,
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} atoms, {} neighbour pairs, {} calls: energy+forces+virial {:.1} µs per call ({:.2} µs/atom); \
             neighbour list + descriptor {:.1} µs, network + chain rule {:.1} µs",
            self.n_atoms,
            self.n_pairs,
            self.repeats,
            1e6 * self.total,
            1e6 * self.total / self.n_atoms as f64,
            1e6 * self.environments,
            1e6 * (self.total - self.environments)
        )
    }
}

/// Median timings of the training-time model on `frame`.
pub fn time_evaluation(model: &Model, frame: &Frame, repeats: usize) -> Result<Timing> {
    let env = model.frame_environments(frame)?;
    let n_pairs = env.neighbors().n_pairs();
    let _ = model.predict(&env); // warm-up
    let mut full = Vec::with_capacity(repeats);
    let mut envs = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t0 = std::time::Instant::now();
        let e = model.frame_environments(frame)?;
        let t1 = std::time::Instant::now();
        std::hint::black_box(model.predict(&e));
        let t2 = std::time::Instant::now();
        envs.push((t1 - t0).as_secs_f64());
        full.push((t2 - t0).as_secs_f64());
    }
    Ok(Timing { n_atoms: frame.len(), n_pairs, repeats, total: median(full), environments: median(envs) })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median seconds per call of `f` over `repeats` calls (after one warm-up call).
fn median_time(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t0 = std::time::Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

/// One line per engine: median time of a whole-system energy + forces + virial call on one thread, for the
/// training-time model and the exported model in every engine this build has (ort needs ORT_DYLIB_PATH).
pub fn bench_runtime(model: &Model, frame: &Frame, repeats: usize) -> Result<Vec<String>> {
    let n = frame.len() as f64;
    let line = |name: &str, secs: f64| format!("{name:<28} {:>10.1} µs/call {:>9.3} µs/atom", 1e6 * secs, 1e6 * secs / n);
    let mut lines = vec![format!("{} atoms, {repeats} calls per engine, one thread, median", frame.len())];
    let t = median_time(repeats, || model.predict_frame(frame).map(|p| drop(std::hint::black_box(p))))?;
    lines.push(line("training-time model (f64)", t));
    let mut engines = vec![(EngineKind::Native, "native"), (EngineKind::Tract, "tract")];
    if cfg!(feature = "ort") {
        if std::env::var_os("ORT_DYLIB_PATH").is_some() {
            engines.push((EngineKind::Ort, "ort"));
        } else {
            lines.push("ort: skipped (set ORT_DYLIB_PATH to libonnxruntime.so)".into());
        }
    }
    for (kind, name) in engines {
        for dtype in [Dtype::F32, Dtype::F64] {
            let bytes = to_onnx(model, dtype)?.encode_to_vec();
            let opts = RuntimeOptions { engine: kind, ..Default::default() };
            let pot = Potential::from_bytes(&bytes, "benchmark model", &opts)?;
            let t = median_time(repeats, || pot.compute_frame(frame).map(|p| drop(std::hint::black_box(p))))?;
            lines.push(line(&format!("{name} {}", dtype.name()), t));
        }
    }
    Ok(lines)
}

/// Median seconds of one whole-system energy + forces + virial call of an exported model (after a warm-up).
pub fn time_potential(pot: &Potential, frame: &Frame, repeats: usize) -> Result<f64> {
    median_time(repeats, || pot.compute_frame(frame).map(|p| drop(std::hint::black_box(p))))
}
