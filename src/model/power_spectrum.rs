//! The power-spectrum family, pilip's fast preset: the three-body power spectrum of `descriptor`, standardised
//! per element, read by one MLP per element (`nn`):
//!
//! `E_i = e0[Z_i] + scale · NN_{Z_i}((G_i − μ_{Z_i}) / σ_{Z_i})`
//!
//! μ/σ standardise the descriptor per element (fitted before training); only the network weights are trained.
//!
//! The bispectrum family is the same model with four-body invariants appended to G (`four_body`, see
//! `descriptor::four_body`); its channel compression is fitted to the training densities before μ/σ.

use crate::descriptor::four_body::Bispectrum;
use crate::descriptor::{Descriptor, DescriptorSpec, Descriptors};
use crate::error::{Error, Result};
use crate::frame::{Mat3, Vec3};
use crate::linalg::Real;
use crate::nn::{Mlp, TransposedWeights};
use crate::rng::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use super::domain_guard::DomainGuard;

/// Parameters of a power-spectrum model: what is specific to this family (species order, reference energies and
/// the energy scale live in [`crate::model::Model`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PowerSpectrumModel {
    /// Descriptor hyper-parameters (cutoff, radial functions, angular order).
    pub descriptor: DescriptorSpec,
    /// The four-body invariants of the bispectrum family (absent: the power-spectrum family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub four_body: Option<Bispectrum>,
    /// Per species: mean of each descriptor component over the training structures.
    pub feature_mean: Vec<Vec<f64>>,
    /// Per species: (floored) standard deviation of each descriptor component.
    pub feature_std: Vec<Vec<f64>>,
    /// One network per species, `[its inputs] → hidden → [1]`.
    pub networks: Vec<Mlp>,
    /// Per species, the descriptor components its network reads, in increasing order; empty: all of them.
    /// Components that barely vary over the element's training atoms are left out
    /// ([`PowerSpectrumModel::drop_flat_inputs`]): the network's first layer, the widest product of a training
    /// step, then reads only what carries information. Exported files get the full first layer back, with zero
    /// rows ([`PowerSpectrumModel::full_input_network`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Vec<u32>>,
    /// The out-of-domain energy penalty fitted after training ([`DomainGuard`]), on the networks' inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_guard: Option<DomainGuard>,
    /// The model's elements (atomic numbers, in species order): the descriptor's widths depend on them. Kept by
    /// [`crate::model::Model`], which sets them here when it is built or read.
    #[serde(skip)]
    pub(crate) species: Vec<u32>,
    #[serde(skip)]
    desc_cache: std::sync::OnceLock<Descriptor>,
    /// The networks' weights rounded to f32 when the training passes run in single precision
    /// ([`PowerSpectrumModel::set_training_precision`]); kept in step by [`PowerSpectrumModel::set_params`].
    #[serde(skip)]
    weights_f32: Option<Vec<Vec<f32>>>,
    /// Those f32 weights transposed, for the input-gradient pass, where the layer kernels can read them
    /// ([`TransposedWeights`]; empty otherwise); kept in step with `weights_f32`.
    #[serde(skip)]
    transposed_f32: Vec<TransposedWeights<f32>>,
}

/// The training primitive `∇θ[a·E + D_t E]` at one configuration (species and descriptors of its atoms), with
/// the tangent t given as atom displacements and/or a strain ([`crate::model::Model::accumulate_param_grad`]).
pub struct Primitive<'a> {
    /// Species index of each atom.
    pub species: &'a [usize],
    /// The configuration's descriptors.
    pub descriptors: &'a Descriptors,
    /// Weight of the energy.
    pub a: f64,
    /// Displacement of each atom along the tangent (Å).
    pub displacement: Option<&'a [Vec3]>,
    /// Homogeneous strain along the tangent.
    pub strain: Option<&'a Mat3>,
}

impl Primitive<'_> {
    fn has_tangent(&self) -> bool {
        self.displacement.is_some() || self.strain.is_some()
    }
}

/// At most this many atoms go through a network in one task of a batch.
const ROWS_PER_TASK: usize = 32;

/// Parameters per task when the f32 training passes' gradients are added to the f64 gradient.
const GRADIENT_PIECE: usize = 1 << 14;

/// A network's first-layer weights `[n_in][width]` in the precision the training passes read
/// ([`PowerSpectrumModel::set_training_weights`]).
pub enum LayerWeights<'a> {
    /// f32 training.
    F32(&'a mut [f32]),
    /// f64 training.
    F64(&'a mut [f64]),
}

/// A network's part of the gradient and its species' block of the compression's.
type GradSlices<'g> = (&'g mut [f64], &'g mut [f64]);

/// Per primitive: the descriptors' tangent (none without a tangent) and, for a trained compression, the
/// densities' tangent.
type Tangents = (Option<Vec<f64>>, Vec<f64>);

/// What every task of a batch's gradient reads.
#[derive(Clone, Copy)]
struct TaskInputs<'a, 'p> {
    primitives: &'a [Primitive<'p>],
    tangents: &'a [Tangents],
    scale: f64,
    forward: Option<&'a ForwardCache>,
}

/// Per structure of a batch: the atomic energies and the per-pair gradients ∂E/∂r_ij.
type AtomicResults = Vec<(Vec<f64>, Vec<Vec3>)>;

/// What a batch's prediction leaves for the parameter gradient at the same structures: each network pass's
/// ([`row_tasks`]) standardised inputs and first-layer pre-activations, and the structures' descriptors they were
/// computed from (by address), so that a gradient at other configurations does not use them.
pub struct ForwardCache {
    passes: FirstLayer,
    of: Vec<usize>,
}

/// Per network pass: the inputs `[rows][inputs]` and the first layer's pre-activations `[rows][width]`, in the
/// precision of the training passes. Gathering and standardising the inputs again from the (f64, mostly
/// out-of-cache) descriptors was 4 % of a uracil training step.
enum FirstLayer {
    F64(Vec<FirstLayerPass<f64>>),
    F32(Vec<FirstLayerPass<f32>>),
}

/// One network pass's inputs and first-layer pre-activations.
type FirstLayerPass<T> = (Vec<T>, Vec<T>);

