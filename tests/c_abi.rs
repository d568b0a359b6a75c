//! The C ABI called from Rust: both entry points agree, threads share a model, bad input gives status codes
//! and messages (never a panic across the ABI), versions and metadata.
mod common;

use common::*;
use pilip::c_api::*;
use pilip::export::{probe_structures, to_onnx};
use pilip::frame::{Frame, Vec3};
use pilip::onnx::metadata::Dtype;
use prost::Message;
use std::ffi::{CStr, CString};
use std::path::Path;

struct CModel(*mut pilip_model_t);
unsafe impl Send for CModel {}
unsafe impl Sync for CModel {}
impl Drop for CModel {
    fn drop(&mut self) {
        unsafe { pilip_model_free(self.0) }
    }
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(pilip_last_error()).to_string_lossy().into_owned() }
}

fn c_load(path: &Path, options: Option<&str>) -> Result<CModel, (i32, String)> {
    let p = CString::new(path.to_str().unwrap()).unwrap();
    let o = options.map(|o| CString::new(o).unwrap());
    let mut m = std::ptr::null_mut();
    let s = unsafe { pilip_model_load(p.as_ptr(), o.as_ref().map_or(std::ptr::null(), |o| o.as_ptr()), &mut m) };
    if s == PILIP_SUCCESS {
        Ok(CModel(m))
    } else {
        assert!(m.is_null());
        Err((s, last_error()))
    }
}

struct Out {
    energy: f64,
    atomic: Vec<f64>,
    forces: Vec<f64>,
    virial: [f64; 9],
}

fn c_compute(m: &CModel, f: &Frame) -> Result<Out, (i32, String)> {
    let n = f.len();
    let pos: Vec<f64> = f.positions.iter().flatten().copied().collect();
    let z: Vec<i32> = f.numbers.iter().map(|&z| z as i32).collect();
    let cell: Option<Vec<f64>> = f.cell.map(|c| c.iter().flatten().copied().collect());
    let mut o = Out { energy: 0.0, atomic: vec![0.0; n], forces: vec![0.0; 3 * n], virial: [0.0; 9] };
    let s = unsafe {
        pilip_model_compute(
            m.0,
            n,
            pos.as_ptr(),
            z.as_ptr(),
            cell.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            f.pbc.as_ptr(),
            &mut o.energy,
            o.atomic.as_mut_ptr(),
            o.forces.as_mut_ptr(),
            o.virial.as_mut_ptr(),
        )
    };
    if s == PILIP_SUCCESS {
        Ok(o)
    } else {
        Err((s, last_error()))
    }
}


/// Local atoms = the cell's atoms; ghosts = every periodic image within `cutoff + skin` of the cell (built the
/// way an MD engine does); full neighbour lists from a brute-force search with a skin (so some listed
/// neighbours are beyond the cutoff). Returns positions, owners (atom each ghost images), neighbour lists.
fn ghost_system(f: &Frame, cutoff: f64, skin: f64) -> (Vec<Vec3>, Vec<usize>, Vec<Vec<i32>>) {
    let cell = f.cell.unwrap();
    let n = f.len();
    let mut pos = f.positions.clone();
    let mut owner: Vec<usize> = (0..n).collect();
    let reach = cutoff + skin;
    let r = 3i32;
    for a in -r..=r {
        for b in -r..=r {
            for c in -r..=r {
                if (a, b, c) == (0, 0, 0) {
                    continue;
                }
                for i in 0..n {
                    let x: Vec3 = std::array::from_fn(|k| {
                        f.positions[i][k] + a as f64 * cell[0][k] + b as f64 * cell[1][k] + c as f64 * cell[2][k]
                    });
                    let near = f.positions.iter().any(|p| (0..3).map(|k| (x[k] - p[k]).powi(2)).sum::<f64>() < reach * reach);
                    if near {
                        pos.push(x);
                        owner.push(i);
                    }
                }
            }
        }
    }
    let lists = (0..n)
        .map(|i| {
            (0..pos.len())
                .filter(|&j| j != i && (0..3).map(|k| (pos[j][k] - pos[i][k]).powi(2)).sum::<f64>() < reach * reach)
                .map(|j| j as i32)
                .collect()
        })
        .collect();
    (pos, owner, lists)
}

