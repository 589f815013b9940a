//! Model configuration: `config.json` (Hugging Face) normalized into one [`ModelConfig`].
//!
//! Every field that changes the math is read here, with transformers' default when the key is
//! absent, and nowhere else: the models receive plain Rust values, never JSON. An architecture or
//! option that r1 does not implement is an error naming it, never a silent approximation.

use crate::error::{Error, Result};
use crate::metadata::{MetaValue, Metadata};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The model families r1 implements. Each maps to one file under `models/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 2/3, R1-Distill-Llama, SmolLM2).
    Llama,
    /// `Qwen2ForCausalLM` (Qwen2/2.5, R1-Distill-Qwen).
    Qwen2,
    /// `DeepseekV2ForCausalLM` (DeepSeek-V2, V2-Lite).
    DeepseekV2,
    /// `DeepseekV3ForCausalLM` (DeepSeek-V3, R1).
    DeepseekV3,
}

impl Architecture {
    /// The `architectures[0]` string of `config.json`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::DeepseekV2 => "DeepseekV2ForCausalLM",
            Architecture::DeepseekV3 => "DeepseekV3ForCausalLM",
        }
    }

    /// A short snake_case name: `llama`, `qwen2`, `deepseek_v2`, `deepseek_v3`.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::DeepseekV2 => "deepseek_v2",
            Architecture::DeepseekV3 => "deepseek_v3",
        }
    }

    fn from_hf_name(name: &str) -> Option<Self> {
        [Self::Llama, Self::Qwen2, Self::DeepseekV2, Self::DeepseekV3]
            .into_iter()
            .find(|a| a.hf_name() == name)
    }

    /// DeepSeek V2/V3: MLA attention and DeepSeekMoE.
    pub fn is_deepseek(self) -> bool {
        matches!(self, Architecture::DeepseekV2 | Architecture::DeepseekV3)
    }
}

/// How rotary frequencies are rescaled for long context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq_i = theta^(-2i/d)`.
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// Divisor of every frequency.
        factor: f64,
    },
    /// Llama 3.1 scaling: low frequencies divided by `factor`, high ones kept, smooth in between.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are scaled fully.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was trained at before scaling.
        original_max_position_embeddings: f64,
    },
    /// YaRN (DeepSeek V2/V3, Qwen long context).
    Yarn {
        /// Context extension factor.
        factor: f64,
        /// The context length before extension.
        original_max_position_embeddings: f64,
        /// Rotations per context above which a dimension is not interpolated.
        beta_fast: f64,
        /// Rotations per context below which a dimension is fully interpolated.
        beta_slow: f64,
        /// Multiplier of cos and sin (transformers' `attention_factor`).
        attention_factor: f64,
        /// `mscale_all_dim` (DeepSeek): the softmax scale is multiplied by `yarn_mscale(factor, it)^2`.
        mscale_all_dim: Option<f64>,
    },
    /// Per-frequency divisors, as GGUF files of Llama 3.1 models store them (`rope_freqs.weight`,
    /// llama.cpp's precomputed form of the llama3 scaling).
    Factors(Vec<f64>),
}

/// Rotary position embedding parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Base of the frequencies (`rope_theta`).
    pub theta: f64,
    /// Frequency rescaling.
    pub scaling: RopeScaling,
    /// True: rotate pairs `(x[2i], x[2i+1])` (DeepSeek). False: rotate `(x[i], x[i+d/2])` (Llama, Qwen2).
    pub interleaved: bool,
}

/// Grouped-query attention (Llama, Qwen2).
#[derive(Debug, Clone, PartialEq)]
pub struct GqaConfig {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads; `num_heads` is a multiple of it.
    pub num_kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Whether q/k/v projections have a bias (Qwen2: yes).
    pub qkv_bias: bool,
    /// Whether the output projection has a bias.
    pub o_bias: bool,
}

/// Multi-head latent attention (DeepSeek V2/V3).
#[derive(Debug, Clone, PartialEq)]
pub struct MlaConfig {
    /// Attention heads.
    pub num_heads: usize,
    /// Rank of the query compression; `None` means a plain `q_proj`.
    pub q_lora_rank: Option<usize>,
    /// Rank of the compressed key/value latent (what the cache holds).
    pub kv_lora_rank: usize,
    /// Per-head query/key dims without rotary embedding.
    pub qk_nope_head_dim: usize,
    /// Per-head query/key dims with rotary embedding (the key part is shared by all heads).
    pub qk_rope_head_dim: usize,
    /// Per-head value dims.
    pub v_head_dim: usize,
    /// Whether `q_a_proj`, `kv_a_proj_with_mqa` and `o_proj` have biases.
    pub bias: bool,
}

/// The attention flavour of a model.
#[derive(Debug, Clone, PartialEq)]
pub enum AttentionConfig {
    /// Grouped-query attention.
    Gqa(GqaConfig),
    /// Multi-head latent attention.
    Mla(MlaConfig),
}

