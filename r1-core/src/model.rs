//! The public model: load a checkpoint, run tokens through it with a caller-owned [`Cache`].

use crate::cache::{Cache, CachePrecision};
use crate::config::{config_path, Architecture, ModelConfig};
use crate::error::{Error, Result};
use crate::metadata::Metadata;
use crate::models::{deepseek::Deepseek, llama::Llama};
use crate::moe::LayerRouting;
use crate::weights::gguf::{has_gguf_magic, GgufFile};
use crate::weights::quantize::QuantizeTo;
use crate::weights::{Progress, Weights};
use candle_core::Tensor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How weights are stored in memory. On the CPU activations are always f32; narrow weights
/// are widened per product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DType {
    /// 32-bit floats: exact, 4 bytes per weight.
    #[default]
    F32,
    /// IEEE half precision: 2 bytes per weight.
    F16,
    /// bfloat16: 2 bytes per weight, f32's range.
    BF16,
}

impl DType {
    pub(crate) fn to_candle(self) -> candle_core::DType {
        match self {
            DType::F32 => candle_core::DType::F32,
            DType::F16 => candle_core::DType::F16,
            DType::BF16 => candle_core::DType::BF16,
        }
    }
}

impl std::str::FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            other => Err(Error::InvalidArgument(format!("dtype `{other}` (f32, f16 or bf16)"))),
        }
    }
}

/// The default prefill chunk of dense models: long prompts run this many tokens at a time, which
/// bounds the activations a pass holds (attention never builds a score tensor).
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// The default prefill chunk of Mixture-of-Experts models: MLA expands its latent cache to keys
/// and values once per pass, so fewer, longer passes expand less. DeepSeek-shaped MoE at 4,096
/// tokens of prompt, two threads (2026-12-08): 211–214 tokens/s at 512 (peak RSS 944–946 MiB),
/// 236–277 at 1,024 (966–973 MiB), 248–278 at 2,048 (996–1,002 MiB): 1,024 keeps the speed
/// for 30 MiB less.
pub(crate) const MOE_PREFILL_CHUNK: usize = 1024;

/// How to load a model. Start from `LoadOptions::default()` and change what you need.
#[derive(Clone)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Storage dtype of a checkpoint's weights (default f32). GGUF files keep their own types.
    pub dtype: DType,
    /// Quantize a checkpoint's linear weights while loading (`None`: keep them). GGUF files
    /// keep their own quantization.
    pub quantize: Option<QuantizeTo>,
    /// Loading progress, for a progress bar; returning `false` stops the load (the library
    /// itself never prints).
    pub progress: Option<Progress>,
    /// Compute threads (`None` or 0: one per physical core). Process-wide: see [`set_threads`](crate::set_threads).
    pub threads: Option<usize>,
    /// Most prompt tokens run in one forward pass; 0 (the default) for the model's own:
    /// [`DEFAULT_PREFILL_CHUNK`], or 1,024 for Mixture-of-Experts models (DeepSeek V2/V3/R1).
    pub prefill_chunk: usize,
    /// How a grouped-query model's KV cache stores keys and values (default
    /// [`CachePrecision::Auto`]: f16 for a GGUF file's weights or weights quantized at load). A
    /// decode step reads the whole cache, so f16 halves the bytes it reads there (the dense twin
    /// of docs/performance.md decoded at 34.5 tokens/s instead of 31.0 at 4,096 tokens) and the
    /// memory it holds. MLA models keep their latent cache as it is.
    pub cache_precision: CachePrecision,
}

impl LoadOptions {
    /// Sets [`LoadOptions::dtype`].
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Sets [`LoadOptions::quantize`].
    pub fn with_quantize(mut self, quantize: Option<QuantizeTo>) -> Self {
        self.quantize = quantize;
        self
    }

    /// Sets [`LoadOptions::progress`].
    pub fn with_progress(mut self, f: impl Fn(u64, u64) -> bool + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }

    /// Sets [`LoadOptions::threads`].
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Sets [`LoadOptions::prefill_chunk`].
    pub fn with_prefill_chunk(mut self, tokens: usize) -> Self {
        self.prefill_chunk = tokens;
        self
    }