#[test]
fn both_c_entry_points_agree_on_a_periodic_system() {
    for (name, model) in [("power_spectrum", cell_model()), ("bispectrum", bispectrum_cell_model()), ("repulsive", repulsive_cell_model())] {
        check_entry_points(name, &model);
    }
}

fn check_entry_points(name: &str, model: &pilip::model::Model) {
    let dir = tmpdir(&format!("entry-points-{name}"));
    let m = c_load(&write_model(&dir, model, Dtype::F64), None).unwrap();
    let frame = triclinic_cell();
    let whole = c_compute(&m, &frame).unwrap();

    let (pos, owner, lists) = ghost_system(&frame, model.cutoff(), 1.0);
    let n_total = pos.len();
    let n_local = frame.len();
    assert!(n_total > 5 * n_local, "the cell is smaller than the cutoff sphere: many ghosts ({n_total})");
    let flat: Vec<f64> = pos.iter().flatten().copied().collect();
    let z: Vec<i32> = owner.iter().map(|&i| frame.numbers[i] as i32).collect();
    let counts: Vec<i32> = lists.iter().map(|l| l.len() as i32).collect();
    // LAMMPS-style special-bond bits in the top of each index must be ignored
    let flagged: Vec<Vec<i32>> = lists.iter().map(|l| l.iter().map(|&j| j | (1 << 30)).collect()).collect();
    let ptrs: Vec<*const i32> = flagged.iter().map(|l| l.as_ptr()).collect();
    // the entry point with the fixed inputs; centres and outputs vary
    let call = |centers: *const i32, energy: *mut f64, atomic: *mut f64, forces: *mut f64, virial: *mut f64, atomic_virial: *mut f64| unsafe {
        pilip_model_compute_neighbors(
            m.0,
            n_total,
            flat.as_ptr(),
            z.as_ptr(),
            n_local,
            centers,
            counts.as_ptr(),
            ptrs.as_ptr(),
            energy,
            atomic,
            forces,
            virial,
            atomic_virial,
        )
    };
    let mut energy = 1.0; // outputs are added to
    let mut atomic = vec![0.0; n_total];
    let mut forces = vec![0.0; 3 * n_total];
    let mut virial = [0.0; 9];
    let mut atomic_virial = vec![0.0; 9 * n_total];
    let s = call(
        std::ptr::null(),
        &mut energy,
        atomic.as_mut_ptr(),
        forces.as_mut_ptr(),
        virial.as_mut_ptr(),
        atomic_virial.as_mut_ptr(),
    );
    assert_eq!(s, PILIP_SUCCESS, "{}", last_error());
    let tol = 1e-10;
    assert!((energy - 1.0 - whole.energy).abs() < tol, "{energy} vs {}", whole.energy);
    assert!(max_abs_diff(atomic[..n_local].to_vec(), whole.atomic.clone()) < tol);
    assert!(atomic[n_local..].iter().all(|&e| e == 0.0), "ghosts have no energy");
    // fold ghost forces back onto their owners (what LAMMPS's reverse communication does)
    let mut folded = vec![0.0; 3 * n_local];
    for (j, &o) in owner.iter().enumerate() {
        for k in 0..3 {
            folded[3 * o + k] += forces[3 * j + k];
        }
    }
    assert!(max_abs_diff(folded, whole.forces.clone()) < tol);
    assert!(max_abs_diff(virial, whole.virial) < tol);
    let mut summed = [0.0; 9];
    for j in 0..n_total {
        for k in 0..9 {
            summed[k] += atomic_virial[9 * j + k];
        }
    }
    assert!(max_abs_diff(summed, whole.virial) < tol, "per-atom virials sum to the virial");

    // explicit centre indices (a permutation) give the same energy
    let centers: Vec<i32> = (0..n_local as i32).rev().collect();
    let mut e2 = 0.0;
    let null = std::ptr::null_mut();
    let s = call(centers.as_ptr(), &mut e2, null, null, null, null);
    assert_eq!(s, PILIP_SUCCESS);
    assert!((e2 - whole.energy).abs() < tol);
}