/// How router logits become expert scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoringFunc {
    /// `softmax` over experts (DeepSeek V2).
    Softmax,
    /// Independent `sigmoid` per expert (DeepSeek V3).
    Sigmoid,
}

/// How the top-k experts are chosen from the scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopkMethod {
    /// Top-k of the scores.
    Greedy,
    /// V2: keep the `topk_group` groups with the highest maximum score, then top-k inside them.
    GroupLimitedGreedy,
    /// V3: choose with `score + e_score_correction_bias`, groups ranked by the sum of their top-2;
    /// weights are the uncorrected scores.
    NoauxTc,
}

/// DeepSeekMoE parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    /// Routed experts per MoE layer.
    pub n_routed_experts: usize,
    /// Shared experts (run on every token), fused into one MLP of `n * moe_intermediate_size`.
    pub n_shared_experts: usize,
    /// Experts chosen per token.
    pub num_experts_per_tok: usize,
    /// Hidden size of one expert.
    pub moe_intermediate_size: usize,
    /// Layers below this index use the dense MLP.
    pub first_k_dense_replace: usize,
    /// Every `moe_layer_freq`-th layer (from `first_k_dense_replace`) is MoE.
    pub moe_layer_freq: usize,
    /// Score function.
    pub scoring_func: ScoringFunc,
    /// Expert selection rule.
    pub topk_method: TopkMethod,
    /// Expert groups (consecutive experts).
    pub n_group: usize,
    /// Groups kept before the top-k.
    pub topk_group: usize,
    /// Divide the chosen weights by their sum.
    pub norm_topk_prob: bool,
    /// Multiplier of the routed output.
    pub routed_scaling_factor: f64,
    /// V3: normalized weights are then multiplied by `routed_scaling_factor`. V2 (DeepSeek's
    /// `modeling_deepseek.py`): with `norm_topk_prob` and k > 1 the weights are normalized and not
    /// scaled; otherwise scaled.
    pub scale_normalized: bool,
}

impl MoeConfig {
    /// Whether decoder layer `layer` uses the MoE block (else the dense MLP).
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        layer >= self.first_k_dense_replace && layer.is_multiple_of(self.moe_layer_freq)
    }
}

/// DeepSeek's FP8 checkpoint format: E4M3 weights with one f32 scale per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp8Config {
    /// `[rows, cols]` of a scale block (128 x 128 in DeepSeek's checkpoints).
    pub block: [usize; 2],
}

/// A model's configuration, normalized across architectures.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Model family.
    pub arch: Architecture,
    /// Vocabulary size (rows of the embedding and of the LM head).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Decoder layers (MTP layers of DeepSeek-V3 come after these and are not loaded).
    pub num_hidden_layers: usize,
    /// Hidden size of the dense MLP.
    pub intermediate_size: usize,
    /// Whether the dense MLP projections have biases (Llama `mlp_bias`).
    pub mlp_bias: bool,
    /// Epsilon of the decoder RMSNorms.
    pub rms_norm_eps: f64,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// The LM head is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token, if the config names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens named by the config.
    pub eos_token_ids: Vec<u32>,
    /// Rotary embedding.
    pub rope: RopeConfig,
    /// Attention flavour.
    pub attention: AttentionConfig,
    /// DeepSeekMoE parameters (DeepSeek only).
    pub moe: Option<MoeConfig>,
    /// FP8 block quantization of the checkpoint, if any.
    pub fp8: Option<Fp8Config>,
}

/// `yarn_get_mscale` of DeepSeek and transformers: `0.1 * m * ln(factor) + 1`, or 1 when `factor <= 1`.
pub fn yarn_mscale(factor: f64, m: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * m * factor.ln() + 1.0
    }
}

/// Typed reads from the JSON object with the file path in every error.
struct Fields<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn err(&self, msg: String) -> Error {
        Error::Config {
            path: self.path.to_path_buf(),
            msg,
        }
    }

    /// The value of `key`, treating JSON `null` as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(format!("`{key}` must be a non-negative integer, got {v}"))),
        }
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.usize_opt(key)?.unwrap_or(default))
    }

    fn usize_req(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .ok_or_else(|| self.err(format!("missing required field `{key}`")))
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a number, got {v}"))),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.f64_opt(key)?.unwrap_or(default))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(format!("`{key}` must be true or false, got {v}"))),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a string, got {v}"))),
        }
    }

    /// Token ids: a single integer or a list of them.
    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = || self.err(format!("`{key}` must be a token id or a list of token ids"));
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad))
                .collect(),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(|n| vec![n])
                .ok_or_else(bad),
        }
    }
}

