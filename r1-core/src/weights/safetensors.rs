//! Safetensors checkpoints through `memmap2`: one file, or shards listed by
//! `model.safetensors.index.json`.
//!
//! Headers are parsed once; tensor bytes are read straight from the mapping when a tensor is
//! requested, so nothing is copied until it is converted to the compute layout.

use super::Stamp;
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
    stamp: Stamp,
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
        // SAFETY: a shared read-only mapping of a file, which r1 never writes. The memory stays
        // valid for the map's lifetime; its contents are the file's, so the file must not be
        // truncated while a model loads from it (a read past the new end faults with SIGBUS,
        // as in every mmap-based loader); a file rewritten meanwhile is caught by its `Stamp`.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        let bad = |msg: String| Error::BadWeights {
            path: path.to_path_buf(),
            msg,
        };
        // The crate's checks (its audited rules): a header of at most 100 MB inside the file,
        // offsets contiguous from 0 without overlap, each tensor's bytes its shape times its
        // dtype, and no bytes after the last tensor.
        let (header_len, metadata) = safetensors::SafeTensors::read_metadata(&mmap)
            .map_err(|e| bad(format!("not a valid safetensors file (truncated or corrupt?): {e}")))?;
        let data_start = 8 + header_len;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            stamp: Stamp::of(path, &file)?,
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
        let mut files: Vec<SafetensorsFile> = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let file = SafetensorsFile::open(p)?;
            for name in file.names() {
                if let Some(j) = index.insert(name.clone(), i) {
                    return Err(Error::BadWeights {
                        path: p.clone(),
                        msg: format!(
                            "tensor `{name}` is also in {}: a tensor must be in one shard",
                            paths[j].display()
                        ),
                    });
                }
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

    /// Each file's size and modification time when it was mapped.
    pub(crate) fn stamps(&self) -> impl Iterator<Item = &Stamp> {
        self.files.iter().map(|f| &f.stamp)
    }

    /// Whether any shard holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// The distinct shard files named by an index's `weight_map`, in first-seen order. Each is a
/// bare file name of the index's folder (no path, no `..`), and resolves, through any symlink,
/// to a file inside that folder, or inside the `blobs` folder of a Hugging Face cache when the
/// folder is one of its snapshots.
fn shard_paths(index: &Path) -> Result<Vec<PathBuf>> {
    let bad = |msg: String| Error::BadWeights {
        path: index.to_path_buf(),
        msg,
    };
    let text = std::fs::read_to_string(index).map_err(|source| Error::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::json(index, e))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let roots = allowed_roots(dir).map_err(|e| bad(format!("resolving the checkpoint folder: {e}")))?;
    let mut out: Vec<PathBuf> = Vec::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map entry `{name}` is not a file name")))?;
        if !is_bare_file_name(file) {
            return Err(bad(format!(
                "weight_map entry `{name}` names {file:?}: shards must be file names inside the checkpoint folder"
            )));
        }
        let p = dir.join(file);
        if out.contains(&p) {
            continue;
        }
        let real = p.canonicalize().map_err(|source| Error::Io {
            path: p.clone(),
            source,
        })?;
        if !roots.iter().any(|r| real.starts_with(r)) {
            return Err(bad(format!(
                "shard {file:?} resolves to {}, outside the checkpoint folder",
                real.display()
            )));
        }
        out.push(p);
    }
    Ok(out)
}

/// A single normal path component: not empty, no separator, not `.` or `..`.
fn is_bare_file_name(file: &str) -> bool {
    let mut parts = Path::new(file).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    ) && !file.contains(['/', '\\'])
}

