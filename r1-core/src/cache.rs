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
///
/// `append` writes into the buffer in place, so two owners of one buffer would overwrite each
/// other's rows: `Clone` copies the rows in use into a buffer of its own.
#[derive(Debug)]
pub(crate) struct RowBuffer {
    data: Option<Tensor>,
    len: usize,
    /// Rows to allocate at once when the buffer first grows.
    reserved: usize,
}

impl Clone for RowBuffer {
    fn clone(&self) -> Self {
        let data = match &self.data {
            Some(d) if self.len > 0 => d.narrow(0, 0, self.len).and_then(|rows| rows.copy()).ok(),
            _ => None,
        };
        // A copy that failed (it cannot, on the CPU) would start empty; `len` follows the data.
        let len = if data.is_some() { self.len } else { 0 };
        RowBuffer {
            data,
            len,
            reserved: self.reserved,
        }
    }
}

impl RowBuffer {
    fn new() -> Self {
        RowBuffer {
            data: None,
            len: 0,
            reserved: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.data.as_ref().map_or(0, |d| d.dim(0).unwrap_or(0))
    }

    /// Grows the buffer to `capacity` rows of `width`, keeping the rows it holds.
    fn grow(&mut self, capacity: usize, width: usize, like: &Tensor) -> Result<()> {
        let grown = Tensor::zeros((capacity, width), like.dtype(), like.device())?;
        if let Some(old) = &self.data {
            if self.len > 0 {
                grown.slice_set(&old.narrow(0, 0, self.len)?.contiguous()?, 0, 0)?;
            }
        }
        self.data = Some(grown);
        Ok(())
    }

    /// Appends `rows [t, width]` and returns all rows so far, `[len, width]`.
    pub fn append(&mut self, rows: &Tensor) -> Result<Tensor> {
        let (t, width) = rows.dims2()?;
        let rows = rows.contiguous()?;
        let needed = self.len + t;
        let capacity = self.capacity();
        if needed > capacity {
            // Within a reservation (see `Cache::reserve`) grow to it exactly; beyond it, double.
            let new_cap = if self.reserved >= needed {
                self.reserved
            } else {
                needed.max(2 * capacity).max(16)
            };
            self.grow(new_cap, width, &rows)?;
        }
        let data = self
            .data
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("cache buffer missing".into()))?;
        data.slice_set(&rows, 0, self.len)?;
        self.len = needed;
        Ok(data.narrow(0, 0, self.len)?)
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

/// Token-major rows of plain floats that a step appends to in place and the fused attention
/// reads where they are (GQA keys and values). `Clone` copies the rows in use.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rows {
    data: Vec<f32>,
    width: usize,
    reserved: usize,
}

impl Rows {
    /// Appends rows (`values.len()` a multiple of `width`).
    pub(crate) fn append(&mut self, values: &[f32], width: usize) {
        if self.data.is_empty() {
            self.width = width;
            self.data.reserve_exact(self.reserved * width);
        }
        self.data.extend_from_slice(values);
    }

    /// Every row so far, `[len, width]` row-major.
    pub(crate) fn all(&self) -> &[f32] {
        &self.data
    }

    fn truncate(&mut self, len: usize) {
        self.data.truncate(len * self.width);
    }

    fn reserve(&mut self, rows: usize) {
        self.reserved = self.reserved.max(rows);
        if self.width > 0 {
            let want = rows * self.width;
            self.data.reserve_exact(want.saturating_sub(self.data.len()));
        }
    }

    fn bytes(&self) -> usize {
        self.data.capacity() * 4
    }
}

/// What one layer caches.
#[derive(Debug, Clone)]
pub(crate) enum LayerCache {
    /// Keys and values, each `[tokens, kv_heads * head_dim]`.
    Kv {
        /// Rotated keys.
        k: Rows,
        /// Values.
        v: Rows,
    },
    /// MLA: the normalized latent `[tokens, kv_lora_rank]` and rotated rope key `[tokens, qk_rope_head_dim]`.
    Latent {
        /// `kv_a_layernorm(c)`.
        ckv: RowBuffer,
        /// `rope(k_pe)`.
        k_rope: RowBuffer,
    },
}

/// The attention state of one sequence: what a model has seen, per layer.
///
/// Made by [`Model::new_cache`](crate::Model::new_cache) and owned by the caller. `Clone` is a
/// deep copy of the rows in use: the copy and the original then diverge independently (a fork).
#[derive(Debug, Clone)]
pub struct Cache {
    layers: Vec<LayerCache>,
    len: usize,
    max_len: usize,
}

impl Cache {
    /// An empty cache of `n_layers` layers, MLA (`latent`) or GQA, for at most `max_len` tokens.
    pub(crate) fn new(n_layers: usize, latent: bool, max_len: usize) -> Self {
        let layer = || {
            if latent {
                LayerCache::Latent {
                    ckv: RowBuffer::new(),
                    k_rope: RowBuffer::new(),
                }
            } else {
                LayerCache::Kv {
                    k: Rows::default(),
                    v: Rows::default(),
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

    /// Keeps room for `tokens` tokens in all (capped at the context), so a long prompt does not
    /// grow the buffers by doubling: the memory then held is what the tokens need.
    pub fn reserve(&mut self, tokens: usize) {
        let tokens = tokens.min(self.max_len);
        for l in &mut self.layers {
            match l {
                LayerCache::Kv { k, v } => {
                    k.reserve(tokens);
                    v.reserve(tokens);
                }
                LayerCache::Latent { ckv, k_rope } => {
                    ckv.reserved = ckv.reserved.max(tokens);
                    k_rope.reserved = k_rope.reserved.max(tokens);
                }
            }
        }
    }

    /// Drops every token from position `len` on (a session reusing a prefix, or an undone step).
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
            return Err(Error::ContextFull(format!(
                "{} cached + {n} new tokens exceed the model's {} positions",
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