impl ModelConfig {
    /// Reads and normalizes `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::json(path, e))?;
        Self::from_json(&value, path)
    }

    /// Normalizes a parsed `config.json`; `path` is only used in error messages.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self> {
        let obj = value.as_object().ok_or_else(|| Error::Config {
            path: path.to_path_buf(),
            msg: "config must be a JSON object".into(),
        })?;
        let f = Fields { path, obj };
        let arch = architecture(&f)?;
        let hidden_size = f.usize_req("hidden_size")?;
        let num_heads = f.usize_req("num_attention_heads")?;
        if num_heads == 0 || hidden_size == 0 {
            return Err(f.err("`hidden_size` and `num_attention_heads` must be positive".into()));
        }
        let hidden_act = f.str_opt("hidden_act")?.unwrap_or("silu");
        if hidden_act != "silu" {
            return Err(Error::Unsupported(format!(
                "{}: hidden_act `{hidden_act}` (only silu)",
                path.display()
            )));
        }
        let attention = if arch.is_deepseek() {
            AttentionConfig::Mla(mla_config(&f, num_heads)?)
        } else {
            AttentionConfig::Gqa(gqa_config(&f, arch, hidden_size, num_heads)?)
        };
        let max_position_embeddings = f.usize_or("max_position_embeddings", 4096)?;
        let mut eos_token_ids = f.token_ids("eos_token_id")?;
        eos_token_ids.dedup();
        let cfg = ModelConfig {
            arch,
            vocab_size: f.usize_req("vocab_size")?,
            hidden_size,
            num_hidden_layers: f.usize_req("num_hidden_layers")?,
            intermediate_size: f.usize_req("intermediate_size")?,
            mlp_bias: f.bool_or("mlp_bias", false)?,
            rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)?,
            max_position_embeddings,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            bos_token_id: f.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids,
            rope: rope_config(&f, arch)?,
            attention,
            moe: if arch.is_deepseek() {
                Some(moe_config(&f, arch)?)
            } else {
                None
            },
            fp8: fp8_config(&f)?,
        };
        if arch == Architecture::Qwen2 && f.bool_or("use_sliding_window", false)? {
            return Err(Error::Unsupported(format!(
                "{}: Qwen2 `use_sliding_window: true`",
                path.display()
            )));
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The MLA parameters, if the model uses MLA.
    pub fn mla(&self) -> Option<&MlaConfig> {
        match &self.attention {
            AttentionConfig::Mla(m) => Some(m),
            AttentionConfig::Gqa(_) => None,
        }
    }

    /// Floats the KV cache holds per token, over all layers.
    pub fn cache_floats_per_token(&self) -> usize {
        let per_layer = match &self.attention {
            AttentionConfig::Gqa(g) => 2 * g.num_kv_heads * g.head_dim,
            AttentionConfig::Mla(m) => m.kv_lora_rank + m.qk_rope_head_dim,
        };
        per_layer * self.num_hidden_layers
    }
}

