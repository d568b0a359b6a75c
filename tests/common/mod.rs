//! Shared fixtures for the integration tests: small structures and a randomly initialised model whose
//! descriptor statistics are fitted, so its energies and forces are O(1) and every term is exercised.
#![allow(dead_code)]

use pilip::descriptor::four_body::{Bispectrum, ThreeBody};
use pilip::descriptor::DescriptorSpec;
use pilip::export::to_onnx;
use pilip::frame::{Frame, Mat3, Vec3};
use pilip::model::Model;
use pilip::onnx::metadata::{checksum, Dtype};
use pilip::prediction::Prediction;
use pilip::rng::Rng;
use pilip::runtime::{Potential, RuntimeOptions};
use prost::Message;
use std::path::{Path, PathBuf};

pub fn spec(cutoff: f64) -> DescriptorSpec {
    DescriptorSpec { cutoff, r_min: 0.8, n_radial: 4, l_max: 3, radial_width: 1.0, ..DescriptorSpec::default() }
}

/// A model for the given species, with fitted feature statistics on `frames` and perturbed biases.
pub fn random_model(species: Vec<u32>, cutoff: f64, frames: &[Frame], seed: u64) -> Model {
    perturbed(Model::power_spectrum(spec(cutoff), species, &[16, 12], seed).unwrap(), frames, seed, 0.0)
}

/// [`random_model`] of the bispectrum family (3 compressed channels up to order 3), its compression fitted on
/// `frames`.
pub fn random_bispectrum_model(species: Vec<u32>, cutoff: f64, frames: &[Frame], seed: u64) -> Model {
    random_bispectrum_model_with(species, cutoff, frames, seed, ThreeBody::Full)
}

/// [`random_bispectrum_model`] with the three-body invariants of `three_body`; with `ThreeBody::Compressed`
/// 4 compressed channels, of which 3 enter the four-body products.
pub fn random_bispectrum_model_with(species: Vec<u32>, cutoff: f64, frames: &[Frame], seed: u64, three_body: ThreeBody) -> Model {
    let (channels, four_body_channels) = if three_body == ThreeBody::Full { (3, 0) } else { (4, 3) };
    let four_body = Bispectrum { channels, l_max: 3, three_body, four_body_channels, ..Default::default() };
    let mut m = Model::bispectrum(spec(cutoff), four_body, species, &[16, 12], seed).unwrap();
    let envs: Vec<_> = frames.iter().map(|f| m.frame_environments(f).unwrap()).collect();
    m.fit_compression(&envs);
    // the shipped configs' floor: without it the cubic invariants of one small structure have spreads so small
    // that standardising them amplifies the f32 rounding of the exported graph past its tolerance
    perturbed(m, frames, seed, 0.3)
}

/// `m` with its input statistics fitted on `frames` (standard deviations floored at `std_floor`), its
/// parameters perturbed and O(1) scales.
fn perturbed(mut m: Model, frames: &[Frame], seed: u64, std_floor: f64) -> Model {
    let envs: Vec<_> = frames.iter().map(|f| m.frame_environments(f).unwrap()).collect();
    m.fit_input_statistics(&envs, std_floor, 0.0);
    let mut rng = Rng::new(seed + 1);
    let mut p = m.params();
    for x in p.iter_mut() {
        *x += 0.2 * rng.normal();
    }
    m.set_params(&p);
    m.energy_scale = 0.7;
    m.reference_energies = (0..m.species.len()).map(|s| -1.0 - s as f64).collect();
    m
}

/// [`random_model`] whose networks leave out the descriptor components that spread less than 5 % of the
/// element's largest over `frames` (`model.drop_features_below`), keeping the others' first-layer rows.
pub fn dropped_inputs_model(species: Vec<u32>, cutoff: f64, frames: &[Frame], seed: u64) -> Model {
    with_dropped_inputs(random_model(species, cutoff, frames, seed), frames)
}

