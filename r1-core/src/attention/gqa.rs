//! Grouped-query attention (Llama, Qwen2): `kv_heads` key/value heads, each shared by
//! `heads / kv_heads` consecutive query heads (transformers' `repeat_kv` order).

use super::fused::{attend, Shape};
use crate::cache::LayerCache;
use crate::config::{GqaConfig, ModelConfig};
use crate::error::{Error, Result};
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

    /// `x [len, hidden]` at positions `offset..offset+len`; appends this step's keys and values.
    pub fn forward(&self, x: &Tensor, offset: usize, cache: &mut LayerCache) -> Result<Tensor> {
        let LayerCache::Kv { k: k_cache, v: v_cache } = cache else {
            return Err(Error::InvalidArgument("a GQA layer was given an MLA cache".into()));
        };
        let (len, _) = x.dims2()?;
        let GqaConfig {
            num_heads: h,
            num_kv_heads: kvh,
            head_dim: d,
            ..
        } = self.cfg;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> { Ok(t.reshape((len, n, d))?.transpose(0, 1)?) };
        let q = self.rope.apply(&heads(self.q_proj.forward(x)?, h)?, offset)?;
        let k = self.rope.apply(&heads(self.k_proj.forward(x)?, kvh)?, offset)?;
        let v = self.v_proj.forward(x)?;
        // Token-major rows, [len, heads, d]: the cache's layout and the fused kernel's.
        let rows = |t: &Tensor, n: usize| -> Result<Vec<f32>> {
            Ok(t.transpose(0, 1)?
                .contiguous()?
                .reshape(len * n * d)?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?)
        };
        k_cache.append(&rows(&k, kvh)?, kvh * d);
        v_cache.append(&v.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?, kvh * d);
        let shape = Shape {
            heads: h,
            kv_heads: kvh,
            head_dim: d,
            offset,
            scale: 1.0 / (d as f32).sqrt(),
        };
        let out = attend(&rows(&q, h)?, k_cache.all(), v_cache.all(), shape);
        let out = Tensor::from_vec(out, (len, h * d), x.device())?;
        self.o_proj.forward(&out)
    }
}
