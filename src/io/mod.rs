//! File formats, the one way pilip writes files that must never be left half-written, and the JSON form of
//! floats that may be infinite.
pub mod extxyz;

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through `path` + ".tmp" (write, fsync, rename), so an interrupted write never
/// destroys the previous file (checkpoints, exported models).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        // Leave nothing half-written behind (and give the space back); the previous file is untouched.
        let _ = std::fs::remove_file(&tmp);
        let e = match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::FileTooLarge | std::io::ErrorKind::QuotaExceeded => {
                let kept = if path.exists() { "the previous version of the file is intact" } else { "nothing was written" };
                std::io::Error::new(e.kind(), format!("{e}: {} bytes could not be written; {kept}", bytes.len()))
            }
            _ => e,
        };
        Error::io(path, e)
    })
}

/// Serde for f64 fields that may be ±∞ or NaN (e.g. "best so far" before any improvement, which the cosine
/// schedule never updates): JSON has no infinity and serde_json would write `null`, which then cannot be read back
/// into an f64 — a checkpoint that cannot be resumed. Non-finite values are written as "inf" / "-inf" / "nan";
/// `null` (what older checkpoints hold) reads as +∞.
pub mod non_finite {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes a finite value as a number, others as "inf", "-inf" or "nan".
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

    /// Reads a number, "inf", "-inf", "nan" or `null` (+∞).
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