/// `m` with the components that spread less than 5 % of the element's largest over `frames` left out.
pub fn with_dropped_inputs(mut m: Model, frames: &[Frame]) -> Model {
    let envs: Vec<_> = frames.iter().map(|f| m.frame_environments(f).unwrap()).collect();
    m.fit_input_statistics(&envs, 0.0, 0.05);
    m
}

/// A distorted molecule-like cluster of H, C, O.
pub fn molecule() -> Frame {
    let pos: Vec<Vec3> = vec![
        [0.0, 0.0, 0.0],
        [1.45, 0.1, -0.05],
        [2.2, 1.2, 0.1],
        [-0.5, 0.95, 0.3],
        [-0.4, -0.9, 0.5],
        [1.8, -0.8, -0.6],
        [3.2, 1.1, 0.4],
        [1.9, 2.3, -0.3],
    ];
    Frame { positions: pos, numbers: vec![6, 6, 8, 1, 1, 1, 1, 8], ..Default::default() }
}

/// A triclinic periodic cell with two species, smaller than twice the cutoff (so atoms see several images).
pub fn triclinic_cell() -> Frame {
    let cell: Mat3 = [[3.9, 0.0, 0.0], [0.7, 3.6, 0.0], [-0.5, 0.4, 4.1]];
    let mut rng = Rng::new(11);
    let frac = [[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5], [0.25, 0.25, 0.25]];
    let positions = frac
        .iter()
        .map(|f| {
            let mut x = [0.0; 3];
            for a in 0..3 {
                x[a] = (0..3).map(|b| f[b] * cell[b][a]).sum::<f64>() + 0.15 * rng.normal();
            }
            x
        })
        .collect();
    Frame { positions, numbers: vec![29, 29, 29, 29, 13], cell: Some(cell), pbc: [true; 3], ..Default::default() }
}

