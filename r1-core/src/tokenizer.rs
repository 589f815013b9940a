//! Text ↔ token ids: the `tokenizers` crate from `tokenizer.json`, the special tokens a model's
//! files name, and incremental detokenization for streaming.

use crate::chat_template::ChatTemplate;
use crate::error::{Error, Result};
use crate::metadata::{MetaValue, Metadata};
use serde_json::Value;
use std::path::Path;

/// A model's tokenizer and the special tokens its files name.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
    chat_template: Option<ChatTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

/// A special token in `tokenizer_config.json`: `"<s>"` or `{"content": "<s>", ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Ids from a JSON value that is one id or a list of ids.
fn ids_of(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|n| n as u32)).collect(),
        Some(x) => x.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        None => vec![],
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::json(path, e))
}

impl Tokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` (special tokens, chat template) and
    /// `generation_config.json` (end tokens) from a checkpoint folder. `config_eos` are the end
    /// tokens of `config.json`.
    pub fn from_dir(dir: &Path, config_eos: &[u32]) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let bad = |msg: String| Error::Tokenizer {
            path: Some(path.clone()),
            msg,
        };
        let inner = guarded("reading tokenizer.json", || tokenizers::Tokenizer::from_file(&path))
            .map_err(bad)?
            .map_err(|e| bad(e.to_string()))?;
        let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
        let gen = read_json(&dir.join("generation_config.json"))?.unwrap_or(Value::Null);
        let bos_text = token_string(tc.get("bos_token"));
        let eos_text = token_string(tc.get("eos_token"));
        let bos = bos_text
            .as_deref()
            .and_then(|t| inner.token_to_id(t))
            .or_else(|| ids_of(gen.get("bos_token_id")).first().copied());
        let mut eos: Vec<u32> = config_eos.to_vec();
        eos.extend(ids_of(gen.get("eos_token_id")));
        eos.extend(eos_text.as_deref().and_then(|t| inner.token_to_id(t)));
        dedup_in_order(&mut eos);
        let template = match tc.get("chat_template") {
            Some(v) => ChatTemplate::from_config_value(v)?,
            None => None,
        };
        let mut tok = Tokenizer::new(inner, bos, eos, template)?;
        tok.add_bos = tc.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false);
        Ok(tok)
    }

    /// A tokenizer from parts (the GGUF reader builds one from metadata). With no chat template
    /// the built-in DeepSeek-R1 template is used.
    pub(crate) fn new(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Vec<u32>,
        template: Option<ChatTemplate>,
    ) -> Result<Self> {
        let bos_text = bos.and_then(|b| inner.id_to_token(b));
        let eos_text = eos.first().and_then(|&e| inner.id_to_token(e));
        let template = match template {
            Some(t) => t,
            None => ChatTemplate::deepseek_r1()?,
        };
        Ok(Tokenizer {
            inner,
            bos,
            eos,
            add_bos: false,
            chat_template: Some(template.with_special_tokens(bos_text, eos_text)),
        })
    }

    /// Sets whether raw prompts get a BOS token prepended by r1 (GGUF's `add_bos_token`, Llama's
    /// `add_bos_token`) when the tokenizer's own post-processor does not add it.
    pub fn set_add_bos(&mut self, add: bool) {
        self.add_bos = add;
    }

    /// Token ids of `text`. With `add_special_tokens` the tokenizer's post-processor runs (it adds
    /// BOS where the model's files say so).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        if text.len() > MAX_TEXT_BYTES {
            return Err(Error::InvalidArgument(format!(
                "the text to encode is {} bytes; at most {MAX_TEXT_BYTES}",
                text.len()
            )));
        }
        let failed = |msg: String| Error::Tokenizer {
            path: None,
            msg: format!("encoding {:?}: {msg}", preview(text)),
        };
        let enc = guarded("encoding", || self.inner.encode(text, add_special_tokens))
            .map_err(failed)?
            .map_err(|e| failed(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special_tokens && self.add_bos {
            if let Some(b) = self.bos {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
        }
        Ok(ids)
    }

    /// Text of `ids`; special tokens are dropped when `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let failed = |msg: String| Error::Tokenizer {
            path: None,
            msg: format!("decoding {} ids: {msg}", ids.len()),
        };
        guarded("decoding", || self.inner.decode(ids, skip_special_tokens))
            .map_err(failed)?
            .map_err(|e| failed(e.to_string()))
    }

    /// The id of a token's exact string (e.g. `"</think>"`), if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Every token that ends generation (config, generation config, tokenizer config).
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// Adds end tokens (e.g. from the model config).
    pub fn add_eos(&mut self, ids: &[u32]) {
        self.eos.extend_from_slice(ids);
        dedup_in_order(&mut self.eos);
    }

    /// The chat template (the checkpoint's, or the built-in DeepSeek-R1 one).
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }
}

/// llama.cpp's pre-tokenizer regexes by `tokenizer.ggml.pre` name (from its `llama-vocab.cpp`),
/// applied in sequence, each splitting the pieces of the one before.
fn pre_tokenizer_regexes(pre: &str) -> Option<&'static [&'static str]> {
    const LLAMA3: &[&str] = &[
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ];
    const QWEN2: &[&str] = &[
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ];
    const GPT2: &[&str] = &[r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"];
    const SMOLLM: &[&str] = &[
        r"\p{N}",
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    ];
    const DEEPSEEK_V3: &[&str] = &[
        r"\p{N}{1,3}",
        r"[一-龥぀-ゟ゠-ヿ]+",
        r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
    ];
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" => LLAMA3,
        "qwen2" | "deepseek-r1-qwen" => QWEN2,
        "gpt-2" | "phi-2" | "mpt" | "olmo" => GPT2,
        "smollm" | "codeshell" => SMOLLM,
        "deepseek-v3" => DEEPSEEK_V3,
        _ => return None,
    })
}

