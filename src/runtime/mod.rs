//! The runtime: a loaded, verified ONNX model that computes energy, per-atom energies, forces and virials.
//!
//! Descriptors and the chain rule run in f64 in Rust; the network runs in an [`engine::Engine`]. Two entry
//! points: a whole system (the runtime builds the neighbour list; periodic or open) and an MD engine's local +
//! ghost atoms with the engine's own neighbour list. A `Potential` is immutable after loading and may be shared
//! by any number of threads.

pub mod engine;
#[cfg(feature = "ort")]
pub mod ort_engine;

use crate::descriptor::Descriptor;
use crate::elements::unknown_element;
use crate::error::{Error, Result};
use crate::family::Family;
use crate::frame::{Mat3, Vec3};
use crate::neighbors::{Neighbor, NeighborList};
use crate::onnx::decode::decode;
use crate::onnx::metadata::ModelMetadata;
use crate::prediction::{stress_from_virial, Prediction};
use engine::{Engine, TractEngine};
use std::path::{Path, PathBuf};

/// Which engine evaluates the networks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// tract-onnx: pure Rust, built in, single-threaded per call.
    #[default]
    Tract,
    /// ONNX Runtime, loaded at run time (cargo feature `ort`).
    Ort,
}

/// Load options (the C API's `options_json`): `{"engine": "tract"|"ort", "ort_library": PATH, "threads": N}`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeOptions {
    /// Which engine runs the networks.
    pub engine: EngineKind,
    /// libonnxruntime.so for engine "ort" (default: $ORT_DYLIB_PATH).
    pub ort_library: Option<PathBuf>,
    /// Threads of one network evaluation: intra-op threads of engine "ort"; engine "tract" runs one thread per
    /// call and accepts only 1 (parallelise over calls instead: one model may be used by many threads at once).
    pub threads: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions { engine: EngineKind::Tract, ort_library: None, threads: 1 }
    }
}

impl RuntimeOptions {
    /// Parses the options JSON; an empty string means defaults.
    pub fn from_json(s: &str) -> Result<Self> {
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        let options: Self = serde_json::from_str(s).map_err(|e| {
            Error::invalid(format!(
                "options_json: {e}; expected an object like {{\"engine\": \"tract\" | \"ort\", \"ort_library\": \"/path/libonnxruntime.so\", \"threads\": 1}}"
            ))
        })?;
        options.validate()?;
        Ok(options)
    }

    /// Refuses what the chosen engine cannot honour instead of ignoring it.
    pub fn validate(&self) -> Result<()> {
        if self.threads == 0 {
            return Err(Error::invalid("threads must be >= 1"));
        }
        if self.engine == EngineKind::Tract && self.threads != 1 {
            return Err(Error::invalid(format!(
                "engine 'tract' evaluates a model on one thread per call and cannot use threads = {}; use threads 1 \
                 (and run several calls, MPI ranks or seeds in parallel), or engine 'ort' for intra-op threads",
                self.threads
            )));
        }
        Ok(())
    }
}

/// An MD engine's view of its atoms: `positions`/`numbers` of local and ghost atoms (`[n_total]`), the centres
/// (atom indices whose energy is wanted) and a full neighbour list of each centre, indexed by atom index.
pub struct LocalSystem<'a> {
    /// Å, `[n_total]`.
    pub positions: &'a [Vec3],
    /// Atomic numbers, `[n_total]` (atoms that take no part may carry any number).
    pub numbers: &'a [i32],
    /// Atom indices whose energy is wanted (the MD engine's local atoms).
    pub centers: &'a [usize],
    /// `neighbors(i)` lists the neighbour atom indices of centre atom i (may include atoms beyond the cutoff).
    pub neighbors: &'a dyn Fn(usize) -> &'a [i32],
}

/// Accumulated outputs of [`Potential::compute_local`]; each present array is **added** to.
pub struct LocalOutputs<'a> {
    /// += Σ over centres of E_i, eV.
    pub energy: Option<&'a mut f64>,
    /// `[n_total]`, += E_i of each centre.
    pub atomic_energies: Option<&'a mut [f64]>,
    /// `[n_total]`, forces on centres and neighbours (ghosts included), eV/Å.
    pub forces: Option<&'a mut [Vec3]>,
    /// eV, the sign of [`Prediction::virial`].
    pub virial: Option<&'a mut Mat3>,
    /// `[n_total]` row-major 3×3, each pair term split half/half between its atoms.
    pub atomic_virial: Option<&'a mut [[f64; 9]]>,
}

/// Bits of a neighbour index that carry the index (LAMMPS keeps special-bond and history flags in the top three
/// bits, `NEIGHMASK`), so its lists can be passed unchanged.
pub const NEIGHBOR_INDEX_MASK: i32 = 0x1FFF_FFFF;

/// A loaded, verified model: metadata, the family's evaluator and the network engine.
pub struct Potential {
    /// What the model file says about itself.
    pub metadata: ModelMetadata,
    evaluator: Evaluator,
    engine: Box<dyn Engine>,
}

