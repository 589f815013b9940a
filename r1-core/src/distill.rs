//! Distillation datasets: generations written for a student model to learn from, each with its
//! prompt and generated ids, every generated token's `k` most likely tokens and their
//! log-probabilities under the teacher, and the parsed trace.
//!
//! Two formats, chosen by the file's extension:
//! - **JSONL** (`.jsonl`): one object per generation, `prompt`, `prompt_ids`, `generated_ids`,
//!   `reasoning`, `answer`, `final_answer`, `top_ids` (`[T][k]`) and `top_logprobs` (`[T][k]`),
//!   appended and flushed one line at a time.
//! - **safetensors** (`.safetensors`): per generation `i`, tensors `prompt_ids.{i}` (i32 `[P]`),
//!   `generated_ids.{i}` (i32 `[T]`), `top_ids.{i}` (i32 `[T, k]`) and `top_logprobs.{i}` (f32
//!   `[T, k]`), and the text fields in the header's metadata (`prompt.{i}`, `reasoning.{i}`,
//!   `answer.{i}`, `final_answer.{i}` when there is one). Shards of at most
//!   [`DistillWriter::with_shard_size`] generations: the first is the file named, the next ones
//!   that name with `-00001`, `-00002`, … before the extension. A shard is written whole (to a
//!   temporary file, then renamed) when it is full and when the writer finishes.
//!
//! A writer opened on an existing dataset resumes it: it reads the prompts already written
//! (dropping a JSONL line cut short by a crash) and numbers new generations after them, so a job
//! can skip the prompts [`DistillWriter::contains`] reports.

use crate::consistency::Consensus;
use crate::error::{Error, Result};
use crate::generate::Generation;
use crate::sampling::{TokenLogprobs, MAX_TOP_LOGPROBS};
use crate::trace::Trace;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One generation as a dataset holds it.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct DistillRecord {
    /// The prompt text the model saw (the rendered chat); what resuming compares.
    pub prompt: String,
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The generated token ids.
    pub generated_ids: Vec<u32>,
    /// The reasoning, tags removed.
    pub reasoning: String,
    /// The answer.
    pub answer: String,
    /// The answer's final answer (`\boxed{…}` or last line), if any.
    pub final_answer: Option<String>,
    /// Per generated token, the `k` most likely token ids, best first.
    pub top_ids: Vec<Vec<u32>>,
    /// Their log-probabilities (log-softmax of the raw logits).
    pub top_logprobs: Vec<Vec<f32>>,
}

impl DistillRecord {
    /// The record of a finished generation started with `top_logprobs` set; `prompt` is the
    /// prompt's text (see [`Engine::prompt_text`](crate::Engine::prompt_text)).
    pub fn from_generation(prompt: &str, g: &Generation) -> Result<DistillRecord> {
        let trace = g
            .trace()
            .ok_or_else(|| Error::InvalidArgument("the generation has not finished".into()))?;
        Self::from_parts(prompt, g.prompt_ids(), g.generated_ids(), trace, g.logprobs())
    }

    /// The record of sample `i` of a self-consistency run started with `top_logprobs` set.
    pub fn from_sample(prompt: &str, consensus: &Consensus, i: usize) -> Result<DistillRecord> {
        let s = consensus
            .samples
            .get(i)
            .ok_or_else(|| Error::InvalidArgument(format!("sample {i} of {}", consensus.samples.len())))?;
        Self::from_parts(prompt, &consensus.prompt_ids, &s.generated_ids, &s.trace, &s.logprobs)
    }

    fn from_parts(
        prompt: &str,
        prompt_ids: &[u32],
        generated_ids: &[u32],
        trace: &Trace,
        logprobs: &[TokenLogprobs],
    ) -> Result<DistillRecord> {
        if logprobs.len() != generated_ids.len() {
            return Err(Error::InvalidArgument(format!(
                "{} log-probability rows for {} generated tokens: generate with top_logprobs set",
                logprobs.len(),
                generated_ids.len()
            )));
        }
        Ok(DistillRecord {
            prompt: prompt.to_string(),
            prompt_ids: prompt_ids.to_vec(),
            generated_ids: generated_ids.to_vec(),
            reasoning: trace.reasoning.clone(),
            answer: trace.answer.clone(),
            final_answer: trace.final_answer.clone(),
            top_ids: logprobs.iter().map(|t| t.top.iter().map(|p| p.0).collect()).collect(),
            top_logprobs: logprobs.iter().map(|t| t.top.iter().map(|p| p.1).collect()).collect(),
        })
    }

