//! Export and runtime: the ONNX model against the training-time model, finite differences through the runtime,
//! the C ABI (whole-system and neighbour-list entry points, threads, bad input, panics) and C/C++ programs.
mod common;

use common::{molecule, random_model, triclinic_cell};
use pilip::c_api::*;
use pilip::frame::{Frame, Mat3, Vec3};
use pilip::model::Model;
use pilip::onnx::export::{export, probe_structures, to_onnx, Verification};
use pilip::onnx::metadata::Dtype;
use pilip::runtime::{Potential, RuntimeOptions};
use prost::Message;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pilip-runtime-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn molecule_model() -> Model {
    random_model(vec![1, 6, 8], 3.5, &[molecule()], 3)
}
fn cell_model() -> Model {
    random_model(vec![13, 29], 3.0, &[triclinic_cell()], 5)
}

fn max_abs_diff(a: impl IntoIterator<Item = f64>, b: impl IntoIterator<Item = f64>) -> f64 {
    a.into_iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn load(bytes: &[u8]) -> Potential {
    Potential::from_bytes(bytes, "test model", &RuntimeOptions::default()).unwrap()
}

#[test]
fn exported_model_matches_the_training_time_model() {
    for (model, frame) in [(molecule_model(), molecule()), (cell_model(), triclinic_cell())] {
        let mut frames = probe_structures(&model);
        frames.push(frame);
        for dtype in [Dtype::F64, Dtype::F32] {
            let pot = load(&to_onnx(&model, dtype).unwrap().encode_to_vec());
            let v = pilip::onnx::export::verify(&model, &pot, &frames).unwrap();
            let tol = Verification::tolerance(dtype);
            assert!(v.energy_rel < tol && v.forces_rel < tol && v.virial_rel < tol, "{dtype:?}: {v:?}");
            // and it is not trivially exact in f32 (the f32 graph really runs in f32)
            if dtype == Dtype::F32 {
                assert!(v.forces_rel > 1e-12, "{v:?}");
            }
            // per-atom energies and stress agree too
            let want = model.predict_frame(frames.last().unwrap()).unwrap();
            let got = pot.compute_frame(frames.last().unwrap()).unwrap();
            assert!(max_abs_diff(got.atomic_energies.clone(), want.atomic_energies.clone()) < 10.0 * tol);
            assert_eq!(got.stress.is_some(), want.stress.is_some());
        }
    }
}

#[test]
fn runtime_forces_and_virial_match_finite_differences_of_the_onnx_energy() {
    let model = cell_model();
    let pot = load(&to_onnx(&model, Dtype::F64).unwrap().encode_to_vec());
    let frame = triclinic_cell();
    let energy = |f: &Frame| pot.compute_frame(f).unwrap().energy;
    let p = pot.compute_frame(&frame).unwrap();
    let h = 1e-5;
    let mut worst: f64 = 0.0;
    for i in 0..frame.len() {
        for a in 0..3 {
            let mut fp = frame.clone();
            let mut fm = frame.clone();
            fp.positions[i][a] += h;
            fm.positions[i][a] -= h;
            let fd = -(energy(&fp) - energy(&fm)) / (2.0 * h);
            worst = worst.max((fd - p.forces[i][a]).abs());
        }
    }
    assert!(worst < 1e-6, "force vs finite difference: {worst}");
    // virial: W_ab = −∂E/∂ε_ab for a homogeneous strain of positions and cell
    for a in 0..3 {
        for b in 0..3 {
            let fd = -(energy(&pilip::check::strained(&frame, a, b, h)) - energy(&pilip::check::strained(&frame, a, b, -h))) / (2.0 * h);
            assert!((fd - p.virial[a][b]).abs() < 1e-6, "virial[{a}][{b}] = {} vs FD {fd}", p.virial[a][b]);
        }
    }
}

#[test]
fn export_writes_a_verified_file_and_refuses_nothing_valid() {
    let dir = tmpdir("export");
    let model = molecule_model();
    let path = dir.join("m.onnx");
    let v = export(&model, Dtype::F32, &path, &[molecule()]).unwrap();
    assert_eq!(v.n_structures, 1);
    let pot = Potential::load(&path, &RuntimeOptions::default()).unwrap();
    assert_eq!(pot.metadata.species, vec![1, 6, 8]);
    assert_eq!(pot.metadata.symbols, vec!["H", "C", "O"]);
    assert_eq!(pot.metadata.cutoff, 3.5);
    assert_eq!(pot.metadata.dtype, Dtype::F32);
    assert_eq!(pot.metadata.reference_energies, model.reference_energies);
    assert!(!dir.join("m.onnx.tmp").exists());
}

// ---------------------------------------------------------------------------------------------------------------
// C ABI, called from Rust

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

fn write_model(dir: &Path, model: &Model, dtype: Dtype) -> PathBuf {
    let path = dir.join(format!("model-{}.onnx", dtype.name()));
    std::fs::write(&path, to_onnx(model, dtype).unwrap().encode_to_vec()).unwrap();
    path
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
    let dir = tmpdir("entry-points");
    let model = cell_model();
    let m = c_load(&write_model(&dir, &model, Dtype::F64), None).unwrap();
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
    proto.metadata_props.iter_mut().find(|p| p.key == "pilip.format_version").unwrap().value = "2".into();
    let newer = dir.join("newer.onnx");
    std::fs::write(&newer, proto.encode_to_vec()).unwrap();
    let (s, msg) = c_load(&newer, None).err().unwrap();
    assert_eq!(s, PILIP_ERROR_MODEL);
    assert!(msg.contains("format version 2") && msg.contains("upgrade pilip"), "{msg}");
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
    assert_eq!(v["engine"], "tract");
    assert_eq!(v["descriptor"]["n_radial"], 4);
}

// ---------------------------------------------------------------------------------------------------------------
// C and C++ programs

/// Where cargo put the cdylib built for these tests: `target/<profile>/deps`, beside the test binary (it is
/// only copied to `target/<profile>` by `cargo build`).
fn lib_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().to_path_buf()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes the structures and the Rust results in the plain-text format the C/C++ programs read.
fn write_reference(path: &Path, pot: &Potential, frames: &[Frame]) {
    let mut s = format!("{}\n", frames.len());
    for f in frames {
        let p = pot.compute_frame(f).unwrap();
        let cell: Mat3 = f.cell.unwrap_or([[0.0; 3]; 3]);
        s += &format!("{} {}\n", f.len(), f.is_fully_periodic() as i32);
        s += &cell.iter().flatten().map(|x| format!("{x:.17e}")).collect::<Vec<_>>().join(" ");
        s += "\n";
        for i in 0..f.len() {
            let x = f.positions[i];
            let fo = p.forces[i];
            s += &format!(
                "{} {:.17e} {:.17e} {:.17e} {:.17e} {:.17e} {:.17e} {:.17e}\n",
                f.numbers[i], x[0], x[1], x[2], p.atomic_energies[i], fo[0], fo[1], fo[2]
            );
        }
        s += &format!("{:.17e}\n", p.energy);
        s += &p.virial.iter().flatten().map(|x| format!("{x:.17e}")).collect::<Vec<_>>().join(" ");
        s += "\n";
    }
    std::fs::write(path, s).unwrap();
}

fn compile_and_run(compiler: &str, source: &Path, extra: &[&str], dir: &Path, args: &[&Path]) -> String {
    let exe = dir.join(source.file_stem().unwrap()).with_extension(if compiler == "c++" { "cppexe" } else { "cexe" });
    let lib_dir = lib_dir();
    assert!(lib_dir.join("libpilip.so").exists(), "libpilip.so not found in {}", lib_dir.display());
    let out = std::process::Command::new(compiler)
        .args(extra)
        .args(["-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(root().join("include"))
        .arg(source)
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lpilip", "-lm", "-lpthread"])
        .output()
        .expect("a C/C++ compiler (cc, c++) is needed for this test");
    assert!(out.status.success(), "compiling {}:\n{}", source.display(), String::from_utf8_lossy(&out.stderr));
    let run = std::process::Command::new(&exe).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(run.status.success(), "{} failed:\n{stdout}\n{}", exe.display(), String::from_utf8_lossy(&run.stderr));
    stdout
}

#[test]
fn c_and_cpp_programs_reproduce_the_rust_results() {
    let dir = tmpdir("c-programs");
    for (name, model, frame) in [("molecule", molecule_model(), molecule()), ("cell", cell_model(), triclinic_cell())] {
        let path = write_model(&dir, &model, Dtype::F32);
        let pot = Potential::load(&path, &RuntimeOptions::default()).unwrap();
        let mut frames = probe_structures(&model);
        frames.push(frame);
        let reference = dir.join(format!("{name}.txt"));
        write_reference(&reference, &pot, &frames);
        let c = compile_and_run("cc", &root().join("tests/c/check_reference.c"), &["-std=c99"], &dir, &[&path, &reference]);
        assert!(c.contains("C API: all checks passed"), "{c}");
        let cpp = compile_and_run("c++", &root().join("tests/c/check_reference.cpp"), &["-std=c++17"], &dir, &[&path, &reference]);
        assert!(cpp.contains("C++ API: all checks passed"), "{cpp}");
    }
}

#[test]
fn the_c_example_in_the_docs_compiles_and_runs() {
    let dir = tmpdir("doc-example");
    let doc = std::fs::read_to_string(root().join("docs/c-api.md")).unwrap();
    let start = doc.find("```c\n").expect("docs/c-api.md has a ```c block") + 5;
    let end = start + doc[start..].find("```").unwrap();
    let source = dir.join("example.c");
    std::fs::write(&source, &doc[start..end]).unwrap();
    let model = cell_model();
    let path = write_model(&dir, &model, Dtype::F32);
    let out = compile_and_run("cc", &source, &["-std=c99"], &dir, &[&path]);
    // the example computes a small Al/Cu cell; check its energy against the Rust runtime
    let line = out.lines().find(|l| l.starts_with("energy")).unwrap_or_else(|| panic!("{out}"));
    let e: f64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    let frame = Frame {
        positions: vec![[0.0, 0.0, 0.0], [1.8, 1.8, 0.0], [1.8, 0.0, 1.8], [0.0, 1.8, 1.8]],
        numbers: vec![29, 29, 29, 13],
        cell: Some([[3.6, 0.0, 0.0], [0.0, 3.6, 0.0], [0.0, 0.0, 3.6]]),
        pbc: [true; 3],
        ..Default::default()
    };
    let want = Potential::load(&path, &RuntimeOptions::default()).unwrap().compute_frame(&frame).unwrap().energy;
    assert!((e - want).abs() < 1e-9, "{e} vs {want}");
}

#[cfg(feature = "ort")]
#[test]
fn onnxruntime_engine_matches_tract() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        assert!(std::env::var("CI").is_err(), "CI must set ORT_DYLIB_PATH for the ort engine test");
        eprintln!("skipping: ORT_DYLIB_PATH is not set");
        return;
    }
    for (model, frame) in [(molecule_model(), molecule()), (cell_model(), triclinic_cell())] {
        for dtype in [Dtype::F32, Dtype::F64] {
            let bytes = to_onnx(&model, dtype).unwrap().encode_to_vec();
            let ort = Potential::from_bytes(&bytes, "t", &RuntimeOptions::from_json(r#"{"engine":"ort"}"#).unwrap()).unwrap();
            assert_eq!(ort.engine_name(), "ort");
            let v = pilip::onnx::export::verify(&model, &ort, &[frame.clone()]).unwrap();
            let tol = Verification::tolerance(dtype);
            assert!(v.energy_rel < tol && v.forces_rel < tol && v.virial_rel < tol, "ort {dtype:?}: {v:?}");
        }
    }
}
