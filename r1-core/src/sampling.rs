//! Choosing the next token from logits: a composable chain of stages, then greedy or a seeded
//! draw.
//!
//! ```
//! use r1_core::{Sampler, Stage};
//! let mut s = Sampler::seeded(42).with(Stage::Temperature(0.6)).with(Stage::TopP(0.95));
//! let token = s.sample(&[0.1, 2.0, 1.5], &[]).unwrap();
//! assert!(token < 3);
//! ```
//!
//! [`SamplingParams::deepseek_r1`] holds DeepSeek's recommended settings for R1 (temperature 0.6,
//! top-p 0.95).

use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// One transformation of the candidate list, applied in chain order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Stage {
    /// Adds a bias to given tokens' logits (`f32::NEG_INFINITY` bans a token).
    LogitBias(Vec<(u32, f32)>),
    /// Penalizes tokens already in the history (the last `last_n`, or all when 0).
    Penalties {
        /// Divides positive logits and multiplies negative ones (1 = off), as in transformers.
        repetition: f32,
        /// Subtracted once from every token that occurred (0 = off), as in OpenAI's API.
        presence: f32,
        /// Subtracted per occurrence (0 = off).
        frequency: f32,
        /// How many recent tokens count; 0 = the whole history.
        last_n: usize,
    },
    /// Divides logits by `t` (> 0).
    Temperature(f32),
    /// Keeps the `k` most likely tokens.
    TopK(usize),
    /// Keeps the most likely tokens whose probabilities sum to at least `p`.
    TopP(f32),
    /// Keeps tokens whose probability is at least `p` times the most likely one's.
    MinP(f32),
}

/// A token and its (transformed) logit.
type Candidate = (u32, f32);

