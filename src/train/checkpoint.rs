//! Checkpoints: the resolved config, the model and (for `last`) the complete training state, as JSON written
//! atomically (temporary file, fsync, rename) so an interrupted write never destroys the previous checkpoint.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::train::budget::BudgetState;
use crate::train::optim::{Adam, Schedule};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `format` field of every checkpoint.
pub const FORMAT: &str = "pilip-checkpoint";
/// Newest checkpoint format this pilip writes and reads (older ones are read too). Version 2 added the model's
/// repulsive prior (`"repulsion"`), which an older reader would silently drop; version 3 the descriptor's
/// per-element radial widths (an older reader refuses them as an unknown key: the version says why). Each
/// checkpoint is written with the oldest version that describes it.
pub const FORMAT_VERSION: u32 = 3;

/// A checkpoint file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// pilip version of the writer.
    pub pilip_version: String,
    /// The run's resolved config.
    pub config: Config,
    /// The model (EMA weights for `best.ckpt` when enabled).
    pub model: Model,
    /// Everything needed to continue bit-for-bit (`last.ckpt` only).
    pub state: Option<TrainState>,
}

/// The training loop's state after an epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// Optimiser steps taken (selects the PIWSL displacements).
    pub step: u64,
    /// Optimiser moments.
    pub optimizer: Adam,
    /// Muon's momentum (`training.optimizer = "muon"`; absent otherwise and in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muon: Option<super::muon::Muon>,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// EMA of the weights, if enabled.
    pub ema: Option<Vec<f64>>,
    /// Early-stopping metric of the best epoch.
    #[serde(with = "crate::io::non_finite")]
    pub best_metric: f64,
    /// The best epoch (1-based; 0 before any).
    pub best_epoch: usize,
    /// Epochs since the last improvement.
    pub bad_epochs: usize,
    /// True once early stopping or max_epochs ended the run.
    pub finished: bool,
    /// The `training.max_minutes` budget's clock (absent without a budget and in older checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetState>,
    /// Parameters of the bispectrum compression W that the run stopped training after
    /// `bispectrum.trained_fraction` of its epochs (0: none). They left the optimiser's state and the EMA, and
    /// still count for `training.weight_decay_params`, which is resolved for the run's start.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub frozen_compression_params: usize,
}

fn is_zero(x: &usize) -> bool {
    *x == 0
}

impl Checkpoint {
    /// A checkpoint of `model` trained with `config`.
    pub fn new(config: &Config, model: &Model, state: Option<TrainState>) -> Self {
        Checkpoint {
            format: FORMAT.into(),
            format_version: if !model.descriptor_spec().radial_width_by_element.is_empty() {
                3
            } else if model.repulsion.is_some() {
                2
            } else {
                1
            },
            pilip_version: env!("CARGO_PKG_VERSION").into(),
            config: config.clone(),
            model: model.clone(),
            state,
        }
    }

    /// Writes the checkpoint atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self).map_err(|e| Error::invalid(format!("serialising checkpoint: {e}")))?;
        crate::io::write_atomically(path, &bytes)
    }

    /// Reads and checks a checkpoint.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let ck: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| {
            Error::invalid(format!("{}: not a readable pilip checkpoint ({e})", path.display()))
        })?;
        if ck.format != FORMAT {
            return Err(Error::invalid(format!("{}: format '{}' is not '{FORMAT}'", path.display(), ck.format)));
        }
        if ck.format_version > FORMAT_VERSION {
            return Err(Error::invalid(format!(
                "{}: checkpoint format version {} is newer than this pilip ({}) understands ({FORMAT_VERSION}); upgrade pilip",
                path.display(),
                ck.format_version,
                env!("CARGO_PKG_VERSION")
            )));
        }
        ck.model.check().map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        Ok(ck)
    }
}