impl Tokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata alone: a byte-level
    /// BPE (`gpt2` model) with the file's tokens and merges, llama.cpp's pre-tokenizer for the
    /// `pre` name, control and user-defined tokens as added tokens, BOS/EOS and the chat template.
    pub(crate) fn from_metadata(g: &Metadata) -> Result<Self> {
        guarded("building it from the GGUF metadata", || Self::build_from_metadata(g)).map_err(|msg| {
            Error::Tokenizer {
                path: Some(g.path.clone()),
                msg,
            }
        })?
    }

    fn build_from_metadata(g: &Metadata) -> Result<Self> {
        let bad = |msg: String| Error::Tokenizer {
            path: Some(g.path.clone()),
            msg,
        };
        let meta = |k: &str| g.get(&format!("tokenizer.ggml.{k}"));
        let model = meta("model").and_then(MetaValue::as_str).unwrap_or("");
        if model != "gpt2" {
            return Err(bad(format!(
                "tokenizer.ggml.model `{model}` is not supported (gpt2-style BPE only)"
            )));
        }
        let pre = meta("pre").and_then(MetaValue::as_str).unwrap_or("default");
        let regexes =
            pre_tokenizer_regexes(pre).ok_or_else(|| bad(format!("pre-tokenizer `{pre}` is not supported")))?;
        let strings = |k: &str| -> Result<Vec<String>> {
            let arr = meta(k)
                .and_then(MetaValue::as_array)
                .ok_or_else(|| bad(format!("tokenizer.ggml.{k} is missing")))?;
            arr.iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(format!("tokenizer.ggml.{k} holds a non-string")))
                })
                .collect()
        };
        let tokens = strings("tokens")?;
        let merges: Vec<(String, String)> = strings("merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| bad(format!("merge {m:?} has no space")))
            })
            .collect::<Result<_>>()?;
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = tokenizers::models::bpe::BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| bad(format!("building the BPE model: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let mut pre_tokenizers: Vec<tokenizers::PreTokenizerWrapper> = Vec::new();
        for re in regexes {
            let split = tokenizers::pre_tokenizers::split::Split::new(
                tokenizers::pre_tokenizers::split::SplitPattern::Regex(re.to_string()),
                tokenizers::SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| bad(format!("pre-tokenizer regex: {e}")))?;
            pre_tokenizers.push(split.into());
        }
        pre_tokenizers.push(tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, false).into());
        inner.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::sequence::Sequence::new(
            pre_tokenizers,
        )));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        // llama.cpp token types: 3 = control (special), 4 = user-defined; both match as wholes.
        let types: Vec<u64> = meta("token_type")
            .and_then(MetaValue::as_array)
            .map(|a| a.iter().filter_map(MetaValue::as_u64).collect())
            .unwrap_or_default();
        let added: Vec<tokenizers::AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3 || t == 4)
            .map(|(tok, &t)| tokenizers::AddedToken::from(tok.clone(), t == 3).normalized(false))
            .collect();
        inner
            .add_special_tokens(added)
            .map_err(|e| bad(format!("adding special tokens: {e}")))?;
        let id = |k: &str| {
            meta(k)
                .and_then(MetaValue::as_u64)
                .map(|v| v as u32)
                .filter(|&v| (v as usize) < tokens.len())
        };
        let template = match g.get("tokenizer.chat_template").and_then(MetaValue::as_str) {
            Some(t) => Some(ChatTemplate::new(t)?),
            None => None,
        };
        let mut tok = Tokenizer::new(
            inner,
            id("bos_token_id"),
            id("eos_token_id").into_iter().collect(),
            template,
        )?;
        tok.add_bos = meta("add_bos_token").and_then(MetaValue::as_bool).unwrap_or(false);
        Ok(tok)
    }
}

/// Longest text [`Tokenizer::encode`] takes (64 MiB, some sixteen million tokens: far past any
/// context).
pub(crate) const MAX_TEXT_BYTES: usize = 64 << 20;

/// Runs a call into the `tokenizers` crate, which panics on some inputs and files (a stride
/// at least the max length, a missing special token): a panic becomes an error message here,
/// so that none crosses into a caller, least of all through the C ABI.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let why = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        format!("the tokenizer failed while {what} (it panicked: {why})")
    })
}

fn dedup_in_order(ids: &mut Vec<u32>) {
    let mut seen = std::collections::HashSet::new();
    ids.retain(|x| seen.insert(*x));
}

fn preview(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Streams text as ids arrive, never splitting a UTF-8 character: the concatenated deltas equal
/// the decode of all ids.
///
/// It decodes a short window (`prefix..`) and emits what the newest ids add beyond the window's
/// earlier text, holding back while the new text ends in an incomplete character (decoded as
/// U+FFFD). Windows start a few ids back so that decoders that look at neighbours (e.g. a
/// leading-space rule) see context.
#[derive(Debug, Clone, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    /// A detokenizer for a fresh stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`; returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read], false)?;
        let now = tok.decode(&self.ids[self.prefix..], false)?;
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') || !now.starts_with(&before) {
            return Ok(String::new());
        }
        let delta = now[before.len()..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(delta)
    }

    /// Whatever is still held back (an incomplete character at the end decodes as U+FFFD).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        let before = tok.decode(&self.ids[self.prefix..self.read], false)?;
        let now = tok.decode(&self.ids[self.prefix..], false)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(now.strip_prefix(&before).map(str::to_string).unwrap_or(now))
    }
}
