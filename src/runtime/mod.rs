//! The runtime: a loaded, verified ONNX model that computes energy, per-atom energies, forces and virials.
//!
//! Descriptors and the chain rule run in f64 in Rust; the network runs in an [`engine::Engine`]. Two entry
//! points: a whole system (the runtime builds the neighbour list; periodic or open) and an MD engine's local +
//! ghost atoms with the engine's own neighbour list. A `Potential` is immutable after loading and may be shared
//! by any number of threads; with `threads > 1` it also owns a pool that shares each call's per-atom work
//! (bit-identical results), and it keeps the buffers of finished calls for the next ones.

pub mod engine;
mod native;
#[cfg(feature = "ort")]
pub mod ort_engine;

use crate::descriptor::{ChunkBuffers, Descriptor, Descriptors};
use crate::elements::unknown_element;
use crate::error::{Error, Result};
use crate::family::Family;
use crate::frame::{Mat3, Vec3};
use crate::neighbors::{Neighbor, NeighborList};
use crate::onnx::decode::decode;
use crate::onnx::metadata::ModelMetadata;
use crate::prediction::{stress_from_virial, Prediction};
use crate::repulsion::RepulsionTable;
use engine::{Batch, Engine, TractEngine};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Which engine evaluates the networks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The networks read out of the graph and run by pilip's own kernels (checked against the graph on load):
    /// the fastest, and no allocation per call.
    #[default]
    Native,
    /// tract-onnx: pure Rust, built in, runs any valid graph.
    Tract,
    /// ONNX Runtime, loaded at run time (cargo feature `ort`).
    Ort,
}

/// Load options (the C API's `options_json`): `{"engine": "native"|"tract"|"ort", "ort_library": PATH, "threads": N}`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeOptions {
    /// Which engine runs the networks.
    pub engine: EngineKind,
    /// libonnxruntime.so for engine "ort" (default: $ORT_DYLIB_PATH).
    pub ort_library: Option<PathBuf>,
    /// Threads of one compute call: the descriptors and their derivatives are shared among them (results are
    /// bit-identical to one thread), and engine "ort" uses them as intra-op threads. Default 1: pilip never starts
    /// more threads than asked (MPI users run one thread per rank).
    pub threads: usize,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions { engine: EngineKind::Native, ort_library: None, threads: 1 }
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
                "options_json: {e}; expected an object like {{\"engine\": \"native\" | \"tract\" | \"ort\", \"ort_library\": \"/path/libonnxruntime.so\", \"threads\": 1}}"
            ))
        })?;
        options.validate()?;
        Ok(options)
    }

    /// Refuses what cannot be honoured instead of ignoring it.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_THREADS).contains(&self.threads) {
            return Err(Error::invalid(format!("threads must be in 1..={MAX_THREADS}, got {}", self.threads)));
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
    pub neighbors: &'a (dyn Fn(usize) -> &'a [i32] + Sync),
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

/// Most threads one model may use (a typo such as 1000 is refused rather than started).
pub const MAX_THREADS: usize = 256;

/// A loaded, verified model: metadata, the family's evaluator and the network engine.
pub struct Potential {
    /// What the model file says about itself.
    pub metadata: ModelMetadata,
    evaluator: Evaluator,
    /// The short-range repulsive prior, added to what the evaluator computes.
    repulsion: Option<RepulsionTable>,
    engine: Box<dyn Engine>,
    /// The model's own threads when `threads > 1` (never rayon's global pool, which would take every core).
    pool: Option<rayon::ThreadPool>,
    /// Buffers of finished calls, reused by the next ones: a fixed-size MD step allocates nothing in pilip.
    workspaces: Mutex<Vec<Workspace>>,
}

