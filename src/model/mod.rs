//! The trained potential as the training loop sees it: family-independent bookkeeping (species, reference
//! energies, energy scale, the flat parameter vector) around the family's descriptor and per-atom model
//! ([`AtomicModel`]), with analytic forces and virial.
//!
//! `E = Σ_i ( e0[Z_i] + scale · ε_{Z_i}(environment of i) ) + E_repulsion`
//!
//! `e0` are per-element reference energies fitted by least squares before training and `scale` is a fixed energy
//! scale (eV) that keeps the per-atom model's output O(1). `E_repulsion` is the fixed short-range prior
//! ([`crate::repulsion`]; no parameters), zero where the training data are. Forces are `−∂E/∂r` through the
//! exact chain rule, so they are conservative.

pub mod domain_guard;
pub mod power_spectrum;

use crate::descriptor::four_body::Bispectrum;
use crate::descriptor::{DescriptorSpec, Descriptors};
use crate::elements::unknown_element;
use crate::error::{Error, Result};
use crate::family::Family;
use crate::frame::{Frame, Mat3, Vec3};
use crate::neighbors::NeighborList;
use crate::prediction::{stress_from_virial, Prediction};
use crate::repulsion::{Repulsion, RepulsionTable};
pub use power_spectrum::Primitive;
pub use power_spectrum::ForwardCache;
pub use power_spectrum::LayerWeights;
use power_spectrum::{KeptInputs, NetworkItem, PowerSpectrumModel};
use serde::{Deserialize, Serialize};

/// A potential with trainable parameters: what checkpoints hold and `pilip export` writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "ModelFields")]
pub struct Model {
    /// Atomic numbers, in the order used by every per-species array.
    pub species: Vec<u32>,
    /// eV per atom of each species.
    pub reference_energies: Vec<f64>,
    /// eV; multiplies the per-atom model's output.
    pub energy_scale: f64,
    /// The family's descriptor and per-atom model (serialised with a `"family"` tag beside the fields above).
    #[serde(flatten)]
    pub atomic: AtomicModel,
    /// The short-range repulsive prior (none in checkpoints written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repulsion: Option<Repulsion>,
}

/// A [`Model`] as stored: the family's part gets the species when it is read ([`PowerSpectrumModel`] builds its
/// descriptor from them).
#[derive(Deserialize)]
struct ModelFields {
    species: Vec<u32>,
    reference_energies: Vec<f64>,
    energy_scale: f64,
    #[serde(flatten)]
    atomic: AtomicModel,
    #[serde(default)]
    repulsion: Option<Repulsion>,
}

impl From<ModelFields> for Model {
    fn from(f: ModelFields) -> Model {
        let mut atomic = f.atomic;
        atomic.networked_mut().species = f.species.clone();
        Model { species: f.species, reference_energies: f.reference_energies, energy_scale: f.energy_scale, atomic, repulsion: f.repulsion }
    }
}

/// The family-specific part of a [`Model`]; one variant per [`Family`].
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum AtomicModel {
    /// [`Family::PowerSpectrum`].
    PowerSpectrum(PowerSpectrumModel),
    /// [`Family::Bispectrum`]: the same descriptor-and-networks model with four-body invariants
    /// (`PowerSpectrumModel::four_body` is set).
    Bispectrum(PowerSpectrumModel),
}

impl AtomicModel {
    /// The descriptor-and-networks model of either family.
    fn networked(&self) -> &PowerSpectrumModel {
        match self {
            AtomicModel::PowerSpectrum(m) | AtomicModel::Bispectrum(m) => m,
        }
    }
    fn networked_mut(&mut self) -> &mut PowerSpectrumModel {
        match self {
            AtomicModel::PowerSpectrum(m) | AtomicModel::Bispectrum(m) => m,
        }
    }
}

