//! The one error type of r1-core, and its stable codes.
//!
//! Every fallible call returns [`Result`]. Messages name what was wrong and where: the file, the
//! tensor, the config field, the argument. Nothing in the crate panics on bad input; a panic is a
//! bug. [`Error::code`] gives the [`ErrorCode`] that the C status codes and the Python exception
//! classes map one to one.

use std::path::PathBuf;

/// The kind of an [`Error`], stable across releases: C and Python callers branch on it.
///
/// The numbers are those of `r1_status` in `include/r1.h` (the C ABI adds codes of its own,
/// such as a NULL argument or a buffer too small, which never arise in Rust).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(i32)]
pub enum ErrorCode {
    /// A caller passed something unusable: an out-of-range token id, a bad sampling value.
    InvalidArgument = 2,
    /// Text that must be UTF-8 is not.
    InvalidUtf8 = 3,
    /// A file could not be found, opened or read.
    Io = 4,
    /// A file is malformed: config, weights, tokenizer, index.
    Format = 5,
    /// A model, tensor type or option r1 does not implement (yet).
    Unsupported = 6,
    /// The prompt or the generation does not fit in the model's context.
    ContextFull = 8,
    /// The caller stopped the work (cancel handle, progress callback).
    Cancelled = 9,
    /// A chat template failed to compile or render.
    Template = 10,
    /// A bug in r1 (or in a library under it): never the caller's fault.
    Internal = 12,
}

impl ErrorCode {
    /// The code's number (`r1_status` in C).
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// A short snake_case name, e.g. `"invalid_argument"`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::Io => "io",
            ErrorCode::Format => "format",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::ContextFull => "context_full",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Template => "template",
            ErrorCode::Internal => "internal",
        }
    }

    /// Every code, in number order.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::InvalidArgument,
        ErrorCode::InvalidUtf8,
        ErrorCode::Io,
        ErrorCode::Format,
        ErrorCode::Unsupported,
        ErrorCode::ContextFull,
        ErrorCode::Cancelled,
        ErrorCode::Template,
        ErrorCode::Internal,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// A JSON file (config, index, tokenizer config) is not valid JSON or has fields of the
    /// wrong type.
    #[error("{path}: {msg}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said, with line and column.
        msg: String,
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

    /// A caller passed something unusable: an out-of-range token id, a bad flag.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Bytes that must be UTF-8 are not.
    #[error("invalid UTF-8: {0}")]
    InvalidUtf8(String),

    /// Tokens do not fit in the model's context.
    #[error("context full: {0}")]
    ContextFull(String),

    /// The caller stopped the work: a load stopped by its progress callback, a prefill stopped
    /// by a cancel handle.
    #[error("cancelled: {0}")]
    Cancelled(String),

    /// A bug in r1 or in a library under it (the tensor library's message is kept).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Io { .. } => ErrorCode::Io,
            Error::Json { .. } | Error::Config { .. } | Error::BadWeights { .. } | Error::MissingTensor { .. } => {
                ErrorCode::Format
            }
            // A tokenizer file that will not load is a bad file; a failure on an input is r1's.
            Error::Tokenizer { path: Some(_), .. } => ErrorCode::Format,
            Error::Tokenizer { path: None, .. } => ErrorCode::Internal,
            Error::Unsupported(_) => ErrorCode::Unsupported,
            Error::Template(_) => ErrorCode::Template,
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::InvalidUtf8(_) => ErrorCode::InvalidUtf8,
            Error::ContextFull(_) => ErrorCode::ContextFull,
            Error::Cancelled(_) => ErrorCode::Cancelled,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// A JSON parse error of `path`.
    pub(crate) fn json(path: &std::path::Path, e: serde_json::Error) -> Error {
        Error::Json {
            path: path.to_path_buf(),
            msg: e.to_string(),
        }
    }
}

/// The tensor library's errors are r1's bugs once a model has loaded: they become
/// [`Error::Internal`] with candle's message.
#[doc(hidden)]
impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Internal(format!("tensor op: {e}"))
    }
}

/// `Result` with r1's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_stable() {
        let numbers: Vec<i32> = ErrorCode::ALL.iter().map(|c| c.as_i32()).collect();
        assert_eq!(numbers, vec![2, 3, 4, 5, 6, 8, 9, 10, 12]);
        let e = Error::Io {
            path: "x".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!((e.code(), e.to_string()), (ErrorCode::Io, "x: gone".to_string()));
        assert_eq!(Error::Cancelled("load".into()).code().name(), "cancelled");
    }
}