impl Stage {
    fn apply(&self, c: &mut Vec<Candidate>, history: &[u32]) {
        match self {
            Stage::LogitBias(bias) => apply_bias(c, bias),
            Stage::Penalties {
                repetition,
                presence,
                frequency,
                last_n,
            } => {
                let recent = if *last_n == 0 {
                    history
                } else {
                    &history[history.len().saturating_sub(*last_n)..]
                };
                let mut counts: HashMap<u32, f32> = HashMap::new();
                recent.iter().for_each(|t| *counts.entry(*t).or_default() += 1.0);
                for (id, l) in c.iter_mut() {
                    if let Some(&n) = counts.get(id) {
                        *l = if *l > 0.0 { *l / repetition } else { *l * repetition };
                        *l -= presence + frequency * n;
                    }
                }
            }
            Stage::Temperature(t) => {
                // Relative to the best logit, so that a tiny temperature sends the others to
                // -inf rather than the best one to +inf (inf - inf is NaN in the softmax).
                let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
                if max.is_finite() {
                    c.iter_mut().for_each(|(_, l)| *l = (*l - max) / t);
                }
            }
            Stage::TopK(k) => {
                sort_desc(c);
                c.truncate((*k).max(1));
            }
            Stage::TopP(p) => {
                sort_desc(c);
                let probs = softmax(c);
                let mut sum = 0.0;
                let keep = probs.iter().take_while(|&&q| {
                    let before = sum;
                    sum += q;
                    before < *p
                });
                let n = keep.count().max(1);
                c.truncate(n);
            }
            Stage::MinP(p) => {
                let probs = softmax(c);
                let max = probs.iter().copied().fold(0.0, f32::max);
                let mut i = 0;
                c.retain(|_| {
                    i += 1;
                    probs[i - 1] >= p * max
                });
            }
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        match *self {
            Stage::Temperature(t) if !(t > 0.0 && t.is_finite()) => {
                bad(format!("temperature {t} must be > 0 (use greedy for 0)"))
            }
            Stage::TopP(p) if !(p > 0.0 && p <= 1.0) => bad(format!("top_p {p} must be in (0, 1]")),
            Stage::MinP(p) if !(0.0..=1.0).contains(&p) => bad(format!("min_p {p} must be in [0, 1]")),
            Stage::Penalties { repetition, .. } if !(repetition > 0.0 && repetition.is_finite()) => {
                bad(format!("repetition penalty {repetition} must be > 0"))
            }
            Stage::Penalties {
                presence, frequency, ..
            } if !(presence.is_finite() && frequency.is_finite()) => {
                bad("presence and frequency penalties must be finite".into())
            }
            Stage::LogitBias(ref bias) => match bad_bias(bias) {
                Some(m) => bad(m),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// What is wrong with a logit bias's values, if anything: each is finite, or -inf to ban.
fn bad_bias(bias: &[(u32, f32)]) -> Option<String> {
    let &(id, b) = bias.iter().find(|(_, b)| b.is_nan() || *b == f32::INFINITY)?;
    Some(format!(
        "logit_bias of token {id} is {b}: a bias is finite, or -inf to ban the token"
    ))
}

/// Highest logit first; ties by lower token id.
fn sort_desc(c: &mut [Candidate]) {
    c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
}

/// Adds `bias` to its tokens' logits. Candidates still in token order (the usual case: bias
/// comes first) are found by index, so a long bias list costs its length, not a lookup table
/// per token.
fn apply_bias(c: &mut [Candidate], bias: &[(u32, f32)]) {
    let mut elsewhere = Vec::new();
    for &(id, b) in bias {
        match c.get_mut(id as usize) {
            Some(x) if x.0 == id => x.1 += b,
            _ => elsewhere.push((id, b)),
        }
    }
    if !elsewhere.is_empty() {
        let map: HashMap<u32, f32> = elsewhere.into_iter().collect();
        c.iter_mut()
            .for_each(|(id, l)| *l += map.get(id).copied().unwrap_or(0.0));
    }
}

/// Probabilities of the candidates' logits, in their current order. When the best logit is not
/// finite (+inf from a bias or a penalty, or every one -inf), the candidates at it share the mass.
fn softmax(c: &[Candidate]) -> Vec<f32> {
    let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        let n = c.iter().filter(|x| x.1 == max).count() as f32;
        return c.iter().map(|x| if x.1 == max { 1.0 / n } else { 0.0 }).collect();
    }
    let exps: Vec<f32> = c.iter().map(|x| (x.1 - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// A sampling chain and the way it picks: argmax, or a draw from a seeded generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    stages: Vec<Stage>,
    rng: Option<ChaCha8Rng>,
}

impl Sampler {
    /// Picks the most likely token after the chain's stages.
    pub fn greedy() -> Self {
        Sampler {
            stages: vec![],
            rng: None,
        }
    }

    /// Draws from the chain's distribution with a ChaCha8 generator seeded with `seed`: the same
    /// seed and logits give the same tokens on any run and platform.
    pub fn seeded(seed: u64) -> Self {
        Sampler {
            stages: vec![],
            rng: Some(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// Appends a stage.
    pub fn with(mut self, stage: Stage) -> Self {
        self.stages.push(stage);
        self
    }

    /// The chain for `params`: bias, penalties, temperature, top-k, top-p, min-p; greedy when
    /// the temperature is 0.
    pub fn from_params(params: &SamplingParams) -> Result<Self> {
        params.validate()?;
        let greedy = params.temperature <= 0.0;
        let seed = params.seed.unwrap_or_else(|| rand::rng().random());
        let mut s = if greedy {
            Sampler::greedy()
        } else {
            Sampler::seeded(seed)
        };
        if !params.logit_bias.is_empty() {
            s = s.with(Stage::LogitBias(params.logit_bias.clone()));
        }
        if params.repetition_penalty != 1.0 || params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
            s = s.with(Stage::Penalties {
                repetition: params.repetition_penalty,
                presence: params.presence_penalty,
                frequency: params.frequency_penalty,
                last_n: params.penalty_last_n,
            });
        }
        if !greedy {
            s = s.with(Stage::Temperature(params.temperature));
            if params.top_k > 0 {
                s = s.with(Stage::TopK(params.top_k));
            }
            if params.top_p < 1.0 {
                s = s.with(Stage::TopP(params.top_p));
            }
            if params.min_p > 0.0 {
                s = s.with(Stage::MinP(params.min_p));
            }
        }
        Ok(s)
    }

    /// The tokens left after the chain and their probabilities, most likely first.
    pub fn distribution(&self, logits: &[f32], history: &[u32]) -> Vec<(u32, f32)> {
        let mut c: Vec<Candidate> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        for st in &self.stages {
            st.apply(&mut c, history);
        }
        c.retain(|x| x.1 > f32::NEG_INFINITY);
        sort_desc(&mut c);
        let p = softmax(&c);
        c.iter().zip(p).map(|(x, p)| (x.0, p)).collect()
    }

    /// The next token. `history` is what the penalties look at (prompt and generated ids).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        for st in &self.stages {
            st.check()?;
        }
        if logits.iter().any(|l| l.is_nan()) {
            return Err(Error::InvalidArgument("logits contain NaN".into()));
        }
        let dist = self.distribution(logits, history);
        let Some(&(best, _)) = dist.first() else {
            return Err(Error::InvalidArgument(
                "every token was excluded by the sampling chain".into(),
            ));
        };
        let Some(rng) = self.rng.as_mut() else {
            return Ok(best);
        };
        let u: f32 = rng.random();
        let mut acc = 0.0;
        for &(id, p) in &dist {
            acc += p;
            if u < acc {
                return Ok(id);
            }
        }
        Ok(dist[dist.len() - 1].0)
    }
}

/// Sampling settings in one value (what bindings and the CLI expose).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repetition_penalty: f32,
    /// 0 = off.
    pub presence_penalty: f32,
    /// 0 = off.
    pub frequency_penalty: f32,
    /// Recent tokens the penalties look at; 0 = all.
    pub penalty_last_n: usize,
    /// Per-token logit biases.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the draw; `None` = from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// DeepSeek-R1's recommended settings.
    fn default() -> Self {
        Self::deepseek_r1()
    }
}

impl SamplingParams {
    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sets the temperature (0 = greedy).
    pub fn with_temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    /// Sets top-k (0 = off).
    pub fn with_top_k(mut self, k: usize) -> Self {
        self.top_k = k;
        self
    }

    /// Sets top-p (1 = off).
    pub fn with_top_p(mut self, p: f32) -> Self {
        self.top_p = p;
        self
    }

    /// Sets min-p (0 = off).
    pub fn with_min_p(mut self, p: f32) -> Self {
        self.min_p = p;
        self
    }

    /// Sets the logit biases.
    pub fn with_logit_bias(mut self, bias: Vec<(u32, f32)>) -> Self {
        self.logit_bias = bias;
        self
    }

    /// Sets the repetition, presence and frequency penalties.
    pub fn with_penalties(mut self, repetition: f32, presence: f32, frequency: f32) -> Self {
        self.repetition_penalty = repetition;
        self.presence_penalty = presence;
        self.frequency_penalty = frequency;
        self
    }

    /// DeepSeek's recommendation for R1 and its distills: temperature 0.6, top-p 0.95 (their
    /// model cards: 0.5–0.7, 0.6 recommended, to avoid endless repetition or incoherence).
    pub fn deepseek_r1() -> Self {
        SamplingParams {
            temperature: 0.6,
            top_p: 0.95,
            ..Self::greedy()
        }
    }

    /// Checks every value's range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature {} must be >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p {} must be in [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!("repetition_penalty {} must be > 0", self.repetition_penalty));
        }
        if !self.presence_penalty.is_finite() || !self.frequency_penalty.is_finite() {
            return bad("presence and frequency penalties must be finite".into());
        }
        if let Some(m) = bad_bias(&self.logit_bias) {
            return bad(m);
        }
        let mut ids: Vec<u32> = self.logit_bias.iter().map(|&(id, _)| id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!("logit_bias lists token {} twice", w[0]));
        }
        Ok(())
    }

    /// Argmax decoding.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 0,
            logit_bias: vec![],
            seed: None,
        }
    }
}