/// The precisions a [`ForwardCache`] holds.
trait Kept: Real {
    fn pass(cache: &ForwardCache, task: usize) -> Option<&FirstLayerPass<Self>>;
}
impl Kept for f64 {
    fn pass(cache: &ForwardCache, task: usize) -> Option<&FirstLayerPass<f64>> {
        match &cache.passes {
            FirstLayer::F64(z) => z.get(task),
            FirstLayer::F32(_) => None,
        }
    }
}
impl Kept for f32 {
    fn pass(cache: &ForwardCache, task: usize) -> Option<&FirstLayerPass<f32>> {
        match &cache.passes {
            FirstLayer::F32(z) => z.get(task),
            FirstLayer::F64(_) => None,
        }
    }
}

impl ForwardCache {
    /// Whether the cache belongs to exactly these configurations, in this order.
    fn matches(&self, descriptors: impl ExactSizeIterator<Item = *const Descriptors>) -> bool {
        self.of.len() == descriptors.len() && self.of.iter().zip(descriptors).all(|(&a, d)| a == d as usize)
    }
}

/// One network pass of a batch: atoms `(structure, atom)` of one species.
struct RowTask {
    species: usize,
    rows: Vec<(usize, usize)>,
}

/// One structure as the networks read it: each atom's species, the descriptors and, in training, the atoms'
/// standardised network inputs kept in f32 ([`KeptInputs`]).
pub type NetworkItem<'a> = (&'a [usize], &'a Descriptors, Option<&'a KeptInputs>);

/// A training structure's standardised network inputs `(G − μ)/σ` in f32, atom after atom (each atom's row as
/// long as its species' network input), kept with its environments: a training step then copies each atom's
/// row instead of gathering its kept components from the f64 descriptor and standardising them (reading a
/// fifth to half the bytes; the gather was up to 11 % of a uracil step). Valid while the model's standardisation
/// and input selection stay as they were, i.e. within one training run ([`PowerSpectrumModel::kept_inputs`]).
#[derive(Clone, Debug)]
pub struct KeptInputs {
    values: Vec<f32>,
    /// Start of each atom's row in `values` (n_atoms + 1 entries).
    offsets: Vec<usize>,
}

impl KeptInputs {
    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.values.len() * 4 + self.offsets.len() * std::mem::size_of::<usize>()
    }

    /// Atom i's row (`None` past the last atom).
    fn row(&self, i: usize) -> Option<&[f32]> {
        self.values.get(*self.offsets.get(i)?..*self.offsets.get(i + 1)?)
    }
}

/// What one species' network reads of a descriptor row ([`PowerSpectrumModel::input_map`]): input k is
/// `(G[ids[k]] − mean[k]) · inv_sd[k]` (all components in order without `ids`).
struct InputMap<'a> {
    ids: Option<&'a [u32]>,
    mean: Vec<f64>,
    inv_sd: Vec<f64>,
}

impl InputMap<'_> {
    /// Appends the inputs of one atom's descriptor components `g`: `(g − μ)/σ`, or `g/σ` for a tangent
    /// (`centred = false`).
    fn push<T: Real>(&self, g: &[f64], centred: bool, out: &mut Vec<T>) {
        let (m, r) = (&self.mean, &self.inv_sd);
        match (self.ids, centred) {
            (None, true) => out.extend(g.iter().zip(m).zip(r).map(|((g, m), r)| T::of((g - m) * r))),
            (None, false) => out.extend(g.iter().zip(r).map(|(g, r)| T::of(g * r))),
            (Some(ids), true) => out.extend(ids.iter().zip(m).zip(r).map(|((&f, m), r)| T::of((g[f as usize] - m) * r))),
            (Some(ids), false) => out.extend(ids.iter().zip(r).map(|(&f, r)| T::of(g[f as usize] * r))),
        }
    }

    /// The gradient with respect to one atom's descriptor components `first..` (into `out`) of an objective whose
    /// gradient with respect to the inputs is `x̄`, times `scale`; components the network does not read get zero.
    fn scatter<T: Real>(&self, xbar: &[T], scale: f64, first: usize, out: &mut [f64]) {
        let r = &self.inv_sd;
        match self.ids {
            None => out.iter_mut().zip(&xbar[first..]).zip(&r[first..]).for_each(|((o, x), r)| *o = scale * x.f64() * r),
            Some(ids) => {
                out.fill(0.0);
                let skip = ids.partition_point(|&f| (f as usize) < first);
                for ((x, &f), r) in xbar.iter().zip(ids).zip(r).skip(skip) {
                    out[f as usize - first] = scale * x.f64() * r;
                }
            }
        }
    }
}

/// One network pass over a task's rows: outputs, input gradients, and the inputs with the first layer's
/// pre-activations ([`Mlp::forward_with_input_grad_in`]).
type NetworkPass<T> = (Vec<T>, Vec<T>, FirstLayerPass<T>);

/// Splits a batch's atoms into network passes: per species, its atoms of all structures in order, cut into
/// near-equal pieces of at most [`ROWS_PER_TASK`]. A structure has only a few atoms of an element, and training is
/// bound by reading each network's first layer (features × width), so passes over many structures' atoms are
/// what make a batch cheap; the pieces keep a batch divisible among threads. The cut depends on the batch only,
/// so sums over tasks do not depend on the number of threads.
fn row_tasks<'a>(species_of: impl Fn(usize) -> &'a [usize], n_items: usize, n_species: usize) -> Vec<RowTask> {
    let mut tasks = Vec::new();
    for s in 0..n_species {
        let rows: Vec<(usize, usize)> =
            (0..n_items).flat_map(|p| species_of(p).iter().enumerate().filter(|&(_, &z)| z == s).map(move |(i, _)| (p, i))).collect();
        if rows.is_empty() {
            continue;
        }
        let pieces = rows.len().div_ceil(ROWS_PER_TASK);
        let mut start = 0;
        for k in 0..pieces {
            let end = rows.len() * (k + 1) / pieces;
            tasks.push(RowTask { species: s, rows: rows[start..end].to_vec() });
            start = end;
        }
    }
    tasks
}

