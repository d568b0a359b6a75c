//! One error type for the whole library. Every variant carries enough context (file, line, key, argument) for
//! a user to fix the input without reading the source, and its *kind* decides the C status code
//! (`c_api::status_of`) and the Python exception class — one vocabulary from Rust to C, C++ and Python.

use std::path::PathBuf;

/// Everything that can go wrong in pilip, by what the user has to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written (the path is named).
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Malformed input file; `line` is 1-based.
    #[error("{file}:{line}: {msg}")]
    Parse {
        /// The file (or a description of the text's origin).
        file: String,
        /// 1-based line number.
        line: usize,
        /// What was expected there.
        msg: String,
    },
    /// A training or benchmark configuration that cannot be used (names the key).
    #[error("config: {0}")]
    Config(String),
    /// An argument or input that cannot be computed with: wrong sizes, non-finite numbers, unknown elements.
    #[error("{0}")]
    Invalid(String),
    /// A model file that is not a pilip model this library can run: not ONNX, truncated, corrupted, a newer
    /// format, an unknown model family, inconsistent metadata or graph signature.
    #[error("{0}")]
    Model(String),
    /// The requested network engine is not available (not compiled in, its library cannot be loaded) or failed
    /// while evaluating.
    #[error("{0}")]
    Engine(String),
}

/// `Result` with pilip's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    /// An invalid argument or input.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
    /// A model file that cannot be run.
    pub fn model(msg: impl Into<String>) -> Self {
        Error::Model(msg.into())
    }
    /// An engine that is not available or failed.
    pub fn engine(msg: impl Into<String>) -> Self {
        Error::Engine(msg.into())
    }
}
