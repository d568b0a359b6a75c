//! The self-description carried by every exported model in the ONNX `metadata_props`, and its checks on load.
//!
//! Everything the runtime needs besides the network travels here: the descriptor specification (the runtime
//! computes descriptors in Rust), the species order of the graph's inputs, the per-element reference energies
//! (added in f64 outside the graph so an f32 graph loses no precision on large absolute energies), units, the
//! graph's floating-point type, the model family and a checksum of the graph.

use crate::descriptor::four_body::{Bispectrum, ThreeBody};
use crate::descriptor::{Descriptor, DescriptorSpec};
use crate::error::{Error, Result};
use crate::family::Family;
use crate::repulsion::{Repulsion, RepulsionTable};
use std::collections::BTreeMap;

/// Version of the exported model format. Bumped when the graph signature or a metadata key changes meaning;
/// the runtime refuses newer versions (it cannot know what changed) and reads every older one it knows. A new
/// model family is written with a new version, so that readers from before it refuse the file (policy:
/// `docs/c-api.md`): power-spectrum models are still written as version 1, which every pilip reads; version 2
/// added the bispectrum family (`pilip.bispectrum`); version 3 its compressed three-body invariants and
/// four-body channel count (`three_body`, `four_body_channels` in `pilip.bispectrum`); version 4 the short-range
/// repulsive prior (`pilip.repulsion`) and the descriptor's `radial_scale`, which a reader that ignored them
/// would silently evaluate as a different energy; version 5 the domain guard (`pilip.domain_guard`, nodes with
/// a `Relu` in the graph); version 6 the descriptor's per-element radial widths (`radial_width_by_element`).
pub const MODEL_FORMAT_VERSION: u32 = 6;

/// The format version a model of `family` (with `descriptor`, the four-body part `bispectrum`, with or without a
/// repulsive prior, with or without a domain guard) is written with: the oldest that can describe it, so that
/// files an older library can run stay readable by it.
pub fn format_version_for(family: Family, descriptor: &DescriptorSpec, bispectrum: Option<&Bispectrum>, repulsion: bool, domain_guard: bool) -> u32 {
    let mut version = match (family, bispectrum) {
        (Family::PowerSpectrum, _) => 1,
        (Family::Bispectrum, Some(b)) if b.three_body != ThreeBody::Full || b.four_body_channels != 0 => 3,
        (Family::Bispectrum, _) => 2,
    };
    if repulsion || descriptor.radial_scale != 0.0 {
        version = version.max(4);
    }
    if domain_guard {
        version = version.max(5);
    }
    if !descriptor.radial_width_by_element.is_empty() {
        version = version.max(6);
    }
    version
}

/// What the metadata says of a model's domain guard (`pilip.domain_guard`; the directions are graph constants).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainGuardInfo {
    /// Where the penalty starts, in units of each element's largest training score.
    pub onset: f64,
    /// eV per atom per unit of squared excess.
    pub strength: f64,
    /// Principal directions per species that count as inside the domain.
    pub components: Vec<usize>,
    /// Rows of the random sketch that measures the residual, per species.
    pub sketch: Vec<usize>,
}
/// Prefix of every pilip key in `metadata_props`.
pub const KEY_PREFIX: &str = "pilip.";

/// Floating-point type of the network inside the ONNX graph (descriptors and the chain rule stay f64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Single precision (the default export: ~2× faster, 1e-5 relative).
    F32,
    /// Double precision.
    F64,
}

impl Dtype {
    /// "f32" or "f64".
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
        }
    }
    /// Reads "f32"/"float32" or "f64"/"float64".
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f64" | "float64" => Ok(Dtype::F64),
            other => Err(Error::model(format!("dtype must be 'f32' or 'f64', got '{other}'"))),
        }
    }
}