fn architecture(f: &Fields) -> Result<Architecture> {
    let names: Vec<&str> = match f.get("architectures") {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if let Some(arch) = names.iter().find_map(|n| Architecture::from_hf_name(n)) {
        return Ok(arch);
    }
    // Some configs have no `architectures`; `model_type` then says the family.
    let by_type = match f.str_opt("model_type")? {
        Some("llama") => Some(Architecture::Llama),
        Some("qwen2") => Some(Architecture::Qwen2),
        Some("deepseek_v2") => Some(Architecture::DeepseekV2),
        Some("deepseek_v3") => Some(Architecture::DeepseekV3),
        _ => None,
    };
    by_type.ok_or_else(|| {
        Error::Unsupported(format!(
            "{}: architecture {:?} (model_type {:?}); r1 implements LlamaForCausalLM, \
             Qwen2ForCausalLM, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM",
            f.path.display(),
            names,
            f.str_opt("model_type").ok().flatten()
        ))
    })
}

fn gqa_config(f: &Fields, arch: Architecture, hidden: usize, heads: usize) -> Result<GqaConfig> {
    let num_kv_heads = f.usize_or("num_key_value_heads", heads)?;
    if num_kv_heads == 0 || !heads.is_multiple_of(num_kv_heads) {
        return Err(f.err(format!(
            "`num_attention_heads` {heads} is not a multiple of `num_key_value_heads` {num_kv_heads}"
        )));
    }
    let head_dim = f.usize_or("head_dim", hidden / heads)?;
    let attention_bias = f.bool_or("attention_bias", false)?;
    Ok(GqaConfig {
        num_heads: heads,
        num_kv_heads,
        head_dim,
        // Qwen2 always has q/k/v biases and never an o_proj bias.
        qkv_bias: arch == Architecture::Qwen2 || attention_bias,
        o_bias: arch != Architecture::Qwen2 && attention_bias,
    })
}

fn mla_config(f: &Fields, heads: usize) -> Result<MlaConfig> {
    Ok(MlaConfig {
        num_heads: heads,
        q_lora_rank: f.usize_opt("q_lora_rank")?.filter(|&r| r > 0),
        kv_lora_rank: f.usize_or("kv_lora_rank", 512)?,
        qk_nope_head_dim: f.usize_or("qk_nope_head_dim", 128)?,
        qk_rope_head_dim: f.usize_or("qk_rope_head_dim", 64)?,
        v_head_dim: f.usize_or("v_head_dim", 128)?,
        bias: f.bool_or("attention_bias", false)?,
    })
}

fn moe_config(f: &Fields, arch: Architecture) -> Result<MoeConfig> {
    let v3 = arch == Architecture::DeepseekV3;
    let scoring_func = match f
        .str_opt("scoring_func")?
        .unwrap_or(if v3 { "sigmoid" } else { "softmax" })
    {
        "softmax" => ScoringFunc::Softmax,
        "sigmoid" => ScoringFunc::Sigmoid,
        other => {
            return Err(Error::Unsupported(format!(
                "{}: scoring_func `{other}`",
                f.path.display()
            )))
        }
    };
    let topk_method = match f
        .str_opt("topk_method")?
        .unwrap_or(if v3 { "noaux_tc" } else { "greedy" })
    {
        "greedy" => TopkMethod::Greedy,
        "group_limited_greedy" => TopkMethod::GroupLimitedGreedy,
        "noaux_tc" => TopkMethod::NoauxTc,
        other => {
            return Err(Error::Unsupported(format!(
                "{}: topk_method `{other}`",
                f.path.display()
            )))
        }
    };
    let n_routed_experts = f.usize_or("n_routed_experts", if v3 { 256 } else { 0 })?;
    let cfg = MoeConfig {
        n_routed_experts,
        n_shared_experts: f.usize_or("n_shared_experts", if v3 { 1 } else { 0 })?,
        num_experts_per_tok: f.usize_or("num_experts_per_tok", if v3 { 8 } else { 0 })?,
        moe_intermediate_size: f.usize_or("moe_intermediate_size", if v3 { 2048 } else { 1407 })?,
        first_k_dense_replace: f.usize_or("first_k_dense_replace", if v3 { 3 } else { 0 })?,
        moe_layer_freq: f.usize_or("moe_layer_freq", 1)?,
        scoring_func,
        topk_method,
        n_group: f.usize_or("n_group", if v3 { 8 } else { 1 })?,
        topk_group: f.usize_or("topk_group", if v3 { 4 } else { 1 })?,
        norm_topk_prob: f.bool_or("norm_topk_prob", v3)?,
        routed_scaling_factor: f.f64_or("routed_scaling_factor", if v3 { 2.5 } else { 1.0 })?,
        scale_normalized: v3,
    };
    Ok(cfg)
}

/// Rope parameters live in `rope_scaling` (most checkpoints) or `rope_parameters` (transformers 5).
fn rope_config(f: &Fields, arch: Architecture) -> Result<RopeConfig> {
    let params = f.get("rope_parameters").and_then(Value::as_object);
    let scaling = f.get("rope_scaling").and_then(Value::as_object).or(params);
    let theta = match f.f64_opt("rope_theta")? {
        Some(t) => t,
        None => params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10000.0),
    };
    let interleaved = match arch {
        Architecture::DeepseekV2 => true,
        Architecture::DeepseekV3 => f.bool_or("rope_interleave", true)?,
        _ => false,
    };
    let scaling = match scaling {
        None => RopeScaling::None,
        Some(s) => rope_scaling(f, s, f.usize_or("max_position_embeddings", 4096)?)?,
    };
    Ok(RopeConfig {
        theta,
        scaling,
        interleaved,
    })
}

fn rope_scaling(f: &Fields, s: &Map<String, Value>, max_pos: usize) -> Result<RopeScaling> {
    let sf = Fields { path: f.path, obj: s };
    let kind = match sf.str_opt("rope_type")? {
        Some(k) => k,
        None => sf.str_opt("type")?.unwrap_or("default"),
    };
    let factor = || -> Result<f64> {
        sf.f64_opt("factor")?
            .ok_or_else(|| f.err(format!("rope scaling `{kind}` needs `factor`")))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: sf.f64_or("low_freq_factor", 1.0)?,
            high_freq_factor: sf.f64_or("high_freq_factor", 4.0)?,
            original_max_position_embeddings: sf.f64_or("original_max_position_embeddings", 8192.0)?,
        },
        "yarn" => {
            let factor = factor()?;
            let original = match sf.f64_opt("original_max_position_embeddings")? {
                Some(o) => o,
                None => max_pos as f64 / factor,
            };
            let mscale = sf.f64_opt("mscale")?.filter(|&m| m != 0.0);
            let mscale_all_dim = sf.f64_opt("mscale_all_dim")?.filter(|&m| m != 0.0);
            // transformers' `_compute_yarn_parameters`: an explicit attention_factor wins; DeepSeek's
            // pair (mscale, mscale_all_dim) gives their ratio; otherwise the YaRN paper's 0.1 ln(s) + 1.
            let attention_factor = match (sf.f64_opt("attention_factor")?, mscale, mscale_all_dim) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(m_all)) => yarn_mscale(factor, m) / yarn_mscale(factor, m_all),
                _ => yarn_mscale(factor, 1.0),
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                beta_fast: sf.f64_or("beta_fast", 32.0)?,
                beta_slow: sf.f64_or("beta_slow", 1.0)?,
                attention_factor,
                mscale_all_dim,
            }
        }
        other => {
            return Err(Error::Unsupported(format!(
                "{}: rope scaling type `{other}`",
                f.path.display()
            )))
        }
    })
}

