//! The gated MLP of Llama, Qwen2 and every DeepSeek expert: `down(silu(gate(x)) * up(x))`.

use super::linear::Linear;
use crate::error::Result;
use crate::kernels::experts::{self, Assignment, BlockMlp};
use crate::weights::Weights;
use candle_core::{DType, Tensor};

/// SwiGLU feed-forward block.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// Loads `{prefix}.{gate,up,down}_proj`.
    pub fn load(w: &Weights, prefix: &str, hidden: usize, intermediate: usize, bias: bool) -> Result<Self> {
        Ok(Mlp {
            gate_proj: Linear::load(w, &format!("{prefix}.gate_proj"), hidden, intermediate, bias)?,
            up_proj: Linear::load(w, &format!("{prefix}.up_proj"), hidden, intermediate, bias)?,
            down_proj: Linear::load(w, &format!("{prefix}.down_proj"), intermediate, hidden, bias)?,
        })
    }

    /// The three matrices as r1 block matrices, when all are (see [`Linear::blocks`]).
    pub fn blocks(&self) -> Option<BlockMlp> {
        Some(BlockMlp {
            gate: self.gate_proj.blocks()?,
            up: self.up_proj.blocks()?,
            down: self.down_proj.blocks()?,
        })
    }

    /// `x [tokens, hidden]` → `[tokens, hidden]`. When all three are block matrices, the
    /// block runs as the fused kernel of [`experts::forward`] (one expert, every token), which
    /// quantizes the input once for gate and up and applies SiLU inside the parallel pass
    /// instead of as separate tensor ops.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(m) = self.blocks() {
            let t = x.dims2()?.0;
            let input = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let every_token = Assignment {
                tokens: (0..t).collect(),
                weights: vec![1.0; t],
            };
            let y = experts::forward(&[&m], &[every_token], &input, t)?;
            return Ok(Tensor::from_vec(y, x.dims(), x.device())?.to_dtype(x.dtype())?);
        }
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}
