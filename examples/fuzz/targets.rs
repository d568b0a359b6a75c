//! The fuzz targets: what each one feeds to pilip and what counts as a finding.
//!
//! A finding is a panic (caught here; behind the C ABI it would be `PILIP_ERROR_INTERNAL`), an internal-error
//! status, an empty error message, or a result that is silently wrong (non-finite values accepted). Aborts and
//! hangs are caught by the supervisor in `main.rs`, which runs the targets in a child process.

use crate::common;
use crate::mutate::{mutate_bytes, mutate_text, Bytes, NUMBER_TOKENS};
use pilip::c_api::*;
use pilip::config::Config;
use pilip::io::extxyz::{self, LabelKeys};
use pilip::onnx::metadata::{checksum, Dtype};
use pilip::rng::Rng;
use pilip::runtime::{Potential, RuntimeOptions};
use prost::Message;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use tract_onnx::pb;

/// What one input did.
pub enum Outcome {
    /// pilip accepted it and the result passed the checks.
    Accepted,
    /// pilip refused it with a message.
    Refused,
    /// A defect, described.
    Finding(String),
}

pub const NAMES: [&str; 5] = ["extxyz", "config", "model", "compute", "neighbors"];

/// The targets, in the order of [`NAMES`] (the discriminant also seeds each target's inputs).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Extxyz,
    Config,
    Model,
    Compute,
    Neighbors,
}
const KINDS: [Kind; 5] = [Kind::Extxyz, Kind::Config, Kind::Model, Kind::Compute, Kind::Neighbors];

/// A target with its corpus and, for the model-using targets, loaded models.
pub struct Target {
    kind: Kind,
    corpus: Vec<Vec<u8>>,
    models: Vec<LoadedModel>,
    dir: Option<PathBuf>,
}

struct LoadedModel {
    ptr: *mut pilip_model_t,
    species: Vec<i32>,
}

