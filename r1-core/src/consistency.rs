//! Self-consistency: several sampled answers to one prompt, and a majority vote over their final
//! answers (Wang et al., 2022, "Self-Consistency Improves Chain of Thought Reasoning").
//!
//! The prompt is prefilled once; each sample starts from a copy of that cache. Sample `i` is
//! seeded with `seed + i`, so it is exactly the generation a caller gets alone with that seed.
//! The samples decode together, batched: one forward pass per step for all of them.
//!
//! ```
//! use r1_core::{Engine, GenerateParams, Prompt, SamplingParams};
//! # fn main() -> r1_core::Result<()> {
//! # let engine = Engine::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/qwen2_tiny"), &Default::default())?;
//! let params = GenerateParams::default()
//!     .with_max_tokens(8)
//!     .with_sampling(SamplingParams::deepseek_r1().with_seed(7));
//! let result = engine.self_consistency(&Prompt::Raw("2 + 2 =".into()), &params, 4)?;
//! assert_eq!(result.samples.len(), 4);
//! assert_eq!(result.samples[1].seed, 8);
//! println!("{:?} won {:?}", result.vote.answer, result.vote.counts);
//! # Ok(()) }
//! ```

use crate::batch::BatchOptions;
use crate::engine::Engine;
use crate::error::{Error, ErrorCode, Result};
use crate::generate::{CancelHandle, Event, FinishReason, GenerateParams, Generation, Prompt, Usage};
use crate::model::Output;
use crate::sampling::TokenLogprobs;
use crate::trace::Trace;

/// Most samples one call takes.
pub const MAX_SAMPLES: usize = 256;

/// One sampled generation.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Sample {
    /// The seed it was sampled with (`seed + i`).
    pub seed: u64,
    /// Its generated token ids.
    pub generated_ids: Vec<u32>,
    /// Its text (reasoning and answer, tags removed).
    pub text: String,
    /// Its parsed trace.
    pub trace: Trace,
    /// Its final answer as voted: [`normalize_answer`] of the trace's final answer.
    pub final_answer: Option<String>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Its token counts (the prompt, but for its last token, counts as cached).
    pub usage: Usage,
    /// Each generated token's log-probabilities, when asked for
    /// ([`GenerateParams::top_logprobs`]).
    pub logprobs: Vec<TokenLogprobs>,
}

/// The majority vote over the samples' final answers.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Vote {
    /// The answer with the most votes (a tie goes to the one that appeared first); `None`
    /// when no sample has a final answer.
    pub answer: Option<String>,
    /// Votes per answer, in the order the answers first appeared.
    pub counts: Vec<(String, usize)>,
}

/// Every sample and the vote.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Consensus {
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The samples, in seed order.
    pub samples: Vec<Sample>,
    /// The vote over their final answers.
    pub vote: Vote,
}

/// The form answers are compared in: trimmed, with any `\boxed{…}` around the whole unwrapped.
pub fn normalize_answer(answer: &str) -> String {
    let mut a = answer.trim();
    while let Some(inner) = a.strip_prefix("\\boxed{").and_then(|r| r.strip_suffix('}')) {
        if !balanced(inner) {
            break;
        }
        a = inner.trim();
    }
    a.to_string()
}

/// Whether every `}` of `s` closes a `{` before it and none stays open.
fn balanced(s: &str) -> bool {
    let mut depth = 0usize;
    for c in s.chars() {
        match c {
            '{' => depth += 1,
            '}' => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => {}
        }
    }
    depth == 0
}

/// Counts the answers; the winner has the most votes, the earliest on a tie.
pub(crate) fn vote<'a>(answers: impl IntoIterator<Item = &'a str>) -> Vote {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for a in answers {
        match counts.iter_mut().find(|(b, _)| b == a) {
            Some((_, n)) => *n += 1,
            None => counts.push((a.to_string(), 1)),
        }
    }
    // `max_by_key` keeps the last maximum; the reversed order makes that the earliest.
    let answer = counts.iter().rev().max_by_key(|(_, n)| *n).map(|(a, _)| a.clone());
    Vote { answer, counts }
}

impl Engine {
    /// `n` (1 to [`MAX_SAMPLES`]) samples of `prompt` and the majority vote over their final
    /// answers. Sample `i` uses seed `params.sampling.seed + i` (a random base seed when none is
    /// set). See [`Engine::self_consistency_streamed`] to see the events as they come.
    pub fn self_consistency(&self, prompt: &Prompt, params: &GenerateParams, n: usize) -> Result<Consensus> {
        self.self_consistency_streamed(prompt, params, n, |_, _| {})
    }

