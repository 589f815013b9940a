//! Safetensors checkpoints through `memmap2`: one file, or shards listed by
//! `model.safetensors.index.json`.
//!
//! Headers are parsed once; tensor bytes are read straight from the mapping when a tensor is
//! requested, so nothing is copied until it is converted to the compute layout.

use crate::error::{Error, Result};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// One mapped safetensors file and its parsed header.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (8-byte length + JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// A tensor's bytes in a mapped file, with its stored dtype and shape.
pub struct RawTensor<'a> {
    /// The file it lives in.
    pub path: &'a Path,
    /// The stored dtype.
    pub dtype: Dtype,
    /// The stored shape.
    pub shape: &'a [usize],
    /// The little-endian bytes.
    pub bytes: &'a [u8],
}

impl SafetensorsFile {
    /// Maps `path` and validates its header against the file size.
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        // SAFETY: the mapping is read-only; r1 documents that model files must not be modified
        // while a model is loaded (as every mmap-based loader does).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        let bad = |msg: String| Error::BadWeights {
            path: path.to_path_buf(),
            msg,
        };
        let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| bad(format!("not a valid safetensors file (truncated or corrupt?): {e}")))?;
        let data_start = 8 + header_len;
        let data_len = mmap.len().saturating_sub(data_start);
        for (name, info) in metadata.tensors() {
            if info.data_offsets.1 > data_len {
                return Err(bad(format!(
                    "tensor `{name}` ends at byte {} of the data section but the file has only {data_len} \
                     (truncated file?)",
                    info.data_offsets.1
                )));
            }
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            mmap,
            data_start,
            metadata,
        })
    }

    /// Names of all tensors in the file.
    pub fn names(&self) -> Vec<String> {
        self.metadata.tensors().into_keys().collect()
    }

    /// Drops the pages of tensor `name` from memory once it was copied (see
    /// [`super::gguf::GgufFile::release`]).
    pub fn release(&self, name: &str) {
        if let Some(info) = self.metadata.info(name) {
            let (s, e) = info.data_offsets;
            super::gguf::release(&self.mmap, (self.data_start + s, self.data_start + e));
        }
    }

    /// The raw tensor `name`, if the file has it.
    pub fn get(&self, name: &str) -> Option<RawTensor<'_>> {
        let info = self.metadata.info(name)?;
        let (s, e) = info.data_offsets;
        Some(RawTensor {
            path: &self.path,
            dtype: info.dtype,
            shape: &info.shape,
            bytes: &self.mmap[self.data_start + s..self.data_start + e],
        })
    }
}

/// All safetensors files of a checkpoint, with a name → file index.
pub struct SafetensorsStore {
    root: PathBuf,
    files: Vec<SafetensorsFile>,
    index: HashMap<String, usize>,
}

impl SafetensorsStore {
    /// Opens `model.safetensors.index.json` + its shards, or `model.safetensors`, in `dir`.
    /// `dir` may also be a single `.safetensors` file.
    pub fn open(dir: &Path) -> Result<Self> {
        let paths = if dir.is_file() {
            vec![dir.to_path_buf()]
        } else {
            let index = dir.join("model.safetensors.index.json");
            if index.is_file() {
                shard_paths(&index)?
            } else if dir.join("model.safetensors").is_file() {
                vec![dir.join("model.safetensors")]
            } else {
                return Err(Error::Io {
                    path: dir.join("model.safetensors"),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no model.safetensors or model.safetensors.index.json in the checkpoint folder",
                    ),
                });
            }
        };
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let file = SafetensorsFile::open(p)?;
            for name in file.names() {
                index.insert(name, i);
            }
            files.push(file);
        }
        Ok(SafetensorsStore {
            root: dir.to_path_buf(),
            files,
            index,
        })
    }

    /// The folder or file the store was opened from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The raw tensor `name` from whichever shard holds it.
    pub fn get(&self, name: &str) -> Option<RawTensor<'_>> {
        self.index.get(name).and_then(|&i| self.files[i].get(name))
    }

    /// Drops the pages of tensor `name` once it was copied.
    pub fn release(&self, name: &str) {
        if let Some(&i) = self.index.get(name) {
            self.files[i].release(name);
        }
    }

    /// Total size of the files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.mmap.len() as u64).sum()
    }

    /// Whether any shard holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// The distinct shard files named by an index's `weight_map`, in first-seen order.
fn shard_paths(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|source| Error::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::json(index, e))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::BadWeights {
            path: index.to_path_buf(),
            msg: "no `weight_map` object".into(),
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut out: Vec<PathBuf> = Vec::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| Error::BadWeights {
            path: index.to_path_buf(),
            msg: format!("weight_map entry `{name}` is not a file name"),
        })?;
        let p = dir.join(file);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}