/// Checkpoints written before model families existed have no `"family"` key: they are power-spectrum models.
impl<'de> Deserialize<'de> for AtomicModel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(tag = "family", rename_all = "snake_case")]
        enum Tagged {
            PowerSpectrum(PowerSpectrumModel),
            Bispectrum(PowerSpectrumModel),
        }
        let mut value = serde_json::Value::deserialize(d)?;
        if let Some(map) = value.as_object_mut() {
            map.entry("family").or_insert_with(|| Family::PowerSpectrum.name().into());
        }
        match Tagged::deserialize(value).map_err(serde::de::Error::custom)? {
            Tagged::PowerSpectrum(m) if m.four_body.is_none() => Ok(AtomicModel::PowerSpectrum(m)),
            Tagged::Bispectrum(m) if m.four_body.is_some() => Ok(AtomicModel::Bispectrum(m)),
            _ => Err(serde::de::Error::custom("the model's family and its 'four_body' part disagree")),
        }
    }
}

/// A structure prepared for the model: species indices, cell volume and the family's descriptors (which own the
/// neighbour list).
#[derive(Clone, Debug)]
pub struct Environments {
    /// Species index of each atom.
    pub species: Vec<usize>,
    /// Å³, for fully periodic cells.
    pub volume: Option<f64>,
    features: Features,
    /// The atoms' network inputs kept for a training run ([`Model::keep_network_inputs`]).
    kept_inputs: Option<KeptInputs>,
}

/// The family-specific descriptors of one structure.
#[derive(Clone, Debug)]
enum Features {
    PowerSpectrum(Descriptors),
}

impl<'a> Primitive<'a> {
    /// The primitive `a·E + D_t E` at a prepared structure (see [`Model::accumulate_param_grad`]).
    pub fn at(env: &'a Environments, a: f64, displacement: Option<&'a [Vec3]>, strain: Option<&'a Mat3>) -> Self {
        Primitive { species: &env.species, descriptors: env.descriptors(), a, displacement, strain }
    }
}

impl Environments {
    /// Bytes held on the heap (an estimate), to bound caches of environments.
    pub fn heap_bytes(&self) -> usize {
        self.species.len() * std::mem::size_of::<usize>() + self.descriptors().heap_bytes() + self.kept_inputs.as_ref().map_or(0, KeptInputs::heap_bytes)
    }

    fn descriptors(&self) -> &Descriptors {
        let Features::PowerSpectrum(d) = &self.features;
        d
    }

    /// What the per-element networks read: each atom's species and the descriptors.
    fn network_input(&self) -> (&[usize], &Descriptors) {
        (&self.species, self.descriptors())
    }

    /// [`Environments::network_input`] with the kept network inputs, for the networks' passes.
    fn network_item(&self) -> NetworkItem<'_> {
        (&self.species, self.descriptors(), self.kept_inputs.as_ref())
    }

    /// The neighbour list the descriptors were computed from.
    pub fn neighbors(&self) -> &NeighborList {
        &self.descriptors().neighbors
    }
}

/// Per species, rows of one value per network input (`[atoms][inputs]`, row-major): inputs or their tangents.
pub type SpeciesRows = Vec<Vec<f64>>;

impl Model {
    /// A power-spectrum model with randomly initialised networks (seeded) and zero reference energies.
    pub fn power_spectrum(descriptor: DescriptorSpec, species: Vec<u32>, hidden: &[usize], seed: u64) -> Result<Self> {
        let n = species.len();
        let atomic = AtomicModel::PowerSpectrum(PowerSpectrumModel::new(descriptor, None, &species, hidden, seed)?);
        Ok(Model { reference_energies: vec![0.0; n], energy_scale: 1.0, species, atomic, repulsion: None })
    }

    /// A bispectrum model (power spectrum + the four-body invariants of `four_body`) with randomly initialised
    /// networks, zero reference energies and a zero compression (fit it with [`Model::fit_compression`]).
    pub fn bispectrum(descriptor: DescriptorSpec, four_body: Bispectrum, species: Vec<u32>, hidden: &[usize], seed: u64) -> Result<Self> {
        let n = species.len();
        // how long a run trains W is the run's setting, not the model's
        let four_body = Bispectrum { trained_fraction: 1.0, ..four_body };
        let atomic = AtomicModel::Bispectrum(PowerSpectrumModel::new(descriptor, Some(four_body), &species, hidden, seed)?);
        Ok(Model { reference_energies: vec![0.0; n], energy_scale: 1.0, species, atomic, repulsion: None })
    }

