//! What a model file says about itself, apart from its tensors' data: key/value metadata
//! (GGUF's `general.*`, `{arch}.*`, `tokenizer.ggml.*`), the names of the tensors it holds, and
//! the few small tensors that are really configuration (rope frequency factors).
//!
//! The GGUF reader in `weights` produces it; `config` and `tokenizer` read it, so neither knows
//! a file format.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// bool.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U64(v) => Some(v),
            MetaValue::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    /// The value as a float, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F64(v) => Some(v),
            MetaValue::U64(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool (integers: non-zero).
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            MetaValue::U64(v) => Some(v != 0),
            MetaValue::I64(v) => Some(v != 0),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A model file's metadata, tensor names and configuration tensors.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// The file it came from (for error messages).
    pub path: PathBuf,
    /// Values by key.
    pub values: HashMap<String, MetaValue>,
    /// Names of the tensors the file holds (in the file's own naming).
    pub tensors: HashSet<String>,
    /// `rope_freqs.weight`: per-frequency rope factors, or why they could not be read.
    pub rope_freqs: Option<std::result::Result<Vec<f64>, String>>,
}

impl Metadata {
    /// Value `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.values.get(key)
    }

    /// Whether tensor `name` exists.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains(name)
    }
}
