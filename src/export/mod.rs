//! `pilip export`: a trained model → one self-describing ONNX file, verified through the runtime before success
//! is reported. This is the one layer that sees both sides: the training-time [`Model`] (it writes its graph,
//! `graph`) and the runtime (it checks the written file through it).

pub mod graph;

use crate::error::{Error, Result};
use crate::frame::{norm, Frame};
use crate::model::{AtomicModel, Model};
use crate::onnx::metadata::{checksum, format_version_for, Dtype, DomainGuardInfo, ModelMetadata};
use crate::onnx::{IR_VERSION, OPSET};
use crate::runtime::{Potential, RuntimeOptions};
use graph::build_graph;
use prost::Message;
use std::path::Path;
use tract_onnx::pb;

/// What the metadata records of a model's domain guard (the directions are constants of the graph).
fn domain_guard_info(m: &crate::model::power_spectrum::PowerSpectrumModel) -> Option<DomainGuardInfo> {
    m.domain_guard.as_ref().map(|g| DomainGuardInfo {
        onset: g.onset,
        strength: g.strength,
        components: g.components.clone(),
        sketch: g.sketch.iter().zip(&m.networks).map(|(v, n)| v.len() / n.n_inputs().max(1)).collect(),
    })
}

/// Metadata of `model` exported with `dtype` (checksum of the graph supplied by the caller).
fn metadata_for(model: &Model, dtype: Dtype, checksum: String) -> ModelMetadata {
    let (descriptor, bispectrum, domain_guard) = match &model.atomic {
        AtomicModel::PowerSpectrum(m) | AtomicModel::Bispectrum(m) => (m.descriptor.clone(), m.four_body.clone(), domain_guard_info(m)),
    };
    ModelMetadata {
        format_version: format_version_for(model.family(), &descriptor, bispectrum.as_ref(), model.repulsion.is_some(), domain_guard.is_some()),
        bispectrum,
        repulsion: model.repulsion.clone(),
        domain_guard,
        library_version: env!("CARGO_PKG_VERSION").into(),
        species: model.species.clone(),
        symbols: model.species.iter().map(|&z| crate::elements::symbol(z).unwrap_or("?").to_string()).collect(),
        family: model.family(),
        cutoff: model.cutoff(),
        energy_unit: "eV".into(),
        length_unit: "angstrom".into(),
        descriptor,
        n_features: model.n_features(),
        reference_energies: model.reference_energies.clone(),
        dtype,
        checksum,
    }
}

/// The ONNX model of `model`: graph, opset, producer and metadata.
pub fn to_onnx(model: &Model, dtype: Dtype) -> Result<pb::ModelProto> {
    let graph = build_graph(model, dtype)?;
    let meta = metadata_for(model, dtype, checksum(&graph.encode_to_vec()));
    meta.validate().map_err(|e| Error::invalid(format!("cannot export this model: {e}")))?;
    Ok(pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "pilip".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "pilip interatomic potential: per-species descriptors in, atomic energies (without reference \
                     energies) and their descriptor gradients out; see the pilip.* metadata"
            .into(),
        graph: Some(graph),
        metadata_props: meta
            .to_props()
            .into_iter()
            .map(|(key, value)| pb::StringStringEntryProto { key, value })
            .collect(),
        ..Default::default()
    })
}

/// Largest deviations of the exported model from the training-time model.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Verification {
    /// Structures compared.
    pub n_structures: usize,
    /// max |ΔE| / max(|E − E_ref|, 1 eV × atoms) over structures, where E_ref is the sum of reference energies.
    /// Per atom, not per structure: an f32 graph rounds each atom's energy, and a network with large first-layer
    /// weights (Muon's, whose 430 inputs per atom cancel to O(1)) rounds by ~1 µeV per atom, which a 1 eV floor
    /// refused for an 18-atom molecule (1.5e-5; session 78). A wrong graph deviates by meV or more.
    pub energy_rel: f64,
    /// max |ΔF| / max(max |F|, 1 eV/Å).
    pub forces_rel: f64,
    /// max |ΔW| / max(max |W|, Σᵢ |Fᵢ| × 1 Å, 1 eV): W sums r ⊗ f terms whose rounding does not cancel as the
    /// terms do (an isolated molecule's W is small against them; a Muon-trained salicylic acid model: 1.2e-5 of
    /// max |W|).
    pub virial_rel: f64,
}

impl Verification {
    /// The largest relative deviation `export` accepts for a graph in `dtype` on structures of the data.
    pub fn tolerance(dtype: Dtype) -> f64 {
        match dtype {
            Dtype::F32 => 1e-5,
            Dtype::F64 => 1e-10,
        }
    }

    /// The same on the synthetic [`probe_structures`], which check code paths (periodic images, the repulsive
    /// prior) far outside any data: there the descriptors are many spreads from their training means, and an f32
    /// network's rounding grows with its inputs (a bispectrum Li model: 1.8e-7 on its test structures, 1.1e-5 on
    /// the squeezed cluster). A wrong graph deviates by orders of magnitude more.
    pub fn synthetic_tolerance(dtype: Dtype) -> f64 {
        match dtype {
            Dtype::F32 => 1e-4,
            Dtype::F64 => 1e-10,
        }
    }
    fn worst(&self) -> f64 {
        self.energy_rel.max(self.forces_rel).max(self.virial_rel)
    }
}

