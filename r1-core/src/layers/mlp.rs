//! The gated MLP of Llama, Qwen2 and every DeepSeek expert: `down(silu(gate(x)) * up(x))`.

use super::linear::Linear;
use crate::error::Result;
use crate::kernels::experts::BlockMlp;
use crate::weights::Weights;
use candle_core::Tensor;

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

    /// `x [tokens, hidden]` → `[tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}
