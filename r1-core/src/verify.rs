//! Step verifiers: a caller's check of each reasoning step while the model writes it.
//!
//! At each step boundary the streaming trace parser finds (a [`StepConfig`] cut: a blank line,
//! a marker such as "Wait" opening a sentence, and the end of the reasoning), the generation
//! calls the verifier with the step's text and the reasoning so far. It answers:
//! - [`Verdict::Accept`]: the step stands and its events are released;
//! - [`Verdict::Reject`]: the cache and the token history go back to the step's first token and
//!   the step is sampled again with the next seed, up to `max_retries` times (then the last try
//!   is accepted, and the step says so);
//! - [`Verdict::Stop`]: the tokens after the step are dropped and the engine closes the
//!   reasoning (`</think>`), so the model goes on with the answer.
//!
//! A rollback is exact: the generation continues as a fresh one would from the kept tokens with
//! the reseeded sampler. Reasoning events are held back until their step is accepted, so a
//! caller never sees a rejected step's text.
//!
//! A step begins at the token holding its first character, or at the next token when that one
//! also carries a character of the step before (which must stay as it was accepted).

use crate::trace::{cuts, StepConfig};
use std::sync::Arc;

/// A verifier's answer about one reasoning step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The step stands.
    Accept,
    /// Sample the step again.
    Reject,
    /// Close the reasoning after this step and go on with the answer.
    Stop,
}

impl Verdict {
    /// `accept`, `reject` or `stop`.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Reject => "reject",
            Verdict::Stop => "stop",
        }
    }
}

/// Most times one step may be sampled again.
pub const MAX_STEP_RETRIES: usize = 64;

/// The verifier's function: `(step, reasoning so far) -> verdict`.
type Check = dyn Fn(&str, &str) -> Verdict + Send + Sync;

/// A step verifier and its settings, for [`GenerateParams::verifier`](crate::GenerateParams::verifier).
#[derive(Clone)]
pub struct StepVerifier {
    check: Arc<Check>,
    max_retries: usize,
    steps: StepConfig,
}

impl std::fmt::Debug for StepVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepVerifier")
            .field("max_retries", &self.max_retries)
            .field("steps", &self.steps)
            .finish()
    }
}

impl StepVerifier {
    /// A verifier calling `check(step, reasoning_so_far)` at each step, with 3 retries and the
    /// default [`StepConfig`].
    pub fn new(check: impl Fn(&str, &str) -> Verdict + Send + Sync + 'static) -> Self {
        StepVerifier {
            check: Arc::new(check),
            max_retries: 3,
            steps: StepConfig::default(),
        }
    }

    /// How many times a rejected step is sampled again (at most [`MAX_STEP_RETRIES`]).
    pub fn with_max_retries(mut self, n: usize) -> Self {
        self.max_retries = n;
        self
    }

    /// Where steps are cut.
    pub fn with_steps(mut self, steps: StepConfig) -> Self {
        self.steps = steps;
        self
    }

    /// The retries setting.
    pub fn max_retries(&self) -> usize {
        self.max_retries
    }
}

/// One step of a verified generation.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct VerifiedStep {
    /// The text of the try that stands (trimmed).
    pub text: String,
    /// How many times it was sampled (1 when its first try stood).
    pub tries: usize,
    /// The verdict on each try, in order; a step the generation ended inside has none on its
    /// last try, which was never checked.
    pub verdicts: Vec<Verdict>,
    /// Every try was rejected: the last one stands because the retries ran out.
    pub retries_exhausted: bool,
    /// Index in the generated ids of the standing try's first token.
    pub first_token: usize,
}

/// What the generation must do after a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Go on.
    Continue,
    /// Keep the first `to` generated tokens and sample on with reseed number `reseed`.
    Rollback { to: usize, reseed: u64 },
    /// Keep the first `to` generated tokens and close the reasoning.
    Close { to: usize },
}

/// The verifier's state while a generation runs.
pub(crate) struct StepGate {
    verifier: StepVerifier,
    /// Where the open step begins in the reasoning, and at which generated token.
    start: usize,
    first_token: usize,
    tries: usize,
    verdicts: Vec<Verdict>,
    steps: Vec<VerifiedStep>,
    rejections: u64,
    /// The reasoning is over (closed and its last step checked, or stopped).
    done: bool,
}

impl StepGate {
    pub(crate) fn new(verifier: StepVerifier) -> Self {
        StepGate {
            verifier,
            start: 0,
            first_token: 0,
            tries: 1,
            verdicts: vec![],
            steps: vec![],
            rejections: 0,
            done: false,
        }
    }

    /// The steps so far.
    pub(crate) fn steps(&self) -> &[VerifiedStep] {
        &self.steps
    }

    /// Rejected tries so far.
    pub(crate) fn rejections(&self) -> usize {
        self.rejections as usize
    }

    /// The first generated token whose events wait for a verdict (none once the reasoning is
    /// over).
    pub(crate) fn held_from(&self) -> usize {
        if self.done {
            usize::MAX
        } else {
            self.first_token
        }
    }