impl PowerSpectrumModel {
    /// Randomly initialised networks (seeded) with identity standardisation; with `four_body`, its compression
    /// starts at zero (fit it with [`PowerSpectrumModel::fit_compression`]).
    pub fn new(descriptor: DescriptorSpec, four_body: Option<Bispectrum>, species: &[u32], hidden: &[usize], seed: u64) -> Result<Self> {
        let n_species = species.len();
        let four_body = four_body.map(|mut b| {
            b.compression = vec![0.0; b.compression_len(n_species, n_species * descriptor.n_radial, descriptor.l_max)];
            b
        });
        let nf = Descriptor::with_optional_four_body(&descriptor, species, four_body.as_ref())?.n_features();
        let mut sizes = vec![nf];
        sizes.extend_from_slice(hidden);
        sizes.push(1);
        let mut rng = Rng::new(seed);
        let networks = (0..n_species).map(|_| Mlp::new(&sizes, &mut rng)).collect();
        Self::from_networks(descriptor, four_body, species, networks)
    }

    /// The descriptor (built once, on first use; [`PowerSpectrumModel::check`] has made sure it builds).
    pub fn descriptor(&self) -> &Descriptor {
        self.desc_cache.get_or_init(|| {
            let plain = || Descriptor::new(&self.descriptor, &self.species);
            Descriptor::with_optional_four_body(&self.descriptor, &self.species, self.four_body.as_ref()).unwrap_or_else(|_| plain())
        })
    }

    /// Checks that the parts fit together (a checkpoint read from disk): the descriptor builds, and the networks
    /// and input statistics have its number of features.
    pub fn check(&self) -> Result<()> {
        self.descriptor.validate().map_err(Error::model)?;
        let ns = self.networks.len();
        if self.species.len() != ns {
            return Err(Error::model(format!("{} networks for {} species", ns, self.species.len())));
        }
        let nf = Descriptor::with_optional_four_body(&self.descriptor, &self.species, self.four_body.as_ref())?.n_features();
        let inputs_fit = |s: usize, n: &Mlp| match self.inputs.get(s) {
            None => self.inputs.is_empty() && n.n_inputs() == nf,
            Some(ids) => n.n_inputs() == ids.len() && ids.windows(2).all(|w| w[0] < w[1]) && ids.last().is_none_or(|&i| (i as usize) < nf),
        };
        let bad = self.networks.iter().enumerate().any(|(s, n)| !inputs_fit(s, n) || n.sizes.len() < 2)
            || !(self.inputs.is_empty() || self.inputs.len() == ns)
            || self.feature_mean.len() != ns
            || self.feature_std.len() != ns
            || self.feature_mean.iter().chain(&self.feature_std).any(|v| v.len() != nf);
        if bad {
            return Err(Error::model(format!("the networks or input statistics do not match the descriptor's {nf} features")));
        }
        if let Some(g) = &self.domain_guard {
            g.check(&self.networks.iter().map(Mlp::n_inputs).collect::<Vec<_>>()).map_err(Error::model)?;
        }
        Ok(())
    }

