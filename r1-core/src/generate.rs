//! Text in, a streamed reasoning trace and answer out.
//!
//! [`Engine::generate`](crate::Engine::generate) and [`Session::generate`](crate::Session::generate)
//! return a [`Generation`]: an iterator of [`Event`]s, each a token's text delta on its
//! [`Channel`], the last one carrying the [`Finish`] (why it stopped, and the [`Usage`]). The
//! generation owns everything it needs (cache, sampler, parsers, a handle to the engine), so it
//! is `Send + 'static`: move it into a thread, an iterator of a binding, a C handle.
//!
//! ```no_run
//! use r1_core::{Engine, GenerateParams, Message, Prompt};
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
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::model::Output;
use crate::sampling::{Sampler, SamplingParams, TokenLogprobs, MAX_TOP_LOGPROBS};
use crate::session::Home;
use crate::stop::StopMatcher;
use crate::tokenizer::Detokenizer;
use crate::trace::{Channel, Trace, TraceParser};
use crate::verify::{Action, StepGate, StepVerifier, VerifiedStep, MAX_STEP_RETRIES};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Prompt {
    /// Messages rendered with the model's chat template (generation prompt added).
    Chat(Vec<Message>),
    /// Messages and tool schemas (each a JSON text), the template's `tools`.
    ChatWithTools(Vec<Message>, Vec<String>),
    /// Text tokenized as is; BOS is added where the tokenizer's metadata says so.
    Raw(String),
    /// Token ids, used as given.
    Tokens(Vec<u32>),
}

/// The text DeepSeek-R1 writes to close its reasoning, forced by a thinking budget.
const THINK_CLOSE: &str = "</think>\n\n";

/// Settings of one generation. Start from `GenerateParams::default()` (DeepSeek-R1's sampling
/// preset) and change what you need, directly or with the `with_*` methods.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GenerateParams {
    /// Most tokens to generate (default 2048; at least 1). A large value means "until the
    /// context is full".
    pub max_tokens: usize,
    /// The sampling chain's settings (default: DeepSeek-R1's recommendation).
    pub sampling: SamplingParams,
    /// Strings that end generation; the text before one is emitted, the stop itself is not.
    /// At most 256, each 1 to 1,024 bytes.
    pub stop: Vec<String>,
    /// Extra end tokens besides the model's own (ids inside the vocabulary).
    pub stop_token_ids: Vec<u32>,
    /// Whether output starts inside `<think>`; `None` = when the prompt text ends with
    /// `<think>` (optionally followed by a newline), as R1 chat prompts do.
    pub starts_in_reasoning: Option<bool>,
    /// A handle to stop the generation from another thread.
    pub cancel: Option<CancelHandle>,
    /// Log-probabilities to report per token: `None` for none, `Some(k)` for the chosen
    /// token's and the `k` (0 to 20) most likely tokens'.
    pub top_logprobs: Option<usize>,
    /// A thinking budget: when the reasoning reaches this many tokens, the engine writes
    /// `</think>` and a blank line itself and the model goes on with the answer.
    pub max_reasoning_tokens: Option<usize>,
    /// A step verifier: called at each reasoning step, it accepts the step, has it sampled
    /// again, or closes the reasoning (see [`StepVerifier`]).
    pub verifier: Option<StepVerifier>,
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
            top_logprobs: None,
            max_reasoning_tokens: None,
            verifier: None,
        }
    }
}

