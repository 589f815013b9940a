//! Text in, a streamed reasoning trace and answer out.
//!
//! An [`Engine`] is a loaded model and its tokenizer; it is immutable, `Send + Sync`, and serves
//! any number of generations at once. [`Engine::generate`] returns a [`Generation`]: an iterator
//! of [`Event`]s, each a token's text delta on its [`Channel`], the last one carrying the
//! [`Finish`] (why it stopped, and the [`Usage`]). All state (cache, sampler, parsers) lives in
//! the `Generation`.
//!
//! ```no_run
//! use r1_core::generate::{Engine, GenerateParams, Prompt};
//! use r1_core::chat_template::Message;
//! # fn main() -> r1_core::Result<()> {
//! let engine = Engine::load("DeepSeek-R1-Distill-Qwen-1.5B", &Default::default())?;
//! let prompt = Prompt::Chat(vec![Message::user("What is 7 * 6?")]);
//! for event in engine.generate(&prompt, &GenerateParams::default())? {
//!     let event = event?;
//!     print!("{}", event.text);
//!     if let Some(finish) = event.finish {
//!         println!("\n{:?} {:?}", finish.reason, finish.usage);
//!     }
//! }
//! # Ok(()) }
//! ```

use crate::cache::Cache;
use crate::chat_template::Message;
use crate::error::{Error, Result};
use crate::model::{LoadOptions, Model};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{Detokenizer, Tokenizer};
use crate::trace::{Channel, Trace, TraceParser};
use crate::weights::gguf::GgufFile;
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Messages rendered with the model's chat template (generation prompt added).
    Chat(Vec<Message>),
    /// Messages and tool schemas (the template's `tools`).
    ChatWithTools(Vec<Message>, Vec<Value>),
    /// Text tokenized as is; BOS is added where the tokenizer's metadata says so.
    Raw(String),
    /// Token ids, used as given.
    Tokens(Vec<u32>),
}

/// Settings of one generation.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// The sampling chain's settings (default: DeepSeek-R1's recommendation).
    pub sampling: SamplingParams,
    /// Strings that end generation; the text before one is emitted, the stop itself is not.
    pub stop: Vec<String>,
    /// Extra end tokens besides the model's own.
    pub stop_token_ids: Vec<u32>,
    /// Whether output starts inside `<think>`; `None` = when the prompt text ends with
    /// `<think>` (optionally followed by a newline), as R1 chat prompts do.
    pub starts_in_reasoning: Option<bool>,
    /// A handle to stop the generation from another thread.
    pub cancel: Option<CancelHandle>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 2048,
            sampling: SamplingParams::deepseek_r1(),
            stop: vec![],
            stop_token_ids: vec![],
            starts_in_reasoning: None,
            cancel: None,
        }
    }
}

/// Stops a generation from any thread; the generation ends at its next token with
/// [`FinishReason::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// A fresh handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the generation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`CancelHandle::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end token.
    EndToken,
    /// A stop sequence appeared.
    StopSequence,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The cancel handle was used.
    Cancelled,
    /// The model's context is full.
    ContextFull,
}

/// Token counts and speeds of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens inside the reasoning (including the closing `</think>`).
    pub reasoning_tokens: usize,
    /// Generated tokens of the answer.
    pub answer_tokens: usize,
    /// Prompt tokens per second of the prefill.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: f64,
}

/// The end of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    /// Why it ended.
    pub reason: FinishReason,
    /// Counts and speeds.
    pub usage: Usage,
}

/// One piece of streamed output.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The token this text came with; `None` on the final event.
    pub token: Option<u32>,
    /// Text released by this token (may be empty while a character, tag or possible stop
    /// sequence is incomplete).
    pub text: String,
    /// Where the text belongs.
    pub channel: Channel,
    /// Set on the last event only.
    pub finish: Option<Finish>,
}

/// A loaded model with its tokenizer: what an application talks to.
#[derive(Debug, Clone)]
pub struct Engine {
    model: Model,
    tokenizer: Tokenizer,
}

impl Engine {
    /// Loads a checkpoint folder (the model, `tokenizer.json` and its configs) or a GGUF file
    /// (the tokenizer from its metadata).
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Engine> {
        let path = path.as_ref();
        let model = Model::load(path, options)?;
        let tokenizer = if path.is_file() {
            Tokenizer::from_gguf(&GgufFile::open(path)?)?
        } else {
            Tokenizer::from_dir(path, &model.config().eos_token_ids)?
        };
        Engine::new(model, tokenizer)
    }

