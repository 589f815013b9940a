//! The KV cache: a value the caller owns, so one loaded model serves many sessions.
//!
//! Each layer keeps token-major rows. GQA layers keep keys and values (`2 * kv_heads * head_dim`
//! floats per token); MLA layers keep only the normalized latent `c` and the rotated shared rope
//! key (`kv_lora_rank + qk_rope_head_dim` floats per token: 576 for DeepSeek-V3, against
//! 128 heads × (192 + 128) = 40,960 for the expanded keys and values, 71x more).

use crate::error::{Error, Result};
use crate::kernels::f16::Element;
use candle_core::Tensor;
use half::f16;
use std::sync::Arc;

/// Token-major rows of `T` (f32, or f16 for a quantized model's keys and values) in two parts: a prefix shared with other caches (frozen,
/// see [`Cache::share`]), then the cache's own rows. Attention reads keys through this view, so
/// forks of one prompt prefix hold its rows once.
#[derive(Debug)]
pub(crate) struct SplitRows<'a, T = f32> {
    head: &'a [T],
    tail: &'a [T],
    width: usize,
    /// Rows in `head`, counted once here rather than by a division at every row read.
    head_rows: usize,
}

// Copy whatever `T` is (a derive would ask `T: Copy`): the view holds only references.
impl<T> Clone for SplitRows<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SplitRows<'_, T> {}

impl<'a, T> SplitRows<'a, T> {
    /// A shared `head` then own `tail` rows of `width` values.
    pub(crate) fn parts(head: &'a [T], tail: &'a [T], width: usize) -> Self {
        let head_rows = head.len() / width.max(1);
        SplitRows {
            head,
            tail,
            width,
            head_rows,
        }
    }

    /// Rows held in one slice (nothing shared).
    #[cfg(test)]
    pub(crate) fn whole(rows: &'a [T], width: usize) -> Self {
        SplitRows::parts(rows, &[], width)
    }

    /// Rows in all.
    pub(crate) fn len(&self) -> usize {
        self.head_rows + self.tail.len() / self.width.max(1)
    }

    /// Row `t`, `width` values.
    #[inline(always)]
    pub(crate) fn row(&self, t: usize) -> &'a [T] {
        if t < self.head_rows {
            &self.head[t * self.width..(t + 1) * self.width]
        } else {
            let t = t - self.head_rows;
            &self.tail[t * self.width..(t + 1) * self.width]
        }
    }
}

/// MLA's latent rows: a shared frozen prefix (a tensor several caches hold, see
/// [`Cache::share`]), then the cache's own rows, appended one block at a time into a buffer that
/// doubles when full, so a decode step copies only its own row, not the whole history.
///
/// `append` writes into the buffer in place, so two owners of one buffer would overwrite each
/// other's rows: `Clone` copies the own rows into a buffer of its own (the prefix stays shared).
#[derive(Debug)]
pub(crate) struct RowBuffer {
    shared: Option<Tensor>,
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
            shared: self.shared.clone(),
            data,
            len,
            reserved: self.reserved,
        }
    }
}