impl GenerateParams {
    /// Greedy decoding of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        GenerateParams {
            max_tokens,
            sampling: SamplingParams::greedy(),
            ..Default::default()
        }
    }

    /// Sets [`GenerateParams::max_tokens`].
    pub fn with_max_tokens(mut self, n: usize) -> Self {
        self.max_tokens = n;
        self
    }

    /// Sets [`GenerateParams::sampling`].
    pub fn with_sampling(mut self, sampling: SamplingParams) -> Self {
        self.sampling = sampling;
        self
    }

    /// Sets [`GenerateParams::stop`].
    pub fn with_stop(mut self, stop: Vec<String>) -> Self {
        self.stop = stop;
        self
    }

    /// Sets [`GenerateParams::stop_token_ids`].
    pub fn with_stop_token_ids(mut self, ids: Vec<u32>) -> Self {
        self.stop_token_ids = ids;
        self
    }

    /// Sets [`GenerateParams::starts_in_reasoning`].
    pub fn with_starts_in_reasoning(mut self, starts: bool) -> Self {
        self.starts_in_reasoning = Some(starts);
        self
    }

    /// Sets [`GenerateParams::cancel`].
    pub fn with_cancel(mut self, cancel: CancelHandle) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// Sets [`GenerateParams::top_logprobs`].
    pub fn with_top_logprobs(mut self, k: usize) -> Self {
        self.top_logprobs = Some(k);
        self
    }

    /// Sets [`GenerateParams::max_reasoning_tokens`].
    pub fn with_max_reasoning_tokens(mut self, n: usize) -> Self {
        self.max_reasoning_tokens = Some(n);
        self
    }

    /// Sets [`GenerateParams::verifier`].
    pub fn with_verifier(mut self, verifier: StepVerifier) -> Self {
        self.verifier = Some(verifier);
        self
    }
}

/// Stops a generation from any thread; the generation ends at its next token, or between two
/// prefill chunks, with [`FinishReason::Cancelled`].
///
/// A handle may also carry a poll function ([`CancelHandle::with_poll`]), asked at the same
/// points: a binding uses it to notice a pending Ctrl-C while the model computes.
#[derive(Clone, Default)]
pub struct CancelHandle {
    flag: Arc<AtomicBool>,
    poll: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl std::fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelHandle")
            .field("cancelled", &self.flag.load(Ordering::Relaxed))
            .field("poll", &self.poll.is_some())
            .finish()
    }
}

impl CancelHandle {
    /// A fresh handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle that also counts as cancelled whenever `poll` returns true (it is called from
    /// the generating thread, before each token and between prefill chunks).
    pub fn with_poll(poll: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        CancelHandle {
            flag: Arc::default(),
            poll: Some(Arc::new(poll)),
        }
    }

    /// Asks the generation to stop.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    /// Whether [`CancelHandle::cancel`] was called (since the last reset), or the poll function
    /// says so.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Relaxed) || self.poll.as_ref().is_some_and(|p| p())
    }

    /// Clears a cancellation (a session does so as each generation starts).
    pub(crate) fn reset(&self) {
        self.flag.store(false, Ordering::Relaxed);
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
    /// The thinking budget was reached and the limits (`max_tokens`, context) left no room to
    /// close the reasoning.
    ReasoningBudget,
}

impl FinishReason {
    /// A snake_case name: `end_token`, `stop_sequence`, `max_tokens`, `cancelled`,
    /// `context_full`, `reasoning_budget`.
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::EndToken => "end_token",
            FinishReason::StopSequence => "stop_sequence",
            FinishReason::MaxTokens => "max_tokens",
            FinishReason::Cancelled => "cancelled",
            FinishReason::ContextFull => "context_full",
            FinishReason::ReasoningBudget => "reasoning_budget",
        }
    }
}

/// Token counts and speeds of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens found in the session's cache (not run again).
    pub cached_prompt_tokens: usize,
    /// Generated tokens inside the reasoning (including the closing `</think>`).
    pub reasoning_tokens: usize,
    /// Generated tokens of the answer.
    pub answer_tokens: usize,
    /// Whether the thinking budget closed the reasoning.
    pub reasoning_budget_hit: bool,
    /// Reasoning steps the verifier rejected (each rejection is one try sampled again).
    pub rejected_steps: usize,
    /// Prompt tokens run per second of the prefill.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first.
    pub decode_tokens_per_s: f64,
}

/// The end of a generation.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Finish {
    /// Why it ended.
    pub reason: FinishReason,
    /// Counts and speeds.
    pub usage: Usage,
}

/// One piece of streamed output.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Event {
    /// The token this text came with; `None` on the final events.
    pub token: Option<u32>,
    /// Text released by this token (may be empty while a character, tag or possible stop
    /// sequence is incomplete).
    pub text: String,
    /// Where the text belongs.
    pub channel: Channel,
    /// The token's log-probabilities, when asked for ([`GenerateParams::top_logprobs`]); on
    /// the first event of each token only.
    pub logprobs: Option<TokenLogprobs>,
    /// Set on the last event only.
    pub finish: Option<Finish>,
}