    /// Sets [`LoadOptions::cache_precision`].
    pub fn with_cache_precision(mut self, precision: CachePrecision) -> Self {
        self.cache_precision = precision;
        self
    }
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("dtype", &self.dtype)
            .field("quantize", &self.quantize)
            .field("progress", &self.progress.is_some())
            .field("threads", &self.threads)
            .field("prefill_chunk", &self.prefill_chunk)
            .field("cache_precision", &self.cache_precision)
            .finish()
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            quantize: None,
            progress: None,
            threads: None,
            prefill_chunk: 0,
            cache_precision: CachePrecision::Auto,
        }
    }
}

/// Logits as plain data: `rows × vocab` f32 values, row-major (one row per input position).
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    values: Vec<f32>,
    rows: usize,
    vocab: usize,
}

impl Logits {
    pub(crate) fn from_tensor(t: &Tensor) -> Result<Logits> {
        let (rows, vocab) = t.dims2()?;
        Ok(Logits {
            values: t.flatten_all()?.to_vec1()?,
            rows,
            vocab,
        })
    }

    fn concat(parts: Vec<Logits>, vocab: usize) -> Logits {
        let rows = parts.iter().map(|p| p.rows).sum();
        let mut values = Vec::with_capacity(rows * vocab);
        parts.into_iter().for_each(|p| values.extend(p.values));
        Logits { values, rows, vocab }
    }

    /// `(rows, vocab)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.vocab)
    }

    /// Number of positions.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Vocabulary size (the width of a row).
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Row `i`'s logits, or `None` past the end.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        (i < self.rows).then(|| &self.values[i * self.vocab..(i + 1) * self.vocab])
    }

    /// The last row (every `Logits` has at least one).
    pub fn last(&self) -> &[f32] {
        &self.values[(self.rows.saturating_sub(1)) * self.vocab..]
    }

    /// All values, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.values
    }

    /// The values, row-major, without a copy.
    pub fn into_vec(self) -> Vec<f32> {
        self.values
    }

    /// Writes the values into a caller's buffer, which must hold exactly `rows × vocab` floats.
    pub fn copy_to(&self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.values.len() {
            return Err(Error::InvalidArgument(format!(
                "output buffer holds {} floats but the logits are {} x {} = {}",
                out.len(),
                self.rows,
                self.vocab,
                self.values.len()
            )));
        }
        out.copy_from_slice(&self.values);
        Ok(())
    }
}

/// What a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// Nothing: the tokens only fill the cache (a prefill chunk before the last).
    None,
    /// The last position's logits.
    Last,
    /// Every position's logits.
    All,
}

#[derive(Debug)]
enum Family {
    Llama(Llama),
    Deepseek(Deepseek),
}

#[derive(Debug)]
struct Inner {
    config: ModelConfig,
    family: Family,
    prefill_chunk: usize,
    /// Whether GQA caches keep keys and values in f16.
    half_cache: bool,
}

/// A loaded model. Immutable after loading and cheap to clone (the weights are shared): share it
/// between threads (`Model: Send + Sync`) and give each sequence its own [`Cache`].
#[derive(Debug, Clone)]
pub struct Model {
    inner: Arc<Inner>,
}

/// Where a loaded model's tokenizer is described.
pub(crate) enum TokenizerSource {
    /// A GGUF file's metadata (`tokenizer.ggml.*`).
    Metadata(Metadata),
    /// A checkpoint folder (`tokenizer.json` and its configs).
    Folder(PathBuf),
}

/// What a path holds, judged by content rather than by name.
enum Checkpoint {
    /// A GGUF file (its magic bytes).
    Gguf(PathBuf),
    /// A folder with `config.json` and safetensors, or one `.safetensors` file beside its
    /// `config.json` (the folder is the checkpoint).
    Folder(PathBuf),
}

impl Checkpoint {
    fn identify(path: &Path) -> Result<Checkpoint> {
        let not_found = |msg: &str| Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, msg.to_string()),
        };
        if path.is_dir() {
            return Ok(Checkpoint::Folder(path.to_path_buf()));
        }
        if !path.is_file() {
            return Err(not_found("no checkpoint folder, safetensors file or GGUF file here"));
        }
        if has_gguf_magic(path) {
            return Ok(Checkpoint::Gguf(path.to_path_buf()));
        }
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !config_path(dir).is_file() {
            return Err(Error::BadWeights {
                path: path.to_path_buf(),
                msg: "not a GGUF file (no `GGUF` magic), and no config.json beside it to read it as a safetensors checkpoint".into(),
            });
        }
        Ok(Checkpoint::Folder(dir.to_path_buf()))
    }
}

