//! Attention: grouped-query (Llama, Qwen2) and multi-head latent (DeepSeek).

pub(crate) mod decode;
pub(crate) mod flash;
pub(crate) mod fused;
pub(crate) mod gqa;
pub(crate) mod latent;
pub(crate) mod mla;

use crate::error::{Error, Result};
use candle_core::Tensor;

/// Where one sequence's tokens are in a packed batch: rows `start..start + len` of the
/// activations, at positions `offset..offset + len` of that sequence's cache. A pass over one
/// sequence is a batch of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub start: usize,
    pub len: usize,
    pub offset: usize,
}

impl Segment {
    /// The one segment of a pass over `len` tokens at `offset`.
    pub(crate) fn whole(len: usize, offset: usize) -> [Segment; 1] {
        [Segment { start: 0, len, offset }]
    }
}

/// An error unless there is one cache per sequence of a batch.
pub(crate) fn check_batch<S, C>(sequences: &[S], caches: &[C]) -> Result<()> {
    if sequences.len() != caches.len() {
        return Err(Error::InvalidArgument(format!(
            "a batch of {} sequences with {} caches",
            sequences.len(),
            caches.len()
        )));
    }
    Ok(())
}

/// `softmax(scores * scale)` over the last dim; `scores [.., len, total]`.
pub(crate) fn scaled_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax_last_dim(&(scores * scale)?.contiguous()?)?.contiguous()?)
}
