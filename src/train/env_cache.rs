//! The training structures' environments (neighbour list and descriptors, the model's input), kept from one
//! epoch to the next. A structure's geometry never changes during training, so neither does its neighbour list,
//! density or per-pair values; only a trained bispectrum compression's four-body invariants follow the
//! parameters, and those are recomputed from the kept density when a structure is taken
//! ([`Model::refresh_environments`]). Rebuilding environments every step was 8 % of a uracil step (the
//! descriptor's forward pass) and 15 % of a Ni bispectrum step (forward pass and neighbour list). In f32 training
//! of a fixed descriptor the atoms' standardised network inputs are kept too ([`Model::keep_network_inputs`]). The cache holds
//! at most [`MAX_BYTES`]; structures beyond that are rebuilt each time as before, so memory stays bounded on large
//! data sets.

use crate::error::Result;
use crate::frame::Frame;
use crate::model::{Environments, Model};
use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};

/// The most bytes of environments kept (about 0.4 MB per 12-atom molecule with 2672 features: 950 rMD17
/// structures take ~0.4 GB).
pub const MAX_BYTES: usize = 3 << 30;

/// Environments of the structures of one split, by index, filled on first use. Each is behind a lock because
/// taking it may bring its four-body invariants up to date.
pub struct EnvCache {
    slots: Vec<OnceLock<Mutex<Environments>>>,
    bytes: AtomicUsize,
    max_bytes: usize,
}

/// An environment from the cache (held until dropped) or built for this step only.
pub enum Env<'a> {
    /// Kept in the cache.
    Kept(MutexGuard<'a, Environments>),
    /// Built for this step only (the cache is full or keeps nothing).
    Built(Box<Environments>),
}

impl std::ops::Deref for Env<'_> {
    type Target = Environments;
    fn deref(&self) -> &Environments {
        match self {
            Env::Kept(e) => e,
            Env::Built(e) => e.as_ref(),
        }
    }
}

impl std::borrow::Borrow<Environments> for Env<'_> {
    fn borrow(&self) -> &Environments {
        self
    }
}

impl EnvCache {
    /// A cache for `n` structures (0: nothing kept) of at most [`MAX_BYTES`].
    pub fn new(n: usize) -> Self {
        Self::with_max_bytes(n, MAX_BYTES)
    }

    /// A cache for `n` structures of at most `max_bytes` (the validation split's is a quarter of
    /// [`MAX_BYTES`], so that both caches together stay bounded).
    pub fn with_max_bytes(n: usize, max_bytes: usize) -> Self {
        EnvCache { slots: (0..n).map(|_| OnceLock::new()).collect(), bytes: AtomicUsize::new(0), max_bytes }
    }

    /// The environments of structures `ids` (geometries `frames`) under `model`'s current parameters: kept from
    /// an earlier call and brought up to date, or built (in parallel) and kept while the cache has room, or built
    /// for this call only. The kept ones stay locked until the returned values are dropped; an id given twice
    /// gets its second environment built anew.
    pub fn take<'a>(&'a self, model: &Model, ids: &[usize], frames: &[&Frame]) -> Result<Vec<Env<'a>>> {
        // the guards stay on this thread; the work on what they hold, and the building, runs in parallel
        let mut kept: Vec<Option<MutexGuard<'a, Environments>>> = ids.iter().map(|&id| self.lock(id)).collect();
        let mut built: Vec<Option<Environments>> = (0..ids.len()).map(|_| None).collect();
        kept.iter_mut()
            .map(|g| g.as_deref_mut())
            .zip(built.iter_mut())
            .zip(frames)
            .collect::<Vec<_>>()
            .into_par_iter()
            .try_for_each(|((kept, built), frame)| -> Result<()> {
                match kept {
                    Some(env) => model.refresh_environments(env),
                    None => *built = Some(model.frame_environments(frame)?),
                }
                Ok(())
            })?;
        let mut envs = Vec::with_capacity(ids.len());
        for ((kept, built), (&id, frame)) in kept.into_iter().zip(built).zip(ids.iter().zip(frames)) {
            envs.push(match (kept, built) {
                (Some(guard), _) => Env::Kept(guard),
                (None, Some(env)) => self.keep(id, env, model),
                (None, None) => Env::Built(Box::new(model.frame_environments(frame)?)), // not reached: built above
            });
        }
        Ok(envs)
    }

    /// The kept environment of structure `id`, locked; `None` if it is not kept (or already taken).
    fn lock(&self, id: usize) -> Option<MutexGuard<'_, Environments>> {
        match self.slots.get(id)?.get()?.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Keeps `env` as structure `id`'s if there is room (and it is not kept yet), with its network inputs where
    /// `model` keeps them ([`Model::keep_network_inputs`]; only for a structure that is kept: one built for a
    /// single step gains nothing from them), and hands it out.
    fn keep(&self, id: usize, mut env: Environments, model: &Model) -> Env<'_> {
        let Some(slot) = self.slots.get(id).filter(|s| s.get().is_none()) else { return Env::Built(Box::new(env)) };
        if self.bytes.load(Ordering::Relaxed) + env.heap_bytes() > self.max_bytes {
            return Env::Built(Box::new(env));
        }
        model.keep_network_inputs(&mut env);
        let size = env.heap_bytes();
        if self.bytes.fetch_add(size, Ordering::Relaxed) + size > self.max_bytes {
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            return Env::Built(Box::new(env));
        }
        Env::Kept(slot.get_or_init(|| Mutex::new(env)).lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Bytes kept (an estimate, [`Environments::heap_bytes`]).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Structures kept.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.get().is_some()).count()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