impl Model {
    /// Loads a Hugging Face checkpoint (a folder of `config.json` + safetensors, sharded or
    /// not, or one `.safetensors` file beside its `config.json`) or a GGUF file, told apart by
    /// content.
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Model> {
        let model = Self::load_with_tokenizer_source(path.as_ref(), options)?.0;
        crate::memory::release_free_heap();
        Ok(model)
    }

    /// [`Model::load`], and where the model's tokenizer is: the GGUF header already parsed, or
    /// the checkpoint folder (so an engine neither identifies nor parses the file again).
    pub(crate) fn load_with_tokenizer_source(path: &Path, options: &LoadOptions) -> Result<(Model, TokenizerSource)> {
        if let Some(n) = options.threads {
            crate::threads::set_threads(n)?;
        }
        let dtype = options.dtype.to_candle();
        let device = candle_core::Device::Cpu;
        let (config, weights, source) = match Checkpoint::identify(path)? {
            Checkpoint::Gguf(file) => {
                let file = GgufFile::open(&file)?;
                let metadata = file.metadata();
                let config = ModelConfig::from_metadata(&metadata)?;
                let weights = Weights::from_gguf(file, dtype, &device)?.with_progress(options.progress.clone());
                (config, weights, TokenizerSource::Metadata(metadata))
            }
            Checkpoint::Folder(dir) => {
                let config = ModelConfig::from_file(&config_path(&dir))?;
                let weights = Weights::open(&dir, config.fp8, dtype, &device)?
                    .with_quantization(options.quantize)
                    .with_progress(options.progress.clone());
                (config, weights, TokenizerSource::Folder(dir))
            }
        };
        let model = Self::from_weights(config, &weights, options.prefill_chunk, options.cache_precision)?;
        weights.check_unchanged()?;
        weights.finish_progress()?;
        Ok((model, source))
    }

    /// Builds the model `config` describes from `weights`, with prefill chunks of
    /// `prefill_chunk` tokens (0: the model's default, see [`LoadOptions::prefill_chunk`]) and
    /// caches of `precision`.
    pub(crate) fn from_weights(
        config: ModelConfig,
        weights: &Weights,
        prefill_chunk: usize,
        precision: CachePrecision,
    ) -> Result<Model> {
        let prefill_chunk = match (prefill_chunk, &config.moe) {
            (0, Some(_)) => MOE_PREFILL_CHUNK,
            (0, None) => DEFAULT_PREFILL_CHUNK,
            (n, _) => n,
        };
        let half_cache = match precision {
            CachePrecision::F32 => false,
            CachePrecision::F16 => true,
            _ => weights.quantized("model.layers.0.self_attn.k_proj.weight"),
        };
        let family = match config.arch {
            Architecture::Llama | Architecture::Qwen2 => Family::Llama(Llama::load(weights, &config)?),
            Architecture::DeepseekV2 | Architecture::DeepseekV3 => Family::Deepseek(Deepseek::load(weights, &config)?),
        };
        Ok(Model {
            inner: Arc::new(Inner {
                config,
                family,
                prefill_chunk,
                half_cache,
            }),
        })
    }

    /// The normalized configuration.
    pub(crate) fn config(&self) -> &ModelConfig {
        &self.inner.config
    }

    /// The architecture.
    pub fn architecture(&self) -> Architecture {
        self.inner.config.arch
    }

    /// Vocabulary size: the width of a logits row.
    pub fn vocab_size(&self) -> usize {
        self.inner.config.vocab_size
    }

    /// The most positions a sequence may have (`max_position_embeddings`).
    pub fn context_length(&self) -> usize {
        self.inner.config.max_position_embeddings
    }

    /// Decoder layers.
    pub fn num_layers(&self) -> usize {
        self.inner.config.num_hidden_layers
    }

    /// Whether the feed-forward layers are mixtures of experts (DeepSeek V2/V3).
    pub fn is_moe(&self) -> bool {
        self.inner.config.moe.is_some()
    }

    /// Bytes the cache holds per token: keys and values (f16 or f32, see
    /// [`LoadOptions::cache_precision`]), or MLA's latent and rope key (f32).
    pub fn cache_bytes_per_token(&self) -> usize {
        let bytes = if self.inner.half_cache && self.inner.config.mla().is_none() {
            2
        } else {
            4
        };
        self.inner.config.cache_floats_per_token() * bytes
    }

    /// Prompt tokens run per forward pass.
    pub fn prefill_chunk(&self) -> usize {
        self.inner.prefill_chunk
    }