    /// Appends the standardised network inputs of each atom of `structures` to `inputs[species]` (what the
    /// domain guard is fitted to).
    pub fn push_network_inputs<'a>(&self, structures: impl Iterator<Item = (&'a [usize], &'a Descriptors)>, inputs: &mut [Vec<f64>]) {
        let maps: Vec<InputMap> = (0..self.networks.len()).map(|s| self.input_map(s)).collect();
        for (species, d) in structures {
            let nf = d.n_features;
            for (i, &s) in species.iter().enumerate() {
                maps[s].push(&d.features[i * nf..(i + 1) * nf], true, &mut inputs[s]);
            }
        }
    }

    /// Appends each atom's network-input tangent Ġ/σ along the displacement of its structure (one `[atoms]`
    /// displacement per structure, Å): the rows whose second moment is the input side of the force loss's
    /// curvature (`train::precondition`).
    pub fn push_network_input_tangents(&self, structures: &[(&[usize], &Descriptors, &[Vec3])], inputs: &mut [Vec<f64>]) {
        let maps: Vec<InputMap> = (0..self.networks.len()).map(|s| self.input_map(s)).collect();
        let dgs: Vec<Vec<f64>> = structures.par_iter().map(|(_, d, u)| self.descriptor().jvp(d, Some(u), None)).collect();
        for ((species, d, _), dg) in structures.iter().zip(&dgs) {
            let nf = d.n_features;
            for (i, &s) in species.iter().enumerate() {
                maps[s].push(&dg[i * nf..(i + 1) * nf], false, &mut inputs[s]);
            }
        }
    }

    /// Fits the four-body compression (bispectrum family; nothing otherwise) to the densities of `structures`,
    /// which must have been computed by this model's descriptor.
    pub fn fit_compression<'a>(&mut self, structures: impl Iterator<Item = &'a Descriptors>) {
        let Some(mut b) = self.four_body.take() else { return };
        self.descriptor().fit_compression(&mut b, structures);
        self.four_body = Some(b);
        self.desc_cache = std::sync::OnceLock::new();
    }

    /// Total energy of each structure of a batch (no derivatives), in the training passes' precision during
    /// training (with the weights of the last step: [`PowerSpectrumModel::set_training_weights`]).
    pub fn energies(&self, items: &[NetworkItem<'_>], e0: &[f64], scale: f64) -> Vec<f64> {
        let tasks = row_tasks(|p| items[p].0, items.len(), self.networks.len());
        let outputs: Vec<(Vec<f64>, Vec<f64>)> = tasks
            .par_iter()
            .map(|t| match &self.weights_f32 {
                Some(w) => self.task_energies(t, items, &w[t.species], scale),
                None => self.task_energies(t, items, &self.networks[t.species].params, scale),
            })
            .collect();
        let mut energies = vec![0.0; items.len()];
        for (t, (out, guard)) in tasks.iter().zip(&outputs) {
            for (k, (&(p, _), o)) in t.rows.iter().zip(out).enumerate() {
                energies[p] += e0[t.species] + scale * o + guard.get(k).copied().unwrap_or(0.0);
            }
        }
        energies
    }

    /// One task of [`PowerSpectrumModel::energies`] with the weights `w`: the network's outputs and the domain
    /// guard's energies of its rows.
    fn task_energies<T: Real>(&self, t: &RowTask, items: &[NetworkItem<'_>], w: &[T], scale: f64) -> (Vec<f64>, Vec<f64>) {
        let x: Vec<T> = self.standardised(&self.input_map(t.species), t, |p| (items[p].1, items[p].2));
        let guard = self.guard_energies(t.species, &x, t.rows.len(), None, scale);
        let out = self.networks[t.species].forward_in(w, &x, t.rows.len()).into_iter().map(|v| v.f64()).collect();
        (out, guard)
    }

    /// Atomic energies and the per-pair gradients ∂E/∂r_ij (in neighbour-list order) of each structure of a
    /// batch. The networks run on the batch's atoms of each element together ([`row_tasks`]).
    pub fn atomic_energies_and_pair_grads(&self, items: &[NetworkItem<'_>], e0: &[f64], scale: f64) -> Vec<(Vec<f64>, Vec<Vec3>)> {
        self.atomic_energies_and_pair_grads_keeping(items, e0, scale).0
    }

    /// [`PowerSpectrumModel::atomic_energies_and_pair_grads`], and what the parameter gradient at the same
    /// structures can reuse ([`PowerSpectrumModel::accumulate_param_grad`]).
    pub fn atomic_energies_and_pair_grads_keeping(
        &self,
        items: &[NetworkItem<'_>],
        e0: &[f64],
        scale: f64,
    ) -> (AtomicResults, ForwardCache) {
        let of = items.iter().map(|(_, d, _)| *d as *const Descriptors as usize).collect();
        match &self.weights_f32 {
            None => {
                let (results, passes) = self.predict_in(items, e0, scale, |s| (&self.networks[s].params[..], None));
                (results, ForwardCache { passes: FirstLayer::F64(passes), of })
            }
            Some(w) => {
                let (results, passes) = self.predict_in(items, e0, scale, |s| (&w[s][..], self.transposed_f32.get(s)));
                (results, ForwardCache { passes: FirstLayer::F32(passes), of })
            }
        }
    }

    /// The body of [`PowerSpectrumModel::atomic_energies_and_pair_grads_keeping`] with the networks' weights in
    /// precision T, and their transposes where there are any (`weights(species)`); returns each network pass's
    /// inputs and first-layer pre-activations.
    fn predict_in<'w, T: Real>(
        &self,
        items: &[NetworkItem<'_>],
        e0: &[f64],
        scale: f64,
        weights: impl Fn(usize) -> (&'w [T], Option<&'w TransposedWeights<T>>) + Sync,
    ) -> (AtomicResults, Vec<FirstLayerPass<T>>) {
        let tasks = row_tasks(|p| items[p].0, items.len(), self.networks.len());
        let maps: Vec<InputMap> = (0..self.networks.len()).map(|s| self.input_map(s)).collect();
        let outputs: Vec<(NetworkPass<T>, Vec<f64>)> = tasks
            .par_iter()
            .map(|t| {
                let x = self.standardised(&maps[t.species], t, |p| (items[p].1, items[p].2));
                let (w, transposed) = weights(t.species);
                let (out, mut dx, z0) = self.networks[t.species].forward_with_input_grad_in(w, transposed, &x, t.rows.len());
                let guard = self.guard_energies(t.species, &x, t.rows.len(), Some(&mut dx), scale);
                ((out, dx, (x, z0)), guard)
            })
            .collect();
        // each structure's rows of the network passes: its atomic energies and ∂E/∂G, then its VJP, structure by
        // structure on the pool's threads (each row is written by its own structure only)
        let mut rows_of: Vec<Vec<(usize, usize, usize)>> = vec![Vec::new(); items.len()];
        for (j, t) in tasks.iter().enumerate() {
            for (k, &(p, i)) in t.rows.iter().enumerate() {
                rows_of[p].push((j, k, i));
            }
        }
        let descriptor = self.descriptor();
        let results = items
            .par_iter()
            .zip(rows_of)
            .map(|((_, d, _), rows)| {
                let (mut atomic, mut de_dg) = (vec![0.0; d.n_atoms], vec![0.0; d.n_atoms * d.n_features]);
                for (j, k, i) in rows {
                    let (s, ((out, dx, _), guard)) = (tasks[j].species, &outputs[j]);
                    let (nf, ni) = (self.feature_std[s].len(), self.networks[s].n_inputs());
                    atomic[i] = e0[s] + scale * out[k].f64() + guard.get(k).copied().unwrap_or(0.0);
                    maps[s].scatter(&dx[k * ni..(k + 1) * ni], scale, 0, &mut de_dg[i * nf..(i + 1) * nf]);
                }
                let grads = descriptor.vjp(d, &de_dg);
                (atomic, grads)
            })
            .collect();
        (results, outputs.into_iter().map(|((_, _, pass), _)| pass).collect())
    }

    /// The domain guard's energy (eV) of each of `rows` atoms of species `s` with network inputs `x`
    /// (`[rows][inputs]`; empty without a guard for the species); with `dx`, the network-input gradient in units of
    /// the networks' output (× 1/`scale`), it adds the guard's gradient there.
    fn guard_energies<T: Real>(&self, s: usize, x: &[T], rows: usize, mut dx: Option<&mut Vec<T>>, scale: f64) -> Vec<f64> {
        let Some(guard) = self.domain_guard.as_ref().filter(|g| !g.sketch[s].is_empty()) else { return Vec::new() };
        let n = self.networks[s].n_inputs();
        let mut grad = vec![0.0; n];
        (0..rows)
            .map(|k| {
                let row: Vec<f64> = x[k * n..(k + 1) * n].iter().map(|v| v.f64()).collect();
                grad.fill(0.0);
                let e = guard.energy(s, &row, dx.is_some().then_some(&mut grad[..]));
                if let Some(d) = dx.as_deref_mut() {
                    if e > 0.0 {
                        for (d, g) in d[k * n..(k + 1) * n].iter_mut().zip(&grad) {
                            *d = T::of(d.f64() + g / scale);
                        }
                    }
                }
                e
            })
            .collect()
    }

    /// Standardised inputs `(G − μ)/σ` of a task's rows (`[rows][network inputs]`); `structure(p)` is structure
    /// p's descriptors and, if it has them, its [`KeptInputs`], whose rows are copied where they have this
    /// network's width; `map` is the task species' [`PowerSpectrumModel::input_map`].
    fn standardised<'a, T: Real>(
        &self,
        map: &InputMap,
        task: &RowTask,
        structure: impl Fn(usize) -> (&'a Descriptors, Option<&'a KeptInputs>),
    ) -> Vec<T> {
        let (nf, ni) = (self.feature_mean[task.species].len(), self.networks[task.species].n_inputs());
        let mut x = Vec::with_capacity(task.rows.len() * ni);
        for &(p, i) in &task.rows {
            let (d, kept) = structure(p);
            match kept.and_then(|kept| kept.row(i)).filter(|row| row.len() == ni) {
                Some(row) => x.extend(row.iter().map(|&v| T::of(v as f64))),
                None => map.push(&d.features[i * nf..(i + 1) * nf], true, &mut x),
            }
        }
        x
    }

    /// A training structure's standardised network inputs in f32, to keep with its environments for the rest of
    /// the run ([`KeptInputs`]); `None` where the training passes do not read f32 inputs that stay fixed (f64
    /// training, or a trained compression whose invariants change with every step).
    pub fn kept_inputs(&self, species: &[usize], d: &Descriptors) -> Option<KeptInputs> {
        if self.weights_f32.is_none() || self.has_trained_descriptor() {
            return None;
        }
        let maps: Vec<InputMap> = (0..self.networks.len()).map(|s| self.input_map(s)).collect();
        let nf = d.n_features;
        let mut kept = KeptInputs { values: Vec::new(), offsets: vec![0] };
        for (i, &s) in species.iter().enumerate() {
            maps[s].push(&d.features[i * nf..(i + 1) * nf], true, &mut kept.values);
            kept.offsets.push(kept.values.len());
        }
        Some(kept)
    }

    /// Species `s`'s network inputs with their standardisation gathered into input order, for the passes over
    /// many atoms: a gather and a multiplication per input instead of three indexed loads and a division (in a
    /// profile of a uracil training step, 12 % before, 6.5 % after).
    fn input_map(&self, s: usize) -> InputMap<'_> {
        let (mean, sd) = (&self.feature_mean[s], &self.feature_std[s]);
        match self.inputs.get(s) {
            None => InputMap { ids: None, mean: mean.clone(), inv_sd: sd.iter().map(|v| 1.0 / v).collect() },
            Some(ids) => InputMap {
                ids: Some(ids),
                mean: ids.iter().map(|&f| mean[f as usize]).collect(),
                inv_sd: ids.iter().map(|&f| 1.0 / sd[f as usize]).collect(),
            },
        }
    }

    /// Leaves out of each element's network the descriptor components whose spread over its training atoms
    /// (`spread`, per species, as [`PowerSpectrumModel::fit_feature_statistics`] returns it) is below
    /// `threshold` × the largest: products of radial channels the element never sees (a Gaussian below its
    /// shortest bond, an element it has no neighbour of). Under the standardisation floor such a component
    /// reaches the network at about `threshold / floor` of the others' scale and changes nothing but the cost of
    /// the first layer, which is the widest product of a training step: on rMD17 ethanol at 3e-4, 30–70 % of an
    /// element's 1524 components. The first layer keeps the rows of the components that stay. A trained channel
    /// compression changes the components after the power spectrum during training (its four-body and
    /// compressed three-body invariants), so those are always kept; the power spectrum's are dropped as for a
    /// model without one.
    pub fn drop_flat_inputs(&mut self, spread: &[Vec<f64>], threshold: f64) {
        if threshold <= 0.0 || !self.inputs.is_empty() {
            return;
        }
        let moving = if self.has_trained_descriptor() { self.descriptor().n_power_spectrum_features() } else { usize::MAX };
        let ids: Vec<Vec<u32>> = spread
            .iter()
            .map(|sd| {
                let max_sd = sd.iter().fold(0.0f64, |a, b| a.max(*b));
                let keep = |f: usize| f >= moving || max_sd == 0.0 || sd[f] >= threshold * max_sd;
                (0..sd.len() as u32).filter(|&f| keep(f as usize)).collect()
            })
            .collect();
        if ids.iter().zip(&self.feature_mean).all(|(ids, m)| ids.len() == m.len()) {
            return;
        }
        for (net, ids) in self.networks.iter_mut().zip(&ids) {
            *net = net.with_input_rows(ids.iter().map(|&f| f as usize));
        }
        self.inputs = ids;
        if self.weights_f32.is_some() {
            self.set_training_precision(true);
        }
    }

    /// Species `s`'s network reading the whole descriptor: the first layer gets zero rows for the components
    /// it leaves out (what an exported file holds).
    pub fn full_input_network(&self, s: usize) -> std::borrow::Cow<'_, Mlp> {
        match self.inputs.get(s) {
            None => std::borrow::Cow::Borrowed(&self.networks[s]),
            Some(ids) => std::borrow::Cow::Owned(self.networks[s].with_inputs_at(ids, self.feature_mean[s].len())),
        }
    }

    /// Runs the networks' training passes (forces during training, the parameter gradient) in f32 (`true`) or
    /// f64; predictions outside training are f64 either way. f32 halves the bytes every product streams and
    /// doubles the arithmetic per instruction; the gradient is still summed and applied in f64.
    pub fn set_training_precision(&mut self, f32: bool) {
        self.weights_f32 = f32.then(|| self.networks.iter().map(Mlp::params_f32).collect());
        self.transposed_f32 = Vec::new();
        if f32 && crate::linalg::has_f32_layer_kernels(64) {
            self.transposed_f32 = vec![TransposedWeights::default(); self.networks.len()];
            self.update_transposed();
        }
    }

    /// Rewrites [`PowerSpectrumModel::transposed_f32`] from the f32 weights (nothing where it is empty).
    fn update_transposed(&mut self) {
        if let Some(w32) = &self.weights_f32 {
            let nets = self.networks.par_iter().zip(w32);
            self.transposed_f32.par_iter_mut().zip(nets).for_each(|(t, (net, w))| net.transpose_into(w, t));
        }
    }

    /// Δ-learning: puts a new, randomly initialised (seeded) correction network of `hidden` widths beside each
    /// species' network ([`Mlp::beside`]), reading the same standardised inputs, and freezes the compression.
    /// Returns, per parameter of the result, whether training may change it (the corrections' parameters only).
    pub fn add_correction_networks(&mut self, hidden: &[usize], seed: u64) -> Result<Vec<bool>> {
        let mut rng = Rng::new(seed);
        let mut trainable = Vec::new();
        for net in &mut self.networks {
            let mut sizes = vec![net.n_inputs()];
            sizes.extend_from_slice(hidden);
            sizes.push(1);
            let (merged, is_new) = net.beside(&Mlp::new(&sizes, &mut rng)).ok_or_else(|| {
                Error::Config(format!(
                    "model.hidden = {hidden:?}: a Δ-learning correction needs as many hidden layers as the base network ({:?})",
                    &net.sizes[1..net.sizes.len() - 1]
                ))
            })?;
            *net = merged;
            trainable.extend(is_new);
        }
        if let Some(b) = self.four_body.as_mut() {
            b.trainable = false; // part of the base: frozen like its networks
        }
        Ok(trainable)
    }

    /// Fine-tuning with the first `frozen` layers of every network kept (and, from 1 on, the compression: it
    /// feeds the first layer); returns per parameter whether training may change it. `None` when a network has
    /// no layer above them.
    pub fn freeze_first_layers(&mut self, frozen: usize) -> Option<Vec<bool>> {
        if self.networks.iter().any(|n| frozen >= n.sizes.len() - 1) {
            return None;
        }
        if let Some(b) = self.four_body.as_mut().filter(|_| frozen > 0) {
            b.trainable = false;
        }
        Some(self.networks.iter().flat_map(|n| n.trainable_from_layer(frozen)).collect())
    }

    /// See [`crate::model::Model::freeze_compression`].
    pub fn freeze_compression(&mut self) -> usize {
        let Some(b) = self.four_body.as_mut().filter(|b| b.trainable) else { return 0 };
        b.trainable = false;
        self.desc_cache = std::sync::OnceLock::new();
        b.compression.len()
    }

    /// The trained compression of the bispectrum family, if W is trained.
    fn trained_compression(&self) -> Option<&Vec<f64>> {
        self.four_body.as_ref().filter(|b| b.trainable).map(|b| &b.compression)
    }

    /// Whether the descriptor has trained parameters (the bispectrum family's compression W, when trained).
    pub fn has_trained_descriptor(&self) -> bool {
        self.trained_compression().is_some()
    }

    /// Number of trainable parameters: the networks', then W's when it is trained.
    pub fn n_params(&self) -> usize {
        self.networks.iter().map(|n| n.n_params()).sum::<usize>() + self.trained_compression().map_or(0, |w| w.len())
    }

    /// The trainable parameters as one vector (networks in species order, then W).
    pub fn params(&self) -> Vec<f64> {
        let nets = self.networks.iter().flat_map(|n| n.params.iter().copied());
        nets.chain(self.trained_compression().into_iter().flatten().copied()).collect()
    }

    /// Sets the parameters from one vector of length [`PowerSpectrumModel::n_params`].
    pub fn set_params(&mut self, p: &[f64]) {
        let mut off = 0;
        for net in &mut self.networks {
            let k = net.params.len();
            net.params.copy_from_slice(&p[off..off + k]);
            off += k;
        }
        if let Some(w) = self.weights_f32.as_mut() {
            for (w, net) in w.iter_mut().zip(&self.networks) {
                w.iter_mut().zip(&net.params).for_each(|(w, p)| *w = *p as f32);
            }
        }
        self.update_transposed();
        self.set_trained_compression(&p[off..]);
    }

    /// A trained compression W from `p` (the parameters after the networks'), if there is one.
    fn set_trained_compression(&mut self, p: &[f64]) {
        if let Some(b) = self.four_body.as_mut().filter(|b| b.trainable) {
            let len = b.compression.len();
            b.compression.copy_from_slice(&p[..len]);
            self.desc_cache = std::sync::OnceLock::new(); // the four-body part is rebuilt with the new W
        }
    }

    /// A training step's update of the weights the training passes read: [`PowerSpectrumModel::set_params`]
    /// with `first_layer(s, w)` applied to network s's first-layer weights `[n_in][width]` after the copy (the
    /// optimiser's coordinates mapped to the model's), one network per task. In f32 training only the f32 copies
    /// change — the conversion and the map in one pass, the map in f32 — and the f64 weights keep the last
    /// `set_params`, which must come before anything reads the model in f64 (the trainer's does at the end of
    /// every epoch); in f64 training the weights themselves.
    pub fn set_training_weights(&mut self, p: &[f64], first_layer: &(dyn Fn(usize, LayerWeights<'_>) + Sync)) {
        let mut parts = Vec::with_capacity(self.networks.len());
        let mut rest = p;
        for net in &self.networks {
            let (part, tail) = rest.split_at(net.n_params());
            parts.push((part, net.sizes[0] * net.sizes[1]));
            rest = tail;
        }
        match self.weights_f32.as_mut() {
            Some(w32) => w32.par_iter_mut().zip(&parts).enumerate().for_each(|(s, (w, &(part, layer)))| {
                w.iter_mut().zip(part).for_each(|(w, p)| *w = *p as f32);
                first_layer(s, LayerWeights::F32(&mut w[..layer]));
            }),
            None => self.networks.par_iter_mut().zip(&parts).enumerate().for_each(|(s, (net, &(part, layer)))| {
                net.params.copy_from_slice(part);
                first_layer(s, LayerWeights::F64(&mut net.params[..layer]));
            }),
        }
        self.update_transposed();
        self.set_trained_compression(rest);
    }

    /// Accumulates into `grad` the parameter gradients of a batch of training primitives `a·E + D_t E` (see
    /// [`crate::model::Model::accumulate_param_grad`]): the descriptors' tangents per configuration, then each
    /// network once per [`row_tasks`] task on the batch's atoms of its element, then the tasks' gradients summed
    /// in task order (the same sums whatever the number of threads).
    /// `forward`, the prediction's [`ForwardCache`] at the same structures (one primitive each, in the same
    /// order), saves the first layer's forward product; it is ignored for any other list of primitives.
    pub fn accumulate_param_grad(&self, primitives: &[Primitive<'_>], scale: f64, grad: &mut [f64], forward: Option<&ForwardCache>) {
        let forward = forward.filter(|c| c.matches(primitives.iter().map(|p| p.descriptors as *const Descriptors)));
        let descriptor = self.descriptor();
        // a trained W needs the densities' tangents and the networks' input gradients
        let trained = descriptor.four_body().filter(|_| self.has_trained_descriptor());
        let tangents: Vec<Tangents> = primitives
            .par_iter()
            .map(|p| {
                let mut density_tangent = Vec::new();
                let dg = p.has_tangent().then(|| {
                    descriptor.jvp_with_density(p.descriptors, p.displacement, p.strain, trained.is_some().then_some(&mut density_tangent))
                });
                (dg, density_tangent)
            })
            .collect();
        let mut offs = vec![0];
        for n in &self.networks {
            offs.push(offs.last().copied().unwrap_or(0) + n.n_params());
        }
        let block = trained.map_or(0, |fb| fb.compression_block());
        let tasks = row_tasks(|p| primitives[p].species, primitives.len(), self.networks.len());
        let batch = TaskInputs { primitives, tangents: &tangents, scale, forward };
        let (nets, w_grad) = grad.split_at_mut(offs[self.networks.len()]);
        if let Some(w32) = &self.weights_f32 {
            // f32: every task into buffers of its own, added to the f64 gradient in task order
            let buffers: Vec<(Vec<f32>, Vec<f64>)> = tasks
                .par_iter()
                .enumerate()
                .map(|(j, t)| {
                    let (mut g, mut g_w) = (vec![0.0f32; self.networks[t.species].n_params()], vec![0.0; block]);
                    self.task_grad(j, t, &batch, &w32[t.species], &mut g, &mut g_w);
                    (g, g_w)
                })
                .collect();
            // the networks' parts in pieces on the threads, each piece summing its tasks in task order
            let mut pieces: Vec<(usize, usize, &mut [f64])> = Vec::new();
            let mut rest = &mut nets[..];
            for s in 0..self.networks.len() {
                let (net, tail) = std::mem::take(&mut rest).split_at_mut(offs[s + 1] - offs[s]);
                rest = tail;
                pieces.extend(net.chunks_mut(GRADIENT_PIECE).enumerate().map(|(k, piece)| (s, k * GRADIENT_PIECE, piece)));
            }
            pieces.into_par_iter().for_each(|(s, at, piece)| {
                for (_, (g, _)) in tasks.iter().zip(&buffers).filter(|(t, _)| t.species == s) {
                    piece.iter_mut().zip(&g[at..]).for_each(|(a, b)| *a += *b as f64);
                }
            });
            for (t, (_, g_w)) in tasks.iter().zip(&buffers) {
                let s = t.species;
                w_grad[s * block..s * block + g_w.len()].iter_mut().zip(g_w).for_each(|(a, b)| *a += b);
            }
            return;
        }
        // f64: the first task of each species accumulates straight into its part of `grad`; the others into
        // buffers of their own, added after in task order (fixed sums, no per-task buffer in the common one-task
        // case).
        let mut direct: Vec<Option<GradSlices>> = Vec::with_capacity(self.networks.len());
        {
            let mut nets = &mut nets[..];
            let mut w_blocks = w_grad.chunks_mut(block.max(1));
            for s in 0..self.networks.len() {
                let (g_net, rest) = std::mem::take(&mut nets).split_at_mut(offs[s + 1] - offs[s]);
                nets = rest;
                let g_w = if block > 0 { w_blocks.next() } else { None }.unwrap_or_default();
                direct.push(Some((g_net, g_w)));
            }
        }
        let jobs: Vec<(usize, &RowTask, Option<GradSlices>)> = tasks.iter().enumerate().map(|(j, t)| (j, t, direct[t.species].take())).collect();
        let buffers: Vec<Option<Vec<f64>>> = jobs
            .into_par_iter()
            .map(|(j, t, target)| {
                let params = &self.networks[t.species].params;
                match target {
                    Some((g_net, g_w)) => {
                        self.task_grad(j, t, &batch, params, g_net, g_w);
                        None
                    }
                    None => {
                        let np = params.len();
                        let mut g = vec![0.0; np + block];
                        let (g_net, g_w) = g.split_at_mut(np);
                        self.task_grad(j, t, &batch, params, g_net, g_w);
                        Some(g)
                    }
                }
            })
            .collect();
        for (t, g) in tasks.iter().zip(&buffers) {
            let Some(g) = g else { continue };
            let s = t.species;
            let (g_net, g_w) = g.split_at(offs[s + 1] - offs[s]);
            nets[offs[s]..offs[s + 1]].iter_mut().zip(g_net).for_each(|(a, b)| *a += b);
            w_grad[s * block..s * block + g_w.len()].iter_mut().zip(g_w).for_each(|(a, b)| *a += b);
        }
    }

    /// One network pass of [`PowerSpectrumModel::accumulate_param_grad`]: task `t`'s part of the gradient into
    /// `g_net` (its network's parameters, in the precision of the weights `w`) and `g_w` (its species' block of
    /// the trained compression W, if any).
    fn task_grad<T: Kept>(&self, j: usize, t: &RowTask, batch: &TaskInputs, w: &[T], g_net: &mut [T], g_w: &mut [f64]) {
        let TaskInputs { primitives, tangents, scale, forward } = *batch;
        let kept = forward.and_then(|c| T::pass(c, j));
        let z0 = kept.map(|(_, z0)| &z0[..]);
        let descriptor = self.descriptor();
        let trained = descriptor.four_body().filter(|_| self.has_trained_descriptor());
        let (s, n) = (t.species, t.rows.len());
        let net = &self.networks[s];
        let (nf, ni) = (self.feature_std[s].len(), net.n_inputs());
        // the stacked inputs: x = (G − μ)/σ, then, if any configuration of the task has a tangent, u = Ġ/σ
        // (rows of configurations without one get u = 0 and b = 0)
        let tangent = t.rows.iter().any(|&(p, _)| tangents[p].0.is_some());
        let map = self.input_map(s);
        let mut xu: Vec<T> = match kept.filter(|(x, _)| x.len() == n * ni) {
            Some((x, _)) => {
                let mut xu = Vec::with_capacity(if tangent { 2 * x.len() } else { x.len() });
                xu.extend_from_slice(x);
                xu
            }
            None => self.standardised(&map, t, |p| (primitives[p].descriptors, None)),
        };
        if tangent {
            for &(p, i) in &t.rows {
                match &tangents[p].0 {
                    Some(dg) => map.push(&dg[i * nf..(i + 1) * nf], false, &mut xu),
                    None => xu.resize(xu.len() + ni, T::default()),
                }
            }
        }
        let av: Vec<T> = t.rows.iter().map(|&(p, _)| T::of(primitives[p].a * scale)).collect();
        let bv: Vec<T> = t.rows.iter().map(|&(p, _)| T::of(if tangents[p].0.is_some() { scale } else { 0.0 })).collect();
        let Some(fb) = trained else {
            net.stacked_param_and_input_grad(w, &xu, n, tangent, z0, &av, &bv, g_net, None);
            return;
        };
        let (mut xbar, mut ubar) = (vec![T::default(); n * ni], vec![T::default(); if tangent { n * ni } else { 0 }]);
        net.stacked_param_and_input_grad(w, &xu, n, tangent, z0, &av, &bv, g_net, Some((&mut xbar, &mut ubar)));
        // x = (G − μ)/σ and u = Ġ/σ: the objective's gradient with respect to the four-body invariants and
        // their tangents is x̄/σ and ū/σ
        let nps = descriptor.n_power_spectrum_features();
        let mut scratch = vec![0.0; fb.scratch_len()];
        let (mut gb, mut gd) = (vec![0.0; nf - nps], vec![0.0; nf - nps]);
        for (k, &(p, i)) in t.rows.iter().enumerate() {
            map.scatter(&xbar[k * ni..(k + 1) * ni], 1.0, nps, &mut gb);
            let d = primitives[p].descriptors;
            let a_dot = tangents[p].0.as_ref().map(|_| {
                map.scatter(&ubar[k * ni..(k + 1) * ni], 1.0, nps, &mut gd);
                let na = d.density_of(0).len();
                &tangents[p].1[i * na..(i + 1) * na]
            });
            let gd = a_dot.is_some().then_some(&gd[..]);
            fb.compression_grad(s, d.density_of(i), a_dot, &gb, gd, g_w, &mut scratch);
        }
    }

    /// A model of given networks (each `[n_features] → … → [1]`, reading the raw descriptor: identity
    /// standardisation), e.g. the networks read out of an exported file.
    pub fn from_networks(descriptor: DescriptorSpec, four_body: Option<Bispectrum>, species: &[u32], networks: Vec<Mlp>) -> Result<Self> {
        let n_species = networks.len();
        let nf = Descriptor::with_optional_four_body(&descriptor, species, four_body.as_ref())?.n_features();
        let m = PowerSpectrumModel {
            feature_mean: vec![vec![0.0; nf]; n_species],
            feature_std: vec![vec![1.0; nf]; n_species],
            networks,
            inputs: Vec::new(),
            domain_guard: None,
            descriptor,
            four_body,
            species: species.to_vec(),
            desc_cache: Default::default(),
            weights_f32: None,
            transposed_f32: Vec::new(),
        };
        m.check()?;
        Ok(m)
    }

    /// Fits the input statistics to `structures` ([`PowerSpectrumModel::fit_feature_statistics`]) and rewrites
    /// the first layer of each network so that the columns (hidden units) `keep(species, unit)` selects compute
    /// the same function of the descriptor as before: ((G − μ₀)/σ₀)W + b = ((G − μ)/σ)(diag(σ/σ₀)W) + b + ((μ − μ₀)/σ₀)W.
    /// The other columns keep their weights, now read against the new statistics.
    pub fn restandardise<'a>(
        &mut self,
        structures: impl Iterator<Item = (&'a [usize], &'a Descriptors)>,
        std_floor: f64,
        keep: impl Fn(usize, usize) -> bool,
    ) {
        let (old_mean, old_std) = (self.feature_mean.clone(), self.feature_std.clone());
        self.fit_feature_statistics(structures, std_floor);
        for (s, net) in self.networks.iter_mut().enumerate() {
            let (i, o) = (net.sizes[0], net.sizes[1]);
            let (w, rest) = net.params.split_at_mut(i * o);
            let b = &mut rest[..o];
            let ids = self.inputs.get(s);
            for c in (0..o).filter(|&c| keep(s, c)) {
                for r in 0..i {
                    let f = ids.map_or(r, |ids| ids[r] as usize);
                    b[c] += w[r * o + c] * (self.feature_mean[s][f] - old_mean[s][f]) / old_std[s][f];
                    w[r * o + c] *= self.feature_std[s][f] / old_std[s][f];
                }
            }
        }
    }

    /// Per-species mean and standard deviation of each descriptor component over the given structures
    /// (`(species of each atom, descriptors)`).
    ///
    /// Each standard deviation is floored at `std_floor` × the largest one of that element: components that
    /// barely vary (odd-l products, far channels) would otherwise be blown up to unit variance and the network
    /// would fit noise in them (measured: aspirin force MAE 148 → 83 meV/Å with a floor of 0.3).
    /// Returns the spreads before the floor (per species and component).
    pub fn fit_feature_statistics<'a>(
        &mut self,
        structures: impl Iterator<Item = (&'a [usize], &'a Descriptors)>,
        std_floor: f64,
    ) -> Vec<Vec<f64>> {
        let nf = self.descriptor().n_features();
        let ns = self.networks.len();
        let mut sum = vec![vec![0.0; nf]; ns];
        let mut sq = vec![vec![0.0; nf]; ns];
        let mut cnt = vec![0usize; ns];
        let mut spreads = vec![vec![0.0; nf]; ns];
        for (species, d) in structures {
            for (i, &s) in species.iter().enumerate() {
                let g = &d.features[i * nf..(i + 1) * nf];
                for f in 0..nf {
                    sum[s][f] += g[f];
                    sq[s][f] += g[f] * g[f];
                }
                cnt[s] += 1;
            }
        }
        for s in 0..ns {
            if cnt[s] == 0 {
                continue;
            }
            let n = cnt[s] as f64;
            let mut sds = vec![0.0; nf];
            for f in 0..nf {
                let m = sum[s][f] / n;
                self.feature_mean[s][f] = m;
                sds[f] = (sq[s][f] / n - m * m).max(0.0).sqrt();
            }
            let max_sd = sds.iter().fold(0.0f64, |a, b| a.max(*b));
            for f in 0..nf {
                let m = self.feature_mean[s][f];
                // Constant features (e.g. a missing element) keep unit scale; tiny ones are floored.
                let sd = sds[f].max(std_floor * max_sd);
                self.feature_std[s][f] = if sd > 1e-6 * (1.0 + m.abs()) { sd } else { 1.0 };
            }
            spreads[s] = sds;
        }
        spreads
    }
}