impl RowBuffer {
    fn new() -> Self {
        RowBuffer {
            shared: None,
            data: None,
            len: 0,
            reserved: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.data.as_ref().map_or(0, |d| d.dim(0).unwrap_or(0))
    }

    fn shared_len(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.dim(0).unwrap_or(0))
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

    /// Appends `rows [t, width]`.
    pub(crate) fn append(&mut self, rows: &Tensor) -> Result<()> {
        let (t, width) = rows.dims2()?;
        let rows = rows.contiguous()?;
        let needed = self.len + t;
        let capacity = self.capacity();
        if needed > capacity {
            // Within a reservation (see `Cache::reserve`) grow to it exactly; beyond it, double.
            let reserved = self.reserved.saturating_sub(self.shared_len());
            let new_cap = if reserved >= needed {
                reserved
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
        Ok(())
    }

    /// The own rows so far, `[len, width]`.
    fn own(&self) -> Result<Option<Tensor>> {
        match &self.data {
            Some(d) if self.len > 0 => Ok(Some(d.narrow(0, 0, self.len)?)),
            _ => Ok(None),
        }
    }

    /// Every row, shared and own, as one tensor (a copy when a prefix is shared).
    pub(crate) fn all(&self) -> Result<Tensor> {
        match (&self.shared, self.own()?) {
            (Some(s), Some(o)) => Ok(Tensor::cat(&[s, &o], 0)?),
            (Some(s), None) => Ok(s.clone()),
            (None, Some(o)) => Ok(o),
            (None, None) => Err(Error::Internal("an empty latent cache was read".into())),
        }
    }

    /// `f` of every row as a [`SplitRows`] view, where the rows are f32 in memory; `None`
    /// elsewhere (other dtypes, other devices).
    pub(crate) fn with_split<R>(&self, width: usize, f: impl FnOnce(SplitRows<'_>) -> R) -> Option<R> {
        let own = self.own().ok()?;
        let shared = self.shared.as_ref();
        with_maybe_rows(shared, |head| {
            with_maybe_rows(own.as_ref(), |tail| f(SplitRows::parts(head, tail, width)))
        })?
    }

    fn truncate(&mut self, len: usize) {
        let shared = self.shared_len();
        if len >= shared {
            self.len = self.len.min(len - shared);
            return;
        }
        // Cut inside the shared prefix: what is kept becomes the cache's own rows.
        let kept = match &self.shared {
            Some(s) if len > 0 => s.narrow(0, 0, len).and_then(|k| k.copy()).ok(),
            _ => None,
        };
        self.shared = None;
        self.len = if kept.is_some() { len } else { 0 };
        self.data = kept;
    }

    /// Freezes every row into the shared prefix and returns a buffer sharing it, with no own rows.
    fn share(&mut self) -> Result<RowBuffer> {
        if let Some(own) = self.own()? {
            let frozen = match &self.shared {
                Some(s) => Tensor::cat(&[s, &own], 0)?,
                None => own.copy()?,
            };
            self.shared = Some(frozen);
            self.data = None;
            self.len = 0;
        }
        Ok(RowBuffer {
            shared: self.shared.clone(),
            ..RowBuffer::new()
        })
    }

    fn bytes(&self) -> usize {
        self.data
            .as_ref()
            .map_or(0, |d| d.elem_count() * d.dtype().size_in_bytes())
    }
}

/// `f` on the elements of `t` where they lie, when `t` is contiguous f32 in CPU memory.
pub(crate) fn with_rows<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return None;
    };
    let (start, end) = layout.contiguous_offsets()?;
    let data = cpu.as_slice::<f32>().ok()?;
    Some(f(data.get(start..end)?))
}

/// [`with_rows`] where an absent tensor is no rows.
fn with_maybe_rows<R>(t: Option<&Tensor>, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    match t {
        Some(t) => with_rows(t, f),
        None => Some(f(&[])),
    }
}

/// Token-major rows of `T` that a step appends to in place and the fused attention reads where
/// they are (GQA keys and values): a prefix shared with other caches, frozen (see
/// [`Cache::share`]), then the cache's own rows. `Clone` copies the own rows.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rows<T> {
    shared: Option<Arc<[T]>>,
    data: Vec<T>,
    width: usize,
    reserved: usize,
}

impl<T: Element> Rows<T> {
    /// Appends rows (`values.len()` a multiple of `width`), converted to `T`.
    pub(crate) fn append(&mut self, values: &[f32], width: usize) {
        if self.width == 0 {
            self.width = width;
        }
        if self.data.capacity() == 0 {
            let own = self.reserved.saturating_sub(self.shared_len());
            self.data.reserve_exact(own * width);
        }
        T::extend_from_f32(&mut self.data, values);
    }

    /// Every row so far, shared and own.
    pub(crate) fn all(&self) -> SplitRows<'_, T> {
        SplitRows::parts(self.shared.as_deref().unwrap_or(&[]), &self.data, self.width)
    }

    fn shared_len(&self) -> usize {
        match (&self.shared, self.width) {
            (Some(s), w) if w > 0 => s.len() / w,
            _ => 0,
        }
    }

    fn truncate(&mut self, len: usize) {
        let shared = self.shared_len();
        if len >= shared {
            self.data.truncate((len - shared) * self.width);
            return;
        }
        // Cut inside the shared prefix: what is kept becomes the cache's own rows.
        let head = self.shared.take().unwrap_or_else(|| Arc::from(Vec::new()));
        self.data = head[..len * self.width].to_vec();
    }

    fn reserve(&mut self, rows: usize) {
        self.reserved = self.reserved.max(rows);
        if self.width > 0 {
            let want = rows.saturating_sub(self.shared_len()) * self.width;
            self.data.reserve_exact(want.saturating_sub(self.data.len()));
        }
    }

