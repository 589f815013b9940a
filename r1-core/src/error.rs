//! The one error type of r1-core.
//!
//! Every fallible call returns [`Result`]. Messages name what was wrong and where: the file, the
//! tensor, the config field. Nothing in the crate panics on bad input; a panic is a bug.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, mapped or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// A JSON file (config, index) is not valid JSON or has fields of the wrong type.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },

    /// The model config is inconsistent or incomplete.
    #[error("config {path}: {msg}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the field.
        msg: String,
    },

    /// A model or option exists but r1 does not implement it (yet). Never a silent wrong answer.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A weights file is malformed: bad header, truncated data, wrong dtype or shape of a tensor.
    #[error("{path}: {msg}")]
    BadWeights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong, naming the tensor.
        msg: String,
    },

    /// A tensor the model needs is in none of the weights files.
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor {
        /// The checkpoint (folder or file) that was searched.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },

    /// The tokenizer could not be loaded, or failed on an input.
    #[error("tokenizer{}: {msg}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Tokenizer {
        /// The tokenizer file, when one is involved.
        path: Option<PathBuf>,
        /// What went wrong.
        msg: String,
    },

    /// A chat template failed to compile or render (including the template's own
    /// `raise_exception`).
    #[error("chat template: {0}")]
    Template(String),

    /// A caller passed something unusable: an out-of-range token id, a full cache, a bad flag.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The tensor library failed. With a correctly loaded model this is a bug in r1.
    #[error("tensor op: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// `Result` with r1's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
