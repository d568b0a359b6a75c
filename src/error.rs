//! One error type for the library: every variant carries enough context (file, line, key, argument)
//! for a user to fix the input without reading the source.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Malformed input file; `line` is 1-based.
    #[error("{file}:{line}: {msg}")]
    Parse { file: String, line: usize, msg: String },
    #[error("config: {0}")]
    Config(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