/// Decoded metadata of a pilip ONNX model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelMetadata {
    /// [`MODEL_FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// pilip version that wrote the file.
    pub library_version: String,
    /// Atomic numbers in graph-input order.
    pub species: Vec<u32>,
    /// Element symbols of `species`.
    pub symbols: Vec<String>,
    /// The model family (`pilip.model_family`; files without the key are power-spectrum models).
    pub family: Family,
    /// Å.
    pub cutoff: f64,
    /// Always "eV".
    pub energy_unit: String,
    /// Always "angstrom".
    pub length_unit: String,
    /// The family's descriptor hyper-parameters.
    pub descriptor: DescriptorSpec,
    /// The bispectrum family's four-body part, compression included (`pilip.bispectrum`; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bispectrum: Option<Bispectrum>,
    /// The short-range repulsive prior added to the energy (`pilip.repulsion`; absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repulsion: Option<Repulsion>,
    /// The domain guard added to the atomic energies in the graph (`pilip.domain_guard`; absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_guard: Option<DomainGuardInfo>,
    /// Length of each atom's descriptor (the graph inputs' second dimension).
    pub n_features: usize,
    /// eV per atom, per species, added to the graph's atomic energies.
    pub reference_energies: Vec<f64>,
    /// Floating-point type of the graph.
    pub dtype: Dtype,
    /// FNV-1a 64 of the encoded ONNX graph, hex.
    pub checksum: String,
}

impl ModelMetadata {
    /// The key/value pairs written to `metadata_props`.
    pub fn to_props(&self) -> Vec<(String, String)> {
        let mut props: Vec<(&str, String)> = vec![
            ("format_version", self.format_version.to_string()),
            ("library_version", self.library_version.clone()),
            ("species", json(&self.species)),
            ("symbols", json(&self.symbols)),
            ("model_family", self.family.name().into()),
            ("cutoff", json(&self.cutoff)),
            ("energy_unit", self.energy_unit.clone()),
            ("length_unit", self.length_unit.clone()),
            ("descriptor", json(&self.descriptor)),
            ("n_features", self.n_features.to_string()),
            ("reference_energies", json(&self.reference_energies)),
            ("dtype", self.dtype.name().into()),
            ("checksum", self.checksum.clone()),
        ];
        if let Some(b) = &self.bispectrum {
            props.push(("bispectrum", json(b)));
        }
        if let Some(r) = &self.repulsion {
            props.push(("repulsion", json(r)));
        }
        if let Some(g) = &self.domain_guard {
            props.push(("domain_guard", json(g)));
        }
        props
            .into_iter()
            .map(|(k, v)| (format!("{KEY_PREFIX}{k}"), v))
            .collect()
    }