/// What a generation checked before it takes a cache: everything that can fail up front.
pub(crate) struct Prepared {
    sampler: Sampler,
    /// The sampling settings with the seed fixed (drawn when none was given), so that a
    /// verifier's retries can reseed from it.
    sampling: SamplingParams,
    starts_in_reasoning: bool,
    end_tokens: Vec<u32>,
    think_close: Vec<u32>,
}

/// A running generation: an iterator of [`Event`]s. After an error it yields that error once and
/// ends; what was generated until then stays readable.
pub struct Generation {
    engine: Engine,
    cache: Cache,
    /// The session to give the cache back to when the generation is dropped.
    home: Option<Home>,
    sampler: Sampler,
    detok: Detokenizer,
    parser: Option<TraceParser>,
    stops: StopMatcher,
    end_tokens: Vec<u32>,
    max_tokens: usize,
    cancels: Vec<CancelHandle>,
    /// Prompt and generated ids (what the penalties see).
    history: Vec<u32>,
    prompt_len: usize,
    /// The last chosen token, not yet run through the model.
    pending_token: Option<u32>,
    /// Tokens the engine writes itself (the thinking budget's `</think>`), before sampling.
    forced: VecDeque<u32>,
    think_close: Vec<u32>,
    max_reasoning_tokens: Option<usize>,
    top_logprobs: Option<usize>,
    logprobs: Vec<TokenLogprobs>,
    queue: VecDeque<Event>,
    /// The step verifier's state, when there is one.
    gate: Option<StepGate>,
    /// Events waiting for their step's verdict, with their token's index in the generated ids.
    held: VecDeque<(usize, Event)>,
    /// Per generated token: the text's length before its events, and its channel.
    marks: Vec<(usize, Channel)>,
    /// Per generated token: the reasoning's length once it was processed.
    reasoning_ends: Vec<usize>,
    sampling: SamplingParams,
    stop_strings: Vec<String>,
    starts_in_reasoning: bool,
    text: String,
    usage: Usage,
    decode_time: Duration,
    /// Seconds of the batched passes that ran this generation's prompt.
    prefill_seconds: f64,
    /// Counts this generation as decoding, for the engine's scheduler.
    ticket: Option<crate::scheduler::Ticket>,
    trace: Option<Trace>,
    finish_reason: Option<FinishReason>,
    error: Option<ErrorCode>,
    done: bool,
}

/// Most tokens of a generation whose cache rows are reserved before it starts.
const RESERVE_AHEAD: usize = 32 * 1024;

/// Most stop sequences a generation takes.
pub(crate) const MAX_STOP_SEQUENCES: usize = 256;

/// Longest stop sequence, in bytes.
pub(crate) const MAX_STOP_BYTES: usize = 1024;

impl GenerateParams {
    /// Checks every parameter before any work starts, naming the first bad one: the sampling
    /// values, `max_tokens` (at least 1), the stop sequences (none empty, at most
    /// [`MAX_STOP_SEQUENCES`] of at most [`MAX_STOP_BYTES`]), and every token id (stop tokens,
    /// logit bias) inside a vocabulary of `vocab_size`.
    pub(crate) fn check(&self, vocab_size: usize) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        self.sampling.validate()?;
        if self.max_tokens == 0 {
            return bad("max_tokens is 0: at least one token must be allowed".into());
        }
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return bad(format!(
                "{} stop sequences: at most {MAX_STOP_SEQUENCES}",
                self.stop.len()
            ));
        }
        for (i, s) in self.stop.iter().enumerate() {
            if s.is_empty() || s.len() > MAX_STOP_BYTES {
                return bad(format!("stop[{i}] is {} bytes: 1 to {MAX_STOP_BYTES}", s.len()));
            }
        }
        let ids = self.stop_token_ids.iter().map(|&t| ("stop_token_ids", t));
        let bias = self.sampling.logit_bias.iter().map(|&(t, _)| ("logit_bias", t));
        if let Some((what, t)) = ids.chain(bias).find(|&(_, t)| t as usize >= vocab_size) {
            return bad(format!(
                "{what} holds token id {t}, outside the vocabulary of {vocab_size}"
            ));
        }
        if let Some(k) = self.top_logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
            return bad(format!("top_logprobs {k}: at most {MAX_TOP_LOGPROBS}"));
        }
        if let Some(n) = self
            .verifier
            .as_ref()
            .map(StepVerifier::max_retries)
            .filter(|&n| n > MAX_STEP_RETRIES)
        {
            return bad(format!("verifier max_retries {n}: at most {MAX_STEP_RETRIES}"));
        }
        Ok(())
    }
}

