//! GGUF files (llama.cpp's format, v2 and v3) through `memmap2`: metadata, tensor infos and
//! alignment are parsed from the mapping; tensor bytes are borrowed from it, never copied here.
//!
//! Layout: magic `GGUF`, version, tensor count, metadata count, the metadata key/values, the
//! tensor infos (name, dims innermost first, ggml type, offset), then the data section at the
//! next multiple of `general.alignment` (default 32).

use crate::error::{Error, Result};
use crate::metadata::{MetaValue, Metadata};
use candle_core::quantized::GgmlDType;
use memmap2::Mmap;
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
    /// Byte range in the file.
    pub range: (usize, usize),
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

/// A mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// Metadata by key.
    pub(crate) metadata: HashMap<String, MetaValue>,
    /// Tensor infos by name.
    pub(crate) tensors: HashMap<String, TensorInfo>,
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

/// A bounds-checked reader over the mapping.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "unexpected end of file at byte {} (needed {n} more bytes; truncated file?)",
                    self.pos
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A count that must fit in what is left of the file (each item at least `min_size` bytes).
    fn count(&mut self, min_size: usize) -> std::result::Result<usize, String> {
        let n = self.u64()?;
        let left = (self.data.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(format!(
                "count {n} at byte {} exceeds the file size (corrupt file?)",
                self.pos - 8
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.count(1)?;
        let at = self.pos;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| format!("string at byte {at} is not UTF-8"))
    }

    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<MetaValue, String> {
        Ok(match ty {
            0 => MetaValue::U64(self.array::<1>()?[0] as u64),
            1 => MetaValue::I64(self.array::<1>()?[0] as i8 as i64),
            2 => MetaValue::U64(u16::from_le_bytes(self.array()?) as u64),
            3 => MetaValue::I64(i16::from_le_bytes(self.array()?) as i64),
            4 => MetaValue::U64(self.u32()? as u64),
            5 => MetaValue::I64(i32::from_le_bytes(self.array()?) as i64),
            6 => MetaValue::F64(f32::from_le_bytes(self.array()?) as f64),
            7 => MetaValue::Bool(self.array::<1>()?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 if depth < 4 => {
                let item_ty = self.u32()?;
                let n = self.count(1)?;
                let mut items = Vec::with_capacity(n);
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
    /// Maps and parses `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        // SAFETY: read-only mapping; model files must not change while loaded (as for every
        // mmap-based loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        let bad = |msg: String| Error::BadWeights {
            path: path.to_path_buf(),
            msg,
        };
        let (_version, metadata, tensors) = parse(&mmap).map_err(bad)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            metadata,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file says about the model, for `config` and `tokenizer`: the metadata, the
    /// tensor names and the rope frequency factors (the one tensor that is configuration).
    pub fn metadata(&self) -> Metadata {
        let rope_freqs = self.tensors.get("rope_freqs.weight").map(|info| match info.dtype {
            GgmlDType::F32 => Ok(self
                .bytes(info)
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
                .collect()),
            other => Err(format!("rope_freqs.weight of type {other:?}")),
        });
        Metadata {
            path: self.path.clone(),
            values: self.metadata.clone(),
            tensors: self.tensors.keys().cloned().collect(),
            rope_freqs,
        }
    }

    /// The file's size in bytes.
    pub fn file_bytes(&self) -> usize {
        self.mmap.len()
    }

    /// The bytes of tensor `name`.
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.range.0..info.range.1]
    }

    /// Tells the kernel a tensor's pages are no longer needed, once its bytes were copied into
    /// the model: without this, the mapped file and the loaded weights both count in the
    /// process's memory until loading ends (twice the file at the peak).
    pub fn release(&self, info: &TensorInfo) {
        release(&self.mmap, info.range);
    }

    /// A copy of `bytes` (a slice of this file's mapping), made a few megabytes at a time with
    /// each piece's pages released once copied: the mapped pages and the copy of a tensor never
    /// both count in full, so the peak while loading stays near the file's size rather than the
    /// file plus its largest tensor.
    pub fn copy_out(&self, bytes: &[u8]) -> Vec<u8> {
        const PIECE: usize = 8 << 20;
        let mut out = Vec::with_capacity(bytes.len());
        for piece in bytes.chunks(PIECE) {
            out.extend_from_slice(piece);
            self.release_bytes(piece);
        }
        out
    }

    /// Releases the pages of `bytes`, a slice of this file's mapping (anything else is left
    /// alone), once their contents were copied elsewhere.
    pub fn release_bytes(&self, bytes: &[u8]) {
        const PAGE: usize = 4096;
        let start = (bytes.as_ptr() as usize).wrapping_sub(self.mmap.as_ptr() as usize);
        if start <= self.mmap.len() && bytes.len() <= self.mmap.len() - start {
            // Whole pages, rounded outward: a page shared with a neighbour is only dropped from
            // memory, and read again from the file when the neighbour is loaded.
            let to = (start + bytes.len()).next_multiple_of(PAGE).min(self.mmap.len());
            release(&self.mmap, (start / PAGE * PAGE, to));
        }
    }
}

type Parsed = (u32, HashMap<String, MetaValue>, HashMap<String, TensorInfo>);

fn parse(data: &[u8]) -> std::result::Result<Parsed, String> {
    let mut c = Cursor { data, pos: 0 };
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
    let n_tensors = c.count(24)?;
    let n_meta = c.count(12)?;
    let mut metadata = HashMap::with_capacity(n_meta);
    for _ in 0..n_meta {
        let key = c.string()?;
        let ty = c.u32()?;
        let value = c.value(ty, 0).map_err(|e| format!("metadata `{key}`: {e}"))?;
        metadata.insert(key, value);
    }
    let mut infos = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = c.string()?;
        let n_dims = c.u32()? as usize;
        if n_dims > 4 {
            return Err(format!("tensor `{name}` has {n_dims} dimensions"));
        }
        let dims = (0..n_dims)
            .map(|_| c.u64().map(|d| d as usize))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let ty = c.u32()?;
        let offset = c.u64()? as usize;
        infos.push((name, dims, ty, offset));
    }
    let alignment = metadata
        .get("general.alignment")
        .and_then(MetaValue::as_u64)
        .unwrap_or(32) as usize;
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(format!("general.alignment {alignment} is not a power of two"));
    }
    let data_start = c.pos.div_ceil(alignment) * alignment;
    let mut tensors = HashMap::with_capacity(n_tensors);
    for (name, dims, ty, offset) in infos {
        let dtype = ggml_type(ty).map_err(|t| format!("tensor `{name}`: unsupported type {t}"))?;
        let elems = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or(format!("tensor `{name}`: size overflows"))?;
        if dims.first().is_some_and(|&d| d % dtype.block_size() != 0) {
            return Err(format!(
                "tensor `{name}`: row of {} is not a multiple of the {dtype:?} block size",
                dims[0]
            ));
        }
        let size = elems / dtype.block_size() * dtype.type_size();
        let start = data_start
            .checked_add(offset)
            .ok_or(format!("tensor `{name}`: offset overflows"))?;
        let end = start.checked_add(size).filter(|&e| e <= data.len()).ok_or_else(|| {
            format!(
                "tensor `{name}` ({size} bytes at {start}) runs past the end of the file ({} bytes; truncated?)",
                data.len()
            )
        })?;
        tensors.insert(
            name,
            TensorInfo {
                dims,
                dtype,
                range: (start, end),
            },
        );
    }
    Ok((version, metadata, tensors))
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

/// `MADV_DONTNEED` over a byte range of a read-only mapping (best effort).
pub(crate) fn release(mmap: &Mmap, (start, end): (usize, usize)) {
    // SAFETY: the mapping is private and read-only, so dropping its pages loses nothing: a
    // later access reads them again from the file. No reference into the range is used after
    // this except through such re-reads.
    let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
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

    /// A GGUF v3 file with one metadata string and the given tensors (name, dims, type, bytes).
    fn tiny_gguf(tensors: &[(&str, &[u64], u32, usize)]) -> Vec<u8> {
        let mut v = b"GGUF".to_vec();
        v.extend(3u32.to_le_bytes());
        v.extend((tensors.len() as u64).to_le_bytes());
        v.extend(1u64.to_le_bytes());
        let string = |v: &mut Vec<u8>, s: &str| {
            v.extend((s.len() as u64).to_le_bytes());
            v.extend(s.as_bytes());
        };
        string(&mut v, "general.architecture");
        v.extend(8u32.to_le_bytes());
        string(&mut v, "llama");
        let mut offset = 0u64;
        for (name, dims, ty, _) in tensors {
            string(&mut v, name);
            v.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| v.extend(d.to_le_bytes()));
            v.extend(ty.to_le_bytes());
            v.extend(offset.to_le_bytes());
            offset += 32;
        }
        while !v.len().is_multiple_of(32) {
            v.push(0);
        }
        for (_, _, _, size) in tensors {
            v.extend(vec![0u8; *size]);
            while !v.len().is_multiple_of(32) {
                v.push(0);
            }
        }
        v
    }

    #[test]
    fn parses_a_minimal_file_and_names_bad_tensors() {
        let (version, meta, tensors) = parse(&tiny_gguf(&[("a.weight", &[8], 0, 32)])).unwrap();
        assert_eq!(version, 3);
        assert_eq!(meta["general.architecture"].as_str(), Some("llama"));
        assert_eq!(tensors["a.weight"].dims, vec![8]);
        // An IQ2_XXS tensor (type 16) is refused with its name and type.
        let e = parse(&tiny_gguf(&[("blk.0.ffn_up.weight", &[256, 2], 16, 32)])).unwrap_err();
        assert!(e.contains("blk.0.ffn_up.weight") && e.contains("IQ"), "{e}");
        // Data past the end of the file.
        let mut f = tiny_gguf(&[("a.weight", &[64], 0, 256)]);
        f.truncate(f.len() - 100);
        let e = parse(&f).unwrap_err();
        assert!(e.contains("a.weight") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(parse(b"GGU").unwrap_err().contains("shorter"));
        assert!(parse(b"NOPE\x03\0\0\0").unwrap_err().contains("magic"));
        let mut v = b"GGUF".to_vec();
        v.extend(3u32.to_le_bytes());
        v.extend(u64::MAX.to_le_bytes()); // absurd tensor count
        v.extend(0u64.to_le_bytes());
        assert!(parse(&v).unwrap_err().contains("exceeds"));
        let mut v = b"GGUF".to_vec();
        v.extend(1u32.to_le_bytes());
        assert!(parse(&v).unwrap_err().contains("version 1"));
    }
}
