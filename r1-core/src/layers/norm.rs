//! RMSNorm: `w * x / sqrt(mean(x²) + eps)`.

use crate::error::Result;
use crate::weights::Weights;
use candle_core::{DType, Tensor};

/// Root-mean-square layer norm with a learned gain.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Loads `{prefix}.weight` of length `dim`. Gains are kept in f32: they are tiny.
    pub fn load(w: &Weights, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: w.get_f32(&format!("{prefix}.weight"), &[dim])?,
            eps: eps as f32,
        })
    }

    /// Normalizes the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x32 = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(candle_nn::ops::rms_norm(&x32, &self.weight, self.eps)?.to_dtype(x.dtype())?)
    }
}