/// The buffers of one compute call.
#[derive(Default)]
struct Workspace {
    species: Vec<usize>,
    offsets: Vec<usize>,
    pairs: Vec<Neighbor>,
    descriptors: Descriptors,
    atomic: Vec<f64>,
    pair_grads: Vec<Vec3>,
    chunks: Vec<ChunkBuffers>,
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
            EngineKind::Native => native::load(&proto, &metadata, source)?,
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
            Family::PowerSpectrum | Family::Bispectrum => {
                Evaluator::PowerSpectrum(metadata.descriptor().map_err(|e| Error::model(format!("{source}: {e}")))?)
            }
        };
        let repulsion = metadata.repulsion_table().map_err(|e| Error::model(format!("{source}: {e}")))?;
        let pool = if options.threads > 1 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(options.threads)
                .thread_name(|k| format!("pilip-{k}"))
                .build()
                .map_err(|e| Error::invalid(format!("cannot start {} threads: {e}", options.threads)))?;
            Some(pool)
        } else {
            None
        };
        Ok(Potential { metadata, evaluator, repulsion, engine, pool, workspaces: Mutex::new(Vec::new()) })
    }

    /// Threads of one compute call.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, |p| p.current_num_threads())
    }

    /// Runs `f` with a workspace of this model (one from an earlier call when there is one) on the model's
    /// threads; `f` gets `parallel = true` when there are several.
    fn with_workspace<T: Send>(&self, f: impl FnOnce(&mut Workspace, bool) -> Result<T> + Send) -> Result<T> {
        let mut ws = self.workspaces.lock().map_err(|_| Error::invalid("a previous call panicked"))?.pop().unwrap_or_default();
        let result = match &self.pool {
            Some(pool) => pool.install(|| f(&mut ws, true)),
            None => f(&mut ws, false),
        };
        if let Ok(mut pool) = self.workspaces.lock() {
            pool.push(ws);
        }
        result
    }

    /// "native", "tract" or "ort".
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

    /// Fills `ws.atomic` (atomic energies of the centres of `nl`; centre c is atom `centers[c]`, or atom c) and
    /// `ws.pair_grads` (∂E/∂r_ij in neighbour-list order), the repulsive prior included; the list ends up in
    /// `ws.descriptors.neighbors`.
    fn evaluate(&self, ws: &mut Workspace, centers: Option<&[usize]>, nl: NeighborList, parallel: bool) -> Result<()> {
        match &self.evaluator {
            Evaluator::PowerSpectrum(descriptor) => self.evaluate_power_spectrum(descriptor, ws, centers, nl, parallel)?,
        }
        if let Some(table) = &self.repulsion {
            table.add(&ws.descriptors.neighbors, &ws.species, centers, &mut ws.atomic, &mut ws.pair_grads);
        }
        Ok(())
    }

    /// Descriptors in Rust, the networks in the engine (batched per species), the chain rule back in Rust, chunk
    /// by chunk ([`Descriptor::evaluate_into`]).
    fn evaluate_power_spectrum(
        &self,
        descriptor: &Descriptor,
        ws: &mut Workspace,
        centers: Option<&[usize]>,
        nl: NeighborList,
        parallel: bool,
    ) -> Result<()> {
        let n_features = descriptor.n_features();
        let network = |species: &[usize], features: &[f64], energies: &mut [f64], de_dg: &mut [f64]| {
            self.engine.run(&Batch { features, n_features, species }, energies, de_dg)?;
            for (e, &s) in energies.iter_mut().zip(species) {
                *e += self.metadata.reference_energies[s];
            }
            if energies.iter().chain(de_dg.iter()).any(|e| !e.is_finite()) {
                return Err(Error::invalid("the network produced a non-finite energy or gradient"));
            }
            Ok(())
        };
        let (d, energies, grads, chunks) = (&mut ws.descriptors, &mut ws.atomic, &mut ws.pair_grads, &mut ws.chunks);
        descriptor.evaluate_into(&ws.species, centers, nl, d, energies, grads, chunks, parallel, network)
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
        self.with_workspace(|ws, parallel| {
            ws.species = species;
            self.evaluate(ws, None, nl, parallel)?;
            let mut forces = vec![[0.0; 3]; positions.len()];
            let mut virial = [[0.0; 3]; 3];
            crate::prediction::accumulate(&ws.descriptors.neighbors, None, &ws.pair_grads, Some(&mut forces), &mut virial, None);
            let stress = match (cell, pbc) {
                (Some(c), [true, true, true]) => Some(stress_from_virial(&virial, crate::frame::det3(c).abs())),
                _ => None,
            };
            let atomic_energies = ws.atomic.clone();
            Ok(Prediction { energy: atomic_energies.iter().sum(), atomic_energies, forces, virial, stress })
        })
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
        self.with_workspace(|ws, parallel| self.compute_local_in(ws, sys, out, parallel))
    }

    /// [`Potential::compute_local`] with the buffers of `ws`.
    fn compute_local_in(&self, ws: &mut Workspace, sys: &LocalSystem, out: LocalOutputs, parallel: bool) -> Result<()> {
        let n_total = sys.positions.len();
        // Atoms that are neither centres nor neighbours within the cutoff may carry any atomic number (an MD
        // engine passes 0 for atom types the model does not handle); only atoms that take part are checked.
        const UNKNOWN: usize = usize::MAX;
        ws.species.clear();
        ws.species.extend(
            sys.numbers.iter().map(|&z| self.metadata.species.iter().position(|&s| s as i64 == z as i64).unwrap_or(UNKNOWN)),
        );
        let species = &ws.species;
        let check = |i: usize| -> Result<()> {
            if species[i] == UNKNOWN {
                self.species_index(i, sys.numbers[i] as i64)?;
            }
            Ok(())
        };
        let rc2 = self.cutoff() * self.cutoff();
        let (mut offsets, mut pairs) = (std::mem::take(&mut ws.offsets), std::mem::take(&mut ws.pairs));
        offsets.clear();
        pairs.clear();
        offsets.push(0);
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
                if r2 < crate::neighbors::MIN_DISTANCE * crate::neighbors::MIN_DISTANCE {
                    return Err(crate::neighbors::too_close(i, j, r2.sqrt(), false));
                }
                pairs.push(Neighbor { j, r });
            }
            offsets.push(pairs.len());
        }
        let nl = NeighborList::from_parts(self.cutoff(), offsets, pairs);
        self.evaluate(ws, Some(sys.centers), nl, parallel)?;
        if let Some(e) = out.energy {
            *e += ws.atomic.iter().sum::<f64>();
        }
        if let Some(ae) = out.atomic_energies {
            check_len("atomic_energies", ae.len(), n_total)?;
            for (c, &i) in sys.centers.iter().enumerate() {
                ae[i] += ws.atomic[c];
            }
        }
        if let Some(f) = &out.forces {
            check_len("forces", f.len(), n_total)?;
        }
        if let Some(av) = &out.atomic_virial {
            check_len("atomic_virial", av.len(), n_total)?;
        }
        let mut virial = [[0.0; 3]; 3];
        let nl = &ws.descriptors.neighbors;
        crate::prediction::accumulate(nl, Some(sys.centers), &ws.pair_grads, out.forces, &mut virial, out.atomic_virial);
        if let Some(w) = out.virial {
            for a in 0..3 {
                for b in 0..3 {
                    w[a][b] += virial[a][b];
                }
            }
        }
        // The list's buffers go back to the workspace for the next call.
        let (offsets, pairs) = std::mem::take(&mut ws.descriptors.neighbors).into_parts();
        (ws.offsets, ws.pairs) = (offsets, pairs);
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
