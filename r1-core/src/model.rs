//! The public model: load a checkpoint, run tokens through it with a caller-owned [`Cache`].

use crate::cache::Cache;
use crate::config::{config_path, Architecture, ModelConfig};
use crate::error::{Error, Result};
use crate::models::{deepseek::Deepseek, llama::Llama};
use crate::moe::LayerRouting;
use crate::weights::gguf::GgufFile;
use crate::weights::quantize::QuantizeTo;
use crate::weights::Weights;
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use std::sync::Arc;

/// Called while loading with (bytes of weights read so far, total bytes of the weight files).
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How to load a model.
#[derive(Clone)]
pub struct LoadOptions {
    /// Storage dtype of the weights: `F32` (default) or `BF16`/`F16` to halve memory. On the CPU
    /// activations are always f32 and narrow weights are widened per matmul.
    pub dtype: DType,
    /// Where tensors live.
    pub device: Device,
    /// Quantize a checkpoint's linear weights while loading (`None`: keep them). GGUF files
    /// keep their own quantization.
    pub quantize: Option<QuantizeTo>,
    /// Loading progress, for a progress bar (the library itself never prints).
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("dtype", &self.dtype)
            .field("device", &self.device)
            .field("quantize", &self.quantize)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            quantize: None,
            progress: None,
        }
    }
}

#[derive(Debug, Clone)]
enum Family {
    Llama(Llama),
    Deepseek(Deepseek),
}

/// A loaded model. Immutable after loading: share it between threads (`Model: Send + Sync`) and
/// give each sequence its own [`Cache`].
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    family: Family,
}

impl Model {
    /// Loads a Hugging Face checkpoint folder (`config.json` + safetensors, sharded or not) or a
    /// GGUF file.
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Model> {
        let path = path.as_ref();
        let (config, weights) = if path.is_file() {
            let file = GgufFile::open(path)?;
            let config = ModelConfig::from_gguf(&file)?;
            (
                config,
                Weights::from_gguf(file, options.dtype, &options.device)?.with_progress(options.progress.clone()),
            )
        } else if path.is_dir() {
            let config = ModelConfig::from_file(&config_path(path))?;
            let weights = Weights::open(path, config.fp8, options.dtype, &options.device)?
                .with_quantization(options.quantize)
                .with_progress(options.progress.clone());
            (config, weights)
        } else {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no checkpoint folder or GGUF file here"),
            });
        };
        let model = Self::from_weights(config, &weights)?;
        // Headers and skipped tensors are never read: report the end explicitly.
        if let Some(progress) = &options.progress {
            progress(weights.total_bytes(), weights.total_bytes());
        }
        Ok(model)
    }

    /// Builds the model `config` describes from `weights`.
    pub fn from_weights(config: ModelConfig, weights: &Weights) -> Result<Model> {
        let family = match config.arch {
            Architecture::Llama | Architecture::Qwen2 => Family::Llama(Llama::load(weights, &config)?),
            Architecture::DeepseekV2 | Architecture::DeepseekV3 => Family::Deepseek(Deepseek::load(weights, &config)?),
        };
        Ok(Model { config, family })
    }

    /// The normalized configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// An empty cache sized for this model's context.
    pub fn new_cache(&self) -> Cache {
        Cache::new(
            self.config.num_hidden_layers,
            self.config.mla().is_some(),
            self.config.max_position_embeddings,
        )
    }

    /// Runs `tokens` after what `cache` holds; returns logits `[tokens.len(), vocab]` (f32).
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> Result<Tensor> {
        self.run(tokens, cache, None, false)
    }

    /// Like [`Model::forward`], but returns only the last position's logits `[vocab]`: what
    /// generation needs, without the LM head on every prompt token.
    pub fn forward_last(&self, tokens: &[u32], cache: &mut Cache) -> Result<Tensor> {
        Ok(self.run(tokens, cache, None, true)?.squeeze(0)?)
    }

    /// Like [`Model::forward`], and appends each MoE layer's routing decisions to `routing`.
    pub fn forward_traced(&self, tokens: &[u32], cache: &mut Cache, routing: &mut Vec<LayerRouting>) -> Result<Tensor> {
        self.run(tokens, cache, Some(routing), false)
    }

    fn run(
        &self,
        tokens: &[u32],
        cache: &mut Cache,
        routing: Option<&mut Vec<LayerRouting>>,
        last: bool,
    ) -> Result<Tensor> {
        let start = cache.len();
        let result = self.run_inner(tokens, cache, routing, last);
        if result.is_err() {
            // Leave the cache as it was: a failed step must not half-append.
            cache.truncate(start);
        }
        result
    }

    fn run_inner(
        &self,
        tokens: &[u32],
        cache: &mut Cache,
        routing: Option<&mut Vec<LayerRouting>>,
        last: bool,
    ) -> Result<Tensor> {
        let (hidden, head) = match &self.family {
            Family::Llama(m) => (m.forward_hidden(tokens, cache)?, m.lm_head()),
            Family::Deepseek(m) => (m.forward_hidden(tokens, cache, routing)?, m.lm_head()),
        };
        let hidden = if last {
            hidden.narrow(0, hidden.dim(0)? - 1, 1)?
        } else {
            hidden
        };
        Ok(head.forward(&hidden)?.to_dtype(DType::F32)?)
    }
}
