//! Llama and Qwen2 (and so every R1 distill): pre-norm decoder layers of grouped-query attention
//! and a SwiGLU MLP. Qwen2 differs only by q/k/v biases and usually tied embeddings, which the
//! config carries.

use super::{Decoder, Layer};
use crate::attention::gqa::Gqa;
use crate::attention::Segment;
use crate::cache::LayerCache;
use crate::config::{AttentionConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::layers::mlp::Mlp;
use crate::layers::norm::RmsNorm;
use crate::moe::LayerRouting;
use crate::weights::Weights;
use candle_core::Tensor;

/// One decoder layer: `x + attn(norm(x))`, then `h + mlp(norm(h))`.
#[derive(Debug, Clone)]
pub(crate) struct LlamaLayer {
    input_layernorm: RmsNorm,
    self_attn: Gqa,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Layer for LlamaLayer {
    fn load(w: &Weights, cfg: &ModelConfig, layer: usize) -> Result<Self> {
        let p = format!("model.layers.{layer}");
        let AttentionConfig::Gqa(gqa) = &cfg.attention else {
            return Err(Error::Unsupported("Llama-family model without GQA attention".into()));
        };
        Ok(LlamaLayer {
            input_layernorm: RmsNorm::load(w, &format!("{p}.input_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            self_attn: Gqa::load(w, &format!("{p}.self_attn"), cfg, gqa)?,
            post_attention_layernorm: RmsNorm::load(
                w,
                &format!("{p}.post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            mlp: Mlp::load(
                w,
                &format!("{p}.mlp"),
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.mlp_bias,
            )?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        segments: &[Segment],
        caches: &mut [&mut LayerCache],
        _layer: usize,
        _routing: Option<&mut Vec<LayerRouting>>,
    ) -> Result<Tensor> {
        let h = (x + self
            .self_attn
            .forward_batch(&self.input_layernorm.forward(x)?, segments, caches)?)?;
        Ok((&h + self.mlp.forward(&self.post_attention_layernorm.forward(&h)?)?)?)
    }
}

/// A Llama or Qwen2 causal language model.
pub(crate) type Llama = Decoder<LlamaLayer>;
