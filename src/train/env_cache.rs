//! The training structures' environments (neighbour list and descriptors, the model's input), kept from one
//! epoch to the next. A structure's geometry never changes during training and, unless the descriptor has
//! trained parameters (a trained bispectrum compression), neither does its environment: rebuilding it every step
//! was 8 % of a uracil step (the descriptor's forward pass). The cache holds at most [`MAX_BYTES`]; structures
//! beyond that are rebuilt each time as before, so memory stays bounded on large data sets.

use crate::error::Result;
use crate::frame::Frame;
use crate::model::{Environments, Model};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The most bytes of environments kept (about 0.4 MB per 12-atom molecule with 2672 features: 950 rMD17
/// structures take ~0.4 GB).
pub const MAX_BYTES: usize = 3 << 30;

/// Environments of the structures of one split, by index, filled on first use.
pub struct EnvCache {
    slots: Vec<OnceLock<Environments>>,
    bytes: AtomicUsize,
}

/// An environment from the cache or built for this step only.
pub enum Env<'a> {
    /// Kept in the cache.
    Kept(&'a Environments),
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

impl EnvCache {
    /// A cache for `n` structures; empty (nothing kept) when the model's environments depend on its parameters.
    pub fn new(model: &Model, n: usize) -> Self {
        let n = if model.environments_are_fixed() { n } else { 0 };
        EnvCache { slots: (0..n).map(|_| OnceLock::new()).collect(), bytes: AtomicUsize::new(0) }
    }

    /// The environment of structure `id` (whose geometry is `frame`): kept from an earlier call, or built and kept
    /// while the cache has room, or built for this call only.
    pub fn get<'a>(&'a self, model: &Model, id: usize, frame: &Frame) -> Result<Env<'a>> {
        let Some(slot) = self.slots.get(id) else { return Ok(Env::Built(Box::new(model.frame_environments(frame)?))) };
        if let Some(env) = slot.get() {
            return Ok(Env::Kept(env));
        }
        let env = model.frame_environments(frame)?;
        let size = env.heap_bytes();
        if self.bytes.fetch_add(size, Ordering::Relaxed) + size > MAX_BYTES {
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            return Ok(Env::Built(Box::new(env)));
        }
        if slot.set(env).is_err() {
            self.bytes.fetch_sub(size, Ordering::Relaxed); // another thread kept this structure first
        }
        match slot.get() {
            Some(env) => Ok(Env::Kept(env)),
            None => Ok(Env::Built(Box::new(model.frame_environments(frame)?))), // not reached: the slot was just filled
        }
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
