//! Checkpoints: the resolved config, the model and (for `last`) the complete training state, as JSON written
//! atomically (temporary file, fsync, rename) so an interrupted write never destroys the previous checkpoint.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::train::optim::{Adam, Schedule};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FORMAT: &str = "pilip-checkpoint";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    pub format: String,
    pub format_version: u32,
    pub pilip_version: String,
    pub config: Config,
    pub model: Model,
    pub state: Option<TrainState>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    pub epochs_done: usize,
    pub step: u64,
    pub optimizer: Adam,
    pub schedule: Schedule,
    pub ema: Option<Vec<f64>>,
    pub best_metric: f64,
    pub best_epoch: usize,
    pub bad_epochs: usize,
    /// True once early stopping or max_epochs ended the run.
    pub finished: bool,
}

impl Checkpoint {
    pub fn new(config: &Config, model: &Model, state: Option<TrainState>) -> Self {
        Checkpoint {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            pilip_version: env!("CARGO_PKG_VERSION").into(),
            config: config.clone(),
            model: model.clone(),
            state,
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self).map_err(|e| Error::invalid(format!("serialising checkpoint: {e}")))?;
        crate::io::write_atomically(path, &bytes)
    }

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
        Ok(ck)
    }
}