    /// Δ-learning start: `base` with a correction network of `hidden` widths beside each of its networks, so that
    /// `E = E_base + ΔE` is one model (exported, run and deployed like any other). Returns the model and, per
    /// parameter, whether it belongs to the correction (only those are trained; the base stays exact).
    pub fn with_correction(base: Model, hidden: &[usize], seed: u64) -> Result<(Model, Vec<bool>)> {
        let mut model = base;
        let trainable = model.atomic.networked_mut().add_correction_networks(hidden, seed)?;
        Ok((model, trainable))
    }

    /// Fine-tuning with the first `frozen` layers of every network kept ([`PowerSpectrumModel::freeze_first_layers`]):
    /// per parameter, whether training may change it.
    pub fn freeze_first_layers(&mut self, frozen: usize) -> Result<Vec<bool>> {
        let depth = self.atomic.networked().networks.iter().map(|n| n.sizes.len() - 1).min().unwrap_or(0);
        self.atomic.networked_mut().freeze_first_layers(frozen).ok_or_else(|| {
            Error::Config(format!("model.frozen_layers = {frozen}: the networks have {depth} layers, so at least the last must stay trainable"))
        })
    }

    /// [`PowerSpectrumModel::restandardise`] on the descriptors of `envs`: new input statistics, with the hidden
    /// units whose first weight is not `trainable` (all of them with `None`) computing what they did before.
    pub fn restandardise(&mut self, envs: &[Environments], std_floor: f64, trainable: Option<&[bool]>) {
        let structures = envs.iter().map(Environments::network_input);
        let m = self.atomic.networked_mut();
        let offsets: Vec<usize> = m.networks.iter().scan(0, |o, n| Some(std::mem::replace(o, *o + n.n_params()))).collect();
        let keep = |s: usize, c: usize| trainable.is_none_or(|t| !t[offsets[s] + c]);
        m.restandardise(structures, std_floor, keep)
    }

    /// Fits the domain guard ([`domain_guard::DomainGuard`]) to the training structures `frames`, replacing any
    /// earlier one; `strength = 0` removes it.
    pub fn fit_domain_guard(&mut self, frames: &[Frame], components: usize, sketch: usize, onset: f64, strength: f64) -> Result<()> {
        self.atomic.networked_mut().domain_guard = None;
        if strength <= 0.0 {
            return Ok(());
        }
        let inputs = self.network_inputs(frames)?;
        let m = self.atomic.networked_mut();
        let n_inputs: Vec<usize> = m.networks.iter().map(crate::nn::Mlp::n_inputs).collect();
        let guard = domain_guard::DomainGuard::fit(&inputs, &n_inputs, components, sketch, onset, strength);
        m.domain_guard = guard.sketch.iter().any(|s| !s.is_empty()).then_some(guard);
        Ok(())
    }

    /// Per species, the standardised network inputs of every atom of `frames` (`[atoms][inputs]`, row-major).
    pub fn network_inputs(&self, frames: &[Frame]) -> Result<SpeciesRows> {
        Ok(self.inputs_and_tangents(frames, None)?.0)
    }

    /// [`Model::network_inputs`] and, in the same layout, each atom's network-input tangent along the displacement
    /// `displacements[f]` (Å per atom) of frame f: the inputs' directional derivative Σ_k J_k u_k (J_k: the inputs'
    /// derivative with respect to atom k's position). One pass: each frame's descriptors are built once.
    pub fn network_inputs_and_tangents(&self, frames: &[Frame], displacements: &[Vec<Vec3>]) -> Result<(SpeciesRows, SpeciesRows)> {
        if frames.len() != displacements.len() {
            return Err(Error::Invalid(format!("network_inputs_and_tangents: {} frames and {} displacements", frames.len(), displacements.len())));
        }
        if let Some((f, _)) = frames.iter().zip(displacements).enumerate().find(|(_, (f, u))| f.positions.len() != u.len()) {
            return Err(Error::Invalid(format!("network_inputs_and_tangents: frame {f} has {} atoms and {} displacements", frames[f].positions.len(), displacements[f].len())));
        }
        self.inputs_and_tangents(frames, Some(displacements))
    }