fn fp8_config(f: &Fields) -> Result<Option<Fp8Config>> {
    let Some(q) = f.get("quantization_config") else {
        return Ok(None);
    };
    let qf = Fields {
        path: f.path,
        obj: q
            .as_object()
            .ok_or_else(|| f.err("`quantization_config` must be an object".into()))?,
    };
    let method = qf.str_opt("quant_method")?.unwrap_or("");
    let fmt = qf.str_opt("fmt")?.unwrap_or("e4m3");
    if method != "fp8" || fmt != "e4m3" {
        return Err(Error::Unsupported(format!(
            "{}: quantization_config quant_method `{method}` fmt `{fmt}` (only DeepSeek's fp8 e4m3 blocks)",
            f.path.display()
        )));
    }
    let block = match qf.get("weight_block_size") {
        Some(Value::Array(b)) if b.len() == 2 => {
            let dim = |v: &Value| v.as_u64().filter(|&n| n > 0).map(|n| n as usize);
            match (dim(&b[0]), dim(&b[1])) {
                (Some(r), Some(c)) => [r, c],
                _ => return Err(f.err("`weight_block_size` must be two positive integers".into())),
            }
        }
        None => [128, 128],
        Some(other) => return Err(f.err(format!("`weight_block_size` must be [rows, cols], got {other}"))),
    };
    Ok(Some(Fp8Config { block }))
}

