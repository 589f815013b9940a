//! One file per architecture family; each reads top to bottom in the order data meets it.

pub mod deepseek;
pub mod llama;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::layers::linear::Linear;
use crate::weights::Weights;
use candle_core::Tensor;

/// Token embedding table `[vocab, hidden]`.
#[derive(Debug, Clone)]
pub(crate) struct Embedding {
    table: Tensor,
}

impl Embedding {
    pub(crate) fn load(w: &Weights, cfg: &ModelConfig) -> Result<Self> {
        Ok(Embedding {
            table: w.get(
                "model.embed_tokens.weight",
                &[cfg.vocab_size, cfg.hidden_size],
            )?,
        })
    }

    /// Rows of `tokens`, as f32 activations `[len, hidden]`.
    pub(crate) fn forward(&self, tokens: &[u32]) -> Result<Tensor> {
        let vocab = self.table.dim(0)?;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let ids = Tensor::new(tokens, self.table.device())?;
        Ok(self
            .table
            .index_select(&ids, 0)?
            .to_dtype(crate::layers::linear::ACTIVATION_DTYPE)?)
    }

    /// The LM head: `lm_head.weight`, or the embedding table itself when tied.
    pub(crate) fn lm_head(&self, w: &Weights, cfg: &ModelConfig) -> Result<Linear> {
        if cfg.tie_word_embeddings && !w.contains("lm_head.weight") {
            Ok(Linear::from_weight(self.table.clone(), None))
        } else {
            Linear::load(w, "lm_head", cfg.hidden_size, cfg.vocab_size, false)
        }
    }
}

/// Rejects empty inputs and inputs that overflow the context.
pub(crate) fn check_tokens(tokens: &[u32], cache: &crate::cache::Cache) -> Result<()> {
    if tokens.is_empty() {
        return Err(Error::InvalidArgument("no tokens to run".into()));
    }
    cache.check_room(tokens.len())
}