    /// The one loop behind both: descriptors 64 frames at a time, inputs always, tangents when `displacements`
    /// (checked by the caller) are given (empty per species otherwise).
    fn inputs_and_tangents(&self, frames: &[Frame], displacements: Option<&[Vec<Vec3>]>) -> Result<(SpeciesRows, SpeciesRows)> {
        use rayon::prelude::*;
        const CHUNK: usize = 64;
        let networked = self.atomic.networked();
        let mut inputs = vec![Vec::new(); self.species.len()];
        let mut tangents = vec![Vec::new(); self.species.len()];
        for (c, chunk) in frames.chunks(CHUNK).enumerate() {
            let envs = chunk.par_iter().map(|f| self.frame_environments(f)).collect::<Result<Vec<_>>>()?;
            networked.push_network_inputs(envs.iter().map(Environments::network_input), &mut inputs);
            if let Some(u) = displacements {
                let structures: Vec<_> = envs
                    .iter()
                    .zip(&u[c * CHUNK..])
                    .map(|(e, u)| {
                        let (species, d) = e.network_input();
                        (species, d, u.as_slice())
                    })
                    .collect();
                networked.push_network_input_tangents(&structures, &mut tangents);
            }
        }
        Ok((inputs, tangents))
    }

    /// Where each species' first-layer weights sit in [`Model::params`]: `(offset, inputs, width)`; the weights
    /// are row-major `[inputs][width]`.
    pub fn first_layers(&self) -> Vec<(usize, usize, usize)> {
        self.network_matrices().into_iter().filter(|&(.., layer)| layer == 0).map(|(offset, rows, cols, _)| (offset, rows, cols)).collect()
    }

    /// Every weight matrix of the species' networks in [`Model::params`]: `(offset, rows, cols, layer)`, row-major.
    pub fn network_matrices(&self) -> Vec<(usize, usize, usize, usize)> {
        let mut offset = 0;
        let mut out = Vec::new();
        for n in &self.atomic.networked().networks {
            out.extend((0..n.sizes.len() - 1).map(|k| (offset + n.layer(k).0, n.sizes[k], n.sizes[k + 1], k)));
            offset += n.n_params();
        }
        out
    }

    /// The domain guard, if the model has one.
    pub fn domain_guard(&self) -> Option<&domain_guard::DomainGuard> {
        self.atomic.networked().domain_guard.as_ref()
    }

    /// The model's family.
    pub fn family(&self) -> Family {
        match &self.atomic {
            AtomicModel::PowerSpectrum(_) => Family::PowerSpectrum,
            AtomicModel::Bispectrum(_) => Family::Bispectrum,
        }
    }

    /// Checks that the parts of a model read from disk fit together (sizes of networks, statistics, species).
    pub fn check(&self) -> Result<()> {
        let m = self.atomic.networked();
        m.check()?;
        if self.reference_energies.len() != self.species.len() || m.networks.len() != self.species.len() {
            return Err(Error::model("the model's species, reference energies and networks differ in number"));
        }
        self.repulsion_table()?;
        Ok(())
    }

    /// The repulsive prior over the model's species, if it has one.
    fn repulsion_table(&self) -> Result<Option<RepulsionTable>> {
        self.repulsion.as_ref().map(|r| r.table(&self.species, self.cutoff()).map_err(Error::model)).transpose()
    }

    /// [`Model::repulsion_table`] where no error can be reported: a model's prior was checked when it was fitted
    /// or read ([`Model::check`]).
    fn prior(&self) -> Option<RepulsionTable> {
        self.repulsion_table().ok().flatten()
    }

    /// Cutoff radius, Å.
    pub fn cutoff(&self) -> f64 {
        self.descriptor_spec().cutoff
    }

    /// The descriptor's hyper-parameters.
    pub fn descriptor_spec(&self) -> &DescriptorSpec {
        &self.atomic.networked().descriptor
    }

    /// Length of each atom's descriptor (the per-atom model's input).
    pub fn n_features(&self) -> usize {
        self.atomic.networked().descriptor().n_features()
    }

    /// Index of atomic number `z` in [`Model::species`].
    pub fn species_index(&self, z: u32) -> Option<usize> {
        self.species.iter().position(|&s| s == z)
    }

    fn species_indices(&self, numbers: &[u32]) -> Result<Vec<usize>> {
        numbers
            .iter()
            .enumerate()
            .map(|(i, &z)| self.species_index(z).ok_or_else(|| unknown_element(i, z as i64, &self.species)))
            .collect()
    }

