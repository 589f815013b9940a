//! Named weights: the only place that knows file formats.
//!
//! Models ask for tensors by their Hugging Face name and expected shape; this module finds them in
//! the checkpoint, checks dtype and shape, dequantizes FP8 blocks, and returns a candle tensor in
//! the requested storage dtype. Every error names the file and the tensor.

pub mod fp8;
pub mod safetensors;

use self::safetensors::{RawTensor, SafetensorsStore};
use crate::config::Fp8Config;
use crate::error::{Error, Result};
use ::safetensors::tensor::Dtype;
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use std::path::Path;

/// A checkpoint's tensors, converted on request.
pub struct Weights {
    store: SafetensorsStore,
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
        Ok(Weights {
            store: SafetensorsStore::open(dir)?,
            fp8,
            dtype,
            device: device.clone(),
        })
    }

    /// The storage dtype of the weights this returns.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the checkpoint has tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(name)
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
        let raw = self.store.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.store.root().to_path_buf(),
            name: name.to_string(),
        })?;
        let bad = |msg: String| Error::BadWeights {
            path: raw.path.to_path_buf(),
            msg: format!("tensor `{name}`: {msg}"),
        };
        if raw.shape != shape {
            return Err(bad(format!(
                "shape {:?}, but the config implies {shape:?}",
                raw.shape
            )));
        }
        let tensor = match raw.dtype {
            Dtype::F32 => Tensor::from_vec(
                decode::<4, f32>(&raw, f32::from_le_bytes),
                shape,
                &self.device,
            )?,
            Dtype::F16 => Tensor::from_vec(
                decode::<2, f16>(&raw, f16::from_le_bytes),
                shape,
                &self.device,
            )?,
            Dtype::BF16 => Tensor::from_vec(
                decode::<2, bf16>(&raw, bf16::from_le_bytes),
                shape,
                &self.device,
            )?,
            Dtype::F8_E4M3 => self.dequantize_fp8(name, &raw)?,
            other => {
                return Err(bad(format!(
                    "dtype {other:?} is not supported (f32, f16, bf16, f8_e4m3)"
                )))
            }
        };
        Ok(tensor.to_dtype(dtype)?)
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
        let values = fp8::dequantize_blocks(raw.bytes, &scales, rows, cols, block);
        Ok(Tensor::from_vec(values, (rows, cols), &self.device)?)
    }
}

/// Little-endian bytes → values. Safetensors does not promise alignment inside a mapping, so the
/// bytes are decoded rather than reinterpreted.
fn decode<const N: usize, T>(raw: &RawTensor, from_le: fn([u8; N]) -> T) -> Vec<T> {
    raw.bytes
        .chunks_exact(N)
        .map(|c| from_le(c.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}
