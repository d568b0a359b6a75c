//! Export and the runtime: the ONNX model against the training-time model (f32 and f64, every engine), the
//! native engine against the graph, finite differences through the runtime, the verified writer.
mod common;

use common::*;
use pilip::export::{export, probe_structures, to_onnx, Verification};
use pilip::frame::Frame;
use pilip::onnx::metadata::Dtype;
use pilip::runtime::{EngineKind, Potential, RuntimeOptions};
use prost::Message;
use tract_onnx::pb;

#[test]
fn exported_model_matches_the_training_time_model() {
    let cases = [
        (molecule_model(), molecule()),
        (dropped_inputs_molecule_model(), molecule()),
        (cell_model(), triclinic_cell()),
        (bispectrum_molecule_model(), molecule()),
        (bispectrum_cell_model(), triclinic_cell()),
        (compressed_bispectrum_cell_model(), triclinic_cell()),
        (delta_model(), triclinic_cell()),
        (repulsive_cell_model(), triclinic_cell()),
        (guarded_cell_model(), triclinic_cell()),
        (element_width_cell_model(), triclinic_cell()),
    ];
    for (model, frame) in cases {
        let mut frames = probe_structures(&model);
        frames.push(frame);
        for (dtype, engine) in [Dtype::F64, Dtype::F32].into_iter().flat_map(|d| [(d, EngineKind::Native), (d, EngineKind::Tract)]) {
            let bytes = to_onnx(&model, dtype).unwrap().encode_to_vec();
            let pot = Potential::from_bytes(&bytes, "t", &RuntimeOptions { engine, ..Default::default() }).unwrap();
            assert_eq!(pot.engine_name(), format!("{engine:?}").to_lowercase());
            let v = pilip::export::verify(&model, &pot, &frames).unwrap();
            let tol = Verification::tolerance(dtype);
            assert!(v.energy_rel < tol && v.forces_rel < tol && v.virial_rel < tol, "{dtype:?} {engine:?}: {v:?}");
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

/// Engine options for `engine`.
fn with_engine(engine: EngineKind) -> RuntimeOptions {
    RuntimeOptions { engine, ..Default::default() }
}

/// The native engine and tract on the same file: the same numbers to the graph's precision (f64: 1e-12 relative).
fn native_and_tract_agree(bytes: &[u8], frame: &Frame, tol: f64) {
    let native = Potential::from_bytes(bytes, "t", &with_engine(EngineKind::Native)).unwrap();
    let tract = Potential::from_bytes(bytes, "t", &with_engine(EngineKind::Tract)).unwrap();
    assert_same_prediction(&native.compute_frame(frame).unwrap(), &tract.compute_frame(frame).unwrap(), tol, "native vs tract");
}

#[test]
fn native_engine_agrees_with_tract_for_every_family_depth_and_precision() {
    let deep = pilip::model::Model::power_spectrum(pilip::descriptor::DescriptorSpec { cutoff: 3.0, r_min: 0.7, n_radial: 5, l_max: 2, radial_width: 0.8, radial_scale: 1.5, ..Default::default() }, vec![13, 29], &[5, 17, 33], 4).unwrap();
    let cases = [(molecule_model(), molecule()), (bispectrum_cell_model(), triclinic_cell()), (delta_model(), triclinic_cell()), (deep, triclinic_cell())];
    for (model, frame) in cases {
        native_and_tract_agree(&to_onnx(&model, Dtype::F64).unwrap().encode_to_vec(), &frame, 1e-12);
        // each is within 1e-5 of the f64 model (export's tolerance), so within 2e-5 of each other
        native_and_tract_agree(&to_onnx(&model, Dtype::F32).unwrap().encode_to_vec(), &frame, 2e-5);
    }
}

fn constant<'a>(g: &'a mut pb::GraphProto, name: &str) -> &'a mut pb::TensorProto {
    g.initializer.iter_mut().find(|t| t.name == name).unwrap_or_else(|| panic!("no constant {name}"))
}

/// Files written before the standardisation was folded into the first layer computed (G − μ)·(1/σ) with a Sub
/// and a Mul on the input; the native engine folds them itself and gives the numbers of today's file.
#[test]
fn native_engine_runs_files_with_the_standardisation_on_the_input() {
    let (model, frame) = (molecule_model(), molecule());
    let proto = to_onnx(&model, Dtype::F64).unwrap();
    let today = Potential::from_bytes(&proto.encode_to_vec(), "t", &RuntimeOptions::default()).unwrap().compute_frame(&frame).unwrap();
    let old = edited(proto, |g| {
        for sym in ["H", "C", "O"] {
            let input = g.input.iter().find(|v| v.name.ends_with(&format!("_{sym}"))).unwrap().name.clone();
            let n_in = constant(g, &format!("{sym}/W0")).dims[0] as usize;
            let n_out = constant(g, &format!("{sym}/W0")).dims[1] as usize;
            let mean: Vec<f64> = (0..n_in).map(|i| 0.1 * i as f64 - 0.5).collect();
            let inv_std: Vec<f64> = (0..n_in).map(|i| 1.0 + 0.01 * i as f64).collect();
            // W_old = diag(σ) W₀, b_old = b₀ + μ W₀: the same function once standardised
            let w = constant(g, &format!("{sym}/W0")).double_data.clone();
            let b = &mut constant(g, &format!("{sym}/b0")).double_data;
            for c in 0..n_out {
                b[c] += (0..n_in).map(|r| mean[r] * w[r * n_out + c]).sum::<f64>();
            }
            for (k, x) in constant(g, &format!("{sym}/W0")).double_data.iter_mut().enumerate() {
                *x /= inv_std[k / n_out];
            }
            let template = constant(g, &format!("{sym}/b0")).clone();
            for (name, values) in [("mean", mean), ("inv_std", inv_std)] {
                g.initializer.push(pb::TensorProto { name: format!("{sym}/{name}"), dims: vec![n_in as i64], double_data: values, ..template.clone() });
            }
            let node = |op: &str, inputs: [String; 2], out: &str| pb::NodeProto {
                input: inputs.to_vec(),
                output: vec![out.into()],
                name: out.into(),
                op_type: op.into(),
                ..Default::default()
            };
            let at = g.node.iter().position(|n| n.op_type == "MatMul" && n.input[0] == input).unwrap();
            g.node[at].input[0] = format!("{sym}/standardised");
            g.node.insert(at, node("Mul", [format!("{sym}/centred"), format!("{sym}/inv_std")], &format!("{sym}/standardised")));
            g.node.insert(at, node("Sub", [input.clone(), format!("{sym}/mean")], &format!("{sym}/centred")));
        }
    });
    for engine in [EngineKind::Native, EngineKind::Tract] {
        let p = Potential::from_bytes(&old, "old.onnx", &with_engine(engine)).unwrap().compute_frame(&frame).unwrap();
        // the folding reorders sums (μ W₀ is large), so the last digits move: 1e-9 relative
        assert_same_prediction(&p, &today, 1e-9, &format!("{engine:?} on the old file"));
    }
}

/// A valid graph that is not pilip's network (a sigmoid with another constant), or whose written-out gradient
/// disagrees with its forward chain, is refused by the native engine with a message that names tract, which
/// runs it.
#[test]
fn native_engine_refuses_graphs_it_does_not_reproduce() {
    let proto = to_onnx(&cell_model(), Dtype::F64).unwrap();
    let cases = [
        (edited(proto.clone(), |g| constant(g, "one").double_data[0] = 2.0), "does not add 1"),
        (edited(proto.clone(), |g| constant(g, "Al/W0T").double_data[3] += 0.5), "gradients differ from the graph's"),
    ];
    for (bytes, why) in cases {
        let err = Potential::from_bytes(&bytes, "edited.onnx", &RuntimeOptions::default()).err().unwrap().to_string();
        assert!(err.contains("edited.onnx: the native engine cannot run this graph") && err.contains(why) && err.contains("engine \"tract\""), "{err}");
        assert!(Potential::from_bytes(&bytes, "edited.onnx", &with_engine(EngineKind::Tract)).is_ok());
    }
}

/// An exported file read back as a training-time model (`model.init` / `model.base`) predicts what the model it
/// was exported from does, for both families and a Δ model (f64 files: to rounding).
#[test]
fn exported_models_read_back_for_training_predict_like_the_original() {
    let dir = tmpdir("read-back");
    let models = [molecule_model(), bispectrum_cell_model(), compressed_bispectrum_cell_model(), delta_model(), repulsive_cell_model(), element_width_cell_model()];
    for (k, model) in models.into_iter().enumerate() {
        let frame = if k == 0 { molecule() } else { triclinic_cell() };
        let path = dir.join(format!("m{k}.onnx"));
        std::fs::write(&path, to_onnx(&model, Dtype::F64).unwrap().encode_to_vec()).unwrap();
        let read = pilip::train::model_from_onnx(&path).unwrap();
        assert_eq!((read.family(), &read.species), (model.family(), &model.species));
        let (a, b) = (read.predict_frame(&frame).unwrap(), model.predict_frame(&frame).unwrap());
        assert_same_prediction(&a, &b, 1e-9, &format!("model {k} read back"));
    }
}

#[test]
fn runtime_forces_and_virial_match_finite_differences_of_the_onnx_energy() {
    for model in [cell_model(), bispectrum_cell_model(), compressed_bispectrum_cell_model(), repulsive_cell_model(), crowded_radial_cell_model(), guarded_cell_model(), element_width_cell_model()] {
        check_runtime_derivatives(&model);
    }
}

/// Each model is written with the oldest format version that describes it, so that older libraries keep
/// reading what they can run: 1 for the power spectrum, 2 for the bispectrum family, 3 once its three-body part
/// is compressed, 4 with a repulsive prior or Gaussians crowded towards short range, 5 with a domain guard, 6 with
/// per-element radial widths; a file that declares a version too old for its content is refused.
#[test]
fn models_are_written_with_the_oldest_format_version_that_describes_them() {
    let version = |p: &pb::ModelProto| p.metadata_props.iter().find(|p| p.key == "pilip.format_version").unwrap().value.clone();
    let mut repulsive_bispectrum = bispectrum_cell_model();
    repulsive_bispectrum.repulsion = repulsive_cell_model().repulsion;
    let cases = [
        (cell_model(), "1"),
        (bispectrum_cell_model(), "2"),
        (compressed_bispectrum_cell_model(), "3"),
        (repulsive_cell_model(), "4"),
        (repulsive_bispectrum, "4"),
        (crowded_radial_cell_model(), "4"),
        (guarded_cell_model(), "5"),
        (element_width_cell_model(), "6"),
    ];
    for (model, want) in cases {
        assert_eq!(version(&to_onnx(&model, Dtype::F32).unwrap()), want);
    }
    for (model, declared, needed) in [(compressed_bispectrum_cell_model(), "2", "3"), (repulsive_cell_model(), "3", "4"), (guarded_cell_model(), "4", "5"), (element_width_cell_model(), "5", "6")] {
        let mut proto = to_onnx(&model, Dtype::F32).unwrap();
        proto.metadata_props.iter_mut().find(|p| p.key == "pilip.format_version").unwrap().value = declared.into();
        let err = Potential::from_bytes(&proto.encode_to_vec(), "old.onnx", &RuntimeOptions::default()).err().unwrap().to_string();
        assert!(err.contains("old.onnx") && err.contains(&format!("needs version {needed}")), "{err}");
    }
}

/// The prior is really in the exported energy: the file with it differs from the one without by the ZBL pair
/// sum computed here from the formula, and a prior that does not fit the model's elements is refused by name.
#[test]
fn the_repulsive_prior_travels_in_the_file() {
    let (with, without) = (repulsive_cell_model(), cell_model());
    let frame = triclinic_cell();
    let e = |m: &pilip::model::Model| load(&to_onnx(m, Dtype::F64).unwrap().encode_to_vec()).compute_frame(&frame).unwrap().energy;
    let nl = pilip::neighbors::NeighborList::for_frame(&frame, with.cutoff()).unwrap();
    let mut want = 0.0;
    for i in 0..frame.len() {
        for nb in nl.of(i) {
            let (za, zb) = (frame.numbers[i] as f64, frame.numbers[nb.j] as f64);
            let r = pilip::frame::norm(&nb.r);
            let a = 0.4685 / (za.powf(0.23) + zb.powf(0.23));
            let phi = 14.3996453 * za * zb / r
                * [(0.18175f64, 3.1998f64), (0.50986, 0.94229), (0.28022, 0.4029), (0.02817, 0.20162)]
                    .iter()
                    .map(|(c, d)| c * (-d * r / a).exp())
                    .sum::<f64>();
            let x = ((r - 2.0) / 0.6).clamp(0.0, 1.0);
            want += 0.5 * phi * (1.0 - x * x * x * (10.0 - 15.0 * x + 6.0 * x * x));
        }
    }
    assert!(want > 1.0, "the cell reaches into the prior: {want} eV");
    assert!((e(&with) - e(&without) - want).abs() < 1e-9 * want, "{} vs {want}", e(&with) - e(&without));
    let mut proto = to_onnx(&with, Dtype::F64).unwrap();
    let entry = proto.metadata_props.iter_mut().find(|p| p.key == "pilip.repulsion").unwrap();
    entry.value = entry.value.replace("[13,29]", "[13,30]");
    let err = Potential::from_bytes(&proto.encode_to_vec(), "m.onnx", &RuntimeOptions::default()).err().unwrap().to_string();
    assert!(err.contains("m.onnx") && err.contains("Al–Zn"), "{err}");
}

/// The domain guard is in the exported energy, and only off the data it was fitted to: on the stretched,
/// jittered cells of [`guarded_cell_model`] the file gives the unguarded model's energies, on the unstretched cell
/// more; its metadata names it, and every engine (native, tract) agrees on the guarded atoms.
#[test]
fn the_domain_guard_travels_in_the_file_and_acts_only_off_the_data() {
    let (with, without) = (guarded_cell_model(), cell_model());
    let e = |m: &pilip::model::Model, f: &Frame| load(&to_onnx(m, Dtype::F64).unwrap().encode_to_vec()).compute_frame(f).unwrap().energy;
    let inside = pilip::frame::strained(&triclinic_cell(), 0, 0, 0.1);
    assert!((e(&with, &inside) - e(&without, &inside)).abs() < 1e-12, "the guard acts on its own data");
    let outside = triclinic_cell();
    let penalty = e(&with, &outside) - e(&without, &outside);
    assert!(penalty > 1e-3, "penalty off the data: {penalty} eV");
    // the training-time model has the same penalty
    let native = with.predict_frame(&outside).unwrap().energy - without.predict_frame(&outside).unwrap().energy;
    assert!((native - penalty).abs() < 1e-9 * penalty.max(1.0), "{native} vs {penalty}");
    let proto = to_onnx(&with, Dtype::F32).unwrap();
    let guard = proto.metadata_props.iter().find(|p| p.key == "pilip.domain_guard").expect("pilip.domain_guard");
    assert!(guard.value.contains("\"onset\":1.0") && guard.value.contains("\"components\":[3,3]") && guard.value.contains("\"sketch\":[8,8]"), "{}", guard.value);
    native_and_tract_agree(&to_onnx(&with, Dtype::F64).unwrap().encode_to_vec(), &outside, 1e-12);
    native_and_tract_agree(&proto.encode_to_vec(), &outside, 2e-5);
}

/// [`cell_model`] with its Gaussians equally spaced in u(r) (`radial_scale`), not in r.
fn crowded_radial_cell_model() -> pilip::model::Model {
    cell_model_with(pilip::descriptor::DescriptorSpec { radial_scale: 2.0, ..spec(3.0) })
}

/// [`cell_model`] with narrower Gaussians for copper neighbours than for aluminium ones
/// (`radial_width_by_element`).
fn element_width_cell_model() -> pilip::model::Model {
    cell_model_with(pilip::descriptor::DescriptorSpec { radial_width_by_element: [("Cu".to_string(), 0.5)].into(), ..spec(3.0) })
}

/// An Al/Cu model of the descriptor `spec` with its input statistics fitted on [`triclinic_cell`].
fn cell_model_with(spec: pilip::descriptor::DescriptorSpec) -> pilip::model::Model {
    let mut m = pilip::model::Model::power_spectrum(spec, vec![13, 29], &[16, 12], 5).unwrap();
    let envs = vec![m.frame_environments(&triclinic_cell()).unwrap()];
    m.fit_input_statistics(&envs, 0.0, 0.0);
    m
}

/// The per-element widths are read from the file: without the key the same graph gives another energy, and
/// `pilip info` lists them.
#[test]
fn per_element_radial_widths_travel_in_the_file() {
    let frame = triclinic_cell();
    let proto = to_onnx(&element_width_cell_model(), Dtype::F64).unwrap();
    let entry = proto.metadata_props.iter().find(|p| p.key == "pilip.descriptor").unwrap();
    assert!(entry.value.contains(r#""radial_width_by_element":{"Cu":0.5}"#), "{}", entry.value);
    let mut plain = proto.clone();
    let entry = plain.metadata_props.iter_mut().find(|p| p.key == "pilip.descriptor").unwrap();
    entry.value = entry.value.replace(r#","radial_width_by_element":{"Cu":0.5}"#, "");
    let (a, b) = (load(&proto.encode_to_vec()).compute_frame(&frame).unwrap(), load(&plain.encode_to_vec()).compute_frame(&frame).unwrap());
    assert!((a.energy - b.energy).abs() > 1e-6 * (1.0 + a.energy.abs()), "{} vs {}", a.energy, b.energy);
    let props = proto.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect();
    let info = pilip::onnx::metadata::describe(&pilip::onnx::metadata::ModelMetadata::from_props(&props, "m.onnx").unwrap());
    assert!(info.contains("radial_width 1 (Cu 0.5)"), "{info}");
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
    let check = export(&model, Dtype::F32, &path, &[molecule()]).unwrap();
    assert_eq!((check.data.n_structures, check.synthetic.n_structures), (1, 3));
    assert!(check.data.forces_rel > 0.0 && check.data.forces_rel < Verification::tolerance(Dtype::F32), "{check:?}");
    let pot = Potential::load(&path, &RuntimeOptions::default()).unwrap();
    assert_eq!(pot.metadata.species, vec![1, 6, 8]);
    assert_eq!(pot.metadata.symbols, vec!["H", "C", "O"]);
    assert_eq!(pot.metadata.cutoff, 3.5);
    assert_eq!(pot.metadata.dtype, Dtype::F32);
    assert_eq!(pot.metadata.reference_energies, model.reference_energies);
    assert!(!dir.join("m.onnx.tmp").exists());
}

/// The check's normalisations (energy per atom, virial against the forces' size) leave it sharp: a graph of
/// weights 1e-4 away from the model's fails on each of energy, forces and virial by far more than the tolerance.
#[test]
fn export_check_catches_a_slightly_different_graph() {
    let (model, frame) = (cell_model(), triclinic_cell());
    let mut other = model.clone();
    other.set_params(&model.params().iter().map(|p| p * (1.0 + 1e-4)).collect::<Vec<_>>());
    let bytes = to_onnx(&other, Dtype::F64).unwrap().encode_to_vec();
    let pot = Potential::from_bytes(&bytes, "t", &RuntimeOptions::default()).unwrap();
    let v = pilip::export::verify(&model, &pot, &[frame]).unwrap();
    let tol = Verification::tolerance(Dtype::F32);
    assert!(v.energy_rel > 3.0 * tol && v.forces_rel > 3.0 * tol && v.virial_rel > 3.0 * tol, "{v:?}");
}

#[cfg(feature = "ort")]
#[test]
fn onnxruntime_engine_matches_tract() {
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        assert!(std::env::var("CI").is_err(), "CI must set ORT_DYLIB_PATH for the ort engine test");
        eprintln!("skipping: ORT_DYLIB_PATH is not set");
        return;
    }
    for (model, frame) in [(molecule_model(), molecule()), (cell_model(), triclinic_cell()), (bispectrum_cell_model(), triclinic_cell()), (guarded_cell_model(), triclinic_cell())] {
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