    /// Neighbour list and descriptors for a structure.
    pub fn environments(&self, positions: &[Vec3], numbers: &[u32], cell: Option<&Mat3>, pbc: [bool; 3]) -> Result<Environments> {
        if positions.len() != numbers.len() {
            return Err(Error::invalid(format!("{} positions but {} atomic numbers", positions.len(), numbers.len())));
        }
        let species = self.species_indices(numbers)?;
        let nl = NeighborList::build(positions, cell, pbc, self.cutoff())?;
        let features = Features::PowerSpectrum(self.atomic.networked().descriptor().compute(&species, nl));
        let volume = if pbc.iter().all(|&p| p) { cell.map(|c| crate::frame::det3(c).abs()) } else { None };
        Ok(Environments { species, volume, features, kept_inputs: None })
    }

    /// [`Model::environments`] of a frame.
    pub fn frame_environments(&self, frame: &Frame) -> Result<Environments> {
        self.environments(&frame.positions, &frame.numbers, frame.cell.as_ref(), frame.pbc)
    }

    /// Energy only (no derivatives).
    pub fn energy_of(&self, env: &Environments) -> f64 {
        self.energies_batch(&[env]).pop().unwrap_or_default()
    }

    /// [`Model::energy_of`] of each structure of a batch, the networks run on the batch's atoms of each element
    /// together.
    pub fn energies_batch(&self, envs: &[&Environments]) -> Vec<f64> {
        let items: Vec<_> = envs.iter().map(|e| e.network_item()).collect();
        let mut energies = self.atomic.networked().energies(&items, &self.reference_energies, self.energy_scale);
        if let Some(table) = self.prior() {
            for (e, env) in energies.iter_mut().zip(envs) {
                *e += table.energy(env.neighbors(), &env.species);
            }
        }
        energies
    }

    /// Energy, atomic energies, forces, virial and (periodic) stress.
    pub fn predict(&self, env: &Environments) -> Prediction {
        self.predict_batch(&[env]).pop().unwrap_or_default()
    }

    /// [`Model::predict`] of each structure of a batch; the networks run on the batch's atoms of each element
    /// together (faster for many small structures than one by one).
    pub fn predict_batch(&self, envs: &[&Environments]) -> Vec<Prediction> {
        self.predict_batch_keeping(envs).0
    }

    /// [`Model::predict_batch`], and what the parameter gradient at the same structures can reuse
    /// ([`Model::accumulate_param_grad_after`]).
    pub fn predict_batch_keeping(&self, envs: &[&Environments]) -> (Vec<Prediction>, ForwardCache) {
        let items: Vec<_> = envs.iter().map(|e| e.network_item()).collect();
        let (results, forward) = self.atomic.networked().atomic_energies_and_pair_grads_keeping(&items, &self.reference_energies, self.energy_scale);
        let repulsion = self.prior();
        let prediction = |(env, (mut atomic, mut pair_grads)): (&&Environments, (Vec<f64>, Vec<Vec3>))| {
            if let Some(table) = &repulsion {
                table.add(env.neighbors(), &env.species, None, &mut atomic, &mut pair_grads);
            }
            let mut forces = vec![[0.0; 3]; env.species.len()];
            let mut virial = [[0.0; 3]; 3];
            crate::prediction::accumulate(env.neighbors(), None, &pair_grads, Some(&mut forces), &mut virial, None);
            let stress = env.volume.map(|v| stress_from_virial(&virial, v));
            Prediction { energy: atomic.iter().sum(), atomic_energies: atomic, forces, virial, stress }
        };
        (envs.iter().zip(results).map(prediction).collect(), forward)
    }

    /// [`Model::predict`] of a frame.
    pub fn predict_frame(&self, frame: &Frame) -> Result<Prediction> {
        Ok(self.predict(&self.frame_environments(frame)?))
    }

    // ----- parameters as one flat vector (the optimiser's view) -----

