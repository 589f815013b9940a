//! GGUF files (llama.cpp's format, v2 and v3): metadata, tensor infos and alignment are parsed
//! from the header; a tensor's bytes are read when the model asks for them (see
//! [`super::read_at`] for why by positioned reads, not a mapping).
//!
//! Layout: magic `GGUF`, version, tensor count, metadata count, the metadata key/values, the
//! tensor infos (name, dims innermost first, ggml type, offset), then the data section at the
//! next multiple of `general.alignment` (default 32).

use super::Stamp;
use crate::error::{Error, Result};
use crate::metadata::{MetaValue, Metadata};
use candle_core::quantized::GgmlDType;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Where a tensor's bytes are and how to read them.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Dimensions innermost first (ggml's `ne`): a linear weight `[out, in]` is `[in, out]` here.
    pub dims: Vec<usize>,
    /// The ggml type.
    pub dtype: GgmlDType,
    /// Byte range in the file, checked against the file when it was parsed (private, so that
    /// no caller can hand the reader a range of its own).
    range: (usize, usize),
}

impl TensorInfo {
    /// The shape outermost first (the PyTorch / Hugging Face order).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

/// Whether `path` starts with GGUF's magic bytes: files are recognised by content, not name.
pub(crate) fn has_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

/// An open GGUF file and its parsed header.
pub struct GgufFile {
    path: PathBuf,
    file: File,
    stamp: Stamp,
    /// `rope_freqs.weight`, the one tensor that is configuration, read with the header.
    rope_freqs: Option<std::result::Result<Vec<f64>, String>>,
    /// Metadata by key.
    pub(crate) metadata: HashMap<String, MetaValue>,
    /// Tensor infos by name.
    pub(crate) tensors: HashMap<String, TensorInfo>,
}

/// The reader's bounds on what a file may ask it to allocate. Every count in a GGUF file is
/// also bounded by the bytes left (each item takes at least its smallest encoding), but a
/// count alone never sizes an allocation: a 10 GB file could otherwise ask for 10^9 entries.
pub(crate) mod limits {
    /// Tensors in one file (DeepSeek-V3 with its experts stacked has about 1,100).
    pub const TENSORS: u64 = 1 << 20;
    /// Metadata key/value pairs.
    pub const KEYS: u64 = 1 << 16;
    /// Bytes of one string (chat templates are tens of kilobytes).
    pub const STRING_BYTES: u64 = 1 << 24;
    /// Array items in the whole file, all arrays together (vocabularies, merges and token types
    /// of a 256k-token vocabulary are about a million).
    pub const ARRAY_ITEMS: u64 = 1 << 24;
    /// Arrays inside arrays.
    pub const ARRAY_NESTING: usize = 2;
    /// Largest `general.alignment`.
    pub const ALIGNMENT: u64 = 1 << 20;
    /// Bytes of the header (metadata and tensor infos); real ones are tens of megabytes.
    pub const HEADER_BYTES: usize = 1 << 28;
    /// Dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
    pub const DIMS: usize = 4;
    /// Largest dimension (ggml stores them as `int64_t`).
    pub const DIM: u64 = i64::MAX as u64;
}

/// ggml type id → candle type, or the type's name for the error message.
fn ggml_type(id: u32) -> std::result::Result<GgmlDType, String> {
    Ok(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        16..=23 | 29 => return Err(format!("IQ-family type {id} (IQ2/IQ3/IQ1/IQ4)")),
        other => return Err(format!("ggml type {other}")),
    })
}

/// Metadata value type ids (GGUF's `gguf_type`).
mod value_type {
    pub const U32: u32 = 4;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
}

/// The fewest bytes a metadata value of type `ty` takes in the file: what bounds an array's
/// count by the bytes left.
fn min_encoded_size(ty: u32) -> usize {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        value_type::STRING => 8,
        value_type::ARRAY => 12,
        _ => 8,
    }
}

/// A bounds-checked reader over the first bytes of a file, with the file's allocation budget.
struct Cursor<'a> {
    /// The bytes read so far: the whole file, or a prefix of it.
    data: &'a [u8],
    /// The file's size, which bounds every count.
    file_len: usize,
    pos: usize,
    /// Array items the rest of the file may still hold ([`limits::ARRAY_ITEMS`]).
    array_items_left: u64,
    /// Set when the header runs past `data` but not past the file: how far it needs.
    needs: Option<usize>,
}