    /// An error unless there is one row of exactly `k` per generated token.
    fn check(&self, k: usize) -> Result<()> {
        let t = self.generated_ids.len();
        let rows_ok = self.top_ids.len() == t && self.top_logprobs.len() == t;
        let widths_ok = self.top_ids.iter().all(|r| r.len() == k) && self.top_logprobs.iter().all(|r| r.len() == k);
        if !rows_ok || !widths_ok {
            return Err(Error::InvalidArgument(format!(
                "a record needs {t} rows of {k} top ids and log-probabilities (one per generated token; \
                 the vocabulary may be smaller than k)"
            )));
        }
        Ok(())
    }

    fn to_json(&self) -> Value {
        json!({
            "prompt": self.prompt,
            "prompt_ids": self.prompt_ids,
            "generated_ids": self.generated_ids,
            "reasoning": self.reasoning,
            "answer": self.answer,
            "final_answer": self.final_answer,
            "top_ids": self.top_ids,
            "top_logprobs": self.top_logprobs,
        })
    }
}

/// The dataset formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DistillFormat {
    /// One JSON object per line.
    Jsonl,
    /// safetensors shards.
    Safetensors,
}

impl DistillFormat {
    /// The format a path's extension names.
    pub fn of(path: &Path) -> Result<DistillFormat> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => Ok(DistillFormat::Jsonl),
            Some("safetensors") => Ok(DistillFormat::Safetensors),
            _ => Err(Error::InvalidArgument(format!(
                "{}: a distillation dataset is a .jsonl or a .safetensors file",
                path.display()
            ))),
        }
    }
}

/// Writes generations to a dataset, resuming one already there.
pub struct DistillWriter {
    path: PathBuf,
    format: DistillFormat,
    top_k: usize,
    done: HashSet<String>,
    /// Generations in the dataset, earlier runs' included.
    count: usize,
    jsonl: Option<BufWriter<File>>,
    /// safetensors: the shard being filled, and its number.
    shard: Vec<(usize, DistillRecord)>,
    shard_index: usize,
    shard_size: usize,
}

/// Generations per safetensors shard by default.
pub const DEFAULT_SHARD_GENERATIONS: usize = 256;

impl DistillWriter {
    /// Opens (or creates) the dataset at `path`, `.jsonl` or `.safetensors`, for records of
    /// `top_k` (1 to 20) log-probabilities per token.
    pub fn create(path: impl AsRef<Path>, top_k: usize) -> Result<DistillWriter> {
        let path = path.as_ref().to_path_buf();
        if !(1..=MAX_TOP_LOGPROBS).contains(&top_k) {
            return Err(Error::InvalidArgument(format!(
                "top_logprobs {top_k} for a distillation dataset: 1 to {MAX_TOP_LOGPROBS}"
            )));
        }
        let format = DistillFormat::of(&path)?;
        let mut w = DistillWriter {
            path,
            format,
            top_k,
            done: HashSet::new(),
            count: 0,
            jsonl: None,
            shard: vec![],
            shard_index: 0,
            shard_size: DEFAULT_SHARD_GENERATIONS,
        };
        match format {
            DistillFormat::Jsonl => w.resume_jsonl()?,
            DistillFormat::Safetensors => w.resume_safetensors()?,
        }
        Ok(w)
    }

    /// Sets how many generations a safetensors shard holds (at least 1).
    pub fn with_shard_size(mut self, generations: usize) -> Self {
        self.shard_size = generations.max(1);
        self
    }

    /// Whether a generation of this prompt text is in the dataset.
    pub fn contains(&self, prompt: &str) -> bool {
        self.done.contains(prompt)
    }

    /// Generations in the dataset, earlier runs' included.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the dataset has no generation.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds a generation.
    pub fn write(&mut self, record: &DistillRecord) -> Result<()> {
        record.check(self.top_k)?;
        let index = self.count;
        match self.format {
            DistillFormat::Jsonl => {
                let io = |source| Error::Io {
                    path: self.path.clone(),
                    source,
                };
                let out = match self.jsonl.as_mut() {
                    Some(out) => out,
                    None => {
                        let f = File::options().create(true).append(true).open(&self.path).map_err(io)?;
                        self.jsonl.insert(BufWriter::new(f))
                    }
                };
                let line = record.to_json().to_string();
                out.write_all(line.as_bytes())
                    .and_then(|_| out.write_all(b"\n"))
                    .map_err(io)?;
                out.flush().map_err(io)?;
            }
            DistillFormat::Safetensors => {
                self.shard.push((index, record.clone()));
                if self.shard.len() >= self.shard_size {
                    self.write_shard()?;
                }
            }
        }
        self.done.insert(record.prompt.clone());
        self.count += 1;
        Ok(())
    }

