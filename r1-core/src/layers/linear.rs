//! `y = x · Wᵀ + b`, whatever the storage of `W`.
//!
//! The weight is dense (f32, or bf16/f16 widened to f32 per product because candle's CPU matmul
//! has no bf16) or ggml-quantized (GGUF, or quantized while loading), in which case candle's
//! quantized matmul runs on the blocks directly. Activations are f32 throughout.

use crate::error::Result;
use crate::kernels::{matmul_all, QuantMatrix};
use crate::weights::{Matrix, Weights};
use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Tensor};
use std::sync::Arc;

#[derive(Debug, Clone)]
enum Weight {
    Dense(Tensor),
    Quantized(QMatMul),
    Blocks(Arc<QuantMatrix>),
}

/// A linear layer with weight `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    /// Loads `{prefix}.weight` (and `{prefix}.bias` when `bias`).
    pub fn load(w: &Weights, prefix: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = w.matrix(&format!("{prefix}.weight"), out_dim, in_dim)?;
        let bias = if bias {
            Some(w.get_f32(&format!("{prefix}.bias"), &[out_dim])?)
        } else {
            None
        };
        Self::from_matrix(weight, bias)
    }

    /// A layer from a `[out, in]` matrix (e.g. the embedding table, for a tied LM head).
    pub fn from_matrix(weight: Matrix, bias: Option<Tensor>) -> Result<Self> {
        let weight = match weight {
            Matrix::Dense(t) => Weight::Dense(t),
            Matrix::Quantized(q) => Weight::Quantized(QMatMul::from_arc(q)?),
            Matrix::Blocks(m) => Weight::Blocks(m),
        };
        Ok(Linear { weight, bias })
    }

    /// The weight as an r1 block matrix, when it is one and there is no bias: what the fused
    /// MoE kernel runs on.
    pub fn blocks(&self) -> Option<Arc<QuantMatrix>> {
        match (&self.weight, &self.bias) {
            (Weight::Blocks(m), None) => Some(m.clone()),
            _ => None,
        }
    }

    /// `x [tokens, in]` → `[tokens, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Dense(w) => {
                let w = if w.dtype() == x.dtype() {
                    w.clone()
                } else {
                    w.to_dtype(x.dtype())?
                };
                x.matmul(&w.t()?)?
            }
            Weight::Quantized(q) => q.forward(&x.contiguous()?)?,
            Weight::Blocks(m) => {
                let (t, _) = x.dims2()?;
                let input = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Tensor::from_vec(m.matmul(&input, t)?, (t, m.shape().0), x.device())?
            }
        };
        self.add_bias(y)
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?)?,
            None => y,
        })
    }

    /// `x [tokens, in]` through several layers of that input width (a layer's q, k and v
    /// projections): where every weight is an r1 block matrix, one quantization of `x` and one
    /// round of the thread pool for all of them ([`matmul_all`]); otherwise each layer's
    /// [`forward`](Self::forward).
    pub(crate) fn forward_all(layers: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        let blocks: Option<Vec<&QuantMatrix>> = layers
            .iter()
            .map(|l| match &l.weight {
                Weight::Blocks(m) => Some(&**m),
                _ => None,
            })
            .collect();
        let Some(mats) = blocks else {
            return layers.iter().map(|l| l.forward(x)).collect();
        };
        let (t, _) = x.dims2()?;
        let input = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let ys = matmul_all(&mats, &input, t)?;
        layers
            .iter()
            .zip(mats.iter().zip(ys))
            .map(|(l, (m, y))| l.add_bias(Tensor::from_vec(y, (t, m.shape().0), x.device())?))
            .collect()
    }
}

/// The activation dtype of every forward pass on the CPU.
pub const ACTIVATION_DTYPE: DType = DType::F32;
