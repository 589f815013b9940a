//! One file per architecture family; each reads top to bottom in the order data meets it.

pub mod deepseek;
pub mod llama;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::layers::linear::{Linear, ACTIVATION_DTYPE};
use crate::weights::{Matrix, Weights};
use candle_core::Tensor;

/// Token embedding table `[vocab, hidden]`, dense or quantized.
#[derive(Debug, Clone)]
pub(crate) struct Embedding {
    table: Matrix,
    vocab: usize,
}

impl Embedding {
    pub(crate) fn load(w: &Weights, cfg: &ModelConfig) -> Result<Self> {
        let table = w.matrix("model.embed_tokens.weight", cfg.vocab_size, cfg.hidden_size)?;
        Ok(Embedding {
            table,
            vocab: cfg.vocab_size,
        })
    }

    /// Rows of `tokens`, as f32 activations `[len, hidden]`.
    pub(crate) fn forward(&self, tokens: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        let rows = match &self.table {
            Matrix::Dense(t) => t.index_select(&Tensor::new(tokens, t.device())?, 0)?,
            Matrix::Quantized(q) => q.embedding(&Tensor::new(tokens, &q.device())?)?,
            Matrix::Blocks(m) => {
                let (mut rows, mut row) = (Vec::with_capacity(tokens.len() * m.shape().1), Vec::new());
                for &t in tokens {
                    m.dequantize_row(t as usize, &mut row);
                    rows.extend_from_slice(&row);
                }
                Tensor::from_vec(rows, (tokens.len(), m.shape().1), &candle_core::Device::Cpu)?
            }
        };
        Ok(rows.to_dtype(ACTIVATION_DTYPE)?)
    }

    /// The LM head: `lm_head.weight`, or the embedding table itself when tied (or absent, as
    /// GGUF files of tied models have no `output.weight`).
    pub(crate) fn lm_head(&self, w: &Weights, cfg: &ModelConfig) -> Result<Linear> {
        if !w.contains("lm_head.weight") && (cfg.tie_word_embeddings || w.gguf().is_some()) {
            Linear::from_matrix(self.table.clone(), None)
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