impl Generation {
    /// Checks the prompt and the parameters against the engine.
    pub(crate) fn prepare(engine: &Engine, ids: &[u32], params: &GenerateParams) -> Result<Prepared> {
        if ids.is_empty() {
            return Err(Error::InvalidArgument("the prompt is empty".into()));
        }
        let max = engine.model().context_length();
        if ids.len() >= max {
            return Err(Error::ContextFull(format!(
                "the prompt has {} tokens but the model's context is {max}: nothing could be generated",
                ids.len()
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= engine.model().vocab_size()) {
            return Err(Error::InvalidArgument(format!(
                "prompt token id {bad} is outside the vocabulary of {}",
                engine.model().vocab_size()
            )));
        }
        params.check(engine.model().vocab_size())?;
        let tokenizer = engine.tokenizer();
        let starts_in_reasoning = match params.starts_in_reasoning {
            Some(s) => s,
            None => {
                let text = tokenizer.decode(&ids[ids.len().saturating_sub(4)..], false)?;
                text.trim_end_matches('\n').ends_with("<think>")
            }
        };
        let think_close = match params.max_reasoning_tokens.is_some() || params.verifier.is_some() {
            true => tokenizer.encode(THINK_CLOSE, false)?,
            false => vec![],
        };
        let mut end_tokens = tokenizer.eos().to_vec();
        end_tokens.extend(&params.stop_token_ids);
        let sampling = params
            .sampling
            .clone()
            .with_seed(params.sampling.seed.unwrap_or_else(rand::random));
        Ok(Prepared {
            sampler: Sampler::from_params(&sampling)?,
            sampling,
            starts_in_reasoning,
            end_tokens,
            think_close,
        })
    }

    /// Starts a generation of `ids` whose first `cache.len()` tokens `cache` already holds.
    pub(crate) fn begin(
        engine: Engine,
        prepared: Prepared,
        ids: Vec<u32>,
        params: &GenerateParams,
        mut cache: Cache,
        home: Option<Home>,
        session_cancel: Option<CancelHandle>,
    ) -> Generation {
        // Reserved up front for the usual length, grown by doubling past it: a `max_tokens` of
        // "until the context is full" must not allocate the whole context at once.
        cache.reserve(ids.len().saturating_add(params.max_tokens.min(RESERVE_AHEAD)));
        let usage = Usage {
            prompt_tokens: ids.len(),
            cached_prompt_tokens: cache.len(),
            ..Usage::default()
        };
        let mut cancels: Vec<CancelHandle> = params.cancel.iter().cloned().collect();
        cancels.extend(session_cancel);
        Generation {
            engine,
            cache,
            home,
            sampler: prepared.sampler,
            detok: Detokenizer::new(),
            parser: Some(TraceParser::new(prepared.starts_in_reasoning)),
            stops: StopMatcher::new(&params.stop),
            end_tokens: prepared.end_tokens,
            max_tokens: params.max_tokens,
            cancels,
            prompt_len: ids.len(),
            history: ids,
            pending_token: None,
            forced: VecDeque::new(),
            think_close: prepared.think_close,
            max_reasoning_tokens: params.max_reasoning_tokens,
            top_logprobs: params.top_logprobs,
            logprobs: vec![],
            queue: VecDeque::new(),
            gate: params.verifier.clone().map(StepGate::new),
            held: VecDeque::new(),
            marks: vec![],
            reasoning_ends: vec![],
            sampling: prepared.sampling,
            stop_strings: params.stop.clone(),
            starts_in_reasoning: prepared.starts_in_reasoning,
            text: String::new(),
            usage,
            decode_time: Duration::ZERO,
            prefill_seconds: 0.0,
            ticket: None,
            trace: None,
            finish_reason: None,
            error: None,
            done: false,
        }
    }

    /// A one-shot generation on a fresh cache (or a session's, through `home`).
    pub(crate) fn start(
        engine: Engine,
        ids: Vec<u32>,
        params: &GenerateParams,
        cache: Cache,
        home: Option<Home>,
    ) -> Result<Generation> {
        let prepared = Self::prepare(&engine, &ids, params)?;
        Ok(Self::begin(engine, prepared, ids, params, cache, home, None))
    }

    /// Generated token ids so far.
    pub fn generated_ids(&self) -> &[u32] {
        &self.history[self.prompt_len..]
    }

    /// The prompt's token ids.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.history[..self.prompt_len]
    }

    /// Every event's text so far, concatenated (reasoning and answer, tags removed).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The log-probabilities of each generated token so far, when asked for.
    pub fn logprobs(&self) -> &[TokenLogprobs] {
        &self.logprobs
    }

    /// The counts so far (final once the generation finished).
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The parsed trace (reasoning, answer, steps, final answer, tool calls): once finished, or
    /// after an error (the trace of what was generated until then).
    pub fn trace(&self) -> Option<&Trace> {
        self.trace.as_ref()
    }

    /// Why the generation ended, once it finished (`None` while running or after an error).
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish_reason
    }

    /// The code of the error the generation ended with, if it ended with one.
    pub fn error(&self) -> Option<ErrorCode> {
        self.error
    }

    /// The reasoning steps and the verifier's verdicts on them (empty without a verifier).
    pub fn steps(&self) -> &[VerifiedStep] {
        self.gate.as_ref().map_or(&[], |g| g.steps())
    }

    /// Whether the generation has ended (finished or failed).
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn cancelled(&self) -> bool {
        self.cancels.iter().any(CancelHandle::is_cancelled)
    }

    /// Runs the model for the next logits: the uncached part of the prompt first (in chunks,
    /// checking for cancellation between them), then the pending token. `None`: cancelled.
    fn next_logits(&mut self) -> Result<Option<Vec<f32>>> {
        let model = self.engine.model();
        let logits = match self.pending_token.take() {
            None => {
                let t = Instant::now();
                let start = self.cache.len();
                let cancels = &self.cancels;
                let stop = || cancels.iter().any(CancelHandle::is_cancelled);
                let run = model.run_chunked(&self.history[start..], &mut self.cache, None, Output::Last, &stop);
                let logits = match run {
                    Err(e) if e.code() == ErrorCode::Cancelled => return Ok(None),
                    other => other?,
                };
                let ran = self.prompt_len - start;
                self.usage.prefill_tokens_per_s = ran as f64 / t.elapsed().as_secs_f64().max(1e-9);
                let logits = logits.ok_or_else(|| Error::Internal("the model returned no logits".into()))?;
                logits.into_vec()
            }
            Some(tok) => {
                // Decode steps go through the engine's scheduler, which batches them with those
                // of other generations running at the same time.
                let t = Instant::now();
                let scheduler = self.engine.scheduler();
                if self.ticket.is_none() {
                    self.ticket = Some(scheduler.ticket());
                }
                let l = scheduler.decode(tok, &mut self.cache)?;
                self.decode_time += t.elapsed();
                l
            }
        };
        Ok(Some(logits))
    }

    /// Whether the thinking budget says to close the reasoning now.
    fn budget_reached(&self, channel: Channel) -> bool {
        channel == Channel::Reasoning
            && !self.usage.reasoning_budget_hit
            && self
                .max_reasoning_tokens
                .is_some_and(|b| self.usage.reasoning_tokens >= b)
    }

    /// Why the generation must end before its next token, if it must.
    fn limit(&self) -> Option<FinishReason> {
        let forcing = !self.forced.is_empty();
        if self.cancelled() {
            return Some(FinishReason::Cancelled);
        }
        if self.generated_ids().len() >= self.max_tokens {
            return Some(if forcing {
                FinishReason::ReasoningBudget
            } else {
                FinishReason::MaxTokens
            });
        }
        if self.pending_token.is_some() && self.cache.len() >= self.cache.max_len() {
            return Some(if forcing {
                FinishReason::ReasoningBudget
            } else {
                FinishReason::ContextFull
            });
        }
        None
    }

    /// One token: run the model, choose, decode, split; queues its events. Returns the finish
    /// reason if any.
    fn step(&mut self) -> Result<Option<FinishReason>> {
        if let Some(reason) = self.limit() {
            return Ok(Some(reason));
        }
        let Some(logits) = self.next_logits()? else {
            return Ok(Some(FinishReason::Cancelled));
        };
        self.take_token(logits)
    }

    /// The token chosen from `logits` (or forced), decoded and split into events.
    fn take_token(&mut self, logits: Vec<f32>) -> Result<Option<FinishReason>> {
        let channel_before = self
            .parser
            .as_ref()
            .map(TraceParser::channel)
            .ok_or_else(|| Error::Internal("generation already finished".into()))?;
        if self.budget_reached(channel_before) {
            self.usage.reasoning_budget_hit = true;
            self.forced = self.think_close.iter().copied().collect();
        }
        let (token, forced) = match self.forced.pop_front() {
            Some(t) => (t, true),
            None => (self.sampler.sample(&logits, &self.history)?, false),
        };
        let logprobs = self.top_logprobs.map(|k| TokenLogprobs::from_logits(&logits, token, k));
        if let Some(lp) = &logprobs {
            self.logprobs.push(lp.clone());
        }
        self.history.push(token);
        self.marks.push((self.text.len(), channel_before));
        self.count(channel_before);
        if !forced && self.end_tokens.contains(&token) {
            self.push_event(Some(token), String::new(), channel_before, logprobs);
            return Ok(Some(FinishReason::EndToken));
        }
        self.pending_token = Some(token);
        let (segments, stopped) = self.text_step(token)?;
        self.queue_segments(token, segments, channel_before, logprobs);
        if self.gate.is_some() && self.verify()? {
            return Ok(None); // rolled back: what stopped was dropped
        }
        Ok(stopped.then_some(FinishReason::StopSequence))
    }

    /// Asks the verifier about the steps this token completed and does what it says; `true`
    /// when tokens were rolled back.
    fn verify(&mut self) -> Result<bool> {
        let (Some(gate), Some(parser)) = (self.gate.as_mut(), self.parser.as_ref()) else {
            return Ok(false);
        };
        self.reasoning_ends.push(parser.reasoning().len());
        if self.usage.reasoning_budget_hit {
            gate.finish(parser.reasoning()); // the budget has closed the reasoning
        }
        let action = gate.after_token(parser.reasoning(), parser.reasoning_over(), &self.reasoning_ends);
        self.usage.rejected_steps = gate.rejections();
        let rolled_back = match action {
            Action::Continue => false,
            Action::Rollback { to, reseed } => {
                self.rollback(to)?;
                let seed = self.sampling.seed.unwrap_or(0).wrapping_add(reseed);
                self.sampler = Sampler::from_params(&self.sampling.clone().with_seed(seed))?;
                true
            }
            Action::Close { to } => {
                self.rollback(to)?;
                self.forced = self.think_close.iter().copied().collect();
                true
            }
        };
        self.release_held(false);
        Ok(rolled_back)
    }

    /// Moves the held events whose step was accepted (all of them with `all`) to the queue.
    fn release_held(&mut self, all: bool) {
        let from = match (all, &self.gate) {
            (false, Some(g)) => g.held_from(),
            _ => usize::MAX,
        };
        while self.held.front().is_some_and(|(j, _)| *j < from) {
            if let Some((_, ev)) = self.held.pop_front() {
                self.queue.push_back(ev);
            }
        }
    }

    /// Keeps the first `k` generated tokens: the cache, the history, the counts, the text and
    /// the parsers as they were after token `k - 1`, that token pending, so that sampling goes
    /// on exactly as a fresh generation from those tokens would.
    fn rollback(&mut self, k: usize) -> Result<()> {
        let n = self.prompt_len + k;
        if k >= self.generated_ids().len() {
            return Ok(());
        }
        self.history.truncate(n);
        self.logprobs.truncate(k);
        self.cache.truncate(n - 1);
        self.pending_token = Some(self.history[n - 1]);
        self.text.truncate(self.marks[k].0);
        self.marks.truncate(k);
        self.reasoning_ends.truncate(k);
        self.held.retain(|(j, _)| *j < k);
        self.forced.clear();
        let reasoning = self.marks.iter().filter(|m| m.1 == Channel::Reasoning).count();
        self.usage.reasoning_tokens = reasoning;
        self.usage.answer_tokens = k - reasoning;
        // The text pipeline again from the kept tokens: it holds state (partial characters,
        // possible stop sequences and tags) that cannot be unwound.
        self.detok = Detokenizer::new();
        self.stops = StopMatcher::new(&self.stop_strings);
        self.parser = Some(TraceParser::new(self.starts_in_reasoning));
        let kept = self.generated_ids().to_vec(); // text_step borrows the generation
        for t in kept {
            self.text_step(t)?;
        }
        Ok(())
    }

    /// `token` through the text pipeline: detokenized, held back where it may begin a stop
    /// sequence, split by channel. The segments it releases, and whether a stop sequence came.
    fn text_step(&mut self, token: u32) -> Result<(Vec<(Channel, String)>, bool)> {
        let delta = self.detok.push(self.engine.tokenizer(), token)?;
        let (released, stopped) = self.stops.push(&delta);
        let segments = match self.parser.as_mut() {
            Some(p) => p.push(&released),
            None => vec![],
        };
        Ok((segments, stopped))
    }

    fn count(&mut self, ch: Channel) {
        match ch {
            Channel::Reasoning => self.usage.reasoning_tokens += 1,
            Channel::Answer => self.usage.answer_tokens += 1,
        }
    }

    fn push_event(&mut self, token: Option<u32>, text: String, channel: Channel, logprobs: Option<TokenLogprobs>) {
        self.text.push_str(&text);
        let event = Event {
            token,
            text,
            channel,
            logprobs,
            finish: None,
        };
        match (&self.gate, token) {
            // A token's events wait for its step's verdict.
            (Some(_), Some(_)) => self.held.push_back((self.generated_ids().len() - 1, event)),
            _ => self.queue.push_back(event),
        }
    }

    fn queue_segments(
        &mut self,
        token: u32,
        segments: Vec<(Channel, String)>,
        fallback: Channel,
        mut logprobs: Option<TokenLogprobs>,
    ) {
        if segments.is_empty() {
            self.push_event(Some(token), String::new(), fallback, logprobs.take());
        }
        for (channel, text) in segments {
            self.push_event(Some(token), text, channel, logprobs.take());
        }
    }

    /// Flushes held-back text and queues the final event.
    fn finish(&mut self, reason: FinishReason) -> Result<()> {
        let mut tail = String::new();
        if reason != FinishReason::StopSequence {
            let rest = self.detok.finish(self.engine.tokenizer())?;
            tail = self.stops.flush(&rest);
        }
        let Some(mut parser) = self.parser.take() else {
            return Ok(());
        };
        if let Some(gate) = self.gate.as_mut() {
            gate.finish(parser.reasoning());
        }
        self.ticket = None; // no more decode steps
        self.release_held(true);
        let mut segments = parser.push(&tail);
        let (rest, trace) = parser.finish();
        segments.extend(rest);
        let n = self.generated_ids().len();
        if n > 1 {
            self.usage.decode_tokens_per_s = (n - 1) as f64 / self.decode_time.as_secs_f64().max(1e-9);
        }
        let channel = segments.last().map_or(parser_channel(&trace), |s| s.0);
        for (ch, text) in segments {
            self.push_event(None, text, ch, None);
        }
        self.finish_reason = Some(reason);
        let finish = Finish {
            reason,
            usage: self.usage,
        };
        self.queue.push_back(Event {
            token: None,
            text: String::new(),
            channel,
            logprobs: None,
            finish: Some(finish),
        });
        self.trace = Some(trace);
        Ok(())
    }

    /// Ends the generation on an error: the trace of what was generated stays readable.
    fn fail(&mut self, e: &Error) {
        self.done = true;
        self.ticket = None;
        self.error = Some(e.code());
        if let Some(parser) = self.parser.take() {
            self.trace = Some(parser.finish().1);
        }
    }
}

impl Generation {
    /// Ends the generation when a step says so (or failed): the error, if any, to report.
    fn conclude(&mut self, step: Result<Option<FinishReason>>) -> Option<Error> {
        let outcome = step.and_then(|reason| match reason {
            Some(r) => {
                self.done = true;
                self.finish(r)
            }
            None => Ok(()),
        });
        let e = outcome.err()?;
        self.fail(&e);
        Some(e)
    }