/// Where the shards of `dir` may live: the folder itself, and for a Hugging Face cache
/// snapshot (`models--org--name/snapshots/<rev>`, whose files link to `../../blobs/<hash>`) that
/// repository's `blobs`.
fn allowed_roots(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let real = dir.canonicalize()?;
    let mut roots = vec![real.clone()];
    let snapshots = real.parent().filter(|p| p.file_name() == Some("snapshots".as_ref()));
    if let Some(repo) = snapshots.and_then(Path::parent) {
        roots.push(repo.join("blobs"));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh folder under the system's temp dir.
    fn folder(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("r1-st-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A safetensors file: the 8-byte length, `header`, then `data`.
    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend(header.as_bytes());
        v.extend(data);
        v
    }

    const ONE: &str = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;

    fn open_err(dir: &Path, bytes: &[u8]) -> String {
        let p = dir.join("model.safetensors");
        std::fs::write(&p, bytes).unwrap();
        match SafetensorsFile::open(&p) {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn headers_follow_the_safetensors_rules() {
        let d = folder("rules");
        std::fs::write(d.join("model.safetensors"), file(ONE, &[0; 8])).unwrap();
        assert!(SafetensorsStore::open(&d).is_ok());
        // The header's length past the end of the file, and over 100 MB.
        let mut v = file(ONE, &[0; 8]);
        v[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(open_err(&d, &v).contains("invalid header length"));
        v[..8].copy_from_slice(&(200u64 << 20).to_le_bytes());
        assert!(open_err(&d, &v).contains("header too large"));
        assert!(open_err(&d, &[1, 2, 3]).contains("header too small"));
        // Offsets with a gap, overlapping, and bytes that are not the shape's.
        let gap = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
        assert!(open_err(&d, &file(gap, &[0; 12])).contains("invalid offset for tensor `b`"));
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        assert!(open_err(&d, &file(overlap, &[0; 8])).contains("invalid offset for tensor `b`"));
        let wrong = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        assert!(open_err(&d, &file(wrong, &[0; 8])).contains("invalid shape, data type, or offset"));
        let huge = r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
        assert!(open_err(&d, &file(huge, &[0; 8])).contains("overflow computing buffer size"));
        // Truncated data, and data after the last tensor.
        assert!(open_err(&d, &file(ONE, &[0; 4])).contains("file not fully covered"));
        assert!(open_err(&d, &file(ONE, &[0; 12])).contains("file not fully covered"));
        assert!(open_err(&d, &file("{not json", &[])).contains("invalid JSON in header"));
    }

    fn index(dir: &Path, map: &str) {
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            format!(r#"{{"weight_map":{map}}}"#),
        )
        .unwrap();
    }

    fn store_err(dir: &Path) -> String {
        match SafetensorsStore::open(dir) {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn shards_stay_inside_the_folder() {
        let root = folder("shards");
        let d = root.join("model");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(root.join("outside.safetensors"), file(ONE, &[0; 8])).unwrap();
        std::fs::write(d.join("s1.safetensors"), file(ONE, &[0; 8])).unwrap();
        index(&d, r#"{"a":"s1.safetensors"}"#);
        assert!(SafetensorsStore::open(&d).is_ok());
        for bad in [
            "../outside.safetensors",
            "/etc/passwd",
            "sub/s1.safetensors",
            "..",
            "",
            "a\\\\b",
        ] {
            index(&d, &format!(r#"{{"a":{bad:?}}}"#));
            let e = store_err(&d);
            assert!(
                e.contains("must be file names inside the checkpoint folder"),
                "{bad}: {e}"
            );
        }
        // A link inside the folder that leads out of it.
        std::os::unix::fs::symlink(root.join("outside.safetensors"), d.join("link.safetensors")).unwrap();
        index(&d, r#"{"a":"link.safetensors"}"#);
        assert!(store_err(&d).contains("outside the checkpoint folder"));
        // A tensor in two shards.
        std::fs::write(d.join("s2.safetensors"), file(ONE, &[0; 8])).unwrap();
        index(&d, r#"{"a":"s1.safetensors","b":"s2.safetensors"}"#);
        assert!(store_err(&d).contains("tensor `a` is also in"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_hugging_face_cache_snapshot_may_link_to_its_blobs() {
        let root = folder("hfcache");
        let repo = root.join("models--org--name");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("blobs")).unwrap();
        std::fs::write(repo.join("blobs").join("f00d"), file(ONE, &[0; 8])).unwrap();
        std::os::unix::fs::symlink("../../blobs/f00d", snap.join("s1.safetensors")).unwrap();
        index(&snap, r#"{"a":"s1.safetensors"}"#);
        assert!(SafetensorsStore::open(&snap).is_ok());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
