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
    #[serde(with = "non_finite")]
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

/// Serde for f64 fields that may be ±∞ or NaN (e.g. "best so far" before any improvement, which the cosine
/// schedule never updates): JSON has no infinity and serde_json would write `null`, which then cannot be read back
/// into an f64 — a checkpoint that cannot be resumed. Non-finite values are written as "inf" / "-inf" / "nan";
/// `null` (what older checkpoints hold) reads as +∞.
pub(crate) mod non_finite {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        match *x {
            x if x.is_finite() => s.serialize_f64(x),
            x if x.is_nan() => s.serialize_str("nan"),
            x if x > 0.0 => s.serialize_str("inf"),
            _ => s.serialize_str("-inf"),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        match Option::<Repr>::deserialize(d)? {
            None => Ok(f64::INFINITY),
            Some(Repr::Number(x)) => Ok(x),
            Some(Repr::Text(t)) => match t.as_str() {
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                "nan" => Ok(f64::NAN),
                other => Err(D::Error::custom(format!("expected a number, \"inf\", \"-inf\" or \"nan\", got \"{other}\""))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Best {
        #[serde(with = "super::non_finite")]
        x: f64,
    }

    #[test]
    fn non_finite_values_round_trip_and_old_nulls_read_as_infinity() {
        for x in [1.5, f64::INFINITY, f64::NEG_INFINITY] {
            let text = serde_json::to_string(&Best { x }).unwrap();
            assert_eq!(serde_json::from_str::<Best>(&text).unwrap().x, x, "{text}");
        }
        assert!(serde_json::from_str::<Best>(&serde_json::to_string(&Best { x: f64::NAN }).unwrap()).unwrap().x.is_nan());
        assert_eq!(serde_json::from_str::<Best>(r#"{"x":null}"#).unwrap().x, f64::INFINITY);
        let e = serde_json::from_str::<Best>(r#"{"x":"big"}"#).err().unwrap().to_string();
        assert!(e.contains("big"), "{e}");
    }
}