    /// For a batched pass: `None` when the generation has ended (a limit was reached: its
    /// final events are queued), else the tokens it runs next, at most `budget` of them (the
    /// rest of its prompt, or its pending token).
    pub(crate) fn batch_input(&mut self, budget: usize) -> Option<Vec<u32>> {
        if self.done {
            return None;
        }
        if let Some(reason) = self.limit() {
            self.conclude(Ok(Some(reason)));
            return None;
        }
        Some(match self.pending_token {
            Some(t) => vec![t],
            None => {
                let start = self.cache.len();
                let end = self.prompt_len.min(start + budget.max(1));
                self.history[start..end].to_vec()
            }
        })
    }

    /// The cache a batched pass appends to.
    pub(crate) fn cache_mut(&mut self) -> &mut Cache {
        &mut self.cache
    }

    /// After a batched pass (`seconds` long) ran this generation's input, with `logits` its
    /// last row: the next token when the input finished the prompt or was the pending token.
    /// An error ends the generation and is kept in it (see [`Generation::error`]).
    pub(crate) fn batch_output(&mut self, seconds: f64, logits: &[f32]) {
        match self.pending_token.take() {
            Some(_) => self.decode_time += Duration::from_secs_f64(seconds),
            None => {
                self.prefill_seconds += seconds;
                if self.cache.len() < self.prompt_len {
                    return; // more of the prompt to run
                }
                let ran_prompt = self.prompt_len - self.usage.cached_prompt_tokens;
                self.usage.prefill_tokens_per_s = ran_prompt as f64 / self.prefill_seconds.max(1e-9);
            }
        }
        let step = self.take_token(logits.to_vec());
        self.conclude(step);
    }

