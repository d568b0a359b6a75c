//! C and C++ programs against libpilip: they reproduce the Rust results through `pilip.h` and `pilip.hpp`, and
//! the example in docs/c-api.md compiles and runs.
mod common;

use common::*;
use pilip::export::probe_structures;
use pilip::frame::{Frame, Mat3};
use pilip::onnx::metadata::Dtype;
use pilip::runtime::{Potential, RuntimeOptions};
use std::path::{Path, PathBuf};

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
