//! Multi-head latent attention (DeepSeek V2/V3).
//!
//! Keys and values come from a per-token latent `c = kv_a_layernorm(x · W_DKVᵀ)` of `kv_lora_rank`
//! floats plus one rope key `k_rope` shared by all heads. Per head, `k_nope = c · W_UKᵀ` and
//! `v = c · W_UVᵀ`, where `kv_b_proj` stacks `[W_UK | W_UV]` per head. The cache holds only `c`
//! and `rope(k_rope)`.
//!
//! Two exact forms of the same attention:
//! - expanded (prefill): build `k_nope`, `v` for every cached token, attend as usual (flash
//!   attention, [`super::flash`]);
//! - absorbed (decode, one query): `q_nope · k_noperᵀ = (q_nope · W_UK) · cᵀ`, so the query is
//!   moved into latent space and attends to `c` directly; the output `Σ p·v = (Σ p·c) · W_UVᵀ`.
//!   This never expands the cache: per step it reads `kv_lora_rank + rope` floats per token.

use super::flash::{self, Packed};
use super::fused::Shape;
use super::latent::{self, LatentShape};
use super::{check_batch, scaled_softmax, Segment};
use crate::cache::{with_rows, LayerCache, RowBuffer};
use crate::config::{yarn_mscale, MlaConfig, ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::layers::linear::Linear;
use crate::layers::norm::RmsNorm;
use crate::layers::rope::Rope;
use crate::weights::{HeadMatrices, Weights};
use candle_core::{DType, Tensor};

/// `q_a_layernorm` and `kv_a_layernorm` use this epsilon whatever `rms_norm_eps` says.
const LATENT_NORM_EPS: f64 = 1e-6;

/// The query projection: low-rank (`q_a_proj` → norm → `q_b_proj`) or a plain `q_proj`.
#[derive(Debug, Clone)]
enum QueryProj {
    LowRank {
        q_a_proj: Linear,
        q_a_layernorm: RmsNorm,
        q_b_proj: Linear,
    },
    Full {
        q_proj: Linear,
    },
}

impl QueryProj {
    /// The projection of the layer's input: `q_a_proj`, or `q_proj`.
    fn first(&self) -> &Linear {
        match self {
            QueryProj::LowRank { q_a_proj, .. } => q_a_proj,
            QueryProj::Full { q_proj } => q_proj,
        }
    }

    /// The query from [`first`](Self::first)'s output.
    fn rest(&self, y: Tensor) -> Result<Tensor> {
        match self {
            QueryProj::LowRank {
                q_a_layernorm,
                q_b_proj,
                ..
            } => q_b_proj.forward(&q_a_layernorm.forward(&y)?),
            QueryProj::Full { .. } => Ok(y),
        }
    }
}

/// One MLA attention layer.
#[derive(Debug, Clone)]
pub struct Mla {
    q: QueryProj,
    kv_a_proj_with_mqa: Linear,
    kv_a_layernorm: RmsNorm,
    /// `W_UK` and `W_UV` per head.
    up: UpProjections,
    o_proj: Linear,
    cfg: MlaConfig,
    rope: Rope,
    softmax_scale: f64,
}

impl Mla {
    /// Loads `{prefix}.*` (the `self_attn` module of a DeepSeek layer).
    pub fn load(w: &Weights, prefix: &str, model: &ModelConfig, cfg: &MlaConfig) -> Result<Self> {
        let hidden = model.hidden_size;
        let h = cfg.num_heads;
        let qk_head = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim;
        let q = match cfg.q_lora_rank {
            Some(r) => QueryProj::LowRank {
                q_a_proj: Linear::load(w, &format!("{prefix}.q_a_proj"), hidden, r, cfg.bias)?,
                q_a_layernorm: RmsNorm::load(w, &format!("{prefix}.q_a_layernorm"), r, LATENT_NORM_EPS)?,
                q_b_proj: Linear::load(w, &format!("{prefix}.q_b_proj"), r, h * qk_head, false)?,
            },
            None => QueryProj::Full {
                q_proj: Linear::load(w, &format!("{prefix}.q_proj"), hidden, h * qk_head, false)?,
            },
        };
        let kv_a_dim = cfg.kv_lora_rank + cfg.qk_rope_head_dim;
        Ok(Mla {
            q,
            kv_a_proj_with_mqa: Linear::load(w, &format!("{prefix}.kv_a_proj_with_mqa"), hidden, kv_a_dim, cfg.bias)?,
            kv_a_layernorm: RmsNorm::load(
                w,
                &format!("{prefix}.kv_a_layernorm"),
                cfg.kv_lora_rank,
                LATENT_NORM_EPS,
            )?,
            up: UpProjections::load(w, &format!("{prefix}.kv_b_proj.weight"), cfg)?,
            o_proj: Linear::load(w, &format!("{prefix}.o_proj"), h * cfg.v_head_dim, hidden, cfg.bias)?,
            cfg: cfg.clone(),
            rope: Rope::new(&model.rope, cfg.qk_rope_head_dim),
            softmax_scale: softmax_scale(model, cfg),
        })
    }

    /// The packed rows `x [rows, hidden]` of several sequences: the projections over all rows at
    /// once, the latent rows and attention per sequence, each reading its own cache once.
    pub(crate) fn forward_batch(
        &self,
        x: &Tensor,
        segments: &[Segment],
        caches: &mut [&mut LayerCache],
    ) -> Result<Tensor> {
        check_batch(segments, caches)?;
        let (rows, _) = x.dims2()?;
        let MlaConfig {
            num_heads: h,
            kv_lora_rank: r,
            qk_nope_head_dim: nope,
            qk_rope_head_dim: rope,
            v_head_dim: vd,
            ..
        } = self.cfg;
        // The query's first projection and the latent's share their input: one pass.
        let [q_first, kv_all]: [Tensor; 2] = Linear::forward_all(&[self.q.first(), &self.kv_a_proj_with_mqa], x)?
            .try_into()
            .map_err(|_| Error::Internal("two projections gave another count".into()))?;
        let q_all = self.q.rest(q_first)?; // [rows, h * (nope + rope)]
                                           // kv_all: [rows, r + rope]
        let c_new = self.kv_a_layernorm.forward(&kv_all.narrow(1, 0, r)?)?;
        let mut outs = Vec::with_capacity(segments.len());
        for (seg, cache) in segments.iter().zip(caches.iter_mut()) {
            let LayerCache::Latent { ckv, k_rope } = &mut **cache else {
                return Err(Error::InvalidArgument("an MLA layer was given a GQA cache".into()));
            };
            let (len, offset) = (seg.len, seg.offset);
            // Query per head: [h, len, nope | rope].
            let q = q_all
                .narrow(0, seg.start, len)?
                .reshape((len, h, nope + rope))?
                .transpose(0, 1)?;
            let q_nope = q.narrow(2, 0, nope)?.contiguous()?;
            let q_rope = self.rope.apply(&q.narrow(2, nope, rope)?.contiguous()?, offset)?;
            // Latent and shared rope key of the new tokens, then everything cached.
            let k_r = self
                .rope
                .apply(
                    &kv_all.narrow(0, seg.start, len)?.narrow(1, r, rope)?.unsqueeze(0)?,
                    offset,
                )?
                .squeeze(0)?;
            ckv.append(&c_new.narrow(0, seg.start, len)?)?;
            k_rope.append(&k_r)?;
            outs.push(self.attend(&q_nope, &q_rope, ckv, k_rope)?);
        }
        let out = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(&outs, 0)?
        };
        self.o_proj.forward(&out.reshape((rows, h * vd))?)
    }

    /// One sequence's attention output `[len, h, v]` for queries `[h, len, ·]` over its whole
    /// cache (`ckv`, `k_rope`): the expanded form through flash attention for several queries;
    /// for one, the fused latent kernel reading the rows where they are, or where the cache is
    /// not plain f32 rows, the absorbed form through tensor ops.
    fn attend(&self, q_nope: &Tensor, q_rope: &Tensor, ckv: &RowBuffer, k_rope: &RowBuffer) -> Result<Tensor> {
        let (h, len, _) = q_nope.dims3()?;
        if len == 1 {
            if let Some(out) = self.attend_latent(q_nope, q_rope, ckv, k_rope)? {
                return Ok(out); // [1, h, v]
            }
        }
        let (c_all, k_r_all) = (&ckv.all()?, &k_rope.all()?);
        if len > 1 {
            return self.attend_expanded(q_nope, q_rope, c_all, k_r_all);
        }
        let (total, rope) = (c_all.dim(0)?, self.cfg.qk_rope_head_dim);
        let rope_scores = q_rope
            .reshape((h * len, rope))?
            .matmul(&k_r_all.t()?)?
            .reshape((h, len, total))?;
        let out = self.attend_absorbed(q_nope, &rope_scores, c_all)?;
        Ok(out.transpose(0, 1)?.contiguous()?) // [h, 1, v] → [1, h, v]
    }

    /// The absorbed form for one query as r1's fused kernel ([`latent::attend`]), reading the
    /// cache where it is; `None` where the cache is not plain f32 rows in memory.
    fn attend_latent(
        &self,
        q_nope: &Tensor,
        q_rope: &Tensor,
        ckv: &RowBuffer,
        k_rope: &RowBuffer,
    ) -> Result<Option<Tensor>> {
        let (h, r) = (self.cfg.num_heads, self.cfg.kv_lora_rank);
        let (nope, vd, rope) = (
            self.cfg.qk_nope_head_dim,
            self.cfg.v_head_dim,
            self.cfg.qk_rope_head_dim,
        );
        let q_nope_rows = q_nope.flatten_all()?.to_vec1::<f32>()?; // [h, nope]
        let q_lat = match &self.up {
            UpProjections::Blocks(m) => latent::per_head_blocks(&q_nope_rows, &m.k_b)?,
            UpProjections::Dense { w_uk, .. } => match with_rows(&widen(w_uk, q_nope)?, |w| {
                latent::per_head_product(&q_nope_rows, w, h, nope, r, false)
            }) {
                Some(q_lat) => q_lat,
                None => return Ok(None),
            },
        }; // [h, r]
        let device = q_rope.device().clone();
        let q_rope = q_rope.flatten_all()?.to_vec1::<f32>()?; // [h, rope]
        let shape = LatentShape {
            heads: h,
            rank: r,
            rope,
            scale: self.softmax_scale as f32,
        };
        let out = ckv.with_split(r, |c| {
            k_rope.with_split(rope, |k| latent::attend(&q_lat, &q_rope, c, k, shape))
        });
        let Some(Some(out)) = out else { return Ok(None) };
        let v = match &self.up {
            UpProjections::Blocks(m) => latent::per_head_blocks(&out, &m.v_b)?,
            UpProjections::Dense { w_uv, .. } => match with_rows(&widen(w_uv, q_nope)?, |w| {
                latent::per_head_product(&out, w, h, r, vd, true)
            }) {
                Some(v) => v,
                None => return Ok(None),
            },
        };
        Ok(Some(Tensor::from_vec(v, (1, h, vd), &device)?)) // [1, h, v]
    }

    /// Expanded form: per head, keys `[k_nope | k_rope]` with `k_nope = c · W_UKᵀ`, and values
    /// `v = c · W_UVᵀ`, for every cached token (the absorbed form would cost ~3.4× the FLOPs over
    /// several queries), then flash attention over them ([`flash::run`]). `[len, h, v]`.
    fn attend_expanded(&self, q_nope: &Tensor, q_rope: &Tensor, c_all: &Tensor, k_r_all: &Tensor) -> Result<Tensor> {
        let (h, len, nope) = q_nope.dims3()?;
        let (rope, vd) = (self.cfg.qk_rope_head_dim, self.cfg.v_head_dim);
        let total = c_all.dim(0)?;
        let f32s = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
        let (w_uk, w_uv) = self.up.dense(c_all)?;
        let k_rope = f32s(k_r_all)?; // [total, rope]
                                     // [len, h, nope + rope], put together from the two parts' rows (through tensor ops, three
                                     // copies of the whole query were alive at once).
        let (q_n, q_r) = (f32s(q_nope)?, f32s(q_rope)?); // [h, len, nope], [h, len, rope]
        let mut q = Vec::with_capacity(len * h * (nope + rope));
        for t in 0..len {
            for head in 0..h {
                q.extend_from_slice(&q_n[(head * len + t) * nope..][..nope]);
                q.extend_from_slice(&q_r[(head * len + t) * rope..][..rope]);
            }
        }
        drop((q_n, q_r));
        let shape = Shape {
            heads: h,
            kv_heads: h,
            head_dim: nope + rope,
            value_dim: vd,
            offset: total - len,
            scale: self.softmax_scale as f32,
        };
        // A few heads at a time: every head's keys and values of a long context, expanded, were
        // most of the MoE's transient memory in a prefill.
        let mut out = vec![0f32; len * h * vd];
        for heads in flash::head_rounds(h) {
            let (first, n) = (heads.start, heads.len());
            // Head by head, `[total, r] · [r, ·]`: a broadcast batched product copied the latent
            // once per head of the round first.
            let expand = |w: &Tensor| -> Result<Vec<f32>> {
                let mut out = Vec::new();
                for head in first..first + n {
                    out.extend(f32s(&c_all.matmul(&w.get(head)?.t()?)?)?);
                }
                Ok(out)
            };
            let (k_nope, v) = (expand(&w_uk)?, expand(&w_uv)?); // [n, total, nope], [n, total, v]
            let key = |head: usize, t: usize, out: &mut [f32]| {
                out[..nope].copy_from_slice(&k_nope[((head - first) * total + t) * nope..][..nope]);
                out[nope..].copy_from_slice(&k_rope[t * rope..][..rope]);
            };
            let value = |head: usize, t: usize, out: &mut [f32]| {
                out.copy_from_slice(&v[((head - first) * total + t) * vd..][..vd])
            };
            let packed = Packed::new(shape, total, heads, key, value);
            flash::run(&q, &packed, shape, &mut out);
        }
        Ok(Tensor::from_vec(out, (len, h, vd), q_nope.device())?.to_dtype(q_nope.dtype())?)
    }

    /// Absorbed form: the query moves into latent space and attends to `c` itself.
    fn attend_absorbed(&self, q_nope: &Tensor, rope_scores: &Tensor, c_all: &Tensor) -> Result<Tensor> {
        let (h, len, _) = q_nope.dims3()?;
        let r = self.cfg.kv_lora_rank;
        let (w_uk, w_uv) = self.up.dense(c_all)?;
        let q_latent = q_nope.matmul(&w_uk)?; // [h, len, r]
        let total = c_all.dim(0)?;
        let latent_scores = q_latent
            .reshape((h * len, r))?
            .matmul(&c_all.t()?)?
            .reshape((h, len, total))?;
        let probs = scaled_softmax(&(latent_scores + rope_scores)?, self.softmax_scale)?;
        let out_latent = probs.reshape((h * len, total))?.matmul(c_all)?.reshape((h, len, r))?;
        Ok(out_latent.matmul(&w_uv.transpose(1, 2)?)?) // [h, len, v]
    }
}