    /// Number of trainable parameters.
    pub fn n_params(&self) -> usize {
        self.atomic.networked().n_params()
    }
    /// The trainable parameters as one vector.
    pub fn params(&self) -> Vec<f64> {
        self.atomic.networked().params()
    }
    /// Stops training the bispectrum compression W: it keeps its present values and leaves the parameter vector,
    /// which keeps the networks' parameters first and unchanged (so the optimiser's state is cut to
    /// [`Model::n_params`]). Returns W's length, 0 when there was no trained W. Environments built before hold
    /// invariants of an earlier W and no network inputs: build them again.
    pub fn freeze_compression(&mut self) -> usize {
        self.atomic.networked_mut().freeze_compression()
    }
    /// Whether training moves the descriptor too (the bispectrum family's compression W, while it is trained).
    pub fn has_trained_descriptor(&self) -> bool {
        self.atomic.networked().has_trained_descriptor()
    }
    /// Whether a structure's [`Environments`] depend on its geometry only, not on trained parameters (false for
    /// the bispectrum family with a trained compression: see [`Model::refresh_environments`]).
    pub fn environments_are_fixed(&self) -> bool {
        !self.has_trained_descriptor()
    }
    /// Brings environments built under earlier parameters up to date with these: the four-body invariants of a
    /// trained compression are recomputed from the kept density; nothing else depends on the parameters, so
    /// environments may be kept from one step to the next either way.
    pub fn refresh_environments(&self, env: &mut Environments) {
        if self.environments_are_fixed() {
            return;
        }
        let Features::PowerSpectrum(d) = &mut env.features;
        self.atomic.networked().descriptor().refresh_four_body(d);
    }
    /// Keeps the atoms' network inputs with a training structure's environments `env` for the rest of the run, where
    /// the training passes read fixed f32 inputs ([`PowerSpectrumModel::kept_inputs`]); they must not outlive a
    /// change of the model's standardisation or input selection.
    pub fn keep_network_inputs(&self, env: &mut Environments) {
        env.kept_inputs = self.atomic.networked().kept_inputs(&env.species, env.descriptors());
    }
    /// Runs the networks' training passes in f32 or f64 ([`PowerSpectrumModel::set_training_precision`]).
    pub fn set_training_precision(&mut self, f32: bool) {
        self.atomic.networked_mut().set_training_precision(f32)
    }
    /// Sets the trainable parameters from one vector of length [`Model::n_params`].
    pub fn set_params(&mut self, p: &[f64]) {
        self.atomic.networked_mut().set_params(p)
    }
    /// A training step's update of the weights the training passes read, with `first_layer` applied to each
    /// network's first layer: [`PowerSpectrumModel::set_training_weights`] (in f32 training the f64 weights are
    /// left for [`Model::set_params`]).
    pub fn set_training_weights(&mut self, p: &[f64], first_layer: &(dyn Fn(usize, LayerWeights<'_>) + Sync)) {
        self.atomic.networked_mut().set_training_weights(p, first_layer)
    }

    /// The training primitive: accumulates into `grad` the parameter gradient of `Σ_p a_p·E(X_p) + D_{t_p} E(X_p)`
    /// over the given configurations, where `D_t E` is the derivative of the energy along the tangent that
    /// displaces atom k by `displacement[k]` and strains pair vectors by `strain` (so
    /// `D_t E = −Σ_k displacement[k]·F_k + Σ_ab strain_ab ∂E/∂ε_ab`). Every loss term reduces to it; a batch's
    /// primitives go in one call so that the networks run on all their atoms together.
    pub fn accumulate_param_grad(&self, primitives: &[Primitive<'_>], grad: &mut [f64]) {
        self.atomic.networked().accumulate_param_grad(primitives, self.energy_scale, grad, None)
    }

    /// [`Model::accumulate_param_grad`] after [`Model::predict_batch_keeping`] at the same structures: when the
    /// primitives are one per predicted structure, in the same order (energy, force and stress losses), the
    /// prediction's first-layer products are reused; otherwise `forward` is ignored. The same gradient either way.
    pub fn accumulate_param_grad_after(&self, primitives: &[Primitive<'_>], grad: &mut [f64], forward: &ForwardCache) {
        self.atomic.networked().accumulate_param_grad(primitives, self.energy_scale, grad, Some(forward))
    }

    // ----- fitting the fixed parts before training -----

    /// Refits the reference energies to `frames` with the networks as they are: when a model trained on one
    /// level of theory is fine-tuned on another, the per-element offsets change and the learned interactions
    /// stay.
    pub fn refit_reference_energies(&mut self, frames: &[&Frame]) -> Result<()> {
        let mut labelled = Vec::new();
        for f in frames {
            if let Some(e) = f.energy {
                let offsets: f64 = f.numbers.iter().filter_map(|&z| self.species_index(z)).map(|s| self.reference_energies[s]).sum();
                labelled.push((f.numbers.as_slice(), e - (self.predict_frame(f)?.energy - offsets)));
            }
        }
        self.fit_reference_energies_to(&labelled)
    }

    /// Least-squares per-element reference energies from structures with energies, less the repulsive prior's
    /// energy (a tiny ridge term picks the minimum-norm solution when compositions are collinear, e.g. one
    /// molecule).
    pub fn fit_reference_energies(&mut self, frames: &[&Frame]) -> Result<()> {
        let table = self.repulsion_table()?;
        let mut labelled = Vec::new();
        for f in frames {
            if let Some(e) = f.energy {
                let prior = match &table {
                    Some(t) => t.energy(&NeighborList::for_frame(f, t.reach())?, &self.species_indices(&f.numbers)?),
                    None => 0.0,
                };
                labelled.push((f.numbers.as_slice(), e - prior));
            }
        }
        self.fit_reference_energies_to(&labelled)
    }

    /// The least-squares fit of [`Model::fit_reference_energies`] to (atomic numbers, energy) pairs.
    fn fit_reference_energies_to(&mut self, labelled: &[(&[u32], f64)]) -> Result<()> {
        let ns = self.species.len();
        let mut ata = vec![0.0; ns * ns];
        let mut atb = vec![0.0; ns];
        for &(numbers, e) in labelled {
            let mut c = vec![0.0; ns];
            for &z in numbers {
                if let Some(s) = self.species_index(z) {
                    c[s] += 1.0;
                }
            }
            for a in 0..ns {
                atb[a] += c[a] * e;
                for b in 0..ns {
                    ata[a * ns + b] += c[a] * c[b];
                }
            }
        }
        if labelled.is_empty() {
            return Err(Error::invalid("no training structure has an energy label; cannot fit reference energies"));
        }
        let tr: f64 = (0..ns).map(|a| ata[a * ns + a]).sum();
        for a in 0..ns {
            ata[a * ns + a] += 1e-8 * tr / ns as f64;
        }
        self.reference_energies = solve_spd(&mut ata, &mut atb, ns)?;
        Ok(())
    }

    /// Fits the family's input standardisation (descriptor mean and spread per element) on `envs` and leaves
    /// out of each network the components that barely vary ([`PowerSpectrumModel::drop_flat_inputs`]);
    /// `std_floor` and `drop_below` are `model.feature_std_floor` and `model.drop_features_below` of the config.
    pub fn fit_input_statistics(&mut self, envs: &[Environments], std_floor: f64, drop_below: f64) {
        let m = self.atomic.networked_mut();
        let spreads = m.fit_feature_statistics(envs.iter().map(Environments::network_input), std_floor);
        m.drop_flat_inputs(&spreads, drop_below);
    }

    /// Fits the bispectrum family's channel compression to the densities of `envs` (nothing for other
    /// families). The environments' four-body features are stale afterwards: compute them again.
    pub fn fit_compression(&mut self, envs: &[Environments]) {
        self.atomic.networked_mut().fit_compression(envs.iter().map(Environments::descriptors))
    }
}

/// Solves A x = b for a small symmetric positive-definite A (Cholesky).
fn solve_spd(a: &mut [f64], b: &mut [f64], n: usize) -> Result<Vec<f64>> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 {
            return Err(Error::invalid("reference-energy fit is singular"));
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut v = a[i * n + j];
            for k in 0..j {
                v -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = v / d;
        }
    }
    for i in 0..n {
        let mut v = b[i];
        for k in 0..i {
            v -= a[i * n + k] * b[k];
        }
        b[i] = v / a[i * n + i];
    }
    for i in (0..n).rev() {
        let mut v = b[i];
        for k in i + 1..n {
            v -= a[k * n + i] * b[k];
        }
        b[i] = v / a[i * n + i];
    }
    Ok(b.to_vec())
}