    /// An engine from parts.
    pub fn new(model: Model, tokenizer: Tokenizer) -> Result<Engine> {
        let vocab = model.config().vocab_size;
        if let Some(&bad) = tokenizer.eos().iter().find(|&&e| e as usize >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "end token {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        Ok(Engine { model, tokenizer })
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The text a prompt becomes before tokenization (`None` for token prompts).
    pub fn prompt_text(&self, prompt: &Prompt) -> Result<Option<String>> {
        let template = || {
            self.tokenizer
                .chat_template()
                .ok_or_else(|| Error::InvalidArgument("the model has no chat template".into()))
        };
        Ok(match prompt {
            Prompt::Chat(m) => Some(template()?.render(m, true, None)?),
            Prompt::ChatWithTools(m, tools) => Some(template()?.render(m, true, Some(tools))?),
            Prompt::Raw(t) => Some(t.clone()),
            Prompt::Tokens(_) => None,
        })
    }

    /// The token ids of a prompt.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match (prompt, self.prompt_text(prompt)?) {
            (Prompt::Tokens(ids), _) => Ok(ids.clone()),
            // The template writes the special tokens itself (BOS included).
            (Prompt::Raw(_), Some(text)) => self.tokenizer.encode(&text, true),
            (_, Some(text)) => self.tokenizer.encode(&text, false),
            (_, None) => Ok(vec![]),
        }
    }

    /// Starts a generation. Nothing runs until the iterator is first advanced.
    pub fn generate(&self, prompt: &Prompt, params: &GenerateParams) -> Result<Generation<'_>> {
        let ids = self.prompt_ids(prompt)?;
        if ids.is_empty() {
            return Err(Error::InvalidArgument("the prompt is empty".into()));
        }
        let max = self.model.config().max_position_embeddings;
        if ids.len() >= max {
            return Err(Error::InvalidArgument(format!(
                "the prompt has {} tokens but the model's context is {max}: nothing could be generated",
                ids.len()
            )));
        }
        let starts_in_reasoning = match params.starts_in_reasoning {
            Some(s) => s,
            None => {
                let text = self.tokenizer.decode(&ids[ids.len().saturating_sub(4)..], false)?;
                text.trim_end_matches('\n').ends_with("<think>")
            }
        };
        let mut end_tokens = self.tokenizer.eos().to_vec();
        end_tokens.extend(&params.stop_token_ids);
        Ok(Generation {
            engine: self,
            cache: self.model.new_cache(),
            sampler: Sampler::from_params(&params.sampling)?,
            detok: Detokenizer::new(),
            parser: Some(TraceParser::new(starts_in_reasoning)),
            stops: StopMatcher::new(&params.stop),
            end_tokens,
            max_tokens: params.max_tokens,
            cancel: params.cancel.clone(),
            history: ids.clone(),
            prompt_len: ids.len(),
            pending_token: None,
            queue: std::collections::VecDeque::new(),
            usage: Usage {
                prompt_tokens: ids.len(),
                ..Usage::default()
            },
            decode_time: Duration::ZERO,
            trace: None,
            done: false,
        })
    }
}

/// A running generation: an iterator of [`Event`]s.
pub struct Generation<'e> {
    engine: &'e Engine,
    cache: Cache,
    sampler: Sampler,
    detok: Detokenizer,
    parser: Option<TraceParser>,
    stops: StopMatcher,
    end_tokens: Vec<u32>,
    max_tokens: usize,
    cancel: Option<CancelHandle>,
    /// Prompt and generated ids (what the penalties see).
    history: Vec<u32>,
    prompt_len: usize,
    /// The last sampled token, not yet run through the model.
    pending_token: Option<u32>,
    queue: std::collections::VecDeque<Event>,
    usage: Usage,
    decode_time: Duration,
    trace: Option<Trace>,
    done: bool,
}