/// The log-probabilities of one generated token: its own and the most likely alternatives,
/// from the log-softmax of the model's raw logits (before penalties, temperature and
/// truncation, as OpenAI's `logprobs` report them).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TokenLogprobs {
    /// The chosen token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The `k` most likely tokens and their log-probabilities, best first (ties: lower id).
    pub top: Vec<(u32, f32)>,
}

/// The most top log-probabilities a generation may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

impl TokenLogprobs {
    /// `token`'s log-probability under `logits` and the `k` best alternatives.
    pub fn from_logits(logits: &[f32], token: u32, k: usize) -> TokenLogprobs {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let log_z = max as f64 + sum.ln();
        let lp = |l: f32| (l as f64 - log_z) as f32;
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        if k > 0 {
            for (i, &l) in logits.iter().enumerate() {
                // Keep the k largest, sorted: a short insertion list beats sorting the vocabulary.
                if best.len() == k && l <= best[k - 1].1 {
                    continue;
                }
                let at = best.partition_point(|&(_, b)| b >= l);
                best.insert(at, (i as u32, l));
                best.truncate(k);
            }
        }
        TokenLogprobs {
            token,
            logprob: logits.get(token as usize).map_or(f32::NEG_INFINITY, |&l| lp(l)),
            top: best.into_iter().map(|(i, l)| (i, lp(l))).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_by_hand() {
        // log-softmax of [0, ln 2, ln 2, -inf] is [ln .2, ln .4, ln .4, -inf].
        let l = [0.0, 2f32.ln(), 2f32.ln(), f32::NEG_INFINITY];
        let t = TokenLogprobs::from_logits(&l, 0, 3);
        assert!((t.logprob - 0.2f32.ln()).abs() < 1e-6);
        let ids: Vec<u32> = t.top.iter().map(|x| x.0).collect();
        assert_eq!(ids, vec![1, 2, 0], "best first, ties by lower id");
        assert!((t.top[0].1 - 0.4f32.ln()).abs() < 1e-6);
        assert!(TokenLogprobs::from_logits(&l, 1, 0).top.is_empty());
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-6
    }

    /// ln of the given probabilities, so softmax gives them back exactly.
    fn logits_of(p: &[f32]) -> Vec<f32> {
        p.iter().map(|x| x.ln()).collect()
    }

    #[test]
    fn top_k_keeps_k_and_renormalizes() {
        let s = Sampler::greedy().with(Stage::TopK(2));
        let d = s.distribution(&logits_of(&[0.1, 0.5, 0.3, 0.1]), &[]);
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(close(d[0].1, 0.625) && close(d[1].1, 0.375), "{d:?}");
    }

    #[test]
    fn top_p_keeps_smallest_set_reaching_p() {
        // Sorted: 0.5, 0.3, 0.1, 0.1. p = 0.75 is reached by {0.5, 0.3}; p = 0.85 needs a third.
        let l = logits_of(&[0.1, 0.5, 0.3, 0.1]);
        let d = Sampler::greedy().with(Stage::TopP(0.75)).distribution(&l, &[]);
        assert_eq!(d.len(), 2);
        let d = Sampler::greedy().with(Stage::TopP(0.85)).distribution(&l, &[]);
        assert_eq!(d.len(), 3);
        assert_eq!(d[2].0, 0, "ties keep the lower id");
        assert!(close(d[0].1, 0.5 / 0.9));
    }

    #[test]
    fn min_p_is_relative_to_the_top() {
        // max 0.5; min_p 0.5 keeps p >= 0.25: tokens 1 (0.5) and 2 (0.3).
        let d = Sampler::greedy()
            .with(Stage::MinP(0.5))
            .distribution(&logits_of(&[0.1, 0.5, 0.3, 0.1]), &[]);
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn temperature_sharpens() {
        // logits [0, ln 2]: at T = 1 p = [1/3, 2/3]; at T = 0.5 logits double: p = [1/5, 4/5].
        let l = [0.0, 2f32.ln()];
        let d = Sampler::greedy().with(Stage::Temperature(0.5)).distribution(&l, &[]);
        assert!(close(d[0].1, 0.8) && close(d[1].1, 0.2), "{d:?}");
    }

    #[test]
    fn penalties_follow_their_definitions() {
        let s = Sampler::greedy().with(Stage::Penalties {
            repetition: 2.0,
            presence: 0.5,
            frequency: 0.25,
            last_n: 0,
        });
        // Token 0 (logit 2) seen twice: 2/2 - 0.5 - 0.5 = 0. Token 1 (logit -1) seen once: -2 - 0.75.
        let mut c = vec![(0u32, 2.0f32), (1, -1.0), (2, 1.0)];
        s.stages[0].apply(&mut c, &[0, 1, 0]);
        assert_eq!(c, vec![(0, 0.0), (1, -2.75), (2, 1.0)]);
        // last_n = 1 only sees the last token.
        let mut c = vec![(0u32, 2.0f32), (1, -1.0)];
        Stage::Penalties {
            repetition: 2.0,
            presence: 0.0,
            frequency: 0.0,
            last_n: 1,
        }
        .apply(&mut c, &[1, 0]);
        assert_eq!(c, vec![(0, 1.0), (1, -1.0)]);
    }

    #[test]
    fn logit_bias_can_ban_and_greedy_is_argmax() {
        let mut s = Sampler::greedy().with(Stage::LogitBias(vec![(1, f32::NEG_INFINITY)]));
        assert_eq!(s.sample(&[0.0, 5.0, 1.0], &[]).unwrap(), 2);
        assert!(Sampler::greedy().sample(&[f32::NAN], &[]).is_err());
    }

    #[test]
    fn seeded_draws_are_reproducible_and_follow_the_distribution() {
        let p = [0.1f32, 0.5, 0.3, 0.1];
        let l = logits_of(&p);
        let draws = |seed| {
            let mut s = Sampler::seeded(seed);
            (0..20_000).map(|_| s.sample(&l, &[]).unwrap()).collect::<Vec<_>>()
        };
        let a = draws(7);
        assert_eq!(a, draws(7));
        assert_ne!(a, draws(8));
        // Binomial std for n = 20000, p = 0.5 is 0.0035: a 0.015 tolerance is over 4 sigma.
        for (id, want) in p.iter().enumerate() {
            let freq = a.iter().filter(|&&t| t as usize == id).count() as f32 / a.len() as f32;
            assert!((freq - want).abs() < 0.015, "token {id}: {freq} vs {want}");
        }
    }

    #[test]
    fn r1_preset_draws_only_from_the_top_p_set() {
        let params = SamplingParams {
            seed: Some(1),
            ..SamplingParams::deepseek_r1()
        };
        let mut s = Sampler::from_params(&params).unwrap();
        // At T = 0.6 the probabilities of logits [3, 1, 0, -5] are ~[0.959, 0.034, 0.006, 0.000]:
        // token 0 alone reaches 0.95, so top-p keeps only it.
        for _ in 0..1000 {
            assert_eq!(s.sample(&[3.0, 1.0, 0.0, -5.0], &[]).unwrap(), 0);
        }
        assert!(Sampler::from_params(&SamplingParams { top_p: 1.5, ..params }).is_err());
    }
}