impl ModelConfig {
    /// The config of a GGUF file, from its `{arch}.*` metadata (llama.cpp's keys) and, where
    /// the metadata is silent, from which tensors exist.
    pub fn from_metadata(g: &Metadata) -> Result<Self> {
        let path = &g.path;
        let err = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        let arch_name = g
            .get("general.architecture")
            .and_then(MetaValue::as_str)
            .unwrap_or("")
            .to_string();
        let key = |k: &str| format!("{arch_name}.{k}");
        let get = |k: &str| g.get(&key(k));
        let usize_opt = |k: &str| get(k).and_then(MetaValue::as_u64).map(|v| v as usize);
        let usize_req = |k: &str| usize_opt(k).ok_or_else(|| err(format!("missing metadata `{}`", key(k))));
        let f64_or = |k: &str, d: f64| get(k).and_then(MetaValue::as_f64).unwrap_or(d);
        let has = |t: &str| g.has_tensor(t);
        let sigmoid = usize_opt("expert_gating_func") == Some(2);
        let arch = match arch_name.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "deepseek2" if sigmoid => Architecture::DeepseekV3,
            "deepseek2" => Architecture::DeepseekV2,
            other => {
                return Err(Error::Unsupported(format!(
                    "{}: GGUF architecture `{other}` (llama, qwen2, deepseek2)",
                    path.display()
                )))
            }
        };
        let hidden_size = usize_req("embedding_length")?;
        let num_heads = usize_req("attention.head_count")?;
        let vocab_size = match usize_opt("vocab_size") {
            Some(v) => v,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(MetaValue::as_array)
                .map(<[MetaValue]>::len)
                .ok_or_else(|| err("no vocabulary size".into()))?,
        };
        let attention = if arch.is_deepseek() {
            let rope = usize_req("rope.dimension_count")?;
            let key_len = usize_opt("attention.key_length_mla")
                .or(usize_opt("attention.key_length"))
                .ok_or_else(|| err("missing attention.key_length".into()))?;
            let v = usize_opt("attention.value_length_mla")
                .or(usize_opt("attention.value_length"))
                .ok_or_else(|| err("missing attention.value_length".into()))?;
            AttentionConfig::Mla(MlaConfig {
                num_heads,
                q_lora_rank: usize_opt("attention.q_lora_rank").filter(|&r| r > 0),
                kv_lora_rank: usize_req("attention.kv_lora_rank")?,
                qk_nope_head_dim: key_len
                    .checked_sub(rope)
                    .ok_or_else(|| err(format!("key length {key_len} < rope dims {rope}")))?,
                qk_rope_head_dim: rope,
                v_head_dim: v,
                bias: has("blk.0.attn_kv_a_mqa.bias"),
            })
        } else {
            let num_kv_heads = usize_opt("attention.head_count_kv").unwrap_or(num_heads);
            if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
                return Err(err(format!(
                    "{num_heads} heads are not a multiple of {num_kv_heads} kv heads"
                )));
            }
            AttentionConfig::Gqa(GqaConfig {
                num_heads,
                num_kv_heads,
                // No heads: `validate` names `num_attention_heads`.
                head_dim: usize_opt("attention.key_length").unwrap_or(hidden_size.checked_div(num_heads).unwrap_or(0)),
                qkv_bias: has("blk.0.attn_q.bias"),
                o_bias: has("blk.0.attn_output.bias"),
            })
        };
        let moe = if arch.is_deepseek() {
            let n_group = usize_opt("expert_group_count").unwrap_or(1).max(1);
            let topk_group = usize_opt("expert_group_used_count").unwrap_or(n_group).max(1);
            // A GGUF stores no topk_method: sigmoid gating is V3's noaux_tc; softmax is V2's greedy,
            // group-limited when groups are set (llama.cpp ranks groups the same way for both).
            let topk_method = match (sigmoid, topk_group < n_group) {
                (true, _) => TopkMethod::NoauxTc,
                (false, true) => TopkMethod::GroupLimitedGreedy,
                (false, false) => TopkMethod::Greedy,
            };
            Some(MoeConfig {
                n_routed_experts: usize_req("expert_count")?,
                n_shared_experts: usize_opt("expert_shared_count").unwrap_or(0),
                num_experts_per_tok: usize_req("expert_used_count")?,
                moe_intermediate_size: usize_req("expert_feed_forward_length")?,
                first_k_dense_replace: usize_opt("leading_dense_block_count").unwrap_or(0),
                moe_layer_freq: 1,
                scoring_func: if sigmoid {
                    ScoringFunc::Sigmoid
                } else {
                    ScoringFunc::Softmax
                },
                topk_method,
                n_group,
                topk_group,
                norm_topk_prob: get("expert_weights_norm").and_then(MetaValue::as_bool).unwrap_or(false),
                routed_scaling_factor: f64_or("expert_weights_scale", 1.0),
                scale_normalized: sigmoid,
            })
        } else {
            None
        };
        let tok_id = |k: &str| {
            g.get(&format!("tokenizer.ggml.{k}"))
                .and_then(MetaValue::as_u64)
                // An id past u32 is outside every vocabulary, which `validate` then says.
                .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
        };
        let cfg = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            num_hidden_layers: usize_req("block_count")?,
            intermediate_size: usize_opt("feed_forward_length").unwrap_or(0),
            mlp_bias: has("blk.0.ffn_up.bias"),
            rms_norm_eps: f64_or("attention.layer_norm_rms_epsilon", 1e-6),
            max_position_embeddings: usize_opt("context_length").unwrap_or(4096),
            tie_word_embeddings: !has("output.weight"),
            bos_token_id: tok_id("bos_token_id"),
            eos_token_ids: tok_id("eos_token_id").into_iter().collect(),
            rope: gguf_rope(g, &arch_name, arch)?,
            attention,
            moe,
            fp8: None,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }
}

/// Rope from GGUF metadata. GGUF `llama` files store q/k rows permuted so that llama.cpp rotates
/// interleaved pairs; rotating the same pairs here is the Hugging Face model's rotation.
fn gguf_rope(g: &Metadata, arch_name: &str, arch: Architecture) -> Result<RopeConfig> {
    let get = |k: &str| g.get(&format!("{arch_name}.{k}"));
    let f = |k: &str, d: f64| get(k).and_then(MetaValue::as_f64).unwrap_or(d);
    let factor = f("rope.scaling.factor", 1.0);
    let scaling = match get("rope.scaling.type").and_then(MetaValue::as_str).unwrap_or("none") {
        "none" => RopeScaling::None,
        "linear" if factor != 1.0 => RopeScaling::Linear { factor },
        "linear" => RopeScaling::None,
        "yarn" => {
            let m = f("rope.scaling.yarn_log_multiplier", 0.0) / 0.1;
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: f("rope.scaling.original_context_length", 4096.0),
                beta_fast: f("rope.scaling.yarn_beta_fast", 32.0),
                beta_slow: f("rope.scaling.yarn_beta_slow", 1.0),
                // llama.cpp's deepseek2 assumes mscale == mscale_all_dim: cos/sin unscaled.
                attention_factor: 1.0,
                mscale_all_dim: (m != 0.0).then_some(m),
            }
        }
        other => {
            return Err(Error::Unsupported(format!(
                "{}: rope scaling type `{other}`",
                g.path.display()
            )))
        }
    };
    let scaling = match &g.rope_freqs {
        Some(Ok(factors)) => RopeScaling::Factors(factors.clone()),
        Some(Err(msg)) => return Err(Error::Unsupported(format!("{}: {msg}", g.path.display()))),
        None => scaling,
    };
    Ok(RopeConfig {
        theta: f("rope.freq_base", 10000.0),
        scaling,
        interleaved: matches!(arch, Architecture::Llama) || arch.is_deepseek(),
    })
}

