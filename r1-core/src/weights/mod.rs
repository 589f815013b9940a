//! Named weights: the only place that knows file formats.
//!
//! Models ask for tensors by their Hugging Face name and expected shape; this module finds them in
//! the checkpoint, checks dtype and shape, dequantizes FP8 blocks, and returns a candle tensor in
//! the requested storage dtype. Every error names the file and the tensor.

pub(crate) mod fp8;
pub(crate) mod gguf;
pub(crate) mod quantize;
pub(crate) mod safetensors;

use self::gguf::{GgufFile, GgufName, TensorInfo};
use self::safetensors::{RawTensor, SafetensorsStore};
use crate::config::Fp8Config;
use crate::error::{Error, Result};
use crate::kernels::kquant::KFormat;
use crate::kernels::matmul::Kind;
use crate::kernels::quant::Format;
use crate::kernels::QuantMatrix;
use ::safetensors::tensor::Dtype;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Reports loading progress: called with (bytes of weights read so far, total bytes of the
/// weight files). Returning `false` stops the load, which then fails with
/// [`ErrorCode::Cancelled`](crate::ErrorCode::Cancelled).
pub type Progress = Arc<dyn Fn(u64, u64) -> bool + Send + Sync>;

/// Where the tensors come from.
enum Source {
    Safetensors(SafetensorsStore),
    Gguf(GgufFile),
}

/// A matrix as a linear layer or embedding holds it: dense, or kept quantized.
#[derive(Debug, Clone)]
pub enum Matrix {
    /// A dense `[rows, cols]` tensor in the storage dtype.
    Dense(Tensor),
    /// A ggml-quantized `[rows, cols]` tensor (blocks run along the columns), computed by
    /// candle's quantized matmul (k-quants).
    Quantized(Arc<QTensor>),
    /// A matrix in one of ggml's legacy block formats, computed by r1's own kernels.
    Blocks(Arc<QuantMatrix>),
}

/// The ggml types r1's kernels run; the rest go through candle's quantized matmul.
fn kernel_format(t: GgmlDType) -> Option<Kind> {
    Some(match t {
        GgmlDType::Q4_0 => Kind::Legacy(Format::Q4_0),
        GgmlDType::Q4_1 => Kind::Legacy(Format::Q4_1),
        GgmlDType::Q5_0 => Kind::Legacy(Format::Q5_0),
        GgmlDType::Q5_1 => Kind::Legacy(Format::Q5_1),
        GgmlDType::Q8_0 => Kind::Legacy(Format::Q8_0),
        GgmlDType::Q4K => Kind::K(KFormat::Q4K),
        GgmlDType::Q6K => Kind::K(KFormat::Q6K),
        _ => return None,
    })
}

/// A checkpoint's tensors, converted on request.
pub struct Weights {
    source: Source,
    /// Quantize linear weights of a checkpoint while loading.
    quantize: Option<quantize::QuantizeTo>,
    /// Dequantize every matrix (GGUF files included): exact f32 products, for checks.
    dense: bool,
    /// Loading progress: bytes read so far, reported to the callback.
    progress: Option<(Progress, std::cell::Cell<u64>)>,
    fp8: Option<Fp8Config>,
    dtype: DType,
    device: Device,
}

impl Weights {
    /// Opens the safetensors files of a checkpoint folder. `dtype` is the storage dtype of the
    /// returned weights (f32 or bf16 on CPU).
    pub fn open(dir: &Path, fp8: Option<Fp8Config>, dtype: DType, device: &Device) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::InvalidArgument(format!(
                "weight dtype {dtype:?} (use f32, bf16 or f16)"
            )));
        }
        let source = Source::Safetensors(SafetensorsStore::open(dir)?);
        Ok(Weights {
            source,
            quantize: None,
            dense: false,
            progress: None,
            fp8,
            dtype,
            device: device.clone(),
        })
    }

    /// Wraps an opened GGUF file. Quantized matrices stay quantized; other tensors are
    /// dequantized to `dtype`.
    pub fn from_gguf(file: GgufFile, dtype: DType, device: &Device) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(Error::InvalidArgument(format!(
                "weight dtype {dtype:?} (use f32, bf16 or f16)"
            )));
        }
        Ok(Weights {
            source: Source::Gguf(file),
            quantize: None,
            dense: false,
            progress: None,
            fp8: None,
            dtype,
            device: device.clone(),
        })
    }

    /// Quantizes the matrices of a checkpoint (safetensors) as they are loaded. GGUF files keep
    /// their own quantization.
    pub fn with_quantization(mut self, to: Option<quantize::QuantizeTo>) -> Self {
        self.quantize = to;
        self
    }

    /// Reports loading progress (bytes read, total bytes) to `f`.
    pub fn with_progress(mut self, f: Option<Progress>) -> Self {
        self.progress = f.map(|f| (f, std::cell::Cell::new(0)));
        self
    }

    /// Total bytes of the weight files.
    pub fn total_bytes(&self) -> u64 {
        match &self.source {
            Source::Safetensors(s) => s.total_bytes(),
            Source::Gguf(g) => g.file_bytes() as u64,
        }
    }

    /// Counts `n` more bytes read and tells the progress callback, which may stop the load.
    fn advance(&self, n: usize) -> Result<()> {
        if let Some((f, done)) = &self.progress {
            done.set(done.get() + n as u64);
            let (done, total) = (done.get().min(self.total_bytes()), self.total_bytes());
            if !f(done, total) {
                return Err(Error::Cancelled(format!(
                    "{}: loading stopped by the progress callback after {done} of {total} bytes",
                    self.root().display()
                )));
            }
        }
        Ok(())
    }

    /// An error if a file the weights were read from was changed since it was opened: a
    /// model built from a file rewritten under it would hold a mix of two files' weights.
    pub fn check_unchanged(&self) -> Result<()> {
        match &self.source {
            Source::Gguf(g) => g.stamp().check(),
            Source::Safetensors(store) => store.stamps().try_for_each(Stamp::check),
        }
    }

    /// Tells the progress callback that loading is done (headers and skipped tensors are
    /// never read, so the count alone would stop short).
    pub fn finish_progress(&self) -> Result<()> {
        if let Some((f, done)) = &self.progress {
            done.set(self.total_bytes());
            if !f(self.total_bytes(), self.total_bytes()) {
                return Err(Error::Cancelled(format!(
                    "{}: loading stopped by the progress callback at its end",
                    self.root().display()
                )));
            }
        }
        Ok(())
    }

    /// Dequantizes every matrix at load (quantized GGUF types too), so products are exact f32:
    /// the path that checks a quantized file's weights apart from activation quantization.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn with_dense_matrices(mut self, dense: bool) -> Self {
        self.dense = dense;
        self
    }

    /// The GGUF file, when the weights come from one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.source {
            Source::Gguf(g) => Some(g),
            Source::Safetensors(_) => None,
        }
    }

    fn root(&self) -> &Path {
        match &self.source {
            Source::Safetensors(s) => s.root(),
            Source::Gguf(g) => g.path(),
        }
    }

    /// Whether matrix `name` is rounded below its source: a GGUF file's tensor in any type but
    /// f32, or a checkpoint's quantized while loading. Such a model keeps its KV cache in f16 by
    /// default, as llama.cpp does; a checkpoint kept in f32, f16 or bf16 caches f32, and its
    /// logits match transformers'.
    pub(crate) fn quantized(&self, name: &str) -> bool {
        match &self.source {
            Source::Gguf(g) => match gguf::gguf_name(name) {
                Some(GgufName::Whole(n)) => g.tensors.get(&n).is_some_and(|i| i.dtype != GgmlDType::F32),
                _ => false,
            },
            Source::Safetensors(_) => self.quantize.is_some(),
        }
    }

    /// Whether the checkpoint has tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Safetensors(s) => s.contains(name),
            Source::Gguf(g) => match gguf::gguf_name(name) {
                Some(GgufName::Whole(n)) | Some(GgufName::Expert(n, _)) => g.tensors.contains_key(&n),
                Some(GgufName::KvB { kv_b, k_b, .. }) => g.tensors.contains_key(&kv_b) || g.tensors.contains_key(&k_b),
                None => false,
            },
        }
    }

    /// Matrix `name` of `[rows, cols]` for a linear layer or embedding: quantized GGUF types
    /// stay quantized, everything else is a dense tensor in the storage dtype.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        if let (Source::Gguf(g), false) = (&self.source, self.dense) {
            let found = match gguf::gguf_name(name) {
                Some(GgufName::Whole(n)) => g.tensors.get(&n).map(|i| (n.clone(), i, None)),
                Some(GgufName::Expert(n, e)) => g.tensors.get(&n).map(|i| (n.clone(), i, Some(e))),
                _ => None,
            };
            if let Some((gname, info, expert)) = found {
                if let Some(format) = kernel_format(info.dtype) {
                    let part = self.gguf_part(g, &gname, info, expert, &[rows, cols])?;
                    // The MoE kernel reads experts (routed and shared) in groups of eight rows,
                    // interleaved for Q4_K and Q6_K; other formats stay row-major for it.
                    // The interleaved forms are the file's size (Q6_K) or 3% over it (Q4_K).
                    let moe = expert.is_some() || gname.contains("_shexp");
                    let interleave = !moe || matches!(format, Kind::K(KFormat::Q4K | KFormat::Q6K));
                    let m = QuantMatrix::read(format, rows, cols, part.len(), interleave, |r| {
                        g.part(info, part.start + r.start..part.start + r.end)
                    })?;
                    return Ok(Matrix::Blocks(Arc::new(m)));
                }
                if !matches!(info.dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
                    let part = self.gguf_part(g, &gname, info, expert, &[rows, cols])?;
                    let bytes = g.part(info, part)?;
                    let storage = QStorage::from_data(Cow::Owned(bytes), &self.device, info.dtype)?;
                    return Ok(Matrix::Quantized(Arc::new(QTensor::new(storage, (rows, cols))?)));
                }
            }
        }
        let dense = self.get(name, &[rows, cols])?;
        match (self.quantize, &self.source) {
            (Some(to), Source::Safetensors(_)) => quantize::quantize_matrix(&dense, to),
            _ => Ok(Matrix::Dense(dense)),
        }
    }

    /// The per-head matrices of DeepSeek's `kv_b_proj` `name` where the GGUF file splits it
    /// into `attn_k_b` (per head `[kv_lora, nope]`: W_UK transposed) and `attn_v_b` (per head
    /// `[v, kv_lora]`: W_UV) in formats r1's kernels read: kept in those blocks, so MLA's absorbed
    /// decode reads a tenth of the bytes of the dequantized f32. `None` for other files (the
    /// dense `kv_b_proj` from [`get`](Self::get) serves them).
    pub(crate) fn split_kv_b(
        &self,
        name: &str,
        heads: usize,
        nope: usize,
        v: usize,
        kv_lora: usize,
    ) -> Result<Option<HeadMatrices>> {
        let (Source::Gguf(g), false) = (&self.source, self.dense) else {
            return Ok(None);
        };
        let Some(GgufName::KvB { k_b, v_b, .. }) = gguf::gguf_name(name) else {
            return Ok(None);
        };
        let per_head = |gname: &str, rows: usize, cols: usize| -> Result<Option<Vec<Arc<QuantMatrix>>>> {
            let Some(info) = g.tensors.get(gname) else {
                return Ok(None);
            };
            let Some(format) = kernel_format(info.dtype) else {
                return Ok(None);
            };
            if info.shape() != [heads, rows, cols] || !cols.is_multiple_of(format.block_len()) {
                return Ok(None); // the dense path reports a wrong shape
            }
            let per = g.byte_len(info) / heads;
            (0..heads)
                .map(|h| {
                    let m = QuantMatrix::read(format, rows, cols, per, true, |r| {
                        g.part(info, h * per + r.start..h * per + r.end)
                    })?;
                    Ok(Arc::new(m))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some)
        };
        match (per_head(&k_b, kv_lora, nope)?, per_head(&v_b, v, kv_lora)?) {
            (Some(k_b), Some(v_b)) => Ok(Some(HeadMatrices { k_b, v_b })),
            _ => Ok(None),
        }
    }

    /// Tensor `name` with exactly `shape`, in the storage dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.load(name, shape, self.dtype)
    }

    /// Tensor `name` as f32, rounded through the storage dtype first: small tensors (norm gains,
    /// biases, router weights) are computed in f32, but a bf16 model must see the same values a
    /// bf16 checkpoint holds.
    pub fn get_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        Ok(self.load(name, shape, self.dtype)?.to_dtype(DType::F32)?)
    }

    /// Tensor `name` as f32 exactly as the file stores it, whatever the storage dtype
    /// (DeepSeek-V3's `e_score_correction_bias`, kept f32 even in bf16/fp8 checkpoints).
    pub fn get_exact_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.load(name, shape, DType::F32)
    }

    fn load(&self, name: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let tensor = match &self.source {
            Source::Safetensors(store) => self.load_safetensors(store, name, shape)?,
            Source::Gguf(g) => self.load_gguf(g, name, shape)?,
        };
        Ok(tensor.to_dtype(dtype)?)
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            path: self.root().to_path_buf(),
            name: name.to_string(),
        }
    }

    fn load_safetensors(&self, store: &SafetensorsStore, name: &str, shape: &[usize]) -> Result<Tensor> {
        let raw = store.get(name).ok_or_else(|| self.missing(name))??;
        self.advance(raw.bytes.len())?;
        let bad = |msg: String| Error::BadWeights {
            path: raw.path.to_path_buf(),
            msg: format!("tensor `{name}`: {msg}"),
        };
        if raw.shape != shape {
            return Err(bad(format!("shape {:?}, but the config implies {shape:?}", raw.shape)));
        }
        Ok(match raw.dtype {
            Dtype::F32 => Tensor::from_vec(decode::<4, f32>(&raw, f32::from_le_bytes), shape, &self.device)?,
            Dtype::F16 => Tensor::from_vec(decode::<2, f16>(&raw, f16::from_le_bytes), shape, &self.device)?,
            Dtype::BF16 => Tensor::from_vec(decode::<2, bf16>(&raw, bf16::from_le_bytes), shape, &self.device)?,
            Dtype::F8_E4M3 => self.dequantize_fp8(name, &raw)?,
            other => {
                return Err(bad(format!(
                    "dtype {other:?} is not supported (f32, f16, bf16, f8_e4m3)"
                )))
            }
        })
    }

    /// A GGUF tensor by its Hugging Face name, dequantized to f32.
    fn load_gguf(&self, g: &GgufFile, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (gname, expert) = match gguf::gguf_name(name).ok_or_else(|| self.missing(name))? {
            GgufName::Whole(n) => (n, None),
            GgufName::Expert(n, e) => (n, Some(e)),
            GgufName::KvB { kv_b, k_b, v_b } => {
                if g.tensors.contains_key(&kv_b) {
                    (kv_b, None)
                } else {
                    return self.kv_b_from_split(g, name, &k_b, &v_b, shape);
                }
            }
        };
        let info = g
            .tensors
            .get(&gname)
            .ok_or_else(|| self.missing(&format!("{gname} ({name})")))?;
        let part = self.gguf_part(g, &gname, info, expert, shape)?;
        let q = QTensor::new(
            QStorage::from_data(Cow::Owned(g.part(info, part)?), &self.device, info.dtype)?,
            shape,
        )?;
        Ok(q.dequantize(&self.device)?)
    }

    /// Where the bytes of a whole GGUF tensor or of one expert of a stacked one are (counted
    /// from the tensor's first byte), after checking the shape the model expects.
    fn gguf_part(
        &self,
        g: &GgufFile,
        gname: &str,
        info: &TensorInfo,
        expert: Option<usize>,
        shape: &[usize],
    ) -> Result<std::ops::Range<usize>> {
        let bad = |msg: String| Error::BadWeights {
            path: g.path().to_path_buf(),
            msg: format!("tensor `{gname}`: {msg}"),
        };
        let full = info.shape();
        let len = g.byte_len(info);
        match expert {
            None if full == shape => {
                self.advance(len)?;
                Ok(0..len)
            }
            Some(e) if full.len() == 3 && full[1..] == *shape => {
                if e >= full[0] {
                    return Err(bad(format!("expert {e} of {}", full[0])));
                }
                let per = len / full[0];
                self.advance(per)?;
                Ok(e * per..(e + 1) * per)
            }
            _ => Err(bad(format!(
                "shape {full:?}, but the config implies {shape:?}{}",
                if expert.is_some() { " per expert" } else { "" }
            ))),
        }
    }

    /// `kv_b_proj` `[heads * (nope + v), kv_lora]` rebuilt from llama.cpp's split
    /// `attn_k_b` `[heads, kv_lora, nope]` (W_UK transposed) and `attn_v_b` `[heads, v, kv_lora]`.
    fn kv_b_from_split(&self, g: &GgufFile, name: &str, k_b: &str, v_b: &str, shape: &[usize]) -> Result<Tensor> {
        let get = |n: &str| -> Result<Tensor> {
            let info = g.tensors.get(n).ok_or_else(|| self.missing(&format!("{n} ({name})")))?;
            let s = info.shape();
            let q = QTensor::new(
                QStorage::from_data(Cow::Owned(g.bytes(info)?), &self.device, info.dtype)?,
                s,
            )?;
            Ok(q.dequantize(&self.device)?)
        };
        let (k, v) = (get(k_b)?, get(v_b)?);
        let (heads, kv_lora, nope) = k.dims3()?;
        let (vh, v_dim, vl) = v.dims3()?;
        if vh != heads || vl != kv_lora || shape != [heads * (nope + v_dim), kv_lora] {
            return Err(Error::BadWeights {
                path: g.path().to_path_buf(),
                msg: format!(
                    "`{k_b}` {:?} and `{v_b}` {:?} do not make `{name}` {shape:?}",
                    k.dims(),
                    v.dims()
                ),
            });
        }
        let w_uk = k.transpose(1, 2)?; // [heads, nope, kv_lora]
        Ok(Tensor::cat(&[&w_uk, &v], 1)?.reshape((heads * (nope + v_dim), kv_lora))?)
    }

    /// FP8 weight × its `{name}_scale_inv` block scales, as f32.
    fn dequantize_fp8(&self, name: &str, raw: &RawTensor) -> Result<Tensor> {
        let bad = |msg: String| Error::BadWeights {
            path: raw.path.to_path_buf(),
            msg: format!("tensor `{name}`: {msg}"),
        };
        let block = self.fp8.map(|f| f.block).unwrap_or([128, 128]);
        let [rows, cols] = match raw.shape {
            [r, c] => [*r, *c],
            s => return Err(bad(format!("fp8 weights must be 2-D, got shape {s:?}"))),
        };
        let scale_name = format!("{name}_scale_inv");
        let scale_shape = [rows.div_ceil(block[0]), cols.div_ceil(block[1])];
        let scales = self
            .load(&scale_name, &scale_shape, DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let values = fp8::dequantize_blocks(&raw.bytes, &scales, rows, cols, block);
        Ok(Tensor::from_vec(values, (rows, cols), &self.device)?)
    }
}

