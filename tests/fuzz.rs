//! What fuzzing found (`examples/fuzz`, `scripts/fuzz.sh`), kept as regression tests, and a short seeded run of
//! every fuzz target.

mod common;

use common::{cell_model, load, molecule_model};
use pilip::export::to_onnx;
use pilip::io::extxyz::{self, LabelKeys};
use pilip::onnx::metadata::Dtype;
use pilip::runtime::{Potential, RuntimeOptions};
use prost::Message;
use tract_onnx::pb;

fn parse_error(text: &str) -> String {
    match extxyz::parse(text, "data.extxyz", &LabelKeys::default()) {
        Ok(frames) => panic!("accepted {} frames of {text:?}", frames.len()),
        Err(e) => e.to_string(),
    }
}

/// An atom count line of 10^14 used to reserve memory for that many atoms: the allocation failed and aborted
/// the process (or panicked with "capacity overflow" for larger counts).
#[test]
fn a_huge_atom_count_is_an_error_not_an_allocation() {
    for count in ["99999999999999", "18446744073709551615"] {
        let text = format!("{count}\nProperties=species:S:1:pos:R:3:forces:R:3 energy=1.0\nH 0 0 0 0 0 0\n");
        let e = parse_error(&text);
        assert!(e.contains("data.extxyz:4:") && e.contains("file ends"), "{e}");
    }
    // Column counts that overflow when added up.
    let e = parse_error("1\nProperties=species:S:1:pos:R:3:x:R:18446744073709551615 energy=1\nH 0 0 0 1\n");
    assert!(e.contains("data.extxyz:2:") && e.contains("column counts"), "{e}");
}

/// `energy=nan`, a NaN lattice or an infinite stress were read as data and poisoned training.
#[test]
fn non_finite_labels_and_cells_are_refused_with_their_line() {
    let cases = [
        ("energy=nan", "energy: expected a finite number, found 'nan'"),
        ("energy=-inf", "energy: expected a finite number"),
        ("energy=1 Lattice=\"3 0 0 0 3 0 0 0 NaN\"", "Lattice: expected a finite number, found 'NaN'"),
        ("energy=1 Lattice=\"3 0 0 0 3 0 0 0 3\" stress=\"1 1 1 0 0 inf\"", "stress: expected a finite number, found 'inf'"),
    ];
    for (comment, message) in cases {
        let e = parse_error(&format!("1\n{comment}\nH 0 0 0\n"));
        assert!(e.contains("data.extxyz:2:") && e.contains(message), "{comment}: {e}");
    }
}

/// A periodic cell with an entry of 1.8e308 made the image count NaN, which passed the bound on the work
/// (`NaN > limit` is false) and looped over 10^9 empty image shells: a hang inside the host program.
#[test]
fn a_cell_that_overflows_is_refused_instead_of_hanging() {
    let p = load(&to_onnx(&molecule_model(), Dtype::F64).unwrap().encode_to_vec());
    let positions = vec![[0.0, 0.0, 0.0], [1.0, 0.2, 0.0]];
    for (cell, message) in [
        ([[1.0, 3.1, -4.1], [-4.2, 4.0, -3.3], [1.5, 5.8, f64::MAX]], "volume"),
        ([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, f64::NAN]], "non-finite"),
        ([[1e200, 0.0, 0.0], [0.0, 1e200, 0.0], [0.0, 0.0, 1e200]], "volume"),
    ] {
        let e = p.compute(&positions, &[6, 8], Some(&cell), [true, false, false]).unwrap_err().to_string();
        assert!(e.contains("cell") && e.contains(message), "{e}");
    }
}

/// The graph of a valid model, edited, with the checksum recomputed (so the edit reaches the later checks).
fn edited(edit: impl FnOnce(&mut pb::GraphProto)) -> Vec<u8> {
    common::edited(to_onnx(&cell_model(), Dtype::F32).unwrap(), edit)
}

/// [`edited`] with the edit applied to the first weight matrix.
fn edited_weight(edit: impl FnOnce(&mut pb::TensorProto)) -> Vec<u8> {
    edited(|g| edit(g.initializer.iter_mut().find(|t| t.dims.len() == 2 && !t.float_data.is_empty()).unwrap()))
}

/// tract panicked ("no entry found for key", "index exceeds length") on graphs whose nodes read undefined
/// values or whose operators were changed; constants whose dimensions disagree with their data could make an
/// engine allocate without bound. The loader now refuses such graphs before any engine sees them.
#[test]
fn malformed_graphs_are_refused_by_name_before_the_engine_sees_them() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (edited(|g| g.node[3].input[0] = "nonexistent".into()), "reads 'nonexistent', which no earlier node"),
        (edited(|g| { g.node.remove(0); }), "which no earlier node"),
        (edited(|g| g.node[2].op_type = "Loop".into()), "operator 'Loop' is not one pilip writes"),
        (edited(|g| g.node[2].input.push("x".into())), "inputs and 1 outputs, expected"),
        (edited_weight(|w| w.dims[0] = 3), "stores"),
        (edited_weight(|w| w.dims = vec![1 << 31, 1 << 31, 1 << 31]), "has dimensions"),
        (edited_weight(|w| _ = w.float_data.pop()), "stores"),
        (edited_weight(|w| w.data_type = 2), "element type 2"),
    ];
    for (bytes, message) in cases {
        match Potential::from_bytes(&bytes, "edited.onnx", &RuntimeOptions::default()) {
            Ok(_) => panic!("an edited graph loaded ({message})"),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("edited.onnx: malformed model graph") && e.contains(message), "{e}");
            }
        }
    }
}

/// A short seeded run of every target of `examples/fuzz` (which `cargo test` builds): 0 findings. The long
/// run is `scripts/fuzz.sh`.
#[test]
fn a_short_seeded_fuzz_run_finds_nothing() {
    let deps = std::env::current_exe().unwrap();
    let fuzz = deps.parent().unwrap().parent().unwrap().join("examples").join("fuzz");
    assert!(fuzz.exists(), "{} not found: cargo test builds it (cargo build --release --example fuzz)", fuzz.display());
    let out = common::tmpdir("fuzz");
    let run = std::process::Command::new(&fuzz)
        .args(["--inputs", "1500", "--seed", "7", "--out"])
        .arg(&out)
        .arg("all")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "fuzz findings:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["inputs"], 1500, "{line}");
        for key in ["panics", "aborts", "hangs", "other_findings"] {
            assert_eq!(v[key], 0, "{line}");
        }
        // Both outcomes occur: the generators reach past the first checks and also produce bad input.
        assert!(v["accepted"].as_u64().unwrap() > 0 && v["refused"].as_u64().unwrap() > 0, "{line}");
    }
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "inputs were saved as findings in {}", out.display());
}
