//! Grouped-query attention (Llama, Qwen2): `kv_heads` key/value heads, each shared by
//! `heads / kv_heads` consecutive query heads (transformers' `repeat_kv` order).

use super::{causal_mask, masked_softmax};
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
        // The cache is token-major: [tokens, kv_heads * head_dim].
        let k_all = k_cache.append(&k.transpose(0, 1)?.reshape((len, kvh * d))?)?;
        let v_all = v_cache.append(&v)?;
        let total = k_all.dim(0)?;
        let k_all = k_all.reshape((total, kvh, d))?.transpose(0, 1)?.contiguous()?;
        let v_all = v_all.reshape((total, kvh, d))?.transpose(0, 1)?.contiguous()?;
        // Fold each group of query heads into the rows of its key/value head. The scale goes on
        // the queries (len × d values) rather than on the scores (len × total).
        let group = h / kvh;
        let q = (q.contiguous()? * (1.0 / (d as f64).sqrt()))?.reshape((kvh, group * len, d))?;
        let mask = causal_mask(len, total, x.device())?;
        let attend = |q: &Tensor, k: &Tensor, v: &Tensor, n: usize| -> Result<Tensor> {
            let scores = q.matmul(&k.t()?)?.reshape((n * group, len, total))?;
            let probs = masked_softmax(&scores, 1.0, mask.as_ref())?;
            Ok(probs.reshape((n, group * len, total))?.matmul(v)?)
        };
        let out = if len == 1 {
            attend(&q, &k_all, &v_all, kvh)?
        } else {
            // A prompt chunk: one key/value head at a time, so the scores held at once are
            // `group × len × total` floats, not `heads × len × total`.
            let per_head = (0..kvh)
                .map(|j| {
                    let (q, k, v) = (q.narrow(0, j, 1)?, k_all.narrow(0, j, 1)?, v_all.narrow(0, j, 1)?);
                    attend(&q, &k, &v, 1)
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&per_head, 0)?
        };
        let out = out.reshape((h, len, d))?.transpose(0, 1)?.reshape((len, h * d))?;
        self.o_proj.forward(&out)
    }
}
