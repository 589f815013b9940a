//! # r1-core
//!
//! Embeddable inference for DeepSeek-R1-family reasoning models: Hugging Face checkpoints and
//! GGUF files of Llama, Qwen2 (the R1 distills), DeepSeek-V2 and DeepSeek-V3/R1, streamed with
//! the reasoning split from the answer; self-consistency votes and distillation datasets on top.
//!
//! ```no_run
//! use r1_core::{Engine, GenerateParams, LoadOptions, Message};
//! # fn main() -> r1_core::Result<()> {
//! let engine = Engine::load("model.gguf", &LoadOptions::default())?;
//! let mut session = engine.session();
//! let mut chat = vec![Message::user("What is 7 * 6?")];
//! let mut reply = session.chat(&chat, &GenerateParams::default())?;
//! for event in reply.by_ref() {
//!     print!("{}", event?.text);
//! }
//! chat.push(Message::assistant(&reply.trace().map(|t| t.answer.clone()).unwrap_or_default()));
//! # Ok(()) }
//! ```
//!
//! The public API is this page's re-exports: [`Engine`] (model + tokenizer), [`Session`] (a
//! conversation and its cache), [`Generation`] (a stream of [`Event`]s), [`Model`] and
//! [`Cache`] for logits, the parameter types, [`Trace`] and [`Error`]. `docs/api.md` walks
//! through it. Internally the flow is one module per concept: config → weights → layers /
//! attention / moe → models → model → generate.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod attention;
mod batch;
mod cache;
mod chat_template;
mod config;
mod consistency;
mod distill;
mod engine;
mod error;
mod generate;
mod kernels;
mod layers;
mod memory;
mod metadata;
mod model;
mod models;
mod moe;
mod sampling;
mod scheduler;
mod session;
mod stop;
mod threads;
mod tokenizer;
mod trace;
mod verify;
mod weights;

pub use batch::{BatchOptions, MIN_SHARED_PREFIX};
pub use cache::{Cache, CachePrecision};
pub use chat_template::{ChatTemplate, Message, DEEPSEEK_R1_TEMPLATE};
pub use config::Architecture;
pub use consistency::{normalize_answer, Consensus, Sample, Vote, MAX_SAMPLES};
pub use distill::{DistillFormat, DistillRecord, DistillWriter, DEFAULT_SHARD_GENERATIONS};
pub use engine::Engine;
pub use error::{Error, ErrorCode, Result};
pub use generate::{CancelHandle, Event, Finish, FinishReason, GenerateParams, Generation, Prompt, Usage};
pub use model::{DType, LoadOptions, Logits, Model, DEFAULT_PREFILL_CHUNK};
pub use moe::{LayerRouting, TokenRouting};
pub use sampling::{Sampler, SamplingParams, Stage, TokenLogprobs, MAX_TOP_LOGPROBS};
pub use session::Session;
pub use threads::{set_threads, threads};
pub use tokenizer::{Detokenizer, Tokenizer};
pub use trace::{final_answer, steps, Channel, Step, StepConfig, ToolCall, Trace, TraceParser};
pub use verify::{StepVerifier, Verdict, VerifiedStep, MAX_STEP_RETRIES};
pub use weights::quantize::QuantizeTo;
pub use weights::Progress;

/// The walk-through of the public API; its examples run as doc tests.
#[doc = include_str!("../../docs/api.md")]
#[cfg(doctest)]
pub struct ApiGuide;

/// The reasoning features' guide; its examples compile as doc tests.
#[doc = include_str!("../../docs/reasoning.md")]
#[cfg(doctest)]
pub struct ReasoningGuide;

// The handles an application moves across threads are thread-safe and own their data: checked
// when the crate compiles.
const _: fn() = || {
    fn send_sync_static<T: Send + Sync + 'static>() {}
    fn send_static<T: Send + 'static>() {}
    send_sync_static::<Engine>();
    send_sync_static::<Model>();
    send_sync_static::<Cache>();
    send_static::<Generation>();
    send_sync_static::<Session>();
};

/// Internals for r1's own tests and benches (feature `internals`): not part of the API, no
/// stability promise.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::config::{AttentionConfig, ModelConfig};
    pub use crate::kernels::kquant::KFormat;
    pub use crate::kernels::matmul::{Kind, QuantMatrix};
    pub use crate::kernels::quant::Format;
    pub use crate::layers::linear::Linear;
    pub use crate::weights::gguf::GgufFile;
    pub use crate::weights::quantize::quantize_matrix;
    pub use crate::weights::{Matrix, Weights};

    /// A model's normalized configuration.
    pub fn config(model: &crate::Model) -> &ModelConfig {
        model.config()
    }

    /// A model built from opened weights, with caches of `precision`.
    pub fn model_from_weights(
        config: ModelConfig,
        weights: &Weights,
        precision: crate::CachePrecision,
    ) -> crate::Result<crate::Model> {
        crate::Model::from_weights(config, weights, crate::DEFAULT_PREFILL_CHUNK, precision)
    }

    /// The config of a GGUF file.
    pub fn gguf_config(file: &GgufFile) -> crate::Result<ModelConfig> {
        ModelConfig::from_metadata(&file.metadata())
    }

    pub use crate::weights::safetensors::SafetensorsStore;

    /// Causal grouped-query attention of `q [len, heads, head_dim]` over `k`, `v` `[offset + len,
    /// kv_heads, head_dim]` through r1's fused kernels (the attention bench).
    pub fn attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        offset: usize,
    ) -> Vec<f32> {
        attention_of(q, k, v, heads, kv_heads, head_dim, offset)
    }

    /// [`attention`] over keys and values cached in f16.
    pub fn attention_f16(
        q: &[f32],
        k: &[half::f16],
        v: &[half::f16],
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        offset: usize,
    ) -> Vec<f32> {
        attention_of(q, k, v, heads, kv_heads, head_dim, offset)
    }

    fn attention_of<T: crate::kernels::f16::Element>(
        q: &[f32],
        k: &[T],
        v: &[T],
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        offset: usize,
    ) -> Vec<f32> {
        use crate::attention::fused::{attend, Shape};
        let width = kv_heads * head_dim;
        let rows = |x| crate::cache::SplitRows::parts(x, &[], width);
        let shape = Shape {
            heads,
            kv_heads,
            head_dim,
            value_dim: head_dim,
            offset,
            scale: 1.0 / (head_dim as f32).sqrt(),
        };
        attend(q, rows(k), rows(v), shape)
    }

    /// What loading does with a GGUF file's header, on bytes in memory: parse it, then build
    /// the model config and the tokenizer from its metadata (the GGUF fuzz target).
    pub fn gguf_header(bytes: &[u8]) -> crate::Result<(ModelConfig, crate::Tokenizer)> {
        let m = crate::weights::gguf::metadata_of_bytes(bytes, std::path::Path::new("fuzz.gguf"))?;
        Ok((ModelConfig::from_metadata(&m)?, crate::Tokenizer::from_metadata(&m)?))
    }
}