    /// Freezes every row into the shared prefix and returns rows sharing it, with no own rows.
    fn share(&mut self) -> Rows<T> {
        if !self.data.is_empty() {
            let mut all = self.shared.as_deref().unwrap_or(&[]).to_vec();
            all.extend_from_slice(&self.data);
            self.shared = Some(Arc::from(all));
            self.data = Vec::new();
        }
        Rows {
            shared: self.shared.clone(),
            data: Vec::new(),
            width: self.width,
            reserved: 0,
        }
    }

    fn bytes(&self) -> usize {
        self.data.capacity() * std::mem::size_of::<T>()
    }
}

/// One GQA layer's rotated keys and values, each `[tokens, kv_heads * head_dim]` of `T`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Kv<T> {
    /// Rotated keys.
    pub k: Rows<T>,
    /// Values.
    pub v: Rows<T>,
}

impl<T: Element> Kv<T> {
    fn truncate(&mut self, len: usize) {
        self.k.truncate(len);
        self.v.truncate(len);
    }

    fn reserve(&mut self, rows: usize) {
        self.k.reserve(rows);
        self.v.reserve(rows);
    }

    fn share(&mut self) -> Kv<T> {
        Kv {
            k: self.k.share(),
            v: self.v.share(),
        }
    }

    fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }
}

/// How a GQA cache stores keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CachePrecision {
    /// f16 for a GGUF file's weights (unless the key projection is stored f32; llama.cpp keeps
    /// f16 caches too) and for a checkpoint's quantized while loading; f32 for a checkpoint kept
    /// in f32, f16 or bf16, whose logits then match transformers'.
    #[default]
    Auto,
    /// 32-bit floats: exact, twice the memory and the bytes a decode step reads.
    F32,
    /// 16-bit floats (IEEE half): keys and values rounded to 11 significant bits.
    F16,
}

impl std::str::FromStr for CachePrecision {
    type Err = crate::Error;

    /// `"auto"`, `"f32"` or `"f16"` (any case): how the C ABI's and the Python wheel's callers
    /// name it.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(CachePrecision::Auto),
            "f32" | "float32" => Ok(CachePrecision::F32),
            "f16" | "float16" => Ok(CachePrecision::F16),
            other => Err(crate::Error::InvalidArgument(format!(
                "cache precision `{other}` (auto, f32 or f16)"
            ))),
        }
    }
}

