//! Batched generation: several generations advanced together, one forward pass per step.
//!
//! Each step, every unfinished generation (up to [`BatchOptions::max_batch`], in request order)
//! contributes its next input, a decode token or a chunk of its prompt within the step's token
//! budget, and one [`Model::forward_batch`](crate::Model::forward_batch) runs them all: every
//! weight is read once per step for the whole batch. A generation that finishes leaves at once
//! and the next waiting one joins at the next step (continuous batching). Each generation keeps
//! its own cache, sampler, stop sequences, budget, verifier and cancel handle, so it produces
//! exactly what it would alone.
//!
//! ```
//! use r1_core::{Engine, GenerateParams, Prompt};
//! # fn main() -> r1_core::Result<()> {
//! # let engine = Engine::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/qwen2_tiny"), &Default::default())?;
//! let requests: Vec<(Prompt, GenerateParams)> = ["Hello", "The capital of France is", "1 2 3"]
//!     .iter()
//!     .map(|p| (Prompt::Raw(p.to_string()), GenerateParams::greedy(8)))
//!     .collect();
//! let done = engine.generate_batch(&requests, |i, event| print!("[{i}] {}", event.text))?;
//! assert_eq!(done.len(), 3);
//! assert!(done.iter().all(|g| g.is_done()));
//! # Ok(()) }
//! ```

use crate::cache::Cache;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::generate::{Event, GenerateParams, Generation, Prompt};
use crate::model::Output;
use std::time::Instant;

/// How a batch is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchOptions {
    /// Most sequences in one forward pass (default 16); the others wait their turn.
    pub max_batch: usize,
    /// Tokens in one forward pass (default: the model's prefill chunk): members take their
    /// inputs in request order, a prompt chunk at most what is left of the budget, every
    /// member at least one token (so a decoding sequence is never held back by a prefill).
    pub token_budget: usize,
    /// Whether prompts that share a prefix of at least [`MIN_SHARED_PREFIX`] tokens compute and
    /// store it once (default true); each reports it in `usage.cached_prompt_tokens`.
    pub share_prefixes: bool,
}

/// The shortest prompt prefix that requests of a batch compute once for all of them: below
/// it, the extra pass a shared prefix takes costs more than the tokens it saves.
pub const MIN_SHARED_PREFIX: usize = 16;

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_batch: 16,
            token_budget: crate::model::DEFAULT_PREFILL_CHUNK,
            share_prefixes: true,
        }
    }
}

impl BatchOptions {
    /// Sets [`BatchOptions::max_batch`].
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Sets [`BatchOptions::token_budget`].
    pub fn with_token_budget(mut self, n: usize) -> Self {
        self.token_budget = n;
        self
    }

    /// Sets [`BatchOptions::share_prefixes`].
    pub fn with_share_prefixes(mut self, share: bool) -> Self {
        self.share_prefixes = share;
        self
    }
}

impl Engine {
    /// Runs every request (a prompt and its own settings) to its end, batched, calling
    /// `on_event(i, event)` with request `i`'s events as they come; returns the finished
    /// generations, in request order (`generated_ids`, `trace`, `usage`, ...). A request that
    /// fails to start fails the call; a generation that fails while running ends with its
    /// error (see [`Generation::error`]) and the others go on.
    pub fn generate_batch(
        &self,
        requests: &[(Prompt, GenerateParams)],
        on_event: impl FnMut(usize, &Event),
    ) -> Result<Vec<Generation>> {
        let options = BatchOptions {
            token_budget: self.model().prefill_chunk(),
            ..BatchOptions::default()
        };
        self.generate_batch_with(requests, &options, on_event)
    }

    /// [`Engine::generate_batch`] with explicit scheduling options.
    pub fn generate_batch_with(
        &self,
        requests: &[(Prompt, GenerateParams)],
        options: &BatchOptions,
        on_event: impl FnMut(usize, &Event),
    ) -> Result<Vec<Generation>> {
        if options.max_batch == 0 || options.token_budget == 0 {
            return Err(Error::InvalidArgument(format!(
                "max_batch {} and token_budget {}: both at least 1",
                options.max_batch, options.token_budget
            )));
        }
        let ids = requests
            .iter()
            .map(|(prompt, _)| self.prompt_ids(prompt))
            .collect::<Result<Vec<_>>>()?;
        // Every request is checked before any prefix runs.
        let prepared = ids
            .iter()
            .zip(requests)
            .map(|(ids, (_, params))| Generation::prepare(self, ids, params))
            .collect::<Result<Vec<_>>>()?;
        let mut caches = match options.share_prefixes {
            true => self.shared_prefix_caches(&ids)?,
            false => Vec::new(),
        };
        caches.resize_with(ids.len(), || None);
        let gens = ids
            .into_iter()
            .zip(prepared)
            .zip(requests.iter().zip(caches))
            .map(|((ids, prepared), ((_, params), cache))| {
                let cache = cache.unwrap_or_else(|| self.model().new_cache());
                Generation::begin(self.clone(), prepared, ids, params, cache, None, None)
            })
            .collect();
        self.drive(gens, options, on_event)
    }

