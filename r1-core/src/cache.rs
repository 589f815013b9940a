//! The KV cache: a value the caller owns, so one loaded model serves many sessions.
//!
//! Each layer keeps token-major rows. GQA layers keep keys and values (`2 * kv_heads * head_dim`
//! floats per token); MLA layers keep only the normalized latent `c` and the rotated shared rope
//! key (`kv_lora_rank + qk_rope_head_dim` floats per token: 576 for DeepSeek-V3, against
//! 128 heads × (192 + 128) = 40,960 for the expanded keys and values, 71x more).

use crate::error::{Error, Result};
use candle_core::Tensor;

/// Rows appended one block at a time into a buffer that doubles when full, so a decode step
/// copies only its own row, not the whole history.
#[derive(Debug, Clone)]
pub struct RowBuffer {
    data: Option<Tensor>,
    len: usize,
}

impl RowBuffer {
    fn new() -> Self {
        RowBuffer { data: None, len: 0 }
    }

    /// Appends `rows [t, width]` and returns all rows so far, `[len, width]`.
    pub fn append(&mut self, rows: &Tensor) -> Result<Tensor> {
        let (t, width) = rows.dims2()?;
        let rows = rows.contiguous()?;
        let needed = self.len + t;
        let capacity = self.data.as_ref().map_or(0, |d| d.dim(0).unwrap_or(0));
        if needed > capacity {
            let new_cap = needed.max(2 * capacity).max(16);
            let grown = Tensor::zeros((new_cap, width), rows.dtype(), rows.device())?;
            if let Some(old) = &self.data {
                grown.slice_set(&old.narrow(0, 0, self.len)?.contiguous()?, 0, 0)?;
            }
            self.data = Some(grown);
        }
        let data = self
            .data
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("cache buffer missing".into()))?;
        data.slice_set(&rows, 0, self.len)?;
        self.len = needed;
        Ok(data.narrow(0, 0, self.len)?)
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    fn bytes(&self) -> usize {
        self.data
            .as_ref()
            .map_or(0, |d| d.elem_count() * d.dtype().size_in_bytes())
    }
}

/// What one layer caches.
#[derive(Debug, Clone)]
pub enum LayerCache {
    /// Keys and values, each `[tokens, kv_heads * head_dim]`.
    Kv {
        /// Rotated keys.
        k: RowBuffer,
        /// Values.
        v: RowBuffer,
    },
    /// MLA: the normalized latent `[tokens, kv_lora_rank]` and rotated rope key `[tokens, qk_rope_head_dim]`.
    Latent {
        /// `kv_a_layernorm(c)`.
        ckv: RowBuffer,
        /// `rope(k_pe)`.
        k_rope: RowBuffer,
    },
}

/// The attention state of one sequence.
#[derive(Debug, Clone)]
pub struct Cache {
    layers: Vec<LayerCache>,
    len: usize,
    max_len: usize,
}

impl Cache {
    /// An empty cache of `n_layers` layers, MLA (`latent`) or GQA, for at most `max_len` tokens.
    pub fn new(n_layers: usize, latent: bool, max_len: usize) -> Self {
        let layer = || {
            if latent {
                LayerCache::Latent {
                    ckv: RowBuffer::new(),
                    k_rope: RowBuffer::new(),
                }
            } else {
                LayerCache::Kv {
                    k: RowBuffer::new(),
                    v: RowBuffer::new(),
                }
            }
        };
        Cache {
            layers: (0..n_layers).map(|_| layer()).collect(),
            len: 0,
            max_len,
        }
    }

    /// Tokens seen so far: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token has been seen.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The most tokens this cache accepts (the model's context length).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Forgets every token; buffers are kept for reuse.
    pub fn reset(&mut self) {
        self.truncate(0);
    }

    /// Drops every token from position `len` on (used to undo a failed step).
    pub fn truncate(&mut self, len: usize) {
        for l in &mut self.layers {
            match l {
                LayerCache::Kv { k, v } => {
                    k.truncate(len);
                    v.truncate(len);
                }
                LayerCache::Latent { ckv, k_rope } => {
                    ckv.truncate(len);
                    k_rope.truncate(len);
                }
            }
        }
        self.len = self.len.min(len);
    }

    /// Bytes held by the buffers (capacity, not only the used rows).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::Kv { k, v } => k.bytes() + v.bytes(),
                LayerCache::Latent { ckv, k_rope } => ckv.bytes() + k_rope.bytes(),
            })
            .sum()
    }

    /// Checks that `n` more tokens fit.
    pub(crate) fn check_room(&self, n: usize) -> Result<()> {
        if self.len + n > self.max_len {
            return Err(Error::InvalidArgument(format!(
                "context full: {} cached + {n} new tokens exceed the model's {} positions",
                self.len, self.max_len
            )));
        }
        Ok(())
    }

    /// Layer `i`'s cache.
    pub(crate) fn layer(&mut self, i: usize) -> Result<&mut LayerCache> {
        self.layers
            .get_mut(i)
            .ok_or_else(|| Error::InvalidArgument(format!("cache has no layer {i}: made for another model?")))
    }

    /// Records that `n` tokens went through every layer.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
