//! DeepSeek V2 and V3/R1: pre-norm decoder layers of multi-head latent attention and, from layer
//! `first_k_dense_replace` on, DeepSeekMoE instead of the dense MLP. V2 and V3 differ only in
//! their router (softmax/greedy vs sigmoid/noaux_tc), which the config carries.
//!
//! V3's multi-token-prediction layer (`model.layers.{num_hidden_layers}`) is not loaded: it only
//! serves speculative decoding, and the main model's logits do not depend on it.

use super::{Decoder, Layer};
use crate::attention::mla::Mla;
use crate::attention::Segment;
use crate::cache::LayerCache;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::layers::mlp::Mlp;
use crate::layers::norm::RmsNorm;
use crate::moe::{LayerRouting, Moe};
use crate::weights::Weights;
use candle_core::Tensor;

/// The feed-forward half of a layer.
#[derive(Debug, Clone)]
enum FeedForward {
    Dense(Mlp),
    Moe(Moe),
}

/// One decoder layer: `x + mla(norm(x))`, then `h + ffn(norm(h))`.
#[derive(Debug, Clone)]
pub(crate) struct DeepseekLayer {
    input_layernorm: RmsNorm,
    self_attn: Mla,
    post_attention_layernorm: RmsNorm,
    mlp: FeedForward,
}

impl Layer for DeepseekLayer {
    fn load(w: &Weights, cfg: &ModelConfig, layer: usize) -> Result<Self> {
        let p = format!("model.layers.{layer}");
        let mla = cfg
            .mla()
            .ok_or_else(|| Error::Unsupported("DeepSeek model without MLA attention".into()))?;
        let moe = cfg.moe.as_ref().filter(|m| m.is_moe_layer(layer));
        let mlp = match moe {
            Some(m) => FeedForward::Moe(Moe::load(w, &format!("{p}.mlp"), cfg.hidden_size, m)?),
            None => FeedForward::Dense(Mlp::load(
                w,
                &format!("{p}.mlp"),
                cfg.hidden_size,
                cfg.intermediate_size,
                false,
            )?),
        };
        Ok(DeepseekLayer {
            input_layernorm: RmsNorm::load(w, &format!("{p}.input_layernorm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            self_attn: Mla::load(w, &format!("{p}.self_attn"), cfg, mla)?,
            post_attention_layernorm: RmsNorm::load(
                w,
                &format!("{p}.post_attention_layernorm"),
                cfg.hidden_size,
                cfg.rms_norm_eps,
            )?,
            mlp,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        segments: &[Segment],
        caches: &mut [&mut LayerCache],
        layer: usize,
        routing: Option<&mut Vec<LayerRouting>>,
    ) -> Result<Tensor> {
        let h = (x + self
            .self_attn
            .forward_batch(&self.input_layernorm.forward(x)?, segments, caches)?)?;
        let normed = self.post_attention_layernorm.forward(&h)?;
        let ffn = match &self.mlp {
            FeedForward::Dense(mlp) => mlp.forward(&normed)?,
            FeedForward::Moe(moe) => {
                let (out, decision) = moe.forward(&normed, layer)?;
                if let Some(log) = routing {
                    log.push(decision);
                }
                out
            }
        };
        Ok((h + ffn)?)
    }
}

/// A DeepSeek V2 or V3 causal language model.
pub(crate) type Deepseek = Decoder<DeepseekLayer>;
