//! One file per architecture family, each defining its decoder layer; the layer loop they share
//! (embed, run every layer over the cache, final norm, LM head) is [`Decoder`] here.

pub(crate) mod deepseek;
pub(crate) mod llama;

use crate::attention::{check_batch, Segment};
use crate::cache::{Cache, LayerCache};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::layers::linear::{Linear, ACTIVATION_DTYPE};
use crate::layers::norm::RmsNorm;
use crate::moe::LayerRouting;
use crate::weights::{Matrix, Weights};
use candle_core::Tensor;

/// One decoder layer of some architecture.
pub(crate) trait Layer: Sized {
    /// Loads layer `layer` from `w`.
    fn load(w: &Weights, cfg: &ModelConfig, layer: usize) -> Result<Self>;

    /// The packed rows `x [rows, hidden]` of the sequences `segments` describes, each appended
    /// to its own cache (`caches[i]` for `segments[i]`); MoE layers push their routing decisions
    /// to `routing` when given.
    fn forward(
        &self,
        x: &Tensor,
        segments: &[Segment],
        caches: &mut [&mut LayerCache],
        layer: usize,
        routing: Option<&mut Vec<LayerRouting>>,
    ) -> Result<Tensor>;
}

/// A causal decoder: token embedding, a stack of layers, the final norm and the LM head.
#[derive(Debug, Clone)]
pub(crate) struct Decoder<L> {
    embed_tokens: Embedding,
    layers: Vec<L>,
    norm: RmsNorm,
    lm_head: Linear,
}

impl<L: Layer> Decoder<L> {
    /// Loads every weight named by `cfg` from `w`.
    pub(crate) fn load(w: &Weights, cfg: &ModelConfig) -> Result<Self> {
        let embed_tokens = Embedding::load(w, cfg)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| L::load(w, cfg, l))
            .collect::<Result<_>>()?;
        Ok(Decoder {
            lm_head: embed_tokens.lm_head(w, cfg)?,
            embed_tokens,
            layers,
            norm: RmsNorm::load(w, "model.norm", cfg.hidden_size, cfg.rms_norm_eps)?,
        })
    }

    /// Final hidden states `[len, hidden]` (after the last norm) of `tokens` appended to `cache`.
    /// A multi-token pass asks `stop` between layers and ends with [`Error::Cancelled`] when it
    /// says so. On error the cache may hold part of the step: the caller rolls it back.
    pub(crate) fn forward_hidden(
        &self,
        tokens: &[u32],
        cache: &mut Cache,
        mut routing: Option<&mut Vec<LayerRouting>>,
        stop: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        check_tokens(tokens, cache)?;
        let segments = Segment::whole(tokens.len(), cache.len());
        let mut x = self.embed_tokens.forward(tokens)?;
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 && tokens.len() > 1 && stop() {
                return Err(Error::Cancelled(format!(
                    "stopped at layer {i} of a {}-token pass",
                    tokens.len()
                )));
            }
            x = layer.forward(&x, &segments, &mut [cache.layer(i)?], i, routing.as_deref_mut())?;
        }
        cache.advance(tokens.len());
        self.norm.forward(&x)
    }

    /// Final hidden states of several sequences in one pass: `inputs[i]`'s tokens appended to
    /// `caches[i]`, their rows packed in order (`[Σ len, hidden]`). Every weight is read once for
    /// all of them; attention runs per sequence over its own cache. On error the caches may hold
    /// part of the step: the caller rolls them back.
    pub(crate) fn forward_batch_hidden(&self, inputs: &[&[u32]], caches: &mut [&mut Cache]) -> Result<Tensor> {
        check_batch(inputs, caches)?;
        let mut segments = Vec::with_capacity(inputs.len());
        let mut start = 0;
        for (tokens, cache) in inputs.iter().zip(caches.iter()) {
            check_tokens(tokens, cache)?;
            segments.push(Segment {
                start,
                len: tokens.len(),
                offset: cache.len(),
            });
            start += tokens.len();
        }
        let mut x = self.embed_tokens.forward(&inputs.concat())?;
        for (i, layer) in self.layers.iter().enumerate() {
            let mut layer_caches = caches.iter_mut().map(|c| c.layer(i)).collect::<Result<Vec<_>>>()?;
            x = layer.forward(&x, &segments, &mut layer_caches, i, None)?;
        }
        for (tokens, cache) in inputs.iter().zip(caches.iter_mut()) {
            cache.advance(tokens.len());
        }
        self.norm.forward(&x)
    }

    /// The LM head.
    pub(crate) fn lm_head(&self) -> &Linear {
        &self.lm_head
    }
}

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
pub(crate) fn check_tokens(tokens: &[u32], cache: &Cache) -> Result<()> {
    if tokens.is_empty() {
        return Err(Error::InvalidArgument("no tokens to run".into()));
    }
    cache.check_room(tokens.len())
}