pub fn rotation(axis: Vec3, angle: f64) -> Mat3 {
    let n = (axis[0] * axis[0] + axis[1] * axis[1] + axis[2] * axis[2]).sqrt();
    let (x, y, z) = (axis[0] / n, axis[1] / n, axis[2] / n);
    let (c, s) = (angle.cos(), angle.sin());
    let t = 1.0 - c;
    [
        [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
        [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
        [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
    ]
}

pub fn apply(m: &Mat3, v: &Vec3) -> Vec3 {
    [0, 1, 2].map(|a| m[a][0] * v[0] + m[a][1] * v[1] + m[a][2] * v[2])
}

/// An empty directory for one test: `$TMPDIR/pilip-test-<pid>-<name>` (removed first, so reruns start clean).
/// It is kept after the test, for a look at a failure; the same test's directories of earlier, finished test
/// processes are removed here, so that repeated runs do not fill the disk.
pub fn tmpdir(name: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    let d = tmp.join(format!("pilip-test-{}-{name}", std::process::id()));
    if std::path::Path::new("/proc/self").exists() {
        let suffix = format!("-{name}");
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let file_name = entry.file_name();
            let pid = file_name.to_str().and_then(|f| f.strip_prefix("pilip-test-")).and_then(|f| f.strip_suffix(suffix.as_str()));
            if pid.is_some_and(|p| p.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(p).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A random H/C/O model with cutoff 3.5 Å.
pub fn molecule_model() -> Model {
    random_model(vec![1, 6, 8], 3.5, &[molecule()], 3)
}
/// A random Al/Cu model with cutoff 3.0 Å.
pub fn cell_model() -> Model {
    random_model(vec![13, 29], 3.0, &[triclinic_cell()], 5)
}

/// [`molecule_model`] with the components that barely vary left out of its networks.
pub fn dropped_inputs_molecule_model() -> Model {
    dropped_inputs_model(vec![1, 6, 8], 3.5, &[molecule()], 3)
}

/// [`molecule_model`] and [`cell_model`] of the bispectrum family.
pub fn bispectrum_molecule_model() -> Model {
    random_bispectrum_model(vec![1, 6, 8], 3.5, &[molecule()], 3)
}
pub fn bispectrum_cell_model() -> Model {
    random_bispectrum_model(vec![13, 29], 3.0, &[triclinic_cell()], 5)
}
/// A bispectrum model whose three-body invariants are those of the compressed channels.
pub fn compressed_bispectrum_cell_model() -> Model {
    random_bispectrum_model_with(vec![13, 29], 3.0, &[triclinic_cell()], 5, ThreeBody::Compressed)
}

/// [`cell_model`] with a ZBL prior that reaches into [`triclinic_cell`]: zero from 2.6 Å on, full below 2.0 Å,
/// so the cell has pairs in both the switch and the full-strength region.
pub fn repulsive_cell_model() -> Model {
    let mut m = cell_model();
    m.repulsion = Some(pilip::repulsion::Repulsion::fit(&m.species, &[], m.cutoff(), 2.6, 2.0).unwrap());
    m
}

/// [`cell_model`] with a domain guard fitted to jittered copies of [`triclinic_cell`] stretched by 10 % along x,
/// so that the unstretched cell lies outside the guard's domain and its atoms carry a penalty.
pub fn guarded_cell_model() -> Model {
    let mut m = cell_model();
    let mut rng = Rng::new(21);
    let frames: Vec<Frame> = (0..12)
        .map(|_| {
            let mut f = pilip::frame::strained(&triclinic_cell(), 0, 0, 0.1);
            f.positions.iter_mut().flatten().for_each(|x| *x += 0.003 * rng.normal());
            f
        })
        .collect();
    m.fit_domain_guard(&frames, 3, 8, 1.0, 0.002).unwrap();
    m
}

/// Largest |a − b| over paired values.
pub fn max_abs_diff(a: impl IntoIterator<Item = f64>, b: impl IntoIterator<Item = f64>) -> f64 {
    a.into_iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// The runtime's model of ONNX `bytes` (default engine).
pub fn load(bytes: &[u8]) -> Potential {
    Potential::from_bytes(bytes, "test model", &RuntimeOptions::default()).unwrap()
}

/// Writes `model` in `dtype` as `dir/model-<dtype>.onnx` (unverified: tests compare it themselves).
pub fn write_model(dir: &Path, model: &Model, dtype: Dtype) -> PathBuf {
    let path = dir.join(format!("model-{}.onnx", dtype.name()));
    std::fs::write(&path, to_onnx(model, dtype).unwrap().encode_to_vec()).unwrap();
    path
}

/// `proto` with its graph edited and the checksum recomputed (so the edit reaches the checks after it).
pub fn edited(mut proto: tract_onnx::pb::ModelProto, edit: impl FnOnce(&mut tract_onnx::pb::GraphProto)) -> Vec<u8> {
    let graph = proto.graph.as_mut().unwrap();
    edit(graph);
    let sum = checksum(&graph.encode_to_vec());
    proto.metadata_props.iter_mut().find(|p| p.key == "pilip.checksum").unwrap().value = sum;
    proto.encode_to_vec()
}

/// `got` and `want` agree to `tol` relative: the energy against max(|E|, 1 eV), the forces against the largest
/// force component (at least 1 eV/Å).
pub fn assert_same_prediction(got: &Prediction, want: &Prediction, tol: f64, what: &str) {
    assert!((got.energy - want.energy).abs() < tol * want.energy.abs().max(1.0), "{what}: energy {} vs {}", got.energy, want.energy);
    let scale = want.forces.iter().flatten().fold(1.0f64, |m, x| m.max(x.abs()));
    let df = max_abs_diff(got.forces.iter().flatten().copied(), want.forces.iter().flatten().copied());
    assert!(df < tol * scale, "{what}: forces differ by {df:.2e} (scale {scale:.2e})");
}