/// What one layer caches.
#[derive(Debug, Clone)]
pub(crate) enum LayerCache {
    /// Keys and values as f32.
    Kv(Kv<f32>),
    /// Keys and values as f16.
    KvHalf(Kv<f16>),
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
    /// An empty cache of `n_layers` layers, MLA (`latent`) or GQA with keys and values in f16
    /// (`half`) or f32, for at most `max_len` tokens.
    pub(crate) fn new(n_layers: usize, latent: bool, half: bool, max_len: usize) -> Self {
        let layer = || match (latent, half) {
            (true, _) => LayerCache::Latent {
                ckv: RowBuffer::new(),
                k_rope: RowBuffer::new(),
            },
            (false, true) => LayerCache::KvHalf(Kv::default()),
            (false, false) => LayerCache::Kv(Kv::default()),
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
                LayerCache::Kv(kv) => kv.reserve(tokens),
                LayerCache::KvHalf(kv) => kv.reserve(tokens),
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
                LayerCache::Kv(kv) => kv.truncate(len),
                LayerCache::KvHalf(kv) => kv.truncate(len),
                LayerCache::Latent { ckv, k_rope } => {
                    ckv.truncate(len);
                    k_rope.truncate(len);
                }
            }
        }
        self.len = self.len.min(len);
    }

    /// A fork of this cache that shares its rows instead of copying them: both then hold the
    /// same frozen prefix (this cache's tokens so far) and append their own rows after it. How
    /// sequences whose prompts share a prefix compute and store it once.
    pub(crate) fn share(&mut self) -> Result<Cache> {
        let layers = self
            .layers
            .iter_mut()
            .map(|l| {
                Ok(match l {
                    LayerCache::Kv(kv) => LayerCache::Kv(kv.share()),
                    LayerCache::KvHalf(kv) => LayerCache::KvHalf(kv.share()),
                    LayerCache::Latent { ckv, k_rope } => LayerCache::Latent {
                        ckv: ckv.share()?,
                        k_rope: k_rope.share()?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Cache {
            layers,
            len: self.len,
            max_len: self.max_len,
        })
    }

    /// Bytes held by the buffers (capacity, not only the used rows); a prefix shared with other
    /// caches is not counted.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::Kv(kv) => kv.bytes(),
                LayerCache::KvHalf(kv) => kv.bytes(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_precision_parses_its_three_names() {
        assert_eq!("auto".parse::<CachePrecision>().unwrap(), CachePrecision::Auto);
        assert_eq!("F32".parse::<CachePrecision>().unwrap(), CachePrecision::F32);
        assert_eq!("float16".parse::<CachePrecision>().unwrap(), CachePrecision::F16);
        let err = "f8".parse::<CachePrecision>().unwrap_err();
        assert!(err.to_string().contains("f8") && err.to_string().contains("auto, f32 or f16"));
    }

    fn rows_of(r: &SplitRows<'_>) -> Vec<f32> {
        (0..r.len()).flat_map(|t| r.row(t).to_vec()).collect()
    }

    #[test]
    fn forks_share_a_frozen_prefix_and_keep_their_own_rows_apart() {
        let mut base = Rows::<f32>::default();
        base.append(&[1., 2., 3., 4.], 2); // two rows
        let mut fork = base.share();
        base.append(&[5., 6.], 2);
        fork.append(&[7., 8.], 2);
        assert_eq!(rows_of(&base.all()), [1., 2., 3., 4., 5., 6.]);
        assert_eq!(rows_of(&fork.all()), [1., 2., 3., 4., 7., 8.]);
        // The prefix is held once: neither counts it as its own.
        assert_eq!((base.data.len(), fork.data.len()), (2, 2));
        assert!(Arc::ptr_eq(
            base.shared.as_ref().unwrap(),
            fork.shared.as_ref().unwrap()
        ));
        // A cut after the prefix keeps it shared; a cut inside it copies what is kept.
        fork.truncate(2);
        assert_eq!(rows_of(&fork.all()), [1., 2., 3., 4.]);
        assert!(fork.shared.is_some());
        fork.truncate(1);
        assert_eq!(rows_of(&fork.all()), [1., 2.]);
        assert!(fork.shared.is_none());
        fork.append(&[9., 9.], 2);
        assert_eq!(rows_of(&fork.all()), [1., 2., 9., 9.]);
        assert_eq!(rows_of(&base.all()), [1., 2., 3., 4., 5., 6.]);
    }

    #[test]
    fn half_rows_round_each_value_and_count_half_the_bytes() {
        let values = [1.0, 1.0 + 1.0 / 4096.0, -2.5e-3, 70000.0];
        let (mut full, mut half) = (Rows::<f32>::default(), Rows::<f16>::default());
        full.append(&values, 2);
        half.append(&values, 2);
        let widened: Vec<f32> = half.all().row(1).iter().map(|h| h.to_f32()).collect();
        assert_eq!(half.all().len(), 2);
        // 1 + 2^-12 is below half of f16's step at 1 (2^-10): it rounds to 1.
        assert_eq!(half.all().row(0), [f16::ONE, f16::ONE]);
        assert_eq!(widened[0], f16::from_f32(-2.5e-3).to_f32());
        assert!(widened[1].is_infinite(), "beyond f16's range: {}", widened[1]);
        assert_eq!(full.all().row(1), [-2.5e-3, 70000.0]);
        assert_eq!(2 * half.bytes(), full.bytes());
    }

    #[test]
    fn latent_forks_share_their_prefix_tensor() {
        let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), (v.len() / 2, 2), &candle_core::Device::Cpu).unwrap();
        let mut base = RowBuffer::new();
        base.append(&t(&[1., 2., 3., 4.])).unwrap();
        let mut fork = base.share().unwrap();
        fork.append(&t(&[7., 8.])).unwrap();
        base.append(&t(&[5., 6.])).unwrap();
        let flat = |b: &RowBuffer| b.all().unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&base), [1., 2., 3., 4., 5., 6.]);
        assert_eq!(flat(&fork), [1., 2., 3., 4., 7., 8.]);
        assert_eq!(fork.with_split(2, |r| rows_of(&r)).unwrap(), [1., 2., 3., 4., 7., 8.]);
        fork.truncate(1);
        assert_eq!(flat(&fork), [1., 2.]);
        fork.append(&t(&[0., 0.])).unwrap();
        assert_eq!(fork.with_split(2, |r| rows_of(&r)).unwrap(), [1., 2., 0., 0.]);
        assert_eq!(flat(&base), [1., 2., 3., 4., 5., 6.]);
    }
}
