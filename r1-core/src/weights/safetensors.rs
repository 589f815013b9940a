//! Safetensors checkpoints: one file, or shards listed by `model.safetensors.index.json`.
//!
//! Headers are read and checked once, when the files are opened; a tensor's bytes are read
//! when the model asks for it (see [`super::read_at`] for why by positioned reads).

use super::Stamp;
use crate::error::{Error, Result};
use safetensors::tensor::{Dtype, Metadata};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The safetensors crate's bound on a header (`MAX_HEADER_SIZE`), kept by r1's reader too.
const MAX_HEADER_BYTES: usize = 100_000_000;

/// One open safetensors file and its parsed header.
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    stamp: Stamp,
    /// Offset of the data section (8-byte length + JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// A tensor's bytes, read from its file, with its stored dtype and shape.
pub struct RawTensor<'a> {
    /// The file it lives in.
    pub path: &'a Path,
    /// The stored dtype.
    pub dtype: Dtype,
    /// The stored shape.
    pub shape: &'a [usize],
    /// The little-endian bytes.
    pub bytes: Vec<u8>,
}

impl SafetensorsFile {
    /// Opens `path` and validates its header against the file size.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let stamp = Stamp::of(path, &file)?;
        let (data_start, metadata) = read_header(path, &file, stamp.len)?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            stamp,
            data_start,
            metadata,
        })
    }

    /// Names of all tensors in the file.
    pub fn names(&self) -> Vec<String> {
        self.metadata.tensors().into_keys().collect()
    }

    /// The raw tensor `name`, if the file has it (its bytes read now).
    pub fn get(&self, name: &str) -> Option<Result<RawTensor<'_>>> {
        let info = self.metadata.info(name)?;
        let (s, e) = info.data_offsets;
        Some(
            super::read_at(&self.file, &self.path, self.data_start + s..self.data_start + e).map(|bytes| RawTensor {
                path: &self.path,
                dtype: info.dtype,
                shape: &info.shape,
                bytes,
            }),
        )
    }
}

/// The `__metadata__` of the safetensors file at `path` (empty when it has none), its header
/// checked as a model file's is.
pub(crate) fn file_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let len = Stamp::of(path, &file)?.len;
    let (_, metadata) = read_header(path, &file, len)?;
    Ok(metadata.metadata().clone().unwrap_or_default())
}

/// The header of the open `file` of `file_len` bytes: where the data section starts, and the
/// tensors. The checks are the crate's (its audited rules): a header of at most 100 MB inside
/// the file, offsets contiguous from 0 without overlap, each tensor's bytes its shape times its
/// dtype (all in its `Metadata`), and no bytes after the last tensor.
fn read_header(path: &Path, file: &File, file_len: usize) -> Result<(usize, Metadata)> {
    let bad = |msg: String| Error::BadWeights {
        path: path.to_path_buf(),
        msg: format!("not a valid safetensors file (truncated or corrupt?): {msg}"),
    };
    if file_len < 8 {
        return Err(bad(format!("{file_len} bytes, fewer than the header's 8-byte length")));
    }
    let len_bytes = super::read_at(file, path, 0..8)?;
    let n = u64::from_le_bytes(<[u8; 8]>::try_from(&len_bytes[..]).map_err(|_| bad("no header length".into()))?);
    let header_len = usize::try_from(n)
        .ok()
        .filter(|&n| n <= MAX_HEADER_BYTES)
        .ok_or_else(|| bad(format!("a header of {n} bytes (at most {MAX_HEADER_BYTES})")))?;
    let data_start = 8 + header_len;
    if data_start > file_len {
        return Err(bad(format!("a header of {header_len} bytes in a file of {file_len}")));
    }
    let header = super::read_at(file, path, 8..data_start)?;
    let metadata: Metadata = serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let data_len = metadata
        .tensors()
        .values()
        .map(|info| info.data_offsets.1)
        .max()
        .unwrap_or(0);
    if data_start + data_len != file_len {
        return Err(bad(format!(
            "the tensors take {data_len} bytes after the header, the file has {}",
            file_len - data_start
        )));
    }
    Ok((data_start, metadata))
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

    /// The raw tensor `name` from whichever shard holds it (its bytes read now).
    pub fn get(&self, name: &str) -> Option<Result<RawTensor<'_>>> {
        self.index.get(name).and_then(|&i| self.files[i].get(name))
    }

    /// Total size of the files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.stamp.len as u64).sum()
    }

    /// Each file's size and modification time when it was opened.
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

    fn fails(dir: &Path, bytes: &[u8], needle: &str) {
        let e = open_err(dir, bytes);
        assert!(e.contains(needle), "{e:?} does not contain {needle:?}");
    }

    #[test]
    fn headers_follow_the_safetensors_rules() {
        let d = folder("rules");
        std::fs::write(d.join("model.safetensors"), file(ONE, &[0; 8])).unwrap();
        assert!(SafetensorsStore::open(&d).is_ok());
        // The header's length past the end of the file, and over 100 MB.
        let mut v = file(ONE, &[0; 8]);
        v[..8].copy_from_slice(&1000u64.to_le_bytes());
        fails(&d, &v, "a header of 1000 bytes in a file of");
        v[..8].copy_from_slice(&(200u64 << 20).to_le_bytes());
        fails(&d, &v, "at most 100000000");
        fails(&d, &[1, 2, 3], "3 bytes, fewer than the header's 8-byte length");
        // Offsets with a gap, overlapping, and bytes that are not the shape's.
        let gap = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
        fails(&d, &file(gap, &[0; 12]), "invalid offset for tensor `b`");
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
        fails(&d, &file(overlap, &[0; 8]), "invalid offset for tensor `b`");
        let wrong = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        fails(&d, &file(wrong, &[0; 8]), "invalid shape, data type, or offset");
        let huge = r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#;
        fails(&d, &file(huge, &[0; 8]), "overflow computing buffer size");
        // Truncated data, and data after the last tensor (the crate's rule, checked by r1, which
        // reads the header alone).
        fails(
            &d,
            &file(ONE, &[0; 4]),
            "the tensors take 8 bytes after the header, the file has 4",
        );
        fails(
            &d,
            &file(ONE, &[0; 12]),
            "the tensors take 8 bytes after the header, the file has 12",
        );
        fails(&d, &file("{not json", &[]), "header: key must be a string");
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