/// MLA's two per-head matrices in r1's block formats ([`Weights::split_kv_b`]).
#[derive(Debug, Clone)]
pub(crate) struct HeadMatrices {
    /// Per head W_UK transposed: `[kv_lora_rank, qk_nope]` (the query's move into latent space).
    pub k_b: Vec<Arc<QuantMatrix>>,
    /// Per head W_UV: `[v_head_dim, kv_lora_rank]` (the output's move out of it).
    pub v_b: Vec<Arc<QuantMatrix>>,
}

impl HeadMatrices {
    /// W_UK `[heads, qk_nope, kv_lora_rank]` and W_UV `[heads, v_head_dim, kv_lora_rank]`
    /// dequantized: what `kv_b_proj` holds, per head.
    pub(crate) fn dense(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let stack = |mats: &[Arc<QuantMatrix>]| -> Result<Tensor> {
            let (rows, cols) = mats.first().map_or((0, 0), |m| m.shape());
            let mut values = Vec::with_capacity(mats.len() * rows * cols);
            let mut row = Vec::with_capacity(cols);
            for m in mats {
                for r in 0..rows {
                    m.dequantize_row(r, &mut row);
                    values.extend_from_slice(&row);
                }
            }
            Ok(Tensor::from_vec(values, (mats.len(), rows, cols), device)?)
        };
        // k_b holds W_UK transposed per head.
        let w_uk = stack(&self.k_b)?.transpose(1, 2)?.contiguous()?;
        Ok((w_uk, stack(&self.v_b)?))
    }
}