/// Compares `potential` with the training-time `model` on `frames`.
pub fn verify(model: &Model, potential: &Potential, frames: &[Frame]) -> Result<Verification> {
    let mut v = Verification { n_structures: frames.len(), ..Default::default() };
    for f in frames {
        let want = model.predict_frame(f)?;
        let got = potential.compute_frame(f)?;
        let e_ref: f64 = f.numbers.iter().filter_map(|&z| model.species_index(z)).map(|s| model.reference_energies[s]).sum();
        v.energy_rel = v.energy_rel.max((got.energy - want.energy).abs() / (want.energy - e_ref).abs().max(f.len() as f64));
        let fmax = want.forces.iter().flatten().fold(1.0f64, |m, x| m.max(x.abs()));
        let df = got.forces.iter().flatten().zip(want.forces.iter().flatten()).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        v.forces_rel = v.forces_rel.max(df / fmax);
        let force_sum: f64 = want.forces.iter().map(norm).sum();
        let wmax = want.virial.iter().flatten().fold(force_sum.max(1.0), |m, x| m.max(x.abs()));
        let dw = got.virial.iter().flatten().zip(want.virial.iter().flatten()).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        v.virial_rel = v.virial_rel.max(dw / wmax);
    }
    Ok(v)
}

/// What [`export`] checked: the deviations on the given structures and on the synthetic [`probe_structures`].
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ExportCheck {
    /// On the structures given to [`export`].
    pub data: Verification,
    /// On the synthetic probes.
    pub synthetic: Verification,
}

/// Writes `model` to `path` atomically (temporary file, fsync, rename) after checking, through the runtime's
/// default engine, that the exported file reproduces the model on `data` within [`Verification::tolerance`] and
/// on the [`probe_structures`] within [`Verification::synthetic_tolerance`]. Nothing is written if a check fails.
pub fn export(model: &Model, dtype: Dtype, path: &Path, data: &[Frame]) -> Result<ExportCheck> {
    let bytes = to_onnx(model, dtype)?.encode_to_vec();
    let potential = Potential::from_bytes(&bytes, &path.display().to_string(), &RuntimeOptions::default())?;
    let check = ExportCheck { data: verify(model, &potential, data)?, synthetic: verify(model, &potential, &probe_structures(model))? };
    for (v, tol, what) in [
        (&check.data, Verification::tolerance(dtype), "the given structures"),
        (&check.synthetic, Verification::synthetic_tolerance(dtype), "the synthetic probe structures"),
    ] {
        if !(v.worst() <= tol) {
            return Err(Error::invalid(format!(
                "export check failed: on {what} the {} ONNX model deviates from the trained model by {:.2e} (energy), \
                 {:.2e} (forces), {:.2e} (virial) relative, above the tolerance {tol:.0e}; {} was not written",
                dtype.name(),
                v.energy_rel,
                v.forces_rel,
                v.virial_rel,
                path.display()
            )));
        }
    }
    crate::io::write_atomically(path, &bytes)?;
    Ok(check)
}

/// Three synthetic structures containing every species of `model`: an open cluster, the same cluster squeezed to
/// half its size (pairs at 0.4–1 Å, inside any repulsive prior's switch) and a periodic triclinic cell smaller
/// than twice the cutoff (several images per neighbour). Export checks them besides the data, so the periodic
/// code path and the short-range prior are verified even for a model trained on molecules.
pub fn probe_structures(model: &Model) -> Vec<Frame> {
    let mut rng = crate::rng::Rng::new(2024);
    let ns = model.species.len();
    let mut jittered_grid = |n_side: usize, spacing: f64| -> Vec<[f64; 3]> {
        let mut p = Vec::new();
        for a in 0..n_side {
            for b in 0..n_side {
                for c in 0..n_side {
                    p.push([a, b, c].map(|k| k as f64 * spacing + 0.15 * rng.normal()));
                }
            }
        }
        p
    };
    let cluster = jittered_grid(3, 1.5);
    let numbers = |n: usize| (0..n).map(|i| model.species[i % ns]).collect::<Vec<u32>>();
    let box_positions = jittered_grid(2, 1.9);
    let cell = [[3.8, 0.0, 0.0], [0.6, 3.7, 0.0], [-0.4, 0.3, 3.9]];
    let squeezed = cluster.iter().map(|x| x.map(|c| 0.5 * c)).collect();
    vec![
        Frame { numbers: numbers(cluster.len()), positions: cluster.clone(), ..Default::default() },
        Frame { numbers: numbers(cluster.len()), positions: squeezed, ..Default::default() },
        Frame { numbers: numbers(box_positions.len()), positions: box_positions, cell: Some(cell), pbc: [true; 3], ..Default::default() },
    ]
}
