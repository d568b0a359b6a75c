//! `pilip check-forces`: analytic forces and stress against central finite differences of the energy.

use crate::error::Result;
use crate::frame::{Frame, Mat3};
use crate::model::Model;

#[derive(Clone, Debug)]
pub struct FdReport {
    pub n_atoms: usize,
    pub step: f64,
    /// Largest |F_analytic − F_fd| over all components (eV/Å) and where it occurred.
    pub max_force_error: f64,
    pub worst_atom: usize,
    pub worst_axis: usize,
    pub max_force: f64,
    /// Largest stress deviation (eV/Å³), periodic systems only.
    pub max_stress_error: Option<f64>,
}

impl std::fmt::Display for FdReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "finite-difference check: {} atoms, step {:e}", self.n_atoms, self.step)?;
        write!(
            f,
            "forces: max |analytic - fd| = {:.3e} eV/Å (atom {}, {}) ; max |F| = {:.3e} eV/Å ; relative {:.2e}",
            self.max_force_error,
            self.worst_atom,
            ["x", "y", "z"][self.worst_axis],
            self.max_force,
            self.max_force_error / self.max_force.max(1e-12)
        )?;
        if let Some(s) = self.max_stress_error {
            write!(f, "\nstress: max |analytic - fd| = {s:.3e} eV/Å³")?;
        }
        Ok(())
    }
}

/// Strains cell and positions by (I + t·sym(e_ab)).
pub fn strained(frame: &Frame, a: usize, b: usize, t: f64) -> Frame {
    let mut e: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    e[a][b] += t / 2.0;
    e[b][a] += t / 2.0;
    let apply = |v: &[f64; 3]| [0, 1, 2].map(|r| e[r][0] * v[0] + e[r][1] * v[1] + e[r][2] * v[2]);
    let mut g = frame.clone();
    g.positions = frame.positions.iter().map(apply).collect();
    g.cell = frame.cell.map(|c| [apply(&c[0]), apply(&c[1]), apply(&c[2])]);
    g
}

pub fn finite_difference(model: &Model, frame: &Frame, h: f64) -> Result<FdReport> {
    let p = model.predict_frame(frame)?;
    let energy = |f: &Frame| -> Result<f64> { Ok(model.energy_of(&model.frame_environments(f)?)) };
    let mut rep = FdReport {
        n_atoms: frame.len(),
        step: h,
        max_force_error: 0.0,
        worst_atom: 0,
        worst_axis: 0,
        max_force: p.forces.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs())),
        max_stress_error: None,
    };
    for i in 0..frame.len() {
        for a in 0..3 {
            let mut fp = frame.clone();
            fp.positions[i][a] += h;
            let mut fm = frame.clone();
            fm.positions[i][a] -= h;
            let fd = -(energy(&fp)? - energy(&fm)?) / (2.0 * h);
            let err = (fd - p.forces[i][a]).abs();
            if err > rep.max_force_error {
                rep.max_force_error = err;
                rep.worst_atom = i;
                rep.worst_axis = a;
            }
        }
    }
    if let (Some(s), Some(v)) = (p.stress, frame.volume().filter(|_| frame.is_fully_periodic())) {
        let mut worst = 0.0f64;
        for a in 0..3 {
            for b in 0..3 {
                let fd = (energy(&strained(frame, a, b, h))? - energy(&strained(frame, a, b, -h))?) / (2.0 * h) / v;
                worst = worst.max((fd - s[a][b]).abs());
            }
        }
        rep.max_stress_error = Some(worst);
    }
    Ok(rep)
}

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

pub fn time_evaluation(model: &Model, frame: &Frame, repeats: usize) -> Result<Timing> {
    let env = model.frame_environments(frame)?;
    let n_pairs = env.descriptors.neighbors.n_pairs();
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

/// The periodic `frame` repeated n×n×n times (labels dropped).
pub fn supercell(frame: &Frame, n: usize) -> Result<Frame> {
    let cell = match (frame.cell, frame.is_fully_periodic()) {
        (Some(c), true) => c,
        _ => return Err(crate::error::Error::invalid("--supercell needs a fully periodic structure")),
    };
    let mut out = Frame { cell: Some(cell.map(|row| row.map(|x| x * n as f64))), pbc: [true; 3], ..Default::default() };
    for a in 0..n {
        for b in 0..n {
            for c in 0..n {
                let shift: crate::frame::Vec3 = std::array::from_fn(|k| a as f64 * cell[0][k] + b as f64 * cell[1][k] + c as f64 * cell[2][k]);
                for (p, &z) in frame.positions.iter().zip(&frame.numbers) {
                    out.positions.push(std::array::from_fn(|k| p[k] + shift[k]));
                    out.numbers.push(z);
                }
            }
        }
    }
    Ok(out)
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
    use crate::onnx::{export::to_onnx, metadata::Dtype};
    use crate::runtime::{EngineKind, Potential, RuntimeOptions};
    use prost::Message;
    let n = frame.len() as f64;
    let line = |name: &str, secs: f64| format!("{name:<28} {:>10.1} µs/call {:>9.3} µs/atom", 1e6 * secs, 1e6 * secs / n);
    let mut lines = vec![format!("{} atoms, {repeats} calls per engine, one thread, median", frame.len())];
    let t = median_time(repeats, || model.predict_frame(frame).map(|p| drop(std::hint::black_box(p))))?;
    lines.push(line("training-time model (f64)", t));
    let mut engines = vec![(EngineKind::Tract, "tract")];
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