impl Drop for Target {
    fn drop(&mut self) {
        for m in &self.models {
            unsafe { pilip_model_free(m.ptr) };
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The two fixture models of the integration tests (H/C/O, cutoff 3.5 Å; Al/Cu, cutoff 3.0 Å), exported.
fn fixture_models() -> Vec<(pilip::model::Model, Dtype)> {
    vec![(common::molecule_model(), Dtype::F64), (common::cell_model(), Dtype::F32)]
}

impl Target {
    pub fn new(name: &str) -> Result<Target, String> {
        let kind = NAMES.iter().position(|&n| n == name).map(|k| KINDS[k]).ok_or_else(|| format!("unknown target '{name}'"))?;
        let mut t = Target { kind, corpus: Vec::new(), models: Vec::new(), dir: None };
        match kind {
            Kind::Extxyz => {
                t.corpus = vec![
                    include_str!("../data/ethanol_300.extxyz").lines().take(3 * 11).collect::<Vec<_>>().join("\n").into(),
                    include_str!("../data/cu_50.extxyz").lines().take(2 * 34).collect::<Vec<_>>().join("\n").into(),
                    extxyz::to_string(&[common::molecule(), common::triclinic_cell()], &LabelKeys::default()).into(),
                ];
            }
            Kind::Config => {
                t.corpus = vec![
                    include_str!("../configs/molecule.toml").into(),
                    include_str!("../configs/periodic.toml").into(),
                    include_str!("../configs/bench/aspirin.toml").into(),
                    include_str!("../configs/bench/piwsl_smoke.toml").into(),
                ];
            }
            Kind::Model => {
                for (model, dtype) in fixture_models() {
                    for d in [dtype, if dtype == Dtype::F32 { Dtype::F64 } else { Dtype::F32 }] {
                        let proto = pilip::export::to_onnx(&model, d).map_err(|e| e.to_string())?;
                        t.corpus.push(proto.encode_to_vec());
                    }
                }
            }
            Kind::Compute | Kind::Neighbors => {
                let dir = std::env::temp_dir().join(format!("pilip-fuzz-{}", std::process::id()));
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                for (k, (model, dtype)) in fixture_models().into_iter().enumerate() {
                    let path = dir.join(format!("model{k}.onnx"));
                    let proto = pilip::export::to_onnx(&model, dtype).map_err(|e| e.to_string())?;
                    std::fs::write(&path, proto.encode_to_vec()).map_err(|e| e.to_string())?;
                    for threads in [1, 3] {
                        let ptr = load_model(&path, threads)?;
                        t.models.push(LoadedModel { ptr, species: model.species.iter().map(|&z| z as i32).collect() });
                    }
                }
                t.dir = Some(dir);
            }
        }
        Ok(t)
    }

    /// Input number `i` of the run with `seed`: a pure function of (target, seed, i), so the supervisor can
    /// regenerate any input of a crashed child.
    pub fn input(&self, seed: u64, i: u64) -> Vec<u8> {
        let mut rng = Rng::derive(seed, self.kind as u64, i);
        let others: Vec<&[u8]> = self.corpus.iter().map(Vec::as_slice).collect();
        match self.kind {
            Kind::Extxyz | Kind::Config => {
                let base = &self.corpus[rng.below(self.corpus.len())];
                if rng.below(4) == 0 {
                    let mut b = base.clone();
                    mutate_bytes(&mut rng, &mut b, &others);
                    b
                } else {
                    mutate_text(&mut rng, &String::from_utf8_lossy(base)).into_bytes()
                }
            }
            Kind::Model => {
                let base = &self.corpus[rng.below(self.corpus.len())];
                mutate_model(&mut rng, base, &others)
            }
            Kind::Compute | Kind::Neighbors => {
                let n = [16, 64, 256, 1024][rng.below(4)];
                (0..n).map(|_| rng.next_u64() as u8).collect()
            }
        }
    }

    /// Runs one input.
    pub fn run(&self, input: &[u8]) -> Outcome {
        match self.kind {
            Kind::Extxyz => run_extxyz(input),
            Kind::Config => run_config(input),
            Kind::Model => run_model(input),
            Kind::Compute => run_compute(&self.models, input),
            Kind::Neighbors => run_neighbors(&self.models, input),
        }
    }
}

fn load_model(path: &Path, threads: usize) -> Result<*mut pilip_model_t, String> {
    let p = CString::new(path.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    let opts = CString::new(format!("{{\"threads\": {threads}}}")).map_err(|e| e.to_string())?;
    let mut m = std::ptr::null_mut();
    let status = unsafe { pilip_model_load(p.as_ptr(), opts.as_ptr(), &mut m) };
    if status != PILIP_SUCCESS {
        return Err(last_error());
    }
    Ok(m)
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(pilip_last_error()) }.to_string_lossy().into_owned()
}

/// Error messages must say something, and a panic behind the C ABI is a finding.
fn refused(status: pilip_status_t) -> Outcome {
    let msg = last_error();
    if status == PILIP_ERROR_INTERNAL {
        Outcome::Finding(format!("internal error: {msg}"))
    } else if msg.trim().is_empty() {
        Outcome::Finding(format!("status {status} with an empty message"))
    } else {
        Outcome::Refused
    }
}

fn error_message_ok(e: &pilip::Error) -> Outcome {
    if e.to_string().trim().is_empty() {
        Outcome::Finding("an error with an empty message".into())
    } else {
        Outcome::Refused
    }
}

/// `PILIP_FUZZ_VERBOSE=1` (set by `--replay`): describe each structured case on stderr.
fn verbose() -> bool {
    std::env::var_os("PILIP_FUZZ_VERBOSE").is_some()
}

fn all_finite<'a>(values: impl IntoIterator<Item = &'a f64>) -> bool {
    values.into_iter().all(|v| v.is_finite())
}

fn run_extxyz(input: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(input);
    let keys = [LabelKeys::default(), LabelKeys { energy: "REF_energy".into(), forces: "REF_forces".into(), stress: "virial".into() }];
    // The outcome counted is that of the default keys; the other keys only add checks.
    let mut accepted = false;
    for (ki, k) in keys.iter().enumerate() {
        match extxyz::parse(&text, "fuzz.extxyz", k) {
            Err(e) => {
                if let Outcome::Finding(f) = error_message_ok(&e) {
                    return Outcome::Finding(f);
                }
            }
            Ok(frames) => {
                accepted |= ki == 0;
                for (n, f) in frames.iter().enumerate() {
                    let finite = all_finite(f.positions.iter().flatten())
                        && all_finite(f.cell.iter().flatten().flatten())
                        && all_finite(f.energy.iter())
                        && all_finite(f.forces.iter().flatten().flatten())
                        && all_finite(f.stress.iter().flatten().flatten());
                    if !finite {
                        return Outcome::Finding(format!("frame {n} was accepted with a non-finite value"));
                    }
                    if f.numbers.len() != f.positions.len() {
                        return Outcome::Finding(format!("frame {n}: {} numbers for {} positions", f.numbers.len(), f.positions.len()));
                    }
                }
                // The writer's output of accepted frames must read back.
                if let Err(e) = extxyz::parse(&extxyz::to_string(&frames, k), "roundtrip", k) {
                    return Outcome::Finding(format!("accepted frames do not read back after writing: {e}"));
                }
            }
        }
    }
    if accepted {
        Outcome::Accepted
    } else {
        Outcome::Refused
    }
}

fn run_config(input: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(input);
    match Config::parse(&text, Path::new("fuzz/config.toml"), &[]) {
        Err(e) => error_message_ok(&e),
        Ok(cfg) => {
            // A resolved config is written next to each run and must load again.
            match Config::parse(&cfg.to_toml(), Path::new("fuzz/config.resolved.toml"), &[]) {
                Ok(_) => Outcome::Accepted,
                Err(e) => Outcome::Finding(format!("accepted config does not load again from its resolved form: {e}")),
            }
        }
    }
}

/// A mutation of a valid model: raw bytes, truncation, or an edit of its metadata or graph (with the checksum
/// recomputed half of the time, so the edit reaches the loader's later checks and the engine).
fn mutate_model(rng: &mut Rng, base: &[u8], others: &[&[u8]]) -> Vec<u8> {
    match rng.below(6) {
        0 => {
            let mut b = base.to_vec();
            mutate_bytes(rng, &mut b, others);
            b
        }
        1 => base[..rng.below(base.len())].to_vec(),
        _ => {
            let Ok(mut proto) = pb::ModelProto::decode(base) else { return base.to_vec() };
            for _ in 0..1 + rng.below(3) {
                edit_model(rng, &mut proto);
            }
            if rng.below(2) == 0 {
                if let Some(g) = proto.graph.as_ref() {
                    let sum = checksum(&g.encode_to_vec());
                    for p in proto.metadata_props.iter_mut().filter(|p| p.key.ends_with("checksum")) {
                        p.value = sum.clone();
                    }
                }
            }
            proto.encode_to_vec()
        }
    }
}

fn edit_model(rng: &mut Rng, proto: &mut pb::ModelProto) {
    let pick = |rng: &mut Rng, n: usize| if n == 0 { None } else { Some(rng.below(n)) };
    match rng.below(10) {
        0..=2 => {
            // A metadata value: numbers replaced by extreme spellings, JSON broken, values swapped.
            if let Some(k) = pick(rng, proto.metadata_props.len()) {
                let v = proto.metadata_props[k].value.clone();
                proto.metadata_props[k].value = match rng.below(4) {
                    0 => NUMBER_TOKENS[rng.below(NUMBER_TOKENS.len())].to_string(),
                    1 => ["[]", "{}", "[0]", "[-1]", "[29,29]", "[1e309]", "null", "\"x\"", "[1,6,8,1]"][rng.below(9)].into(),
                    _ => mutate_text(rng, &v),
                };
            }
        }
        3 => {
            if let Some(k) = pick(rng, proto.metadata_props.len()) {
                proto.metadata_props.remove(k);
            }
        }
        _ => {
            let Some(g) = proto.graph.as_mut() else { return };
            match rng.below(7) {
                0 => {
                    if let Some(k) = pick(rng, g.node.len()) {
                        g.node.remove(k);
                    }
                }
                1 => {
                    if let Some(k) = pick(rng, g.node.len()) {
                        g.node[k].op_type = ["Relu", "MatMul", "Add", "Foo", "", "Reshape", "Loop"][rng.below(7)].into();
                    }
                }
                2 => {
                    if let Some(k) = pick(rng, g.node.len()) {
                        let node = &mut g.node[k];
                        if let Some(j) = pick(rng, node.input.len()) {
                            node.input[j] = ["", "nonexistent", "descriptors_H"][rng.below(3)].into();
                        }
                    }
                }
                3 | 4 => {
                    // An initializer's shape claims more (or fewer) values than it holds.
                    if let Some(k) = pick(rng, g.initializer.len()) {
                        let t = &mut g.initializer[k];
                        if let Some(j) = pick(rng, t.dims.len()) {
                            t.dims[j] = [0, -1, 1, 3, 1 << 20, 1 << 31, 1 << 40, i64::MAX][rng.below(8)];
                        } else {
                            t.dims.push(1 << 30);
                        }
                    }
                }
                5 => {
                    if let Some(k) = pick(rng, g.initializer.len()) {
                        let t = &mut g.initializer[k];
                        t.raw_data.truncate(rng.below(t.raw_data.len() + 1));
                        t.float_data.truncate(rng.below(t.float_data.len() + 1));
                        t.double_data.truncate(rng.below(t.double_data.len() + 1));
                        if rng.below(3) == 0 {
                            t.data_type = rng.below(20) as i32;
                        }
                    }
                }
                _ => {
                    // A graph input or output with another shape or element type.
                    let values = if rng.below(2) == 0 { &mut g.input } else { &mut g.output };
                    if let Some(k) = pick(rng, values.len()) {
                        if let Some(pb::type_proto::Value::TensorType(t)) =
                            values[k].r#type.as_mut().and_then(|t| t.value.as_mut())
                        {
                            if rng.below(2) == 0 {
                                t.elem_type = rng.below(17) as i32;
                            } else if let Some(s) = t.shape.as_mut() {
                                if let Some(d) = pick(rng, s.dim.len()) {
                                    s.dim[d].value =
                                        Some(pb::tensor_shape_proto::dimension::Value::DimValue([0, -1, 1, 1 << 40][rng.below(4)]));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn run_model(input: &[u8]) -> Outcome {
    let potential = match Potential::from_bytes(input, "fuzz.onnx", &RuntimeOptions::default()) {
        Err(e) => return error_message_ok(&e),
        Ok(p) => p,
    };
    // A model that loads must compute, or refuse to, with a message.
    for frame in [common::molecule(), common::triclinic_cell()] {
        match potential.compute_frame(&frame) {
            Err(e) => {
                if let Outcome::Finding(f) = error_message_ok(&e) {
                    return Outcome::Finding(f);
                }
            }
            Ok(p) => {
                if !p.energy.is_finite() || !all_finite(p.forces.iter().flatten()) {
                    return Outcome::Finding("a loaded model returned a non-finite result without an error".into());
                }
            }
        }
    }
    Outcome::Accepted
}

/// Positions of `n` atoms in one of several regimes: a jittered grid of some spacing, a box of some size,
/// arbitrary (also non-finite) values, or all atoms on one spot.
fn positions(b: &mut Bytes, n: usize) -> Vec<f64> {
    let mut x = Vec::with_capacity(3 * n);
    match b.u8() % 4 {
        0 => {
            let spacing = [0.05, 0.3, 0.9, 1.4, 2.2, 3.0, 8.0, 1e4][b.below(8)];
            let side = (n as f64).cbrt().ceil().max(1.0) as usize;
            for i in 0..n {
                let g = [i % side, (i / side) % side, i / (side * side)];
                for a in g {
                    x.push(a as f64 * spacing + 0.1 * b.unit());
                }
            }
        }
        1 => {
            let size = [1.0, 5.0, 20.0, 1e3, 1e8][b.below(5)];
            x.extend((0..3 * n).map(|_| size * b.unit()));
        }
        2 => x.extend((0..3 * n).map(|_| b.float(10.0))),
        _ => x.extend((0..3 * n).map(|k| (k % 3) as f64 + 1e-3 * b.unit())),
    }
    x
}

fn numbers(b: &mut Bytes, n: usize, species: &[i32]) -> Vec<i32> {
    (0..n)
        .map(|_| if b.u8() < 240 { species[b.below(species.len())] } else { [0, -1, 119, 200, i32::MAX, i32::MIN, 26][b.below(7)] })
        .collect()
}

fn cell(b: &mut Bytes) -> Option<[f64; 9]> {
    let edge = [1e-9, 0.1, 1.0, 2.5, 4.0, 10.0, 1e3, 1e8, f64::NAN, f64::INFINITY, -4.0, 0.0][b.below(12)];
    match b.u8() % 5 {
        0 => None,
        1 => Some([edge, 0.0, 0.0, 0.0, edge, 0.0, 0.0, 0.0, edge]),
        2 => {
            let mut c = [0.0; 9];
            for (k, v) in c.iter_mut().enumerate() {
                *v = if k % 4 == 0 { edge } else { 0.3 * edge * b.unit() };
            }
            Some(c)
        }
        3 => Some([edge, 0.0, 0.0, edge, 0.0, 0.0, 0.0, 0.0, edge]),
        _ => Some(std::array::from_fn(|_| b.float(6.0))),
    }
}

fn run_compute(models: &[LoadedModel], input: &[u8]) -> Outcome {
    let mut b = Bytes::new(input);
    let model = &models[b.below(models.len())];
    let n = match b.u8() % 8 {
        0 => 0,
        1 => b.below(2000),
        _ => b.below(48),
    };
    let pos = positions(&mut b, n);
    let z = numbers(&mut b, n, &model.species);
    let cell = cell(&mut b);
    let pbc = if b.u8() % 4 == 0 { None } else { Some([b.bool(), b.bool(), b.bool()]) };
    let mask = b.u8();
    if verbose() {
        let (lo, hi) = pos.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
        eprintln!("compute: {n} atoms, coordinates in [{lo:e}, {hi:e}], numbers {z:?}, cell {cell:?}, pbc {pbc:?}, output mask {mask:#x}");
    }
    let (mut energy, mut atomic, mut forces, mut virial) = (f64::NAN, vec![f64::NAN; n], vec![f64::NAN; 3 * n], [f64::NAN; 9]);
    let out = |bit: u8, p: *mut f64| if mask & (1 << bit) != 0 { std::ptr::null_mut() } else { p };
    let status = unsafe {
        pilip_model_compute(
            model.ptr,
            n,
            pos.as_ptr(),
            z.as_ptr(),
            cell.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            pbc.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
            out(0, &mut energy),
            out(1, atomic.as_mut_ptr()),
            out(2, forces.as_mut_ptr()),
            out(3, virial.as_mut_ptr()),
        )
    };
    if status != PILIP_SUCCESS {
        return refused(status);
    }
    let finite = (mask & 1 != 0 || energy.is_finite())
        && (mask & 2 != 0 || all_finite(&atomic))
        && (mask & 4 != 0 || all_finite(&forces))
        && (mask & 8 != 0 || all_finite(&virial));
    if !finite {
        return Outcome::Finding(format!("success with non-finite outputs ({n} atoms)"));
    }
    if mask & 3 == 0 {
        let sum: f64 = atomic.iter().sum();
        if (sum - energy).abs() > 1e-6 * (1.0 + energy.abs()) {
            return Outcome::Finding(format!("energy {energy} != sum of atomic energies {sum}"));
        }
    }
    Outcome::Accepted
}

fn run_neighbors(models: &[LoadedModel], input: &[u8]) -> Outcome {
    let mut b = Bytes::new(input);
    let model = &models[b.below(models.len())];
    let n_total = if b.u8() % 8 == 0 { 0 } else { b.below(64) };
    let pos = positions(&mut b, n_total);
    let z = numbers(&mut b, n_total, &model.species);
    let n_centers = b.below(n_total + 3);
    let centers: Option<Vec<i32>> = if b.bool() {
        None
    } else {
        Some((0..n_centers).map(|_| if b.u8() < 250 { b.below(n_total.max(1)) as i32 } else { [-1, n_total as i32, i32::MAX][b.below(3)] }).collect())
    };
    // One list per atom index (the library reads the lists of centres only).
    let lists: Vec<Vec<i32>> = (0..n_total)
        .map(|i| {
            let count = match b.u8() % 4 {
                0 => n_total.saturating_sub(1),
                _ => b.below(40),
            };
            (0..count)
                .map(|k| match b.u8() {
                    0..=239 => ((i + 1 + k) % n_total.max(1)) as i32,
                    240..=243 => i as i32,
                    244..=247 => (b.below(n_total.max(1)) as i32) | ((b.below(8) as i32) << 29),
                    248..=250 => n_total as i32 + b.below(5) as i32,
                    251..=253 => -1 - b.below(3) as i32,
                    _ => i32::MAX,
                })
                .collect()
        })
        .collect();
    let mut counts: Vec<i32> = lists.iter().map(|l| l.len() as i32).collect();
    if n_total > 0 && b.u8() > 250 {
        let k = b.below(n_total);
        counts[k] = -1; // a negative count must be refused
    }
    let mut pointers: Vec<*const i32> = lists.iter().map(|l| l.as_ptr()).collect();
    if n_total > 0 && b.u8() > 250 {
        let k = b.below(n_total);
        if !lists[k].is_empty() {
            pointers[k] = std::ptr::null();
        }
    }
    let counts_ptr = if b.u8() > 252 { std::ptr::null() } else { counts.as_ptr() };
    let lists_ptr = if b.u8() > 252 { std::ptr::null() } else { pointers.as_ptr() };
    let mask = b.u8();
    let (mut energy, mut atomic, mut forces, mut virial, mut atomic_virial) =
        (0.0, vec![0.0; n_total], vec![0.0; 3 * n_total], [0.0; 9], vec![0.0; 9 * n_total]);
    let out = |bit: u8, p: *mut f64| if mask & (1 << bit) != 0 { std::ptr::null_mut() } else { p };
    // Centres must be valid atom indices with their own counts: the harness keeps the arrays it passes valid
    // for every index the library may read (0..n_total), as the header requires of callers.
    let status = unsafe {
        pilip_model_compute_neighbors(
            model.ptr,
            n_total,
            pos.as_ptr(),
            z.as_ptr(),
            n_centers,
            centers.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            counts_ptr,
            lists_ptr,
            out(0, &mut energy),
            out(1, atomic.as_mut_ptr()),
            out(2, forces.as_mut_ptr()),
            out(3, virial.as_mut_ptr()),
            out(4, atomic_virial.as_mut_ptr()),
        )
    };
    if status != PILIP_SUCCESS {
        return refused(status);
    }
    if !(energy.is_finite() && all_finite(&atomic) && all_finite(&forces) && all_finite(&virial) && all_finite(&atomic_virial)) {
        return Outcome::Finding(format!("success with non-finite outputs ({n_total} atoms, {n_centers} centres)"));
    }
    Outcome::Accepted
}