/// Little-endian bytes → values. Safetensors does not promise alignment, so the bytes are
/// decoded rather than reinterpreted.
fn decode<const N: usize, T>(raw: &RawTensor, from_le: fn([u8; N]) -> T) -> Vec<T> {
    raw.bytes
        .chunks_exact(N)
        .map(|c| from_le(c.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

/// Bytes `range` of `file` (opened from `path`), read with one positioned read.
///
/// Model files are read, not mapped: every tensor is converted or repacked into r1's own
/// layouts while the model loads, so a mapping would save no memory afterwards, and a file
/// truncated under a mapping kills the process with SIGBUS. A read that finds the file
/// shorter than it was is an error naming the file instead.
pub(crate) fn read_at(file: &std::fs::File, path: &Path, range: std::ops::Range<usize>) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; range.len()];
    let read = {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::read_exact_at(file, &mut bytes, range.start as u64)
        }
        #[cfg(windows)]
        {
            let mut done = 0;
            loop {
                match std::os::windows::fs::FileExt::seek_read(file, &mut bytes[done..], (range.start + done) as u64) {
                    Ok(0) if done < bytes.len() => break Err(std::io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) if done + n < bytes.len() => done += n,
                    Ok(_) => break Ok(()),
                    Err(e) => break Err(e),
                }
            }
        }
    };
    match read {
        Ok(()) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::BadWeights {
            path: path.to_path_buf(),
            msg: format!(
                "the file ends before byte {} (was it truncated while the model loaded from it?)",
                range.end
            ),
        }),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A file's size and modification time when it was opened: what shows that it changed while
/// a model was read from it.
#[derive(Debug, Clone)]
pub(crate) struct Stamp {
    path: PathBuf,
    /// The size in bytes, which bounds every read of the file.
    pub(crate) len: usize,
    modified: Option<std::time::SystemTime>,
}

impl Stamp {
    /// The stamp of the open `file` at `path`.
    pub(crate) fn of(path: &Path, file: &std::fs::File) -> Result<Stamp> {
        let m = file.metadata().map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let len = usize::try_from(m.len()).map_err(|_| Error::BadWeights {
            path: path.to_path_buf(),
            msg: format!("{} bytes do not fit this machine's address space", m.len()),
        })?;
        Ok(Stamp {
            path: path.to_path_buf(),
            len,
            modified: m.modified().ok(),
        })
    }

    /// An error naming the file if its size or modification time is no longer the stamp's.
    pub(crate) fn check(&self) -> Result<()> {
        let now = std::fs::metadata(&self.path).map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        if now.len() != self.len as u64 || now.modified().ok() != self.modified {
            return Err(Error::BadWeights {
                path: self.path.clone(),
                msg: "the file changed while the model was loading from it (model files must not be \
                      written while they load)"
                    .into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file;

    /// The per-head block matrices of a split `kv_b_proj` hold what the dense loader rebuilds
    /// from the same two tensors: head `h`'s `attn_k_b` rows are W_UK's columns, its
    /// `attn_v_b` rows W_UV's rows.
    #[test]
    fn split_kv_b_per_head_equals_the_rebuilt_kv_b_proj() {
        let (heads, kv_lora, nope, v) = (2, 64, 32, 32);
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7919 + seed * 104729) % 2001) as f32 / 1000.0 - 1.0)
                .collect()
        };
        let q8 = |data: Vec<f32>, shape: (usize, usize, usize)| {
            let t = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
            QTensor::quantize(&t, GgmlDType::Q8_0).unwrap()
        };
        let k_b = q8(values(heads * kv_lora * nope, 1), (heads, kv_lora, nope));
        let v_b = q8(values(heads * v * kv_lora, 2), (heads, v, kv_lora));
        let arch = gguf_file::Value::String("deepseek2".into());
        let path = std::env::temp_dir().join(format!("r1-split-kv-b-{}.gguf", std::process::id()));
        let mut file = std::fs::File::create(&path).unwrap();
        let tensors = [("blk.0.attn_k_b.weight", &k_b), ("blk.0.attn_v_b.weight", &v_b)];
        gguf_file::write(&mut file, &[("general.architecture", &arch)], &tensors).unwrap();
        drop(file);
        let weights = Weights::from_gguf(GgufFile::open(&path).unwrap(), DType::F32, &Device::Cpu).unwrap();
        let name = "model.layers.0.self_attn.kv_b_proj.weight";
        let split = weights.split_kv_b(name, heads, nope, v, kv_lora).unwrap();
        let kv_b = weights.get(name, &[heads * (nope + v), kv_lora]).unwrap();
        std::fs::remove_file(&path).ok();
        let split = split.expect("Q8_0 halves are kept as blocks");
        let kv_b: Vec<Vec<f32>> = kv_b.to_vec2().unwrap();
        // Widened back to dense (what MLA's expanded prefill uses): kv_b_proj split per head.
        let (w_uk, w_uv) = split.dense(&Device::Cpu).unwrap();
        let heads_of = |t: Tensor| -> Vec<Vec<Vec<f32>>> { t.to_vec3().unwrap() };
        let (w_uk, w_uv) = (heads_of(w_uk), heads_of(w_uv));
        for h in 0..heads {
            let base = h * (nope + v);
            assert_eq!(w_uk[h], kv_b[base..base + nope], "W_UK head {h}");
            assert_eq!(w_uv[h], kv_b[base + nope..base + nope + v], "W_UV head {h}");
        }
        let HeadMatrices {
            k_b: k_mats,
            v_b: v_mats,
        } = split;
        let mut row = Vec::new();
        for h in 0..heads {
            let base = h * (nope + v);
            // Column r of head h's W_UK (its nope rows in kv_b_proj) is row r of its attn_k_b.
            let w_uk_column = |r: usize| (0..nope).map(|c| kv_b[base + c][r]).collect::<Vec<f32>>();
            for r in 0..kv_lora {
                k_mats[h].dequantize_row(r, &mut row);
                assert_eq!(row, w_uk_column(r), "k_b head {h} row {r}");
            }
            for r in 0..v {
                v_mats[h].dequantize_row(r, &mut row);
                assert_eq!(row, kv_b[base + nope + r], "v_b head {h} row {r}");
            }
        }
        // A checkpoint without the split tensors has none.
        assert!(weights
            .split_kv_b("model.layers.1.self_attn.kv_b_proj.weight", heads, nope, v, kv_lora)
            .unwrap()
            .is_none());
    }
}
