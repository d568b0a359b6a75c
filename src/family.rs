//! Model families: which descriptor and per-atom model a potential is made of.
//!
//! A family is chosen in the config (`[model] family`), stored in checkpoints and in the exported model's
//! metadata (`pilip.model_family`), and dispatched on in exactly three places: the training-time model
//! (`model::AtomicModel`), the graph writer (`export::graph`) and the runtime's evaluator (`runtime::Evaluator`).
//! Adding a family means a variant here, one new file under `model/`, and the arms of those three `match`es
//! (`docs/architecture.md`).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The model families this pilip can train, export and run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Three-body power spectrum over fixed, element-resolved radial channels, read by one MLP per element: the
    /// fast preset (`descriptor`, `nn`).
    #[default]
    PowerSpectrum,
    /// The power spectrum plus four-body invariants (triple contractions of Cartesian moment tensors of
    /// compressed density channels), read by the same kind of network: the accurate family
    /// (`descriptor::four_body`).
    Bispectrum,
}

impl Family {
    /// Every family, for messages.
    pub const ALL: [Family; 2] = [Family::PowerSpectrum, Family::Bispectrum];

    /// The name used in configs and model metadata.
    pub fn name(self) -> &'static str {
        match self {
            Family::PowerSpectrum => "power_spectrum",
            Family::Bispectrum => "bispectrum",
        }
    }

    /// The family of a name (as written by [`Family::name`]).
    pub fn parse(name: &str) -> Result<Self> {
        Family::ALL.into_iter().find(|f| f.name() == name).ok_or_else(|| {
            Error::model(format!(
                "model family '{name}' is not known to this pilip {} (it knows: {}); upgrade pilip",
                env!("CARGO_PKG_VERSION"),
                Family::ALL.map(|f| f.name()).join(", ")
            ))
        })
    }
}