    /// [`Engine::self_consistency`], calling `on_event(i, event)` with each event of sample `i`
    /// as it is generated (the samples run together, so their events interleave).
    pub fn self_consistency_streamed(
        &self,
        prompt: &Prompt,
        params: &GenerateParams,
        n: usize,
        mut on_event: impl FnMut(usize, &Event),
    ) -> Result<Consensus> {
        if !(1..=MAX_SAMPLES).contains(&n) {
            return Err(Error::InvalidArgument(format!("{n} samples: 1 to {MAX_SAMPLES}")));
        }
        let ids = self.prompt_ids(prompt)?;
        Generation::prepare(self, &ids, params)?;
        let base = params.sampling.seed.unwrap_or_else(rand::random);
        // The prompt runs once; every sample's cache shares its rows.
        let mut cache = self.prefill(&ids[..ids.len() - 1], params.cancel.as_ref())?;
        let mut gens = Vec::with_capacity(n);
        let mut seeds = Vec::with_capacity(n);
        for i in 0..n {
            let seed = base.wrapping_add(i as u64);
            let mut p = params.clone();
            p.sampling.seed = Some(seed);
            let prepared = Generation::prepare(self, &ids, &p)?;
            gens.push(Generation::begin(
                self.clone(),
                prepared,
                ids.clone(),
                &p,
                cache.share()?,
                None,
                None,
            ));
            seeds.push(seed);
        }
        // All samples decode together: one pass per step for the n of them.
        let options = BatchOptions::default().with_max_batch(n);
        let gens = self.drive(gens, &options, &mut on_event)?;
        let mut samples = Vec::with_capacity(n);
        for (g, seed) in gens.into_iter().zip(seeds) {
            if let Some(code) = g.error() {
                return Err(Error::Internal(format!(
                    "sample with seed {seed} failed ({})",
                    code.name()
                )));
            }
            let trace = g.trace().cloned().unwrap_or_else(|| Trace::parse("", false));
            samples.push(Sample {
                seed,
                generated_ids: g.generated_ids().to_vec(),
                text: g.text().to_string(),
                final_answer: trace.final_answer.as_deref().map(normalize_answer),
                trace,
                finish_reason: g
                    .finish_reason()
                    .ok_or_else(|| Error::Internal("a sample ended without a finish reason".into()))?,
                usage: g.usage(),
                logprobs: g.logprobs().to_vec(),
            });
        }
        let vote = vote(samples.iter().filter_map(|s| s.final_answer.as_deref()));
        Ok(Consensus {
            prompt_ids: ids,
            samples,
            vote,
        })
    }

    /// A cache holding `ids` (cancellable between prefill chunks).
    fn prefill(&self, ids: &[u32], cancel: Option<&CancelHandle>) -> Result<crate::Cache> {
        let model = self.model();
        let mut cache = model.new_cache();
        if !ids.is_empty() {
            let stop = || cancel.is_some_and(CancelHandle::is_cancelled);
            model
                .run_chunked(ids, &mut cache, None, Output::None, &stop)
                .map_err(|e| match e.code() {
                    ErrorCode::Cancelled => Error::Cancelled("self-consistency cancelled during the prefill".into()),
                    _ => e,
                })?;
        }
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_trimmed_and_unboxed() {
        assert_eq!(normalize_answer("  42 \n"), "42");
        assert_eq!(normalize_answer("\\boxed{ 42 }"), "42");
        assert_eq!(normalize_answer("\\boxed{\\boxed{x}}"), "x");
        assert_eq!(normalize_answer("\\boxed{\\frac{1}{2}}"), "\\frac{1}{2}");
        // Not one box around the whole: left as it is.
        assert_eq!(
            normalize_answer("\\boxed{1} and \\boxed{2}"),
            "\\boxed{1} and \\boxed{2}"
        );
    }

    #[test]
    fn the_most_votes_win_and_ties_go_to_the_first() {
        let v = vote(["3", "4", "4", "3", "5"]);
        assert_eq!(v.answer.as_deref(), Some("3"));
        assert_eq!(v.counts, vec![("3".into(), 2), ("4".into(), 2), ("5".into(), 1)]);
        assert_eq!(vote(["a", "b", "b"]).answer.as_deref(), Some("b"));
        assert_eq!(vote([]).answer, None);
    }
}