#[test]
fn eight_threads_sharing_one_model_match_serial_calls() {
    let dir = tmpdir("threads");
    let model = molecule_model();
    let m = c_load(&write_model(&dir, &model, Dtype::F32), None).unwrap();
    let mut frames = probe_structures(&model);
    frames.push(molecule());
    let serial: Vec<Out> = frames.iter().map(|f| c_compute(&m, f).unwrap()).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (m, frames, serial) = (&m, &frames, &serial);
                s.spawn(move || {
                    for k in 0..20 {
                        let i = (t + k) % frames.len();
                        let o = c_compute(m, &frames[i]).unwrap();
                        assert_eq!(o.energy.to_bits(), serial[i].energy.to_bits());
                        assert_eq!(o.forces, serial[i].forces);
                        assert_eq!(o.virial, serial[i].virial);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

#[test]
fn bad_input_gives_status_codes_and_messages() {
    let dir = tmpdir("bad-input");
    let model = molecule_model();
    let good = write_model(&dir, &model, Dtype::F32);
    let m = c_load(&good, None).unwrap();

    // NULL pointers
    let mut raw = std::ptr::null_mut();
    assert_eq!(unsafe { pilip_model_load(std::ptr::null(), std::ptr::null(), &mut raw) }, PILIP_ERROR_INVALID_ARGUMENT);
    assert!(last_error().contains("'path' is NULL"), "{}", last_error());
    let p = CString::new(good.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { pilip_model_load(p.as_ptr(), std::ptr::null(), std::ptr::null_mut()) }, PILIP_ERROR_INVALID_ARGUMENT);
    let mut e = 0.0;
    let s = unsafe {
        pilip_model_compute(m.0, 2, std::ptr::null(), std::ptr::null(), std::ptr::null(), std::ptr::null(), &mut e, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut())
    };
    assert_eq!(s, PILIP_ERROR_INVALID_ARGUMENT);
    assert!(last_error().contains("'positions' is NULL"), "{}", last_error());
    let mut c = 0.0;
    assert_eq!(unsafe { pilip_model_cutoff(std::ptr::null(), &mut c) }, PILIP_ERROR_INVALID_ARGUMENT);
    assert_eq!(unsafe { pilip_model_cutoff(m.0, std::ptr::null_mut()) }, PILIP_ERROR_INVALID_ARGUMENT);
    unsafe { pilip_model_free(std::ptr::null_mut()) };

    // zero atoms: a valid empty system (an MPI rank may own no atoms)
    let o = c_compute(&m, &Frame::default()).unwrap();
    assert_eq!(o.energy, 0.0);
    // a single atom and atoms without neighbours: the isolated-atom energy, zero forces
    let single = Frame { positions: vec![[0.0; 3]], numbers: vec![6], ..Default::default() };
    let o1 = c_compute(&m, &single).unwrap();
    assert!(o1.energy.is_finite() && o1.forces.iter().all(|&f| f == 0.0));
    let far = Frame { positions: vec![[0.0; 3], [10.0, 0.0, 0.0]], numbers: vec![6, 6], ..Default::default() };
    let o2 = c_compute(&m, &far).unwrap();
    assert!((o2.energy - 2.0 * o1.energy).abs() < 1e-12 && o2.forces.iter().all(|&f| f == 0.0));

    // NaN coordinates, unknown element, periodic without a cell
    let mut nan = molecule();
    nan.positions[3][1] = f64::NAN;
    let (s, msg) = c_compute(&m, &nan).err().unwrap();
    assert_eq!(s, PILIP_ERROR_INVALID_ARGUMENT);
    assert!(msg.contains("atom 3") && msg.contains("not finite"), "{msg}");
    let mut unknown = molecule();
    unknown.numbers[2] = 26;
    let (s, msg) = c_compute(&m, &unknown).err().unwrap();
    assert_eq!(s, PILIP_ERROR_INVALID_ARGUMENT);
    assert!(msg.contains("atom 2") && msg.contains("26 (Fe)") && msg.contains("H, C, O"), "{msg}");
    let no_cell = Frame { pbc: [true; 3], ..molecule() };
    assert!(c_compute(&m, &no_cell).err().unwrap().1.contains("need a cell"));

    // files: missing, truncated, ONNX but not pilip, newer format, edited graph, bad options
    let (s, msg) = c_load(&dir.join("missing.onnx"), None).err().unwrap();
    assert_eq!(s, PILIP_ERROR_IO);
    assert!(msg.contains("missing.onnx"), "{msg}");
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.join("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let (s, msg) = c_load(&truncated, None).err().unwrap();
    assert_eq!(s, PILIP_ERROR_MODEL);
    assert!(msg.contains("truncated.onnx") && msg.contains("not a readable ONNX file"), "{msg}");
    let mut proto = to_onnx(&model, Dtype::F32).unwrap();
    proto.metadata_props.clear();
    let foreign = dir.join("foreign.onnx");
    std::fs::write(&foreign, proto.encode_to_vec()).unwrap();
    let (s, msg) = c_load(&foreign, None).err().unwrap();
    assert_eq!(s, PILIP_ERROR_MODEL);
    assert!(msg.contains("not a pilip model") && msg.contains("pilip export"), "{msg}");
    let mut proto = to_onnx(&model, Dtype::F32).unwrap();
    let next = PILIP_MODEL_FORMAT_VERSION + 1;
    proto.metadata_props.iter_mut().find(|p| p.key == "pilip.format_version").unwrap().value = next.to_string();
    let newer = dir.join("newer.onnx");
    std::fs::write(&newer, proto.encode_to_vec()).unwrap();
    let (s, msg) = c_load(&newer, None).err().unwrap();
    assert_eq!(s, PILIP_ERROR_MODEL);
    assert!(msg.contains(&format!("format version {next}")) && msg.contains("upgrade pilip"), "{msg}");
    let mut proto = to_onnx(&model, Dtype::F32).unwrap();
    proto.graph.as_mut().unwrap().initializer[3].float_data[0] += 1.0;
    let edited = dir.join("edited.onnx");
    std::fs::write(&edited, proto.encode_to_vec()).unwrap();
    assert!(c_load(&edited, None).err().unwrap().1.contains("checksum"));
    let (s, msg) = c_load(&good, Some(r#"{"engine": "torch"}"#)).err().unwrap();
    assert_eq!(s, PILIP_ERROR_INVALID_ARGUMENT);
    assert!(msg.contains("options_json") && msg.contains("torch"), "{msg}");

    // a panic inside the library becomes a status code
    assert_eq!(pilip_debug_panic(), PILIP_ERROR_INTERNAL);
    assert!(last_error().contains("internal error") && last_error().contains("deliberate panic"));
}

#[test]
fn c_api_version_constants_match_the_crate() {
    let v = unsafe { CStr::from_ptr(pilip_version()) }.to_str().unwrap();
    assert_eq!(v, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        format!("{PILIP_VERSION_MAJOR}.{PILIP_VERSION_MINOR}.{PILIP_VERSION_PATCH}"),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(PILIP_MODEL_FORMAT_VERSION as u32, pilip::onnx::metadata::MODEL_FORMAT_VERSION);
}

#[test]
fn metadata_and_species_through_the_c_api() {
    let dir = tmpdir("metadata");
    let m = c_load(&write_model(&dir, &molecule_model(), Dtype::F64), None).unwrap();
    let mut n = 0usize;
    assert_eq!(unsafe { pilip_model_species(m.0, std::ptr::null_mut(), 0, &mut n) }, PILIP_SUCCESS);
    assert_eq!(n, 3);
    let mut z = [0i32; 3];
    assert_eq!(unsafe { pilip_model_species(m.0, z.as_mut_ptr(), 3, &mut n) }, PILIP_SUCCESS);
    assert_eq!(z, [1, 6, 8]);
    let mut json = std::ptr::null();
    assert_eq!(unsafe { pilip_model_metadata_json(m.0, &mut json) }, PILIP_SUCCESS);
    let v: serde_json::Value = serde_json::from_str(unsafe { CStr::from_ptr(json) }.to_str().unwrap()).unwrap();
    assert_eq!(v["format_version"], 1);
    assert_eq!(v["symbols"], serde_json::json!(["H", "C", "O"]));
    assert_eq!(v["cutoff"], 3.5);
    assert_eq!(v["dtype"], "f64");
    assert_eq!(v["engine"], "native");
    assert_eq!(v["descriptor"]["n_radial"], 4);
}

#[test]
fn every_error_kind_has_its_status_code() {
    use pilip::error::Error;
    let io = Error::io("x", std::io::Error::new(std::io::ErrorKind::NotFound, "gone"));
    let parse = Error::Parse { file: "f".into(), line: 1, msg: "m".into() };
    let cases = [
        (io, PILIP_ERROR_IO),
        (parse, PILIP_ERROR_INVALID_ARGUMENT),
        (Error::Config("c".into()), PILIP_ERROR_INVALID_ARGUMENT),
        (Error::invalid("i"), PILIP_ERROR_INVALID_ARGUMENT),
        (Error::model("m"), PILIP_ERROR_MODEL),
        (Error::engine("e"), PILIP_ERROR_ENGINE),
    ];
    for (e, code) in cases {
        assert_eq!(status_of(&e), code, "{e:?}");
    }
}

#[test]
fn engine_problems_are_engine_errors_and_threads_are_checked() {
    let dir = tmpdir("engine-errors");
    let path = write_model(&dir, &molecule_model(), Dtype::F32);
    // a missing ONNX Runtime library (or, without the `ort` feature, the engine itself) is not the model's fault
    let missing = dir.join("no-such-dir/libonnxruntime.so");
    let options = format!(r#"{{"engine": "ort", "ort_library": "{}"}}"#, missing.display());
    let (s, msg) = c_load(&path, Some(&options)).err().unwrap();
    assert_eq!(s, PILIP_ERROR_ENGINE, "{msg}");
    assert!(msg.contains("no-such-dir/libonnxruntime.so") || msg.contains("not compiled"), "{msg}");
    // no threads, or absurdly many, are refused rather than ignored
    for threads in [0, 100_000] {
        let (s, msg) = c_load(&path, Some(&format!(r#"{{"threads": {threads}}}"#))).err().unwrap();
        assert_eq!(s, PILIP_ERROR_INVALID_ARGUMENT, "{msg}");
        assert!(msg.contains("threads must be in 1..="), "{msg}");
    }
    assert!(c_load(&path, Some(r#"{"engine": "tract", "threads": 1}"#)).is_ok());
}

#[test]
fn threads_give_bit_identical_results_through_both_entry_points() {
    let dir = tmpdir("threads-identical");
    let model = cell_model();
    let path = write_model(&dir, &model, Dtype::F64);
    // 625 atoms: three chunks of the evaluation (256 atoms each), so the threaded path really runs
    let frame = pilip::frame::supercell(&triclinic_cell(), 5).unwrap();
    let (pos, owner, lists) = ghost_system(&frame, model.cutoff(), 0.5);
    let local = |m: &CModel| {
        let flat: Vec<f64> = pos.iter().flatten().copied().collect();
        let z: Vec<i32> = owner.iter().map(|&i| frame.numbers[i] as i32).collect();
        let counts: Vec<i32> = lists.iter().map(|l| l.len() as i32).collect();
        let ptrs: Vec<*const i32> = lists.iter().map(|l| l.as_ptr()).collect();
        let (mut e, mut f, mut w) = (0.0, vec![0.0; 3 * pos.len()], [0.0; 9]);
        let mut av = vec![0.0; 9 * pos.len()];
        let null = std::ptr::null_mut();
        let s = unsafe {
            pilip_model_compute_neighbors(m.0, pos.len(), flat.as_ptr(), z.as_ptr(), frame.len(), std::ptr::null(),
                counts.as_ptr(), ptrs.as_ptr(), &mut e, null, f.as_mut_ptr(), w.as_mut_ptr(), av.as_mut_ptr())
        };
        assert_eq!(s, PILIP_SUCCESS, "{}", last_error());
        (e, f, w, av)
    };
    let one = c_load(&path, None).unwrap();
    let (whole1, local1) = (c_compute(&one, &frame).unwrap(), local(&one));
    for threads in [2, 3, 8] {
        let m = c_load(&path, Some(&format!(r#"{{"threads": {threads}}}"#))).unwrap();
        for _ in 0..2 {
            // twice: the second call reuses the first call's buffers
            let whole = c_compute(&m, &frame).unwrap();
            assert_eq!(whole.energy.to_bits(), whole1.energy.to_bits(), "{threads} threads");
            assert_eq!((&whole.atomic, &whole.forces, whole.virial), (&whole1.atomic, &whole1.forces, whole1.virial));
            assert!(local(&m) == local1, "{threads} threads: neighbour-list entry point differs");
        }
    }
}


#[test]
fn symbols_come_from_the_model() {
    let dir = tmpdir("symbols");
    let m = c_load(&write_model(&dir, &molecule_model(), Dtype::F64), None).unwrap();
    let symbol = |k: usize| -> Result<String, (i32, String)> {
        let mut p = std::ptr::null();
        match unsafe { pilip_model_symbol(m.0, k, &mut p) } {
            PILIP_SUCCESS => Ok(unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_string()),
            s => Err((s, last_error())),
        }
    };
    assert_eq!((0..3).map(|k| symbol(k).unwrap()).collect::<Vec<_>>(), ["H", "C", "O"]);
    let (s, msg) = symbol(3).err().unwrap();
    assert_eq!(s, PILIP_ERROR_INVALID_ARGUMENT);
    assert!(msg.contains("index 3") && msg.contains("3 species"), "{msg}");
    assert_eq!(unsafe { pilip_model_symbol(m.0, 0, std::ptr::null_mut()) }, PILIP_ERROR_INVALID_ARGUMENT);
}

#[test]
fn the_model_family_is_recorded_and_an_unknown_one_is_refused() {
    let dir = tmpdir("family");
    let model = molecule_model();
    let m = c_load(&write_model(&dir, &model, Dtype::F64), None).unwrap();
    let mut json = std::ptr::null();
    assert_eq!(unsafe { pilip_model_metadata_json(m.0, &mut json) }, PILIP_SUCCESS);
    let v: serde_json::Value = serde_json::from_str(unsafe { CStr::from_ptr(json) }.to_str().unwrap()).unwrap();
    assert_eq!(v["family"], "power_spectrum");
    // files written before families existed have no family key: power spectrum, same results
    let mut proto = to_onnx(&model, Dtype::F64).unwrap();
    proto.metadata_props.retain(|p| p.key != "pilip.model_family");
    let old = dir.join("old.onnx");
    std::fs::write(&old, proto.encode_to_vec()).unwrap();
    let o = c_load(&old, None).unwrap();
    assert_eq!(c_compute(&o, &molecule()).unwrap().energy, c_compute(&m, &molecule()).unwrap().energy);
    // a family this pilip does not know is refused by name
    let mut proto = to_onnx(&model, Dtype::F64).unwrap();
    proto.metadata_props.iter_mut().find(|p| p.key == "pilip.model_family").unwrap().value = "ace".into();
    let future = dir.join("future.onnx");
    std::fs::write(&future, proto.encode_to_vec()).unwrap();
    let (s, msg) = c_load(&future, None).err().unwrap();
    assert_eq!(s, PILIP_ERROR_MODEL);
    assert!(msg.contains("future.onnx") && msg.contains("'ace'") && msg.contains("power_spectrum"), "{msg}");
}

#[test]
fn the_header_is_public_api_only_and_its_version_is_the_crate_version() {
    let header = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/pilip.h")).unwrap();
    assert!(!header.contains("pilip_debug_panic"), "the test-only export must stay out of pilip.h");
    for (name, value) in [
        ("MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
        ("MINOR", env!("CARGO_PKG_VERSION_MINOR")),
        ("PATCH", env!("CARGO_PKG_VERSION_PATCH")),
    ] {
        assert!(header.contains(&format!("#define PILIP_VERSION_{name} {value}\n")), "PILIP_VERSION_{name}");
    }
    assert!(header.contains(&format!("#define PILIP_ERROR_ENGINE {PILIP_ERROR_ENGINE}\n")));
}

#[test]
fn impossible_systems_are_refused_before_memory_runs_out() {
    // A 9-atom cell given in the wrong unit (edge 0.1 "Å") made libpilip allocate 2.7 GB and abort the host.
    let dir = tmpdir("bounded-work");
    let m = c_load(&write_model(&dir, &cell_model(), Dtype::F32), None).unwrap();
    let grid = |n: usize, spacing: f64| -> Vec<Vec3> {
        (0..n * n * n).map(|k| [(k % n) as f64, ((k / n) % n) as f64, (k / (n * n)) as f64].map(|x| x * spacing)).collect()
    };
    let small = |edge: f64| Frame {
        positions: grid(3, edge / 3.0)[..9].to_vec(),
        numbers: vec![29; 9],
        cell: Some([[edge, 0.0, 0.0], [0.0, edge, 0.0], [0.0, 0.0, edge]]),
        pbc: [true; 3],
        ..Default::default()
    };
    let (s, msg) = c_compute(&m, &small(0.1)).err().unwrap();
    assert_eq!(s, PILIP_ERROR_INVALID_ARGUMENT);
    assert!(msg.contains("Å apart, closer than 0.1 Å") && msg.contains("not given in Å"), "{msg}");
    let (s, msg) = c_compute(&m, &small(0.01)).err().unwrap();
    assert_eq!(s, PILIP_ERROR_INVALID_ARGUMENT);
    assert!(msg.contains("cell is too small") && msg.contains("shortest height is 0.010 Å") && msg.contains("cutoff of 3 Å"), "{msg}");
    // 8000 atoms 0.11 Å apart in an open cluster: every atom sees all others, 6.4e7 pairs
    let dense = Frame { positions: grid(20, 0.11), numbers: vec![29; 8000], ..Default::default() };
    let (s, msg) = c_compute(&m, &dense).err().unwrap();
    assert_eq!(s, PILIP_ERROR_INVALID_ARGUMENT);
    assert!(msg.contains("neighbour pairs") && msg.contains("8000 atoms"), "{msg}");
    // the neighbour-list entry point refuses close pairs too, naming them
    let pos = [0.0, 0.0, 0.0, 0.05, 0.0, 0.0];
    let z = [29, 29];
    let (counts, l0, l1) = ([1, 1], [1i32], [0i32]);
    let lists = [l0.as_ptr(), l1.as_ptr()];
    let mut e = 0.0;
    let null = std::ptr::null_mut();
    let s = unsafe {
        pilip_model_compute_neighbors(m.0, 2, pos.as_ptr(), z.as_ptr(), 2, std::ptr::null(), counts.as_ptr(), lists.as_ptr(), &mut e, null, null, null, null)
    };
    assert_eq!(s, PILIP_ERROR_INVALID_ARGUMENT);
    assert!(last_error().contains("atoms 0 and 1 are 0.0500 Å apart"), "{}", last_error());
}