type Parse<T> = std::result::Result<T, String>;

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8], file_len: usize) -> Self {
        Cursor {
            data,
            file_len: file_len.max(data.len()),
            pos: 0,
            array_items_left: limits::ARRAY_ITEMS,
            needs: None,
        }
    }

    fn take(&mut self, n: usize) -> Parse<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.file_len).ok_or_else(|| {
            format!(
                "unexpected end of file at byte {} (needed {n} more bytes; truncated file?)",
                self.pos
            )
        })?;
        if end > limits::HEADER_BYTES {
            return Err(format!("the header runs past {} bytes", limits::HEADER_BYTES));
        }
        if end > self.data.len() {
            self.needs = Some(end);
            return Err(format!("the header runs past the first {} bytes read", self.data.len()));
        }
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Parse<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Parse<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Parse<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count of `what`, at most `max`, whose items (each at least `min_size` bytes) fit in
    /// what is left of the file.
    fn count(&mut self, what: &str, min_size: usize, max: u64) -> Parse<usize> {
        let at = self.pos;
        let n = self.u64()?;
        if n > max {
            return Err(format!("{what} count {n} at byte {at} is over the limit of {max}"));
        }
        let left = (self.file_len - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(format!(
                "{what} count {n} at byte {at} needs more than the {left} bytes left in the file (corrupt file?)"
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Parse<String> {
        let n = self.count("string byte", 1, limits::STRING_BYTES)?;
        let at = self.pos;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| format!("string at byte {at} is not UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> Parse<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U64(self.array::<1>()?[0] as u64),
            1 => MetaValue::I64(self.array::<1>()?[0] as i8 as i64),
            2 => MetaValue::U64(u16::from_le_bytes(self.array()?) as u64),
            3 => MetaValue::I64(i16::from_le_bytes(self.array()?) as i64),
            4 => MetaValue::U64(self.u32()? as u64),
            5 => MetaValue::I64(i32::from_le_bytes(self.array()?) as i64),
            6 => MetaValue::F64(f32::from_le_bytes(self.array()?) as f64),
            7 => match self.array::<1>()?[0] {
                b @ (0 | 1) => MetaValue::Bool(b == 1),
                b => return Err(format!("bool of value {b} at byte {}", self.pos - 1)),
            },
            value_type::STRING => MetaValue::Str(self.string()?),
            value_type::ARRAY if depth >= limits::ARRAY_NESTING => {
                return Err(format!(
                    "arrays nested deeper than {} at byte {}",
                    limits::ARRAY_NESTING,
                    self.pos
                ))
            }
            value_type::ARRAY => {
                let item_ty = self.u32()?;
                let n = self.count("array item", min_encoded_size(item_ty), self.array_items_left)?;
                self.array_items_left -= n as u64;
                // Grown as items are read, never sized by the count: what the count promises
                // is only checked against the bytes left, and each item may still fail.
                let mut items = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown metadata value type {other} at byte {}", self.pos - 4)),
        })
    }
}

impl GgufFile {
    /// Opens `path` and reads its header. A file broken before it is opened is caught here,
    /// by these checks; one truncated while the model loads, by the read that finds it short;
    /// one rewritten meanwhile, by its [`Stamp`] at the end of the load.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let stamp = Stamp::of(path, &file)?;
        let (_version, metadata, tensors) = read_header(path, &file, stamp.len)?;
        let rope_freqs = rope_freqs(&tensors, |(a, b)| super::read_at(&file, path, a..b))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            file,
            stamp,
            rope_freqs,
            metadata,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size and modification time when it was opened.
    pub(crate) fn stamp(&self) -> &Stamp {
        &self.stamp
    }

    /// What the file says about the model, for `config` and `tokenizer`: the metadata, the
    /// tensor names and the rope frequency factors (the one tensor that is configuration).
    pub fn metadata(&self) -> Metadata {
        metadata_of(&self.path, &self.metadata, &self.tensors, self.rope_freqs.clone())
    }

    /// The file's size in bytes when it was opened.
    pub fn file_bytes(&self) -> usize {
        self.stamp.len
    }

    /// The size of a tensor's bytes.
    pub fn byte_len(&self, info: &TensorInfo) -> usize {
        info.range.1 - info.range.0
    }

    /// The bytes of a tensor of this file.
    pub fn bytes(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        self.part(info, 0..self.byte_len(info))
    }

    /// Bytes `part` of a tensor of this file (`part` counted from the tensor's first byte):
    /// an error for a part outside the tensor, or a tensor outside the file as it was opened.
    pub fn part(&self, info: &TensorInfo, part: std::ops::Range<usize>) -> Result<Vec<u8>> {
        let (start, end) = info.range;
        let range = start.checked_add(part.start).zip(start.checked_add(part.end));
        match range {
            Some((a, b)) if a <= b && b <= end && end <= self.stamp.len => super::read_at(&self.file, &self.path, a..b),
            _ => Err(Error::Internal(format!(
                "{}: bytes {part:?} of a tensor at {start}..{end} are not in the file",
                self.path.display()
            ))),
        }
    }
}

/// The header of the open `file`, read in growing prefixes: its size is known only once it
/// is parsed, and reading the whole file to find it would double the memory of a load.
fn read_header(path: &Path, file: &File, file_len: usize) -> Result<Parsed> {
    let mut want = file_len.min(1 << 20);
    loop {
        let prefix = super::read_at(file, path, 0..want)?;
        match parse(&prefix, file_len) {
            Ok(parsed) => return Ok(parsed),
            Err(Failure { needs: Some(end), .. }) if want < file_len => want = end.max(want * 4).min(file_len),
            Err(Failure { msg, .. }) => {
                return Err(Error::BadWeights {
                    path: path.to_path_buf(),
                    msg,
                })
            }
        }
    }
}

/// `rope_freqs.weight` (the one tensor that is configuration) when the file has one: its
/// values, or what is wrong with it (not F32, over a megabyte); `read` gives a byte range.
fn rope_freqs(
    tensors: &HashMap<String, TensorInfo>,
    read: impl FnOnce((usize, usize)) -> Result<Vec<u8>>,
) -> Result<Option<std::result::Result<Vec<f64>, String>>> {
    let Some(info) = tensors.get("rope_freqs.weight") else {
        return Ok(None);
    };
    let bytes = info.range.1 - info.range.0;
    Ok(Some(if info.dtype != GgmlDType::F32 {
        Err(format!("rope_freqs.weight of type {:?}", info.dtype))
    } else if bytes > 1 << 20 {
        Err(format!("rope_freqs.weight of {bytes} bytes (a megabyte at most)"))
    } else {
        Ok(f32s(&read(info.range)?))
    }))
}

/// Little-endian f32 bytes as f64.
fn f32s(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
        .collect()
}

/// What a GGUF header says about the model (see [`GgufFile::metadata`]).
fn metadata_of(
    path: &Path,
    metadata: &HashMap<String, MetaValue>,
    tensors: &HashMap<String, TensorInfo>,
    rope_freqs: Option<std::result::Result<Vec<f64>, String>>,
) -> Metadata {
    Metadata {
        path: path.to_path_buf(),
        values: metadata.clone(),
        tensors: tensors.keys().cloned().collect(),
        rope_freqs,
    }
}

/// The metadata of GGUF bytes held in memory (the fuzz targets' entry: no file).
#[cfg(feature = "internals")]
pub(crate) fn metadata_of_bytes(data: &[u8], path: &Path) -> Result<Metadata> {
    let bad = |msg: String| Error::BadWeights {
        path: path.to_path_buf(),
        msg,
    };
    let (_, metadata, tensors) = parse_all(data).map_err(bad)?;
    let rope_freqs = rope_freqs(&tensors, |(a, b)| Ok(data[a..b].to_vec()))?;
    Ok(metadata_of(path, &metadata, &tensors, rope_freqs))
}

type Parsed = (u32, HashMap<String, MetaValue>, HashMap<String, TensorInfo>);

/// A tensor info as the file states it, before its layout is checked.
struct RawInfo {
    name: String,
    dims: Vec<usize>,
    ty: u32,
    offset: u64,
}

/// Why a header did not parse, and whether reading more of the file could help.
struct Failure {
    msg: String,
    /// The header runs past the bytes given: how many it needs, at least.
    needs: Option<usize>,
}

/// Parses a whole file held in memory.
#[cfg(any(test, feature = "internals"))]
fn parse_all(data: &[u8]) -> Parse<Parsed> {
    parse(data, data.len()).map_err(|f| f.msg)
}

/// Parses the header from `data`, the first bytes of a file of `file_len` bytes.
fn parse(data: &[u8], file_len: usize) -> std::result::Result<Parsed, Failure> {
    let mut c = Cursor::new(data, file_len);
    parse_header(&mut c).map_err(|msg| Failure { msg, needs: c.needs })
}

fn parse_header(c: &mut Cursor) -> Parse<Parsed> {
    if c.take(4)
        .map_err(|_| "file is shorter than a GGUF header".to_string())?
        != b"GGUF"
    {
        return Err("not a GGUF file (bad magic)".into());
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (2 or 3)"));
    }
    // The smallest tensor info: an empty name (8), one dimension (4 + 8), type and offset (12).
    let n_tensors = c.count("tensor", 32, limits::TENSORS)?;
    // The smallest key/value: an empty key (8), a type (4) and a one-byte value.
    let n_meta = c.count("metadata key", 13, limits::KEYS)?;
    let (metadata, alignment) = read_metadata(c, n_meta)?;
    let infos = (0..n_tensors).map(|_| read_tensor_info(c)).collect::<Parse<Vec<_>>>()?;
    let data_start = c.pos.next_multiple_of(alignment);
    if n_tensors > 0 && data_start > c.file_len {
        return Err(format!(
            "the data section starts at byte {data_start}, past the end of the file ({} bytes; truncated?)",
            c.file_len
        ));
    }
    let tensors = lay_out(infos, data_start, alignment, c.file_len)?;
    Ok((version, metadata, tensors))
}

/// The key/value pairs, and `general.alignment` (a power-of-two `u32`, 32 when absent).
fn read_metadata(c: &mut Cursor, n: usize) -> Parse<(HashMap<String, MetaValue>, usize)> {
    let mut metadata = HashMap::with_capacity(n.min(1024));
    let mut alignment = 32;
    for _ in 0..n {
        let key = c.string()?;
        let ty = c.u32()?;
        let value = c.value(ty, 0).map_err(|e| format!("metadata `{key}`: {e}"))?;
        if key == "general.alignment" {
            alignment = match (&value, ty) {
                (&MetaValue::U64(a), value_type::U32) if a.is_power_of_two() && a <= limits::ALIGNMENT => a as usize,
                (v, value_type::U32) => {
                    return Err(format!(
                        "general.alignment {v:?} is not a power of two up to {}",
                        limits::ALIGNMENT
                    ))
                }
                (_, t) => return Err(format!("general.alignment has value type {t}, not u32")),
            };
        }
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("metadata key `{key}` appears twice"));
        }
    }
    Ok((metadata, alignment))
}

fn read_tensor_info(c: &mut Cursor) -> Parse<RawInfo> {
    let name = c.string()?;
    let n_dims = c.u32()? as usize;
    if !(1..=limits::DIMS).contains(&n_dims) {
        return Err(format!(
            "tensor `{name}` has {n_dims} dimensions (1 to {})",
            limits::DIMS
        ));
    }
    let mut dims = Vec::with_capacity(n_dims);
    for i in 0..n_dims {
        let d = c.u64()?;
        if d == 0 || d > limits::DIM {
            return Err(format!("tensor `{name}`: dimension {i} is {d}"));
        }
        dims.push(usize::try_from(d).map_err(|_| format!("tensor `{name}`: dimension {i} is {d}"))?);
    }
    let ty = c.u32()?;
    let offset = c.u64()?;
    Ok(RawInfo { name, dims, ty, offset })
}

/// Each tensor's byte range: its type known, its size without overflow, its offset aligned
/// and inside the file, no two tensors overlapping, no name twice.
fn lay_out(
    infos: Vec<RawInfo>,
    data_start: usize,
    alignment: usize,
    file_len: usize,
) -> Parse<HashMap<String, TensorInfo>> {
    let mut tensors = HashMap::with_capacity(infos.len());
    for RawInfo { name, dims, ty, offset } in infos {
        let dtype = ggml_type(ty).map_err(|t| format!("tensor `{name}`: unsupported type {t}"))?;
        let size = tensor_bytes(&dims, dtype).map_err(|e| format!("tensor `{name}`: {e}"))?;
        if !offset.is_multiple_of(alignment as u64) {
            return Err(format!(
                "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        let range = usize::try_from(offset)
            .ok()
            .and_then(|o| data_start.checked_add(o))
            .and_then(|start| Some((start, start.checked_add(size)?)))
            .filter(|&(_, end)| end <= file_len)
            .ok_or_else(|| {
                format!("tensor `{name}` ({size} bytes at offset {offset}) runs past the end of the file ({file_len} bytes; truncated?)")
            })?;
        let info = TensorInfo { dims, dtype, range };
        if tensors.insert(name.clone(), info).is_some() {
            return Err(format!("tensor `{name}` appears twice"));
        }
    }
    let mut ranges: Vec<(&String, (usize, usize))> = tensors.iter().map(|(n, i)| (n, i.range)).collect();
    ranges.sort_by_key(|&(n, r)| (r, n));
    for w in ranges.windows(2) {
        let ((a, ra), (b, rb)) = (w[0], w[1]);
        if rb.0 < ra.1 {
            return Err(format!(
                "tensors `{a}` and `{b}` overlap (bytes {}..{} and {}..{})",
                ra.0, ra.1, rb.0, rb.1
            ));
        }
    }
    Ok(tensors)
}

/// The bytes of a tensor of `dims` and `dtype`: rows whole blocks, and no overflow.
fn tensor_bytes(dims: &[usize], dtype: GgmlDType) -> Parse<usize> {
    let block = dtype.block_size();
    if !dims[0].is_multiple_of(block) {
        return Err(format!(
            "row of {} is not a multiple of the {dtype:?} block size {block}",
            dims[0]
        ));
    }
    dims[1..]
        .iter()
        .try_fold(dims[0] / block * dtype.type_size(), |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("dimensions {dims:?} overflow the size"))
}

/// Where a Hugging Face tensor name lives in a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufName {
    /// A whole tensor.
    Whole(String),
    /// Expert `expert` of a stacked `[experts, out, in]` tensor.
    Expert(String, usize),
    /// DeepSeek's `kv_b_proj`, which newer converters split into `attn_k_b` and `attn_v_b`.
    KvB {
        /// The unsplit name (older converters).
        kv_b: String,
        /// `[heads, kv_lora_rank, qk_nope]`.
        k_b: String,
        /// `[heads, v_head_dim, kv_lora_rank]`.
        v_b: String,
    },
}

/// The one table from Hugging Face names to GGUF names (llama.cpp's `tensor_mapping`).
pub fn gguf_name(hf: &str) -> Option<GgufName> {
    let whole = |s: String| Some(GgufName::Whole(s));
    match hf {
        "model.embed_tokens.weight" => return whole("token_embd.weight".into()),
        "model.norm.weight" => return whole("output_norm.weight".into()),
        "lm_head.weight" => return whole("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let blk = |s: &str| format!("blk.{layer}.{s}");
    if let Some(e) = suffix.strip_prefix("mlp.experts.") {
        let (expert, proj) = e.split_once('.')?;
        let stacked = match proj {
            "gate_proj.weight" => "ffn_gate_exps.weight",
            "up_proj.weight" => "ffn_up_exps.weight",
            "down_proj.weight" => "ffn_down_exps.weight",
            _ => return None,
        };
        return Some(GgufName::Expert(blk(stacked), expert.parse().ok()?));
    }
    if suffix == "self_attn.kv_b_proj.weight" {
        return Some(GgufName::KvB {
            kv_b: blk("attn_kv_b.weight"),
            k_b: blk("attn_k_b.weight"),
            v_b: blk("attn_v_b.weight"),
        });
    }
    let (module, param) = suffix.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_a_proj" => "attn_q_a",
        "self_attn.q_a_layernorm" => "attn_q_a_norm",
        "self_attn.q_b_proj" => "attn_q_b",
        "self_attn.kv_a_proj_with_mqa" => "attn_kv_a_mqa",
        "self_attn.kv_a_layernorm" => "attn_kv_a_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "mlp.gate" if param == "weight" => "ffn_gate_inp",
        "mlp.gate" if param == "e_score_correction_bias" => return whole(blk("exp_probs_b.bias")),
        "mlp.shared_experts.gate_proj" => "ffn_gate_shexp",
        "mlp.shared_experts.up_proj" => "ffn_up_shexp",
        "mlp.shared_experts.down_proj" => "ffn_down_shexp",
        _ => return None,
    };
    whole(blk(&format!("{g}.{param}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_llama_cpp() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.bias"),
            Some(GgufName::Whole("blk.3.attn_q.bias".into()))
        );
        assert_eq!(
            gguf_name("model.layers.1.mlp.experts.7.down_proj.weight"),
            Some(GgufName::Expert("blk.1.ffn_down_exps.weight".into(), 7))
        );
        assert_eq!(
            gguf_name("model.layers.1.mlp.gate.e_score_correction_bias"),
            Some(GgufName::Whole("blk.1.exp_probs_b.bias".into()))
        );
        assert_eq!(
            gguf_name("lm_head.weight"),
            Some(GgufName::Whole("output.weight".into()))
        );
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
    }

    /// A GGUF file written field by field, so that each test can break one field.
    struct Gguf {
        version: u32,
        /// Key, value type, encoded value.
        kvs: Vec<(String, u32, Vec<u8>)>,
        /// Name, dims, type, offset.
        tensors: Vec<(String, Vec<u64>, u32, u64)>,
        /// Bytes after the aligned data start.
        data: Vec<u8>,
        /// Overrides the tensor and key counts.
        counts: Option<(u64, u64)>,
    }

    fn enc_str(s: &str) -> Vec<u8> {
        let mut v = (s.len() as u64).to_le_bytes().to_vec();
        v.extend(s.as_bytes());
        v
    }

    impl Gguf {
        /// One string key and an F32 tensor `a.weight` of 8 values.
        fn new() -> Self {
            Gguf {
                version: 3,
                kvs: vec![("general.architecture".into(), 8, enc_str("llama"))],
                tensors: vec![("a.weight".into(), vec![8], 0, 0)],
                data: vec![0; 32],
                counts: None,
            }
        }

        fn kv(mut self, key: &str, ty: u32, value: Vec<u8>) -> Self {
            self.kvs.push((key.into(), ty, value));
            self
        }

        fn tensor(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
            self.tensors.push((name.into(), dims.to_vec(), ty, offset));
            self
        }

        fn bytes(&self) -> Vec<u8> {
            let mut v = b"GGUF".to_vec();
            v.extend(self.version.to_le_bytes());
            let (nt, nk) = self
                .counts
                .unwrap_or((self.tensors.len() as u64, self.kvs.len() as u64));
            v.extend(nt.to_le_bytes());
            v.extend(nk.to_le_bytes());
            for (k, ty, value) in &self.kvs {
                v.extend(enc_str(k));
                v.extend(ty.to_le_bytes());
                v.extend(value);
            }
            for (name, dims, ty, offset) in &self.tensors {
                v.extend(enc_str(name));
                v.extend((dims.len() as u32).to_le_bytes());
                dims.iter().for_each(|d| v.extend(d.to_le_bytes()));
                v.extend(ty.to_le_bytes());
                v.extend(offset.to_le_bytes());
            }
            let align = self
                .kvs
                .iter()
                .find(|kv| kv.0 == "general.alignment" && kv.2.len() == 4)
                .map(|kv| u32::from_le_bytes(kv.2[..4].try_into().unwrap()) as usize)
                .filter(|a| a.is_power_of_two())
                .unwrap_or(32);
            v.resize(v.len().next_multiple_of(align), 0);
            v.extend(&self.data);
            v
        }

        /// The parse error, which must name `needle`.
        fn fails_with(&self, needle: &str) {
            let e = match parse_all(&self.bytes()) {
                Ok(_) => panic!("parsed, but should fail with {needle:?}"),
                Err(e) => e,
            };
            assert!(e.contains(needle), "{e:?} does not contain {needle:?}");
        }
    }

    fn array(item_ty: u32, n: u64, items: &[u8]) -> Vec<u8> {
        let mut v = item_ty.to_le_bytes().to_vec();
        v.extend(n.to_le_bytes());
        v.extend(items);
        v
    }

    #[test]
    fn parses_a_minimal_file() {
        let f = Gguf::new().kv("x.list", 9, array(4, 2, &[1, 0, 0, 0, 2, 0, 0, 0]));
        let (version, meta, tensors) = parse_all(&f.bytes()).unwrap();
        assert_eq!(version, 3);
        assert_eq!(meta["general.architecture"].as_str(), Some("llama"));
        assert_eq!(
            meta["x.list"],
            MetaValue::Array(vec![MetaValue::U64(1), MetaValue::U64(2)])
        );
        assert_eq!(tensors["a.weight"].dims, vec![8]);
        assert_eq!(tensors["a.weight"].range.1 - tensors["a.weight"].range.0, 32);
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(parse_all(b"GGU").unwrap_err().contains("shorter"));
        assert!(parse_all(b"NOPE\x03\0\0\0").unwrap_err().contains("magic"));
        Gguf {
            version: 1,
            ..Gguf::new()
        }
        .fails_with("version 1");
        // Data past the end of the file.
        let f = Gguf {
            data: vec![0; 20],
            ..Gguf::new()
        };
        f.fails_with("`a.weight` (32 bytes at offset 0) runs past the end");
        // Every prefix of a valid file fails to parse, with a message, never a panic.
        let whole = Gguf::new()
            .kv("x.list", 9, array(4, 2, &[1, 0, 0, 0, 2, 0, 0, 0]))
            .bytes();
        for n in 0..whole.len() {
            assert!(parse_all(&whole[..n]).is_err(), "a prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn counts_are_bounded_by_limits_and_by_the_bytes_left() {
        // CVE-2024-23605's class: counts that would size huge allocations.
        Gguf {
            counts: Some((u64::MAX, 1)),
            ..Gguf::new()
        }
        .fails_with("tensor count 18446744073709551615");
        Gguf {
            counts: Some((1 << 19, 1)),
            ..Gguf::new()
        }
        .fails_with("needs more than");
        Gguf {
            counts: Some((1, 1 << 17)),
            ..Gguf::new()
        }
        .fails_with("over the limit of 65536");
        Gguf::new()
            .kv("big", 8, (1u64 << 40).to_le_bytes().to_vec())
            .fails_with("string byte count");
        Gguf::new()
            .kv("big", 8, 1000u64.to_le_bytes().to_vec())
            .fails_with("needs more than");
        // An array of u32 whose count fits in the bytes left only at one byte per item.
        let f = Gguf::new().kv("a", 9, array(4, 60, &[0; 40]));
        f.fails_with("array item count 60");
        // The file-wide item budget: two arrays that each fit, together over it.
        let two = [array(0, 6, &[0; 6]), array(0, 6, &[0; 6])].concat();
        let mut c = Cursor {
            array_items_left: 10,
            ..Cursor::new(&two, two.len())
        };
        assert!(c.value(9, 0).is_ok());
        assert!(c
            .value(9, 0)
            .unwrap_err()
            .contains("array item count 6 at byte 22 is over the limit of 4"));
        // Arrays of arrays of arrays.
        let inner = array(9, 1, &array(4, 1, &[0; 4]));
        Gguf::new()
            .kv("deep", 9, array(9, 1, &inner))
            .fails_with("nested deeper");
        Gguf::new()
            .kv("t", 13, vec![0; 8])
            .fails_with("unknown metadata value type 13");
        Gguf::new().kv("b", 7, vec![2]).fails_with("bool of value 2");
        Gguf::new()
            .kv("s", 8, [3u64.to_le_bytes().to_vec(), vec![0xff; 3]].concat())
            .fails_with("not UTF-8");
    }

    #[test]
    fn tensor_dims_and_types_are_checked() {
        let with = |dims: &[u64], ty: u32| {
            Gguf {
                tensors: vec![],
                ..Gguf::new()
            }
            .tensor("t", dims, ty, 0)
        };
        with(&[1, 1, 1, 1, 1], 0).fails_with("5 dimensions");
        with(&[], 0).fails_with("0 dimensions");
        with(&[0, 5], 0).fails_with("dimension 0 is 0");
        with(&[8, 0], 0).fails_with("dimension 1 is 0");
        with(&[8, 1 << 63], 0).fails_with("dimension 1 is");
        // CVE-2025-53630's class: element count times type size wrapping around.
        with(&[1152, (1 << 42) + 1, 1 << 20], 0).fails_with("overflow");
        with(&[1 << 40, 1 << 40], 0).fails_with("overflow");
        // A row that is not whole Q4_0 blocks of 32.
        with(&[33, 2], 2).fails_with("not a multiple of the Q4_0 block size 32");
        with(&[256, 2], 16).fails_with("IQ");
        with(&[8], 99).fails_with("unsupported type ggml type 99");
    }

    #[test]
    fn alignment_and_offsets_are_checked() {
        let align = |a: u32| Gguf::new().kv("general.alignment", 4, a.to_le_bytes().to_vec());
        align(0).fails_with("not a power of two");
        align(48).fails_with("not a power of two");
        align(1 << 30).fails_with("not a power of two up to");
        Gguf::new()
            .kv("general.alignment", 10, 32u64.to_le_bytes().to_vec())
            .fails_with("not u32");
        assert!(parse_all(&align(64).bytes()).is_ok());
        let offset = |o: u64| {
            Gguf {
                tensors: vec![],
                data: vec![0; 96],
                ..Gguf::new()
            }
            .tensor("t", &[8], 0, o)
        };
        offset(4).fails_with("offset 4 is not a multiple of the alignment 32");
        offset(1 << 62).fails_with("runs past the end");
        offset(u64::MAX - 31).fails_with("runs past the end");
        assert!(parse_all(&offset(64).bytes()).is_ok());
        // Two tensors over the same bytes, in either order of their infos.
        let f = Gguf {
            data: vec![0; 96],
            ..Gguf::new()
        }
        .tensor("b.weight", &[16], 0, 32);
        assert!(parse_all(&f.bytes()).is_ok());
        let f = Gguf {
            data: vec![0; 96],
            ..Gguf::new()
        }
        .tensor("b.weight", &[16], 0, 0);
        f.fails_with("`a.weight` and `b.weight` overlap");
        let f = Gguf {
            tensors: vec![],
            data: vec![0; 96],
            ..Gguf::new()
        }
        .tensor("b.weight", &[8], 0, 32)
        .tensor("a.weight", &[16], 0, 0);
        f.fails_with("overlap");
    }

    #[test]
    fn duplicate_keys_and_tensor_names_are_rejected() {
        Gguf::new()
            .kv("general.architecture", 8, enc_str("qwen2"))
            .fails_with("`general.architecture` appears twice");
        let f = Gguf {
            data: vec![0; 64],
            ..Gguf::new()
        }
        .tensor("a.weight", &[8], 0, 32);
        f.fails_with("tensor `a.weight` appears twice");
    }

    #[test]
    fn a_header_longer_than_the_first_read_is_read_in_growing_prefixes() {
        // A 3 MB string: the header runs past the first megabyte read, and past four.
        let long = "x".repeat(3 << 20);
        let path = std::env::temp_dir().join(format!("r1-gguf-long-{}", std::process::id()));
        std::fs::write(&path, Gguf::new().kv("x.long", 8, enc_str(&long)).bytes()).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.metadata["x.long"], MetaValue::Str(long));
        assert_eq!(g.bytes(&g.tensors["a.weight"]).unwrap().len(), 32);
        std::fs::remove_file(&path).unwrap();
        // A prefix says how much more it needs; the whole file parsed alone does not.
        let whole = Gguf::new().bytes();
        let f = parse(&whole[..40], whole.len()).err().unwrap();
        assert!(f.needs.is_some_and(|n| n > 40), "{}", f.msg);
        assert!(parse(&whole[..40], 40).err().unwrap().needs.is_none());
    }

    #[test]
    fn a_header_past_its_limit_is_refused() {
        let mut c = Cursor::new(&[], usize::MAX);
        assert!(c
            .take(limits::HEADER_BYTES + 1)
            .unwrap_err()
            .contains("header runs past"));
        assert!(c.needs.is_none());
        assert!(c.take(16).is_err() && c.needs == Some(16));
    }

    #[test]
    fn ranges_from_elsewhere_are_never_used() {
        let dir = std::env::temp_dir().join(format!("r1-gguf-range-{}", std::process::id()));
        std::fs::write(&dir, Gguf::new().bytes()).unwrap();
        let g = GgufFile::open(&dir).unwrap();
        let forged = TensorInfo {
            dims: vec![8],
            dtype: GgmlDType::F32,
            range: (0, 1 << 40),
        };
        assert!(g.bytes(&forged).is_err());
        let a = &g.tensors["a.weight"];
        assert!(g.part(a, 16..40).is_err());
        assert!(g.part(a, usize::MAX - 1..usize::MAX).is_err());
        assert_eq!(g.bytes(a).unwrap().len(), 32);
        assert_eq!(g.part(a, 8..16).unwrap().len(), 8);
        std::fs::remove_file(&dir).unwrap();
    }
}