/// `kv_b_proj` split per head into `W_UK` (keys: `k_nope = c · W_UKᵀ`) and `W_UV` (values).
#[derive(Debug, Clone)]
enum UpProjections {
    /// Dense, `[heads, qk_nope_head_dim, kv_lora_rank]` and `[heads, v_head_dim, kv_lora_rank]`.
    Dense { w_uk: Tensor, w_uv: Tensor },
    /// In the blocks a GGUF file stores them in (W_UK transposed, `[kv_lora_rank, qk_nope]`, and
    /// W_UV): the absorbed decode reads these, a sixth of the bytes of f32 or less. The expanded prefill
    /// widens them for the call; kept dense as well, they were 48 MB of the benchmark MoE's RSS.
    Blocks(HeadMatrices),
}

impl UpProjections {
    fn load(w: &Weights, name: &str, cfg: &MlaConfig) -> Result<Self> {
        let (h, nope, v, r) = (cfg.num_heads, cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank);
        if let Some(blocks) = w.split_kv_b(name, h, nope, v, r)? {
            return Ok(UpProjections::Blocks(blocks));
        }
        // kv_b_proj rows are per head [k_nope | v]; split it once into W_UK and W_UV.
        let kv_b = w.get(name, &[h * (nope + v), r])?.reshape((h, nope + v, r))?;
        Ok(UpProjections::Dense {
            w_uk: kv_b.narrow(1, 0, nope)?.contiguous()?,
            w_uv: kv_b.narrow(1, nope, v)?.contiguous()?,
        })
    }