    /// Parses and validates the metadata; `source` names the file in error messages.
    pub fn from_props(props: &BTreeMap<String, String>, source: &str) -> Result<Self> {
        let not_pilip = || {
            Error::model(format!(
                "{source}: this ONNX file is not a pilip model (no '{KEY_PREFIX}format_version' in its metadata); \
                 create one with `pilip export CHECKPOINT -o model.onnx`"
            ))
        };
        let get = |k: &str| -> Result<&String> {
            props.get(&format!("{KEY_PREFIX}{k}")).ok_or_else(|| {
                Error::model(format!("{source}: pilip model metadata lacks the key '{KEY_PREFIX}{k}'; re-export the model"))
            })
        };
        let bad = |k: &str, e: &dyn std::fmt::Display| {
            Error::model(format!("{source}: pilip model metadata '{KEY_PREFIX}{k}' is malformed: {e}"))
        };
        let format_version: u32 = props
            .get(&format!("{KEY_PREFIX}format_version"))
            .ok_or_else(not_pilip)?
            .parse()
            .map_err(|e| bad("format_version", &e))?;
        let library_version = get("library_version")?.clone();
        if format_version > MODEL_FORMAT_VERSION {
            return Err(Error::model(format!(
                "{source}: model format version {format_version} (written by pilip {library_version}) is newer than \
                 this pilip {} supports (≤ {MODEL_FORMAT_VERSION}); upgrade pilip, or export the model again with this version",
                env!("CARGO_PKG_VERSION")
            )));
        }
        if format_version == 0 {
            return Err(bad("format_version", &"0 is not a valid version"));
        }
        fn parse_json<T: serde::de::DeserializeOwned>(s: &str) -> std::result::Result<T, serde_json::Error> {
            serde_json::from_str(s)
        }
        let species: Vec<u32> = parse_json(get("species")?).map_err(|e| bad("species", &e))?;
        let symbols: Vec<String> = parse_json(get("symbols")?).map_err(|e| bad("symbols", &e))?;
        let cutoff: f64 = parse_json(get("cutoff")?).map_err(|e| bad("cutoff", &e))?;
        let descriptor: DescriptorSpec = parse_json(get("descriptor")?).map_err(|e| bad("descriptor", &e))?;
        let n_features: usize = get("n_features")?.parse().map_err(|e| bad("n_features", &e))?;
        let reference_energies: Vec<f64> =
            parse_json(get("reference_energies")?).map_err(|e| bad("reference_energies", &e))?;
        let dtype = Dtype::parse(get("dtype")?).map_err(|e| bad("dtype", &e))?;
        let family = match props.get(&format!("{KEY_PREFIX}model_family")) {
            Some(name) => Family::parse(name).map_err(|e| Error::model(format!("{source}: {e}")))?,
            None => Family::PowerSpectrum,
        };
        let bispectrum: Option<Bispectrum> = match props.get(&format!("{KEY_PREFIX}bispectrum")) {
            Some(text) => Some(parse_json(text).map_err(|e| bad("bispectrum", &e))?),
            None => None,
        };
        let repulsion: Option<Repulsion> = match props.get(&format!("{KEY_PREFIX}repulsion")) {
            Some(text) => Some(parse_json(text).map_err(|e| bad("repulsion", &e))?),
            None => None,
        };
        let domain_guard: Option<DomainGuardInfo> = match props.get(&format!("{KEY_PREFIX}domain_guard")) {
            Some(text) => Some(parse_json(text).map_err(|e| bad("domain_guard", &e))?),
            None => None,
        };
        let meta = ModelMetadata {
            bispectrum,
            repulsion,
            domain_guard,
            format_version,
            library_version,
            species,
            symbols,
            family,
            cutoff,
            energy_unit: get("energy_unit")?.clone(),
            length_unit: get("length_unit")?.clone(),
            descriptor,
            n_features,
            reference_energies,
            dtype,
            checksum: get("checksum")?.clone(),
        };
        meta.validate().map_err(|e| Error::model(format!("{source}: inconsistent pilip model metadata: {e}")))?;
        Ok(meta)
    }

    /// Internal consistency: species known and unique, sizes agree, the descriptor is valid, units are ours.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.species.is_empty() {
            return Err("the model has no species".into());
        }
        for (k, &z) in self.species.iter().enumerate() {
            let sym = crate::elements::symbol(z).ok_or(format!("species {k} has atomic number {z}, not an element"))?;
            if self.symbols.get(k).map(String::as_str) != Some(sym) {
                return Err(format!("symbols {:?} do not match atomic numbers {:?}", self.symbols, self.species));
            }
            if self.species[..k].contains(&z) {
                return Err(format!("species {sym} is listed twice"));
            }
        }
        if self.symbols.len() != self.species.len() || self.reference_energies.len() != self.species.len() {
            return Err(format!(
                "{} species but {} symbols and {} reference energies",
                self.species.len(),
                self.symbols.len(),
                self.reference_energies.len()
            ));
        }
        if self.reference_energies.iter().any(|e| !e.is_finite()) {
            return Err("a reference energy is not finite".into());
        }
        let needed = format_version_for(self.family, &self.descriptor, self.bispectrum.as_ref(), self.repulsion.is_some(), self.domain_guard.is_some());
        if self.format_version < needed {
            return Err(format!("format version {} cannot describe this model, which needs version {needed}", self.format_version));
        }
        self.descriptor.validate()?;
        if self.cutoff != self.descriptor.cutoff {
            return Err(format!("cutoff {} differs from the descriptor's {}", self.cutoff, self.descriptor.cutoff));
        }
        self.repulsion_table()?;
        if let Some(g) = &self.domain_guard {
            if g.components.len() != self.species.len() || g.sketch.len() != self.species.len() || !(g.onset.is_finite() && g.strength.is_finite() && g.onset >= 0.0 && g.strength >= 0.0) {
                return Err(format!("domain_guard {g:?} does not fit {} species (finite onset and strength ≥ 0)", self.species.len()));
            }
        }
        let nf = self.descriptor().map_err(|e| e.to_string())?.n_features();
        if nf != self.n_features {
            return Err(format!("n_features is {} but the descriptor has {nf}", self.n_features));
        }
        if self.energy_unit != "eV" || self.length_unit != "angstrom" {
            return Err(format!(
                "units are energy '{}', length '{}'; this runtime supports eV and angstrom",
                self.energy_unit, self.length_unit
            ));
        }
        Ok(())
    }

    /// The descriptor the runtime computes for this model (the family's: with the four-body part of the
    /// bispectrum family).
    pub fn descriptor(&self) -> Result<Descriptor> {
        match (self.family, &self.bispectrum) {
            (Family::PowerSpectrum, Some(_)) => Err(Error::model("a power-spectrum model has a 'pilip.bispectrum' key")),
            (Family::Bispectrum, None) => Err(Error::model("a bispectrum model lacks its 'pilip.bispectrum' key")),
            _ => Descriptor::with_optional_four_body(&self.descriptor, &self.species, self.bispectrum.as_ref()),
        }
    }

    /// The repulsive prior over the model's species, if it has one.
    pub fn repulsion_table(&self) -> std::result::Result<Option<RepulsionTable>, String> {
        self.repulsion.as_ref().map(|r| r.table(&self.species, self.cutoff)).transpose()
    }

    /// Name of the graph input (descriptors) and outputs (atomic energies, ∂E_i/∂G_i) of species `k`.
    pub fn io_names(&self, k: usize) -> [String; 3] {
        io_names(&self.symbols[k])
    }
}