impl Generation<'_> {
    /// Generated token ids so far.
    pub fn generated_ids(&self) -> &[u32] {
        &self.history[self.prompt_len..]
    }

    /// The prompt's token ids.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.history[..self.prompt_len]
    }

    /// The parsed trace (reasoning, answer, steps, final answer, tool calls), once finished.
    pub fn trace(&self) -> Option<&Trace> {
        self.trace.as_ref()
    }

    /// Runs the model for the next logits: the whole prompt first, then the pending token.
    fn next_logits(&mut self) -> Result<Vec<f32>> {
        let model = &self.engine.model;
        let logits = match self.pending_token.take() {
            None => {
                let t = Instant::now();
                let l = model.forward_last(&self.history, &mut self.cache)?;
                self.usage.prefill_tokens_per_s = self.prompt_len as f64 / t.elapsed().as_secs_f64().max(1e-9);
                l
            }
            Some(tok) => {
                let t = Instant::now();
                let l = model.forward_last(&[tok], &mut self.cache)?;
                self.decode_time += t.elapsed();
                l
            }
        };
        Ok(logits.to_vec1()?)
    }

    /// One token: sample, decode, split; queues its events. Returns the finish reason if any.
    fn step(&mut self) -> Result<Option<FinishReason>> {
        if self.cancel.as_ref().is_some_and(CancelHandle::is_cancelled) {
            return Ok(Some(FinishReason::Cancelled));
        }
        if self.generated_ids().len() >= self.max_tokens {
            return Ok(Some(FinishReason::MaxTokens));
        }
        if self.pending_token.is_some() && self.cache.len() >= self.cache.max_len() {
            return Ok(Some(FinishReason::ContextFull));
        }
        let logits = self.next_logits()?;
        let token = self.sampler.sample(&logits, &self.history)?;
        self.history.push(token);
        let parser = self
            .parser
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument("generation already finished".into()))?;
        let channel_before = parser.channel();
        if self.end_tokens.contains(&token) {
            self.count(channel_before);
            self.queue.push_back(Event {
                token: Some(token),
                text: String::new(),
                channel: channel_before,
                finish: None,
            });
            return Ok(Some(FinishReason::EndToken));
        }
        self.pending_token = Some(token);
        let delta = self.detok.push(&self.engine.tokenizer, token)?;
        let (released, stopped) = self.stops.push(&delta);
        let segments = parser.push(&released);
        self.count(channel_before);
        self.queue_segments(token, segments, channel_before);
        Ok(stopped.then_some(FinishReason::StopSequence))
    }

    fn count(&mut self, ch: Channel) {
        match ch {
            Channel::Reasoning => self.usage.reasoning_tokens += 1,
            Channel::Answer => self.usage.answer_tokens += 1,
        }
    }

    fn queue_segments(&mut self, token: u32, segments: Vec<(Channel, String)>, fallback: Channel) {
        if segments.is_empty() {
            self.queue.push_back(Event {
                token: Some(token),
                text: String::new(),
                channel: fallback,
                finish: None,
            });
        }
        for (channel, text) in segments {
            self.queue.push_back(Event {
                token: Some(token),
                text,
                channel,
                finish: None,
            });
        }
    }

    /// Flushes held-back text and queues the final event.
    fn finish(&mut self, reason: FinishReason) -> Result<()> {
        let mut tail = String::new();
        if reason != FinishReason::StopSequence {
            let rest = self.detok.finish(&self.engine.tokenizer)?;
            tail = self.stops.flush(&rest);
        }
        let Some(mut parser) = self.parser.take() else {
            return Ok(());
        };
        let mut segments = parser.push(&tail);
        let (rest, trace) = parser.finish();
        segments.extend(rest);
        let n = self.generated_ids().len();
        if n > 1 {
            self.usage.decode_tokens_per_s = (n - 1) as f64 / self.decode_time.as_secs_f64().max(1e-9);
        }
        let channel = segments.last().map_or(parser_channel(&trace), |s| s.0);
        for (ch, text) in segments {
            self.queue.push_back(Event {
                token: None,
                text,
                channel: ch,
                finish: None,
            });
        }
        let finish = Finish {
            reason,
            usage: self.usage,
        };
        self.queue.push_back(Event {
            token: None,
            text: String::new(),
            channel,
            finish: Some(finish),
        });
        self.trace = Some(trace);
        Ok(())
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.queue.is_empty() && !self.done {
            let outcome = self.step().and_then(|reason| match reason {
                Some(r) => {
                    self.done = true;
                    self.finish(r)
                }
                None => Ok(()),
            });
            if let Err(e) = outcome {
                self.done = true;
                return Some(Err(e));
            }
        }
        self.queue.pop_front().map(Ok)
    }
}

/// The channel a finished trace ended in.
fn parser_channel(trace: &Trace) -> Channel {
    if trace.truncated {
        Channel::Reasoning
    } else {
        Channel::Answer
    }
}

/// Holds back text that may be the start of a stop sequence, so a stop split across tokens is
/// caught and never emitted.
#[derive(Debug, Clone)]
struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds text; returns what can be emitted and whether a stop sequence was reached (text
    /// before it is emitted, the rest dropped).
    fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        let first_stop = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(i) = first_stop {
            let out = self.held[..i].to_string();
            self.held.clear();
            return (out, true);
        }
        let keep = self
            .stops
            .iter()
            .map(|s| longest_prefix_suffix(&self.held, s))
            .max()
            .unwrap_or(0);
        let out: String = self.held.drain(..self.held.len() - keep).collect();
        (out, false)
    }

    /// Releases everything held (the stream ended without completing a stop sequence).
    fn flush(&mut self, text: &str) -> String {
        let (mut out, stopped) = self.push(text);
        if !stopped {
            out.push_str(&std::mem::take(&mut self.held));
        }
        out
    }
}

/// Length of the longest proper prefix of `stop` that `text` ends with, on a char boundary.
fn longest_prefix_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .filter(|&n| stop.is_char_boundary(n))
        .find(|&n| text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequence_across_pieces() {
        let mut m = StopMatcher::new(&["</answer>".to_string(), "STOP".to_string()]);
        assert_eq!(m.push("The value is 4</"), ("The value is 4".to_string(), false));
        assert_eq!(m.push("ans"), (String::new(), false));
        assert_eq!(m.push("wer> more"), (String::new(), true));
        let mut m = StopMatcher::new(&["STOP".to_string()]);
        assert_eq!(m.push("ST"), (String::new(), false));
        assert_eq!(m.push("AY"), ("STAY".to_string(), false));
        assert_eq!(m.flush("ST"), "ST");
    }

    #[test]
    fn stop_prefix_respects_char_boundaries() {
        let mut m = StopMatcher::new(&["é!".to_string()]);
        assert_eq!(m.push("caf"), ("caf".to_string(), false));
        assert_eq!(m.push("é"), (String::new(), false));
        assert_eq!(m.push("é!"), ("é".to_string(), true));
    }
}