    /// Writes what is still buffered (the last safetensors shard). Dropping the writer does the
    /// same, without reporting errors.
    pub fn finish(mut self) -> Result<()> {
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        if let Some(out) = self.jsonl.as_mut() {
            out.flush().map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        if !self.shard.is_empty() {
            self.write_shard()?;
        }
        Ok(())
    }

    /// The path of safetensors shard `n`: the dataset's own for 0, `-0000n` added after.
    fn shard_path(&self, n: usize) -> PathBuf {
        if n == 0 {
            return self.path.clone();
        }
        let stem = self.path.file_stem().and_then(|s| s.to_str()).unwrap_or("distill");
        self.path.with_file_name(format!("{stem}-{n:05}.safetensors"))
    }

    /// Writes the buffered records as the next shard, whole, then renames it into place.
    fn write_shard(&mut self) -> Result<()> {
        let path = self.shard_path(self.shard_index);
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut meta = HashMap::from([
            ("format".to_string(), "r1-distill".to_string()),
            ("top_k".to_string(), self.top_k.to_string()),
        ]);
        for (i, r) in &self.shard {
            let ids = |v: &[u32]| v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect::<Vec<u8>>();
            let (t, k) = (r.generated_ids.len(), self.top_k);
            tensors.push((
                format!("prompt_ids.{i}"),
                Dtype::I32,
                vec![r.prompt_ids.len()],
                ids(&r.prompt_ids),
            ));
            tensors.push((format!("generated_ids.{i}"), Dtype::I32, vec![t], ids(&r.generated_ids)));
            tensors.push((format!("top_ids.{i}"), Dtype::I32, vec![t, k], ids(&r.top_ids.concat())));
            let lp: Vec<u8> = r.top_logprobs.concat().iter().flat_map(|x| x.to_le_bytes()).collect();
            tensors.push((format!("top_logprobs.{i}"), Dtype::F32, vec![t, k], lp));
            meta.insert(format!("prompt.{i}"), r.prompt.clone());
            meta.insert(format!("reasoning.{i}"), r.reasoning.clone());
            meta.insert(format!("answer.{i}"), r.answer.clone());
            if let Some(f) = &r.final_answer {
                meta.insert(format!("final_answer.{i}"), f.clone());
            }
        }
        let bad = |msg: String| Error::Internal(format!("{}: {msg}", path.display()));
        let views = tensors
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| bad(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let tmp = path.with_extension("safetensors.tmp");
        safetensors::serialize_to_file(views, Some(meta), &tmp).map_err(|e| bad(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        self.shard.clear();
        self.shard_index += 1;
        Ok(())
    }

    /// Reads the prompts of an existing JSONL dataset; a last line cut short is dropped.
    fn resume_jsonl(&mut self) -> Result<()> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(Error::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for (n, line) in text[..complete].split(|&b| b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: Value = serde_json::from_slice(line).map_err(|e| Error::Json {
                path: self.path.clone(),
                msg: format!("line {}: {e}", n + 1),
            })?;
            let prompt = value.get("prompt").and_then(Value::as_str).ok_or_else(|| Error::Json {
                path: self.path.clone(),
                msg: format!("line {}: no \"prompt\" string", n + 1),
            })?;
            let width = value.pointer("/top_ids/0").and_then(Value::as_array).map(Vec::len);
            if width.is_some_and(|w| w != self.top_k) {
                return Err(Error::InvalidArgument(format!(
                    "{}: line {} holds top_k {}, not {}",
                    self.path.display(),
                    n + 1,
                    width.unwrap_or(0),
                    self.top_k
                )));
            }
            self.done.insert(prompt.to_string());
            self.count += 1;
        }
        if complete < text.len() {
            // A line a crash cut short: dropped, so the next line starts clean.
            let f = File::options().write(true).open(&self.path);
            f.and_then(|f| f.set_len(complete as u64)).map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Reads the prompts of the existing shards (their headers only).
    fn resume_safetensors(&mut self) -> Result<()> {
        while let Some(meta) = shard_metadata(&self.shard_path(self.shard_index))? {
            if meta.get("top_k") != Some(&self.top_k.to_string()) {
                return Err(Error::InvalidArgument(format!(
                    "{}: the dataset holds top_k {}, not {}",
                    self.shard_path(self.shard_index).display(),
                    meta.get("top_k").map_or("?", String::as_str),
                    self.top_k
                )));
            }
            for (key, value) in meta {
                if key.starts_with("prompt.") {
                    self.done.insert(value);
                    self.count += 1;
                }
            }
            self.shard_index += 1;
        }
        Ok(())
    }
}

impl Drop for DistillWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// The `__metadata__` of a safetensors shard, `None` if there is no such file.
fn shard_metadata(path: &Path) -> Result<Option<HashMap<String, String>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let meta = crate::weights::safetensors::file_metadata(path)?;
    if meta.get("format").map(String::as_str) != Some("r1-distill") {
        return Err(Error::BadWeights {
            path: path.to_path_buf(),
            msg: "not a distillation shard: its metadata has no format r1-distill".into(),
        });
    }
    Ok(Some(meta))
}
