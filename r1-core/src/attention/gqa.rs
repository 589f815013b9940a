//! Grouped-query attention (Llama, Qwen2): `kv_heads` key/value heads, each shared by
//! `heads / kv_heads` consecutive query heads (transformers' `repeat_kv` order).

use super::fused::{attend, Shape};
use super::{check_batch, Segment};
use crate::cache::{Kv, LayerCache};
use crate::config::{GqaConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::kernels::f16::Element;
use crate::layers::linear::Linear;
use crate::layers::rope::Rope;
use crate::weights::Weights;
use candle_core::Tensor;

/// One GQA attention layer.
#[derive(Debug, Clone)]
pub struct Gqa {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    cfg: GqaConfig,
    rope: Rope,
}

impl Gqa {
    /// Loads `{prefix}.{q,k,v,o}_proj`.
    pub fn load(w: &Weights, prefix: &str, model: &ModelConfig, cfg: &GqaConfig) -> Result<Self> {
        let h = model.hidden_size;
        let (q_dim, kv_dim) = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim);
        Ok(Gqa {
            q_proj: Linear::load(w, &format!("{prefix}.q_proj"), h, q_dim, cfg.qkv_bias)?,
            k_proj: Linear::load(w, &format!("{prefix}.k_proj"), h, kv_dim, cfg.qkv_bias)?,
            v_proj: Linear::load(w, &format!("{prefix}.v_proj"), h, kv_dim, cfg.qkv_bias)?,
            o_proj: Linear::load(w, &format!("{prefix}.o_proj"), q_dim, h, cfg.o_bias)?,
            cfg: cfg.clone(),
            rope: Rope::new(&model.rope, cfg.head_dim),
        })
    }

    /// The packed rows `x [rows, hidden]` of several sequences: the projections over all rows at
    /// once, the keys, values and attention per sequence, each with its own cache.
    pub(crate) fn forward_batch(
        &self,
        x: &Tensor,
        segments: &[Segment],
        caches: &mut [&mut LayerCache],
    ) -> Result<Tensor> {
        check_batch(segments, caches)?;
        let (rows, _) = x.dims2()?;
        let GqaConfig {
            num_heads: h,
            num_kv_heads: kvh,
            head_dim: d,
            ..
        } = self.cfg;
        // Projections and rope over all rows at once (each row at its own sequence's position),
        // then token-major f32 rows, [rows, heads, d]: the cache's layout and the fused kernel's.
        let positions = || segments.iter().flat_map(|s| s.offset..s.offset + s.len);
        let heads = |t: Tensor, n: usize| -> Result<Tensor> { Ok(t.reshape((rows, n, d))?.transpose(0, 1)?) };
        let token_rows = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.transpose(0, 1)?
                .contiguous()?
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?)
        };
        let [q, k, v]: [Tensor; 3] = Linear::forward_all(&[&self.q_proj, &self.k_proj, &self.v_proj], x)?
            .try_into()
            .map_err(|_| Error::Internal("three projections gave another count".into()))?;
        let q = token_rows(&self.rope.apply_at(&heads(q, h)?, positions())?)?;
        let k = token_rows(&self.rope.apply_at(&heads(k, kvh)?, positions())?)?;
        let v = v.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
        let mut out = Vec::with_capacity(rows * h * d);
        for (seg, cache) in segments.iter().zip(caches.iter_mut()) {
            let rows_of = |t: &'_ [f32], width: usize| -> Vec<f32> {
                t[seg.start * width..(seg.start + seg.len) * width].to_vec()
            };
            let shape = Shape {
                heads: h,
                kv_heads: kvh,
                head_dim: d,
                value_dim: d,
                offset: seg.offset,
                scale: 1.0 / (d as f32).sqrt(),
            };
            let (q, k, v) = (rows_of(&q, h * d), rows_of(&k, kvh * d), rows_of(&v, kvh * d));
            out.extend(match &mut **cache {
                LayerCache::Kv(kv) => append_and_attend(kv, &q, &k, &v, shape),
                LayerCache::KvHalf(kv) => append_and_attend(kv, &q, &k, &v, shape),
                LayerCache::Latent { .. } => {
                    return Err(Error::InvalidArgument("a GQA layer was given an MLA cache".into()))
                }
            });
        }
        let out = Tensor::from_vec(out, (rows, h * d), x.device())?;
        self.o_proj.forward(&out)
    }
}

/// Appends one sequence's new keys and values (`[len, kv_heads * head_dim]`) to its cache, then
/// its queries attend over everything cached.
fn append_and_attend<T: Element>(cache: &mut Kv<T>, q: &[f32], k: &[f32], v: &[f32], s: Shape) -> Vec<f32> {
    let width = s.kv_heads * s.head_dim;
    cache.k.append(k, width);
    cache.v.append(v, width);
    attend(q, cache.k.all(), cache.v.all(), s)
}