/// The family-specific part of an evaluation (what the Rust side computes around the engine's networks).
enum Evaluator {
    PowerSpectrum(Descriptor),
}

impl Potential {
    /// Loads and verifies a pilip ONNX model.
    pub fn load(path: &Path, options: &RuntimeOptions) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string(), options)
    }

    /// Loads a model from the bytes of an ONNX file; `source` names it in error messages.
    pub fn from_bytes(bytes: &[u8], source: &str, options: &RuntimeOptions) -> Result<Self> {
        options.validate()?;
        let (proto, metadata) = decode(bytes, source)?;
        let engine: Box<dyn Engine> = match options.engine {
            EngineKind::Tract => Box::new(TractEngine::new(&proto, &metadata, source)?),
            #[cfg(feature = "ort")]
            EngineKind::Ort => Box::new(engine_ort(bytes, &metadata, options, source)?),
            #[cfg(not(feature = "ort"))]
            EngineKind::Ort => {
                return Err(Error::engine(
                    "engine 'ort' is not compiled into this pilip; rebuild with `cargo build --release --features ort`",
                ))
            }
        };
        let evaluator = match metadata.family {
            Family::PowerSpectrum => Evaluator::PowerSpectrum(Descriptor::new(&metadata.descriptor, metadata.species.len())),
        };
        Ok(Potential { metadata, evaluator, engine })
    }

    /// "tract" or "ort".
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Cutoff radius, Å.
    pub fn cutoff(&self) -> f64 {
        self.metadata.cutoff
    }

    /// Species index of atom `i` with atomic number `z`, or an error naming the atom and the model's species.
    fn species_index(&self, i: usize, z: i64) -> Result<usize> {
        let species = &self.metadata.species;
        species.iter().position(|&s| s as i64 == z).ok_or_else(|| unknown_element(i, z, species))
    }

    fn species_of(&self, numbers: &[i32]) -> Result<Vec<usize>> {
        numbers.iter().enumerate().map(|(i, &z)| self.species_index(i, z as i64)).collect()
    }

    /// Atomic energies of the centres of `nl` (centre c is atom `centers[c]`, or atom c) and the per-pair
    /// energy gradients ∂E/∂r_ij in neighbour-list order.
    fn evaluate(&self, species: &[usize], centers: Option<&[usize]>, nl: NeighborList) -> Result<(Vec<f64>, Vec<Vec3>, NeighborList)> {
        match &self.evaluator {
            Evaluator::PowerSpectrum(descriptor) => self.evaluate_power_spectrum(descriptor, species, centers, nl),
        }
    }

    /// Descriptors in Rust, the networks in the engine (batched per species), the chain rule back in Rust.
    fn evaluate_power_spectrum(
        &self,
        descriptor: &Descriptor,
        species: &[usize],
        centers: Option<&[usize]>,
        nl: NeighborList,
    ) -> Result<(Vec<f64>, Vec<Vec3>, NeighborList)> {
        let d = descriptor.compute(species, nl);
        let (n, nf) = (d.n_atoms, d.n_features);
        let mut batches = vec![Vec::new(); self.metadata.species.len()];
        let mut rows = Vec::with_capacity(n);
        for c in 0..n {
            let s = species[centers.map_or(c, |cs| cs[c])];
            rows.push((s, batches[s].len() / nf));
            batches[s].extend_from_slice(&d.features[c * nf..(c + 1) * nf]);
        }
        let outputs = self.engine.run(&batches, nf)?;
        let mut atomic = vec![0.0; n];
        let mut de_dg = vec![0.0; n * nf];
        for (c, &(s, r)) in rows.iter().enumerate() {
            atomic[c] = self.metadata.reference_energies[s] + outputs[s].0[r];
            de_dg[c * nf..(c + 1) * nf].copy_from_slice(&outputs[s].1[r * nf..(r + 1) * nf]);
        }
        if atomic.iter().chain(&de_dg).any(|e| !e.is_finite()) {
            return Err(Error::invalid("the network produced a non-finite energy or gradient"));
        }
        let pair_grads = descriptor.vjp(&d, &de_dg);
        Ok((atomic, pair_grads, d.neighbors))
    }

    /// A whole system: energy, per-atom energies, forces, virial and (fully periodic cells) stress. `cell` rows
    /// are the lattice vectors (Å); it is required when any `pbc` is set.
    pub fn compute(&self, positions: &[Vec3], numbers: &[i32], cell: Option<&Mat3>, pbc: [bool; 3]) -> Result<Prediction> {
        if positions.len() != numbers.len() {
            return Err(Error::invalid(format!("{} positions but {} atomic numbers", positions.len(), numbers.len())));
        }
        let species = self.species_of(numbers)?;
        if let Some(c) = cell {
            if c.iter().flatten().any(|x| !x.is_finite()) {
                return Err(Error::invalid("the cell contains a non-finite number"));
            }
        }
        let nl = NeighborList::build(positions, cell, pbc, self.cutoff())?;
        let (atomic_energies, pair_grads, nl) = self.evaluate(&species, None, nl)?;
        let mut forces = vec![[0.0; 3]; positions.len()];
        let mut virial = [[0.0; 3]; 3];
        crate::prediction::accumulate(&nl, None, &pair_grads, Some(&mut forces), &mut virial, None);
        let stress = match (cell, pbc) {
            (Some(c), [true, true, true]) => Some(stress_from_virial(&virial, crate::frame::det3(c).abs())),
            _ => None,
        };
        Ok(Prediction { energy: atomic_energies.iter().sum(), atomic_energies, forces, virial, stress })
    }

    /// [`Potential::compute`] for a frame.
    pub fn compute_frame(&self, frame: &crate::frame::Frame) -> Result<Prediction> {
        let numbers: Vec<i32> = frame.numbers.iter().map(|&z| z as i32).collect();
        self.compute(&frame.positions, &numbers, frame.cell.as_ref(), frame.pbc)
    }

    /// Local + ghost atoms with the caller's neighbour list; adds energy, per-atom energies (of the centres),
    /// forces (on centres and neighbours, ghosts included), virial and per-atom virial to `out`. Neighbours
    /// beyond the cutoff are skipped; neighbour indices are masked with [`NEIGHBOR_INDEX_MASK`].
    pub fn compute_local(&self, sys: &LocalSystem, out: LocalOutputs) -> Result<()> {
        let n_total = sys.positions.len();
        if sys.numbers.len() != n_total {
            return Err(Error::invalid(format!("{n_total} positions but {} atomic numbers", sys.numbers.len())));
        }
        if let Some((i, _)) = sys.positions.iter().enumerate().find(|(_, p)| p.iter().any(|x| !x.is_finite())) {
            return Err(Error::invalid(format!("position of atom {i} is not finite")));
        }
        // Atoms that are neither centres nor neighbours within the cutoff may carry any atomic number (an MD
        // engine passes 0 for atom types the model does not handle); only atoms that take part are checked.
        const UNKNOWN: usize = usize::MAX;
        let species: Vec<usize> = sys
            .numbers
            .iter()
            .map(|&z| self.metadata.species.iter().position(|&s| s as i64 == z as i64).unwrap_or(UNKNOWN))
            .collect();
        let check = |i: usize| -> Result<()> {
            if species[i] == UNKNOWN {
                self.species_index(i, sys.numbers[i] as i64)?;
            }
            Ok(())
        };
        let rc2 = self.cutoff() * self.cutoff();
        let mut offsets = Vec::with_capacity(sys.centers.len() + 1);
        offsets.push(0);
        let mut pairs = Vec::new();
        for &i in sys.centers {
            if i >= n_total {
                return Err(Error::invalid(format!("centre atom index {i} is out of range (n_total = {n_total})")));
            }
            check(i)?;
            let xi = sys.positions[i];
            for &raw in (sys.neighbors)(i) {
                let j = (raw & NEIGHBOR_INDEX_MASK) as usize;
                if raw < 0 || j >= n_total {
                    return Err(Error::invalid(format!(
                        "neighbour index {raw} of atom {i} is out of range (n_total = {n_total})"
                    )));
                }
                let xj = sys.positions[j];
                let r = [xj[0] - xi[0], xj[1] - xi[1], xj[2] - xi[2]];
                let r2 = r[0] * r[0] + r[1] * r[1] + r[2] * r[2];
                if r2 >= rc2 {
                    continue;
                }
                check(j)?;
                if r2 < 1e-20 {
                    return Err(Error::invalid(format!("atoms {i} and {j} are at the same position")));
                }
                pairs.push(Neighbor { j, r });
            }
            offsets.push(pairs.len());
        }
        let nl = NeighborList::from_parts(self.cutoff(), offsets, pairs);
        let (atomic, pair_grads, nl) = self.evaluate(&species, Some(sys.centers), nl)?;
        if let Some(e) = out.energy {
            *e += atomic.iter().sum::<f64>();
        }
        if let Some(ae) = out.atomic_energies {
            check_len("atomic_energies", ae.len(), n_total)?;
            for (c, &i) in sys.centers.iter().enumerate() {
                ae[i] += atomic[c];
            }
        }
        if let Some(f) = &out.forces {
            check_len("forces", f.len(), n_total)?;
        }
        if let Some(av) = &out.atomic_virial {
            check_len("atomic_virial", av.len(), n_total)?;
        }
        let mut virial = [[0.0; 3]; 3];
        crate::prediction::accumulate(&nl, Some(sys.centers), &pair_grads, out.forces, &mut virial, out.atomic_virial);
        if let Some(w) = out.virial {
            for a in 0..3 {
                for b in 0..3 {
                    w[a][b] += virial[a][b];
                }
            }
        }
        Ok(())
    }
}

fn check_len(name: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::invalid(format!("{name} has {got} entries, expected n_total = {want}")));
    }
    Ok(())
}

#[cfg(feature = "ort")]
fn engine_ort(bytes: &[u8], meta: &ModelMetadata, options: &RuntimeOptions, source: &str) -> Result<ort_engine::OrtEngine> {
    ort_engine::OrtEngine::new(bytes, meta, options.ort_library.as_deref(), options.threads, source)
}