    /// Per prompt, a cache holding the prefix it shares with other prompts of the batch (see
    /// [`shared_lengths`]), or `None`. Each distinct prefix is computed once, after the longest
    /// shorter one it extends, and its rows are shared by the caches of every prompt it starts.
    fn shared_prefix_caches(&self, prompts: &[Vec<u32>]) -> Result<Vec<Option<Cache>>> {
        let lengths = shared_lengths(prompts);
        let mut order: Vec<usize> = (0..prompts.len()).filter(|&i| lengths[i] > 0).collect();
        order.sort_by_key(|&i| lengths[i]);
        // Distinct prefixes computed so far, shortest first, each with its frozen cache.
        let mut done: Vec<(&[u32], Cache)> = Vec::new();
        let mut caches: Vec<Option<Cache>> = (0..prompts.len()).map(|_| None).collect();
        for i in order {
            let prefix = &prompts[i][..lengths[i]];
            let at = match done.iter().position(|(p, _)| *p == prefix) {
                Some(at) => at,
                None => {
                    let base = done.iter_mut().rev().find(|(p, _)| prefix.starts_with(p));
                    let mut cache = match base {
                        Some((_, c)) => c.share()?,
                        None => self.model().new_cache(),
                    };
                    let rest = &prefix[cache.len()..];
                    self.model()
                        .run_chunked(rest, &mut cache, None, Output::None, &|| false)?;
                    done.push((prefix, cache));
                    done.len() - 1
                }
            };
            caches[i] = Some(done[at].1.share()?);
        }
        Ok(caches)
    }

    /// Runs `gens` (generations of this engine, not yet advanced) to their ends, batched.
    pub(crate) fn drive(
        &self,
        mut gens: Vec<Generation>,
        options: &BatchOptions,
        mut on_event: impl FnMut(usize, &Event),
    ) -> Result<Vec<Generation>> {
        loop {
            let (members, inputs) = next_pass(&mut gens, options);
            flush(&mut gens, &mut on_event);
            if members.is_empty() {
                return Ok(gens);
            }
            let t = Instant::now();
            let logits = {
                let mut caches: Vec<_> = gens
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| members.contains(i))
                    .map(|(_, g)| g.cache_mut())
                    .collect();
                let inputs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
                self.model().forward_batch(&inputs, &mut caches)?
            };
            let seconds = t.elapsed().as_secs_f64();
            for (row, &i) in members.iter().enumerate() {
                let logits = logits
                    .row(row)
                    .ok_or_else(|| Error::Internal(format!("batch logits have no row {row}")))?;
                // An error is the generation's own: it ends, the batch goes on.
                gens[i].batch_output(seconds, logits);
            }
        }
    }
}

/// The members of the next pass and their inputs: unfinished generations in order, up to
/// `max_batch`, within the token budget (see [`BatchOptions::token_budget`]).
fn next_pass(gens: &mut [Generation], options: &BatchOptions) -> (Vec<usize>, Vec<Vec<u32>>) {
    let mut chosen: Vec<(usize, Vec<u32>)> = Vec::new();
    let mut used = 0;
    for (i, g) in gens.iter_mut().enumerate() {
        if chosen.len() >= options.max_batch {
            break;
        }
        if let Some(input) = g.batch_input(options.token_budget.saturating_sub(used)) {
            used += input.len();
            chosen.push((i, input));
        }
    }
    chosen.into_iter().unzip()
}

/// Per prompt, the length of the longest prefix it shares with another prompt, at most its own
/// length minus one (the last prompt position's logits are never cached), or 0 where that is
/// below [`MIN_SHARED_PREFIX`]. In lexicographic order a prompt's longest common prefix with
/// any other is with one of its two neighbours, so a sort finds them all.
fn shared_lengths(prompts: &[Vec<u32>]) -> Vec<usize> {
    let mut sorted: Vec<usize> = (0..prompts.len()).collect();
    sorted.sort_by(|&a, &b| prompts[a].cmp(&prompts[b]));
    let common = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let mut lengths = vec![0; prompts.len()];
    for (rank, &i) in sorted.iter().enumerate() {
        let before = rank.checked_sub(1).map(|r| common(&prompts[i], &prompts[sorted[r]]));
        let after = sorted.get(rank + 1).map(|&j| common(&prompts[i], &prompts[j]));
        let n = before.max(after).unwrap_or(0).min(prompts[i].len().saturating_sub(1));
        lengths[i] = if n >= MIN_SHARED_PREFIX { n } else { 0 };
    }
    lengths
}

/// Hands every queued event to the caller.
fn flush(gens: &mut [Generation], on_event: &mut impl FnMut(usize, &Event)) {
    for (i, g) in gens.iter_mut().enumerate() {
        for event in g.drain_events() {
            on_event(i, &event);
        }
    }
}