    /// Checks the steps a token completed. `reasoning` is the reasoning released so far,
    /// `closed` whether it has ended, `ends[j]` the reasoning's length after generated token `j`.
    pub(crate) fn after_token(&mut self, reasoning: &str, closed: bool, ends: &[usize]) -> Action {
        while !self.done {
            let open = &reasoning[self.start..];
            let cut = cuts(open, &self.verifier.steps, true).into_iter().find(|&c| c > 0);
            let (end, last) = match cut {
                Some(c) => (self.start + c, false),
                None if closed => (reasoning.len(), true),
                None => return Action::Continue,
            };
            let text = reasoning[self.start..end].trim();
            if text.is_empty() {
                self.next_step(end, last, ends, reasoning);
                continue;
            }
            let verdict = (self.verifier.check)(text, &reasoning[..end]);
            self.verdicts.push(verdict);
            match verdict {
                Verdict::Reject if self.tries <= self.verifier.max_retries.min(MAX_STEP_RETRIES) => {
                    self.tries += 1;
                    self.rejections += 1;
                    return Action::Rollback {
                        to: self.first_token,
                        reseed: self.rejections,
                    };
                }
                Verdict::Stop => {
                    self.record(text, false);
                    self.done = true;
                    return match last {
                        true => Action::Continue,
                        false => Action::Close {
                            to: step_start_token(end, ends, reasoning),
                        },
                    };
                }
                v => {
                    self.record(text, v == Verdict::Reject);
                    self.next_step(end, last, ends, reasoning);
                }
            }
        }
        Action::Continue
    }

    /// Ends verification without a verdict on the open step (the generation ended inside it, or
    /// the thinking budget closed it).
    pub(crate) fn finish(&mut self, reasoning: &str) {
        if self.done {
            return;
        }
        let text = reasoning.get(self.start..).unwrap_or_default().trim();
        if !text.is_empty() {
            self.record(text, false);
        }
        self.done = true;
    }

    fn record(&mut self, text: &str, retries_exhausted: bool) {
        self.steps.push(VerifiedStep {
            text: text.to_string(),
            tries: self.tries,
            verdicts: std::mem::take(&mut self.verdicts),
            retries_exhausted,
            first_token: self.first_token,
        });
    }

    /// Opens the step that begins at byte `end` of the reasoning (or ends verification).
    fn next_step(&mut self, end: usize, last: bool, ends: &[usize], reasoning: &str) {
        self.verdicts.clear();
        self.tries = 1;
        if last {
            self.done = true;
            return;
        }
        self.start = end;
        self.first_token = step_start_token(end, ends, reasoning);
    }
}

/// The generated token a step beginning at byte `c` of the reasoning starts with: the token
/// that released byte `c`, or the one after it when that token also released non-blank text
/// before `c` (part of the previous step, which must not change).
fn step_start_token(c: usize, ends: &[usize], reasoning: &str) -> usize {
    let k = ends.partition_point(|&e| e <= c);
    if k == ends.len() {
        return k;
    }
    let before = if k == 0 { 0 } else { ends[k - 1] };
    match reasoning.get(before.min(c)..c) {
        Some(s) if s.trim().is_empty() => k,
        _ => k + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_starts_at_the_token_that_holds_it_unless_that_token_ends_the_last_one() {
        // Tokens "A.", " B", "\n\nC": the step after "A." starts with " B" (token 1).
        let text = "A. B\n\nC";
        let ends = [2, 4, 7];
        assert_eq!(step_start_token(3, &ends, text), 1);
        // The cut at the blank line (byte 4) is inside token 2, which starts with it: token 2.
        assert_eq!(step_start_token(4, &ends, text), 2);
        // Tokens "A.\n", "\nB": a cut at byte 2 with "." of the step before in token 0 → token 1.
        assert_eq!(step_start_token(2, &[3, 5], "A.\n\nB"), 1);
        // A step no token has reached yet starts with the next token.
        assert_eq!(step_start_token(7, &ends, text), 3);
    }

    #[test]
    fn verdicts_drive_the_gate() {
        // Reject the first try of every step that mentions "bad".
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let v = StepVerifier::new(move |step, _| {
            log.lock().unwrap().push(step.to_string());
            if step.contains("bad") {
                Verdict::Reject
            } else {
                Verdict::Accept
            }
        })
        .with_max_retries(1);
        let mut g = StepGate::new(v);
        // "good.\n\n" then "bad" (tokens "good.", "\n\n", "bad", "\n\n").
        assert_eq!(g.after_token("good.", false, &[5]), Action::Continue);
        assert_eq!(g.after_token("good.\n\n", false, &[5, 7]), Action::Continue);
        assert_eq!(g.steps().len(), 1);
        assert_eq!(g.held_from(), 1);
        let r = g.after_token("good.\n\nbad\n\n", false, &[5, 7, 10, 12]);
        assert_eq!(r, Action::Rollback { to: 1, reseed: 1 });
        // The retry is "bad" again: retries are out, so it stands and says so.
        let r = g.after_token("good.\n\nbad\n\n", false, &[5, 7, 10, 12]);
        assert_eq!(r, Action::Continue);
        let s = &g.steps()[1];
        assert_eq!((s.text.as_str(), s.tries, s.retries_exhausted), ("bad", 2, true));
        assert_eq!(s.verdicts, vec![Verdict::Reject, Verdict::Reject]);
        // The end of the reasoning ends the last step.
        g.after_token("good.\n\nbad\n\nend", true, &[5, 7, 10, 12, 15]);
        assert_eq!(g.steps().len(), 3);
        assert_eq!(g.held_from(), usize::MAX);
        assert_eq!(*seen.lock().unwrap(), ["good.", "bad", "bad", "end"]);
    }

    #[test]
    fn stop_closes_after_the_step() {
        let mut g = StepGate::new(StepVerifier::new(|_, _| Verdict::Stop));
        let r = g.after_token("one.\n\ntwo", false, &[4, 9]);
        // "two" came with the token that holds the blank line: that token goes too.
        assert_eq!(r, Action::Close { to: 1 });
        assert_eq!(g.steps()[0].verdicts, vec![Verdict::Stop]);
        assert_eq!(g.held_from(), usize::MAX);
    }
}
