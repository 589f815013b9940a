//! Llama and Qwen2 (and so every R1 distill): pre-norm decoder layers of grouped-query attention
//! and a SwiGLU MLP. Qwen2 differs only by q/k/v biases and usually tied embeddings, which the
//! config carries.

use super::{check_tokens, Embedding};
use crate::attention::gqa::Gqa;
use crate::cache::Cache;
use crate::config::{AttentionConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::layers::linear::Linear;
use crate::layers::mlp::Mlp;
use crate::layers::norm::RmsNorm;
use crate::weights::Weights;
use candle_core::Tensor;

/// One decoder layer: `x + attn(norm(x))`, then `h + mlp(norm(h))`.
#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Gqa,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn load(w: &Weights, cfg: &ModelConfig, layer: usize) -> Result<Self> {
        let p = format!("model.layers.{layer}");
        let AttentionConfig::Gqa(gqa) = &cfg.attention else {
            return Err(Error::Unsupported("Llama-family model without GQA attention".into()));
        };
        Ok(DecoderLayer {
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

    fn forward(&self, x: &Tensor, offset: usize, cache: &mut Cache, layer: usize) -> Result<Tensor> {
        let h = (x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, offset, cache.layer(layer)?)?)?;
        Ok((&h + self.mlp.forward(&self.post_attention_layernorm.forward(&h)?)?)?)
    }
}

/// A Llama or Qwen2 causal language model.
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
}

impl Llama {
    /// Loads every weight named by `cfg` from `w`.
    pub fn load(w: &Weights, cfg: &ModelConfig) -> Result<Self> {
        let embed_tokens = Embedding::load(w, cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| DecoderLayer::load(w, cfg, l))
            .collect::<Result<_>>()?;
        Ok(Llama {
            lm_head: embed_tokens.lm_head(w, cfg)?,
            embed_tokens,
            layers,
            norm: RmsNorm::load(w, "model.norm", cfg.hidden_size, cfg.rms_norm_eps)?,
        })
    }

    /// Final hidden states `[len, hidden]` (after the last norm) of `tokens` appended to `cache`.
    pub fn forward_hidden(&self, tokens: &[u32], cache: &mut Cache) -> Result<Tensor> {
        check_tokens(tokens, cache)?;
        let offset = cache.len();
        let mut x = self.embed_tokens.forward(tokens)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, offset, cache, i)?;
        }
        cache.advance(tokens.len());
        self.norm.forward(&x)
    }

    /// The LM head.
    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }
}
