//! # r1-core
//!
//! Embeddable inference for DeepSeek-R1-family reasoning models: Hugging Face checkpoints of
//! Llama, Qwen2 (the R1 distills), DeepSeek-V2 and DeepSeek-V3/R1, loaded through mmap and run
//! with a caller-owned cache.
//!
//! ```no_run
//! use r1_core::{LoadOptions, Model};
//! # fn main() -> r1_core::Result<()> {
//! let model = Model::load("path/to/checkpoint", &LoadOptions::default())?;
//! let mut cache = model.new_cache();
//! let logits = model.forward(&[0, 17, 42], &mut cache)?; // [3, vocab]
//! let next = model.forward_last(&[7], &mut cache)?; // [vocab], position 3
//! # let _ = (logits, next);
//! # Ok(()) }
//! ```
//!
//! The flow, one module per concept: [`config`] → [`weights`] → [`layers`] / [`attention`] /
//! [`moe`] → [`models`] → [`Model`], with the [`cache`] owned by the caller.

pub mod attention;
pub mod cache;
pub mod chat_template;
pub mod config;
pub mod error;
pub mod generate;
pub mod kernels;
pub mod layers;
mod model;
pub mod models;
pub mod moe;
pub mod sampling;
pub mod tokenizer;
pub mod trace;
pub mod weights;

pub use cache::Cache;
pub use config::ModelConfig;
pub use error::{Error, Result};
pub use model::{LoadOptions, Model, ProgressFn};
pub use moe::{LayerRouting, TokenRouting};

/// The tensor type of r1's API (candle's).
pub use candle_core::{DType, Device, Tensor};