/// Where a checkpoint folder keeps its config.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}

/// The bounds [`ModelConfig::validate`] holds sizes to: far above every released model, low
/// enough that no product of them overflows or asks for an absurd allocation.
pub(crate) mod bounds {
    /// Vocabulary entries (DeepSeek-V3: 129,280; Llama 3: 128,256).
    pub const VOCAB: usize = 1 << 22;
    /// Width of the residual stream and of any projection (DeepSeek-V3: 7,168).
    pub const WIDTH: usize = 1 << 16;
    /// Hidden size of an MLP or an expert (Llama 3.1 405B: 53,248).
    pub const INTERMEDIATE: usize = 1 << 18;
    /// Decoder layers (DeepSeek-V3: 61; Llama 3.1 405B: 126).
    pub const LAYERS: usize = 1 << 10;
    /// Attention heads (DeepSeek-V3: 128).
    pub const HEADS: usize = 1 << 12;
    /// Size of one head.
    pub const HEAD_DIM: usize = 1 << 12;
    /// Positions of the context.
    pub const POSITIONS: usize = 1 << 24;
    /// Routed experts in a layer (DeepSeek-V3: 256).
    pub const EXPERTS: usize = 1 << 14;
}

impl ModelConfig {
    /// Checks every size, id and factor the models divide by, index with or allocate from,
    /// for configs from `config.json` and from GGUF metadata alike: the first bad field is an
    /// error naming it (with transformers' name for it) and `path`.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let err = |msg: String| {
            Err(Error::Config {
                path: path.to_path_buf(),
                msg,
            })
        };
        let sized = |name: &str, v: usize, max: usize| -> Result<()> {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                err(format!("`{name}` is {v}; it must be in 1..={max}"))
            }
        };
        sized("vocab_size", self.vocab_size, bounds::VOCAB)?;
        sized("hidden_size", self.hidden_size, bounds::WIDTH)?;
        sized("num_hidden_layers", self.num_hidden_layers, bounds::LAYERS)?;
        sized(
            "max_position_embeddings",
            self.max_position_embeddings,
            bounds::POSITIONS,
        )?;
        if self.has_dense_mlp() {
            sized("intermediate_size", self.intermediate_size, bounds::INTERMEDIATE)?;
        }
        for (name, id) in self
            .bos_token_id
            .iter()
            .map(|&b| ("bos_token_id", b))
            .chain(self.eos_token_ids.iter().map(|&e| ("eos_token_id", e)))
        {
            if id as usize >= self.vocab_size {
                return err(format!(
                    "`{name}` {id} is outside the vocabulary of {}",
                    self.vocab_size
                ));
            }
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return err(format!(
                "`rms_norm_eps` {} must be a finite number >= 0",
                self.rms_norm_eps
            ));
        }
        self.validate_attention(&sized, &err)?;
        self.validate_rope(&err)?;
        if let Some(m) = &self.moe {
            m.validate(&sized, &err)?;
        }
        Ok(())
    }

    /// Whether some layer uses the dense MLP (every layer of Llama and Qwen2).
    fn has_dense_mlp(&self) -> bool {
        match &self.moe {
            None => true,
            Some(m) => (0..self.num_hidden_layers).any(|l| !m.is_moe_layer(l)),
        }
    }

    fn validate_attention(
        &self,
        sized: &dyn Fn(&str, usize, usize) -> Result<()>,
        err: &dyn Fn(String) -> Result<()>,
    ) -> Result<()> {
        match &self.attention {
            AttentionConfig::Gqa(g) => {
                sized("num_attention_heads", g.num_heads, bounds::HEADS)?;
                sized("num_key_value_heads", g.num_kv_heads, g.num_heads)?;
                sized("head_dim", g.head_dim, bounds::HEAD_DIM)?;
                if !g.num_heads.is_multiple_of(g.num_kv_heads) {
                    return err(format!(
                        "`num_attention_heads` {} is not a multiple of `num_key_value_heads` {}",
                        g.num_heads, g.num_kv_heads
                    ));
                }
                if !g.head_dim.is_multiple_of(2) {
                    return err(format!("`head_dim` {} must be even (rotary pairs)", g.head_dim));
                }
                sized(
                    "num_attention_heads * head_dim",
                    g.num_heads * g.head_dim,
                    bounds::WIDTH,
                )
            }
            AttentionConfig::Mla(m) => {
                sized("num_attention_heads", m.num_heads, bounds::HEADS)?;
                sized("kv_lora_rank", m.kv_lora_rank, bounds::WIDTH)?;
                sized("qk_rope_head_dim", m.qk_rope_head_dim, bounds::HEAD_DIM)?;
                sized("v_head_dim", m.v_head_dim, bounds::HEAD_DIM)?;
                if m.qk_nope_head_dim > bounds::HEAD_DIM {
                    return err(format!(
                        "`qk_nope_head_dim` {} is over {}",
                        m.qk_nope_head_dim,
                        bounds::HEAD_DIM
                    ));
                }
                if let Some(r) = m.q_lora_rank {
                    sized("q_lora_rank", r, bounds::WIDTH)?;
                }
                if !m.qk_rope_head_dim.is_multiple_of(2) {
                    return err(format!(
                        "`qk_rope_head_dim` {} must be even (rotary pairs)",
                        m.qk_rope_head_dim
                    ));
                }
                let q = m.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim);
                sized(
                    "num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim)",
                    q,
                    bounds::WIDTH * 4,
                )
            }
        }
    }

    fn validate_rope(&self, err: &dyn Fn(String) -> Result<()>) -> Result<()> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                err(format!("`{name}` {v} must be a finite number > 0"))
            }
        };
        positive("rope_theta", self.rope.theta)?;
        match &self.rope.scaling {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } => positive("rope_scaling.factor", *factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("rope_scaling.factor", *factor)?;
                positive("rope_scaling.low_freq_factor", *low_freq_factor)?;
                positive("rope_scaling.high_freq_factor", *high_freq_factor)?;
                positive(
                    "rope_scaling.original_max_position_embeddings",
                    *original_max_position_embeddings,
                )?;
                if high_freq_factor <= low_freq_factor {
                    return err(format!(
                        "`rope_scaling.high_freq_factor` {high_freq_factor} must be above `low_freq_factor` {low_freq_factor}"
                    ));
                }
                Ok(())
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                mscale_all_dim,
            } => {
                positive("rope_scaling.factor", *factor)?;
                positive(
                    "rope_scaling.original_max_position_embeddings",
                    *original_max_position_embeddings,
                )?;
                positive("rope_scaling.beta_fast", *beta_fast)?;
                positive("rope_scaling.beta_slow", *beta_slow)?;
                positive("rope_scaling.attention_factor", *attention_factor)?;
                match mscale_all_dim {
                    Some(m) if !m.is_finite() => err(format!("`rope_scaling.mscale_all_dim` {m} must be finite")),
                    _ => Ok(()),
                }
            }
            RopeScaling::Factors(f) => match f.iter().find(|d| !(d.is_finite() && **d > 0.0)) {
                Some(d) => err(format!(
                    "rope_freqs.weight holds {d}; every factor must be finite and > 0"
                )),
                None => Ok(()),
            },
        }
    }
}