    /// An empty cache sized for this model's context.
    pub fn new_cache(&self) -> Cache {
        let c = &self.inner.config;
        Cache::new(
            c.num_hidden_layers,
            c.mla().is_some(),
            self.inner.half_cache,
            c.max_position_embeddings,
        )
    }

    /// Runs `tokens` after what `cache` holds; returns logits `[tokens.len(), vocab]`. Long
    /// inputs run in chunks of [`Model::prefill_chunk`] tokens.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> Result<Logits> {
        self.run_chunked(tokens, cache, None, Output::All, &|| false)?
            .ok_or_else(|| Error::Internal("forward produced no logits".into()))
    }

    /// Like [`Model::forward`], but returns only the last position's logits (one row): what
    /// generation needs, without the LM head on every prompt token.
    pub fn forward_last(&self, tokens: &[u32], cache: &mut Cache) -> Result<Logits> {
        self.run_chunked(tokens, cache, None, Output::Last, &|| false)?
            .ok_or_else(|| Error::Internal("forward produced no logits".into()))
    }

    /// Like [`Model::forward`], and appends each MoE layer's routing decisions to `routing`.
    pub fn forward_traced(&self, tokens: &[u32], cache: &mut Cache, routing: &mut Vec<LayerRouting>) -> Result<Logits> {
        self.run_chunked(tokens, cache, Some(routing), Output::All, &|| false)?
            .ok_or_else(|| Error::Internal("forward produced no logits".into()))
    }

    /// Next-token logits of several sequences in one pass: `inputs[i]` runs after what
    /// `caches[i]` holds (one cache per sequence, each its own), and row `i` of the result is
    /// the logits at its last position. Every weight is read once for the whole batch, which is
    /// what makes decoding several sequences together cost little more than one; attention
    /// reads each sequence's own cache. The rows equal those of running each sequence alone, to
    /// float rounding. A failed pass leaves every cache as it was.
    pub fn forward_batch(&self, inputs: &[&[u32]], caches: &mut [&mut Cache]) -> Result<Logits> {
        crate::threads::mark_started();
        let starts: Vec<usize> = caches.iter().map(|c| c.len()).collect();
        let result = self.forward_batch_inner(inputs, caches);
        if result.is_err() {
            for (cache, &start) in caches.iter_mut().zip(&starts) {
                cache.truncate(start.min(cache.len()));
            }
        }
        result
    }

    fn forward_batch_inner(&self, inputs: &[&[u32]], caches: &mut [&mut Cache]) -> Result<Logits> {
        if inputs.is_empty() {
            return Err(Error::InvalidArgument("an empty batch".into()));
        }
        let (hidden, head) = match &self.inner.family {
            Family::Llama(m) => (m.forward_batch_hidden(inputs, caches)?, m.lm_head()),
            Family::Deepseek(m) => (m.forward_batch_hidden(inputs, caches)?, m.lm_head()),
        };
        // Each sequence's last row, then the LM head once for all of them.
        let ends: Vec<u32> = inputs
            .iter()
            .scan(0u32, |end, t| {
                *end += t.len() as u32;
                Some(*end - 1)
            })
            .collect();
        let last = hidden.index_select(&Tensor::new(ends.as_slice(), hidden.device())?, 0)?;
        let logits = head.forward(&last)?.to_dtype(candle_core::DType::F32)?;
        Logits::from_tensor(&logits)
    }

    /// Logits of every position of `tokens` from an empty cache.
    pub fn logits(&self, tokens: &[u32]) -> Result<Logits> {
        let mut cache = self.new_cache();
        cache.reserve(tokens.len());
        self.forward(tokens, &mut cache)
    }

    /// Runs `tokens` in chunks; between chunks, and between the layers of a chunk, `stop()` may
    /// end the run with [`Error::Cancelled`]. The cache keeps the chunks that completed.
    pub(crate) fn run_chunked(
        &self,
        tokens: &[u32],
        cache: &mut Cache,
        mut routing: Option<&mut Vec<LayerRouting>>,
        output: Output,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Logits>> {
        crate::models::check_tokens(tokens, cache)?;
        let chunks: Vec<&[u32]> = tokens.chunks(self.inner.prefill_chunk).collect();
        let mut parts = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            if i > 0 && stop() {
                return Err(Error::Cancelled(format!(
                    "prefill stopped after {} of {} tokens",
                    i * self.inner.prefill_chunk,
                    tokens.len()
                )));
            }
            let last_chunk = i + 1 == chunks.len();
            let want = match output {
                Output::All => Output::All,
                Output::Last if last_chunk => Output::Last,
                _ => Output::None,
            };
            if let Some(l) = self.run(chunk, cache, routing.as_deref_mut(), want, stop)? {
                parts.push(l);
            }
        }
        Ok((!parts.is_empty()).then(|| Logits::concat(parts, self.vocab_size())))
    }

    /// One forward pass; a failed (or stopped) pass leaves the cache as it was.
    fn run(
        &self,
        tokens: &[u32],
        cache: &mut Cache,
        routing: Option<&mut Vec<LayerRouting>>,
        output: Output,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Logits>> {
        crate::threads::mark_started();
        let start = cache.len();
        let result = self.run_inner(tokens, cache, routing, output, stop);
        if result.is_err() {
            cache.truncate(start);
        }
        result
    }

    fn run_inner(
        &self,
        tokens: &[u32],
        cache: &mut Cache,
        routing: Option<&mut Vec<LayerRouting>>,
        output: Output,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Logits>> {
        let (hidden, head) = match &self.inner.family {
            Family::Llama(m) => (m.forward_hidden(tokens, cache, routing, stop)?, m.lm_head()),
            Family::Deepseek(m) => (m.forward_hidden(tokens, cache, routing, stop)?, m.lm_head()),
        };
        let hidden = match output {
            Output::None => return Ok(None),
            Output::Last => hidden.narrow(0, hidden.dim(0)? - 1, 1)?,
            Output::All => hidden,
        };
        let logits = head.forward(&hidden)?.to_dtype(candle_core::DType::F32)?;
        Logits::from_tensor(&logits).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_prefill_stops_between_chunks_or_layers_and_keeps_the_chunks_it_ran() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen2_tiny");
        let model = Model::load(&dir, &LoadOptions::default().with_prefill_chunk(4)).unwrap();
        let tokens: Vec<u32> = (1..=20).collect();
        let mut cache = model.new_cache();
        let asked = Cell::new(0);
        // Asked between the layers of each chunk and before each chunk after the first: the
        // third ask is inside the second chunk, which is rolled back.
        let stop = || {
            asked.set(asked.get() + 1);
            asked.get() == 3
        };
        let err = model
            .run_chunked(&tokens, &mut cache, None, Output::Last, &stop)
            .unwrap_err();
        assert_eq!(err.code(), crate::ErrorCode::Cancelled);
        assert_eq!(model.num_layers(), 2);
        assert_eq!(
            (asked.get(), cache.len()),
            (3, 4),
            "one whole chunk kept, the stopped one rolled back"
        );
        // The chunk that ran is valid: finishing the prompt gives the one-pass logits.
        let rest = model.forward_last(&tokens[4..], &mut cache).unwrap();
        let whole = model.logits(&tokens).unwrap();
        let diff: f32 = rest
            .last()
            .iter()
            .zip(whole.last())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn quantized_weights_cache_f16_and_checkpoints_f32_unless_asked() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen2_tiny");
        let load = |o: LoadOptions| Model::load(&dir, &o).unwrap();
        let half = |m: &Model| matches!(m.new_cache().layer(0).unwrap(), crate::cache::LayerCache::KvHalf(_));
        let plain = load(LoadOptions::default());
        let asked = load(LoadOptions::default().with_cache_precision(CachePrecision::F16));
        let quantized = load(LoadOptions::default().with_quantize(Some(QuantizeTo::Q8_0)));
        let bf16 = load(LoadOptions::default().with_dtype(crate::DType::BF16));
        assert_eq!(
            (half(&plain), half(&asked), half(&quantized), half(&bf16)),
            (false, true, true, false)
        );
        // An f16 cache changes the logits by the rounding of keys and values (11 significant
        // bits), not more: the same model, prompt and decode step beside an f32 cache.
        let tokens: Vec<u32> = (1..=40).collect();
        let step = |m: &Model| {
            let mut cache = m.new_cache();
            m.forward_last(&tokens[..39], &mut cache).unwrap();
            m.forward_last(&tokens[39..], &mut cache).unwrap().last().to_vec()
        };
        let (want, got) = (step(&plain), step(&asked));
        let norm = |x: &[f32]| x.iter().map(|a| a * a).sum::<f32>().sqrt();
        let diff: Vec<f32> = want.iter().zip(&got).map(|(a, b)| a - b).collect();
        let rel = norm(&diff) / norm(&want);
        assert!(rel > 0.0 && rel < 2e-3, "f16 cache: relative L2 {rel}");
    }
}