    /// Takes the queued events (a batch driver hands them to its caller).
    pub(crate) fn drain_events(&mut self) -> impl Iterator<Item = Event> + '_ {
        self.queue.drain(..)
    }
}

impl Iterator for Generation {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.queue.is_empty() && !self.done {
            let step = self.step();
            if let Some(e) = self.conclude(step) {
                return Some(Err(e));
            }
        }
        self.queue.pop_front().map(Ok)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            let cache = std::mem::replace(&mut self.cache, Cache::new(0, false, false, 0));
            let ids = self.history[..cache.len()].to_vec();
            home.give_back(cache, ids, self.generated_ids().to_vec(), self.trace.take());
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LoadOptions;

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
    }

    #[test]
    fn an_error_while_streaming_is_yielded_once_and_what_came_before_stays() {
        let e = Engine::load(fixture("deepseek_v3_tiny"), &LoadOptions::default()).unwrap();
        let p = Prompt::Chat(vec![Message::user("hi")]);
        let mut g = e.generate(&p, &GenerateParams::greedy(50)).unwrap();
        let first: Vec<Event> = (0..4).map(|_| g.next().unwrap().unwrap()).collect();
        assert!(first.iter().all(|ev| ev.finish.is_none()));
        let before = g.generated_ids().to_vec();
        assert!(!before.is_empty());
        // A cache made for no layers: the next forward pass fails inside the model.
        g.cache = Cache::new(0, true, false, 256);
        let mut errors = 0;
        for ev in g.by_ref() {
            if ev.is_err() {
                errors += 1;
            }
        }
        assert_eq!(errors, 1, "the error is yielded once, then the iterator ends");
        assert!(g.next().is_none());
        assert!(g.is_done());
        assert_eq!(g.error(), Some(ErrorCode::InvalidArgument));
        assert!(g.generated_ids().starts_with(&before));
        let text: String = first.iter().map(|ev| ev.text.as_str()).collect();
        assert!(g.text().starts_with(&text));
        let trace = g.trace().expect("the trace of what was generated");
        assert!(trace.truncated, "still inside the reasoning");
        assert!(text.starts_with(&trace.reasoning) || trace.reasoning.starts_with(&text));
    }
}