impl MoeConfig {
    /// The expert counts and groups the router indexes with (see [`ModelConfig::validate`]).
    fn validate(
        &self,
        sized: &dyn Fn(&str, usize, usize) -> Result<()>,
        err: &dyn Fn(String) -> Result<()>,
    ) -> Result<()> {
        sized("n_routed_experts", self.n_routed_experts, bounds::EXPERTS)?;
        sized("num_experts_per_tok", self.num_experts_per_tok, self.n_routed_experts)?;
        sized(
            "moe_intermediate_size",
            self.moe_intermediate_size,
            bounds::INTERMEDIATE,
        )?;
        sized("moe_layer_freq", self.moe_layer_freq, bounds::LAYERS)?;
        if self.n_shared_experts > bounds::EXPERTS {
            return err(format!(
                "`n_shared_experts` {} is over {}",
                self.n_shared_experts,
                bounds::EXPERTS
            ));
        }
        sized("n_group", self.n_group, self.n_routed_experts)?;
        if !self.n_routed_experts.is_multiple_of(self.n_group) {
            return err(format!(
                "`n_routed_experts` {} is not a multiple of `n_group` {}",
                self.n_routed_experts, self.n_group
            ));
        }
        sized("topk_group", self.topk_group, self.n_group)?;
        let per_group = self.n_routed_experts / self.n_group;
        if self.num_experts_per_tok > self.topk_group * per_group {
            return err(format!(
                "`num_experts_per_tok` {} exceeds the experts of the kept groups ({})",
                self.num_experts_per_tok,
                self.topk_group * per_group
            ));
        }
        if self.topk_method == TopkMethod::NoauxTc && self.topk_group < self.n_group && per_group < 2 {
            return err(format!(
                "noaux_tc ranks groups by their two best scores, but `n_group` {} leaves {per_group} expert per group",
                self.n_group
            ));
        }
        if !(self.routed_scaling_factor.is_finite() && self.routed_scaling_factor > 0.0) {
            return err(format!(
                "`routed_scaling_factor` {} must be a finite number > 0",
                self.routed_scaling_factor
            ));
        }
        Ok(())
    }
}
