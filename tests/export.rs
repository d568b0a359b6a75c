//! Export and the runtime: the ONNX model against the training-time model (f32 and f64, both engines), finite
//! differences through the runtime, the verified writer.
mod common;

use common::*;
use pilip::export::{export, probe_structures, to_onnx, Verification};
use pilip::frame::Frame;
use pilip::onnx::metadata::Dtype;
use pilip::runtime::{Potential, RuntimeOptions};
use prost::Message;

#[test]
fn exported_model_matches_the_training_time_model() {
    let cases = [
        (molecule_model(), molecule()),
        (cell_model(), triclinic_cell()),
        (bispectrum_molecule_model(), molecule()),
        (bispectrum_cell_model(), triclinic_cell()),
        (delta_model(), triclinic_cell()),
    ];
    for (model, frame) in cases {
        let mut frames = probe_structures(&model);
        frames.push(frame);
        for dtype in [Dtype::F64, Dtype::F32] {
            let pot = load(&to_onnx(&model, dtype).unwrap().encode_to_vec());
            let v = pilip::export::verify(&model, &pot, &frames).unwrap();
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
    for model in [cell_model(), bispectrum_cell_model()] {
        check_runtime_derivatives(&model);
    }
}

fn check_runtime_derivatives(model: &pilip::model::Model) {
    let pot = load(&to_onnx(model, Dtype::F64).unwrap().encode_to_vec());
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
            let fd = -(energy(&pilip::frame::strained(&frame, a, b, h)) - energy(&pilip::frame::strained(&frame, a, b, -h))) / (2.0 * h);
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

#[cfg(feature = "ort")]
#[test]
fn onnxruntime_engine_matches_tract() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        assert!(std::env::var("CI").is_err(), "CI must set ORT_DYLIB_PATH for the ort engine test");
        eprintln!("skipping: ORT_DYLIB_PATH is not set");
        return;
    }
    for (model, frame) in [(molecule_model(), molecule()), (cell_model(), triclinic_cell()), (bispectrum_cell_model(), triclinic_cell())] {
        for dtype in [Dtype::F32, Dtype::F64] {
            let bytes = to_onnx(&model, dtype).unwrap().encode_to_vec();
            let ort = Potential::from_bytes(&bytes, "t", &RuntimeOptions::from_json(r#"{"engine":"ort"}"#).unwrap()).unwrap();
            assert_eq!(ort.engine_name(), "ort");
            let v = pilip::export::verify(&model, &ort, &[frame.clone()]).unwrap();
            let tol = Verification::tolerance(dtype);
            assert!(v.energy_rel < tol && v.forces_rel < tol && v.virial_rel < tol, "ort {dtype:?}: {v:?}");
        }
    }
}

#[test]
fn a_bispectrum_file_with_a_broken_compression_is_refused_with_the_sizes() {
    let model = bispectrum_cell_model();
    let proto = to_onnx(&model, Dtype::F64).unwrap();
    let meta = proto.metadata_props.iter().find(|p| p.key == "pilip.bispectrum").unwrap();
    let b: serde_json::Value = serde_json::from_str(&meta.value).unwrap();
    let edits: [(&str, Box<dyn Fn(&mut serde_json::Value)>); 3] = [
        ("expected", Box::new(|b| { b["compression"].as_array_mut().unwrap().pop(); })),
        ("bispectrum.channels", Box::new(|b| b["channels"] = 1_000_000_000.into())),
        ("pilip.bispectrum", Box::new(|b| b["compression"] = "nan".into())),
    ];
    for (want, edit) in edits {
        let mut bad = b.clone();
        edit(&mut bad);
        let mut p = proto.clone();
        p.metadata_props.iter_mut().find(|p| p.key == "pilip.bispectrum").unwrap().value = bad.to_string();
        let err = Potential::from_bytes(&p.encode_to_vec(), "edited.onnx", &RuntimeOptions::default()).err().unwrap().to_string();
        assert!(err.contains("edited.onnx") && err.contains(want), "{err}");
    }
    // and without the key a bispectrum file is refused by name
    let mut p = proto.clone();
    p.metadata_props.retain(|p| p.key != "pilip.bispectrum");
    let err = Potential::from_bytes(&p.encode_to_vec(), "edited.onnx", &RuntimeOptions::default()).err().unwrap().to_string();
    assert!(err.contains("lacks its 'pilip.bispectrum'"), "{err}");
}

/// A Δ-learning model (a bispectrum base with a correction beside each network) whose correction is non-trivial.
fn delta_model() -> pilip::model::Model {
    let (mut model, trainable) = pilip::model::Model::with_correction(bispectrum_cell_model(), &[7, 5], 3).unwrap();
    let mut rng = pilip::rng::Rng::new(8);
    let p: Vec<f64> = model.params().iter().zip(&trainable).map(|(p, &t)| if t { p + 0.3 * rng.normal() } else { *p }).collect();
    model.set_params(&p);
    model
}