    /// `(W_UK, W_UV)` as dense tensors in `like`'s dtype.
    fn dense(&self, like: &Tensor) -> Result<(Tensor, Tensor)> {
        let (w_uk, w_uv) = match self {
            UpProjections::Dense { w_uk, w_uv } => (w_uk.clone(), w_uv.clone()),
            UpProjections::Blocks(m) => m.dense(like.device())?,
        };
        Ok((widen(&w_uk, like)?, widen(&w_uv, like)?))
    }
}

/// A weight in the activations' dtype (bf16 storage is widened per use on the CPU).
fn widen(w: &Tensor, like: &Tensor) -> Result<Tensor> {
    Ok(if w.dtype() == like.dtype() {
        w.clone()
    } else {
        w.to_dtype(like.dtype())?
    })
}

/// `(qk_nope + qk_rope)^-1/2`, times `yarn_mscale(factor, mscale_all_dim)^2` under YaRN.
fn softmax_scale(model: &ModelConfig, cfg: &MlaConfig) -> f64 {
    let base = 1.0 / ((cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) as f64).sqrt();
    match model.rope.scaling {
        RopeScaling::Yarn {
            factor,
            mscale_all_dim: Some(m),
            ..
        } => {
            let s = yarn_mscale(factor, m);
            base * s * s
        }
        _ => base,
    }
}