/// Names of the graph input and outputs of the species with element `symbol`.
pub fn io_names(symbol: &str) -> [String; 3] {
    [format!("descriptors_{symbol}"), format!("energies_{symbol}"), format!("gradients_{symbol}")]
}

/// 64-bit FNV-1a, as 16 hex digits: detects a corrupted or edited graph (not an adversary).
pub fn checksum(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// JSON text of a metadata value (these types cannot fail to serialise).
fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Human-readable summary (`pilip info`).
pub fn describe(m: &ModelMetadata) -> String {
    let d = &m.descriptor;
    format!(
        "pilip model format version {}, written by pilip {}\n\
         model family:       {}\n\
         species:            {} (atomic numbers {:?})\n\
         reference energies: {:?} eV\n\
         cutoff:             {} Å\n\
         units:              energy {}, length {}\n\
         descriptor:         n_radial {}, l_max {}, r_min {} Å, radial_width {}{}{}{}, {} features\n\
         network dtype:      {}\n\
         repulsion:          {}\n\
         domain guard:       {}\n\
         graph checksum:     {}",
        m.format_version,
        m.library_version,
        m.family.name(),
        m.symbols.join(" "),
        m.species,
        m.reference_energies,
        m.cutoff,
        m.energy_unit,
        m.length_unit,
        d.n_radial,
        d.l_max,
        d.r_min,
        d.radial_width,
        d.radial_width_by_element.iter().map(|(s, w)| format!(" ({s} {w})")).collect::<String>(),
        if d.radial_scale != 0.0 { format!(", radial_scale {}", d.radial_scale) } else { String::new() },
        m.bispectrum.as_ref().map_or(String::new(), |b| format!(
            "; four-body: {} channels, l_max {}; three-body: {}",
            b.four_body_k(),
            b.l_max,
            match b.three_body {
                ThreeBody::Full => "full power spectrum".to_string(),
                ThreeBody::Compressed => format!("{} compressed channels", b.channels),
            }
        )),
        m.n_features,
        m.dtype.name(),
        m.repulsion.as_ref().map_or("none".to_string(), |r| {
            let pairs: Vec<String> = r
                .pairs
                .iter()
                .map(|p| {
                    let name = |z| crate::elements::symbol(z).unwrap_or("?");
                    format!("{}–{} {:.2}–{:.2} Å", name(p.z[0]), name(p.z[1]), p.r_inner, p.r_outer)
                })
                .collect();
            format!("ZBL, switched off between {}", pairs.join(", "))
        }),
        m.domain_guard.as_ref().map_or("none".to_string(), |g| format!(
            "{} eV × (s/s_max − {})² past the onset; {:?} principal directions, sketches of {:?} rows",
            g.strength, g.onset, g.components, g.sketch
        )),
        m.checksum
    )
}
