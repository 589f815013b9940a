//! DeepSeekMoE: a router picks `num_experts_per_tok` of `n_routed_experts` small MLPs per token;
//! their weighted outputs plus the always-on shared experts form the layer's output.
//!
//! Routing is done on plain `f32` vectors (it is `tokens × experts` numbers), which keeps every
//! router variant readable and exactly testable. Dispatch then groups tokens by expert, so each
//! chosen expert runs once on the batch of its tokens and unchosen experts are never touched.

use crate::config::{MoeConfig, ScoringFunc, TopkMethod};
use crate::error::Result;
use crate::kernels::experts::{self, Assignment, BlockMlp};
use crate::layers::mlp::Mlp;
use crate::weights::Weights;
use candle_core::{DType, Tensor};

/// The experts chosen for one token and their weights (after normalization and scaling).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TokenRouting {
    /// Expert indices, best first.
    pub experts: Vec<usize>,
    /// Weight of each expert's output, aligned with `experts`.
    pub weights: Vec<f32>,
}

/// What one MoE layer decided for every token of one forward call.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LayerRouting {
    /// Decoder layer index.
    pub layer: usize,
    /// `x · gate.weightᵀ` per token, before the score function.
    pub router_logits: Vec<Vec<f32>>,
    /// Choice per token.
    pub tokens: Vec<TokenRouting>,
}

/// Routes one token. `logits` are the router logits, `bias` the V3 `e_score_correction_bias`.
pub fn route(cfg: &MoeConfig, logits: &[f32], bias: Option<&[f32]>) -> TokenRouting {
    let scores: Vec<f32> = match cfg.scoring_func {
        ScoringFunc::Softmax => softmax(logits),
        ScoringFunc::Sigmoid => logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect(),
    };
    // noaux_tc chooses with the bias-corrected scores but weighs with the raw ones.
    let choice: Vec<f32> = match (cfg.topk_method, bias) {
        (TopkMethod::NoauxTc, Some(b)) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        _ => scores.clone(),
    };
    let allowed = allowed_experts(cfg, &choice);
    let mut candidates: Vec<usize> = (0..choice.len()).filter(|&e| allowed[e]).collect();
    // Stable sort: ties keep the lower expert index first.
    candidates.sort_by(|&a, &b| choice[b].total_cmp(&choice[a]));
    candidates.truncate(cfg.num_experts_per_tok);
    let mut weights: Vec<f32> = candidates.iter().map(|&e| scores[e]).collect();
    let normalize = cfg.norm_topk_prob && (cfg.scale_normalized || weights.len() > 1);
    if normalize {
        let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    if !normalize || cfg.scale_normalized {
        let scale = cfg.routed_scaling_factor as f32;
        weights.iter_mut().for_each(|w| *w *= scale);
    }
    TokenRouting {
        experts: candidates,
        weights,
    }
}

/// Which experts survive group selection: all for `greedy`; for the group-limited methods only
/// the experts of the `topk_group` best groups (V2 ranks a group by its best score, V3 by the sum
/// of its two best corrected scores).
fn allowed_experts(cfg: &MoeConfig, choice: &[f32]) -> Vec<bool> {
    let n = choice.len();
    if cfg.topk_method == TopkMethod::Greedy || cfg.topk_group >= cfg.n_group {
        return vec![true; n];
    }
    let per_group = n / cfg.n_group;
    let group_score = |g: usize| -> f32 {
        let mut s: Vec<f32> = choice[g * per_group..(g + 1) * per_group].to_vec();
        s.sort_by(|a, b| b.total_cmp(a));
        match cfg.topk_method {
            TopkMethod::NoauxTc => s[0] + s[1],
            _ => s[0],
        }
    };
    let scores: Vec<f32> = (0..cfg.n_group).map(group_score).collect();
    let mut groups: Vec<usize> = (0..cfg.n_group).collect();
    groups.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut allowed = vec![false; n];
    for &g in &groups[..cfg.topk_group] {
        allowed[g * per_group..(g + 1) * per_group]
            .iter_mut()
            .for_each(|a| *a = true);
    }
    allowed
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = x.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Tokens the fused experts take at a time. Their intermediate rows (f32, for every chosen
/// expert of every token) and quantized inputs exist per piece: for a whole 2,048-token prefill
/// chunk they were ~60 MiB of the benchmark MoE's peak memory. The kernels gain nothing from
/// more rows than this (they reuse each group of weights over tiles of eight tokens).
const EXPERT_TOKENS: usize = 512;

/// The block MLPs `mlps` (the routed experts, then the shared one when `shared`) on the rows
/// of `input`, each token through its chosen experts ([`experts::forward`]), [`EXPERT_TOKENS`]
/// tokens at a time.
fn fused(mlps: &[BlockMlp], tokens: &[TokenRouting], shared: bool, input: &[f32]) -> Result<Vec<f32>> {
    let hidden = input.len() / tokens.len().max(1);
    let refs: Vec<&BlockMlp> = mlps.iter().collect();
    let mut y = Vec::with_capacity(input.len());
    for (piece, rows) in tokens
        .chunks(EXPERT_TOKENS)
        .zip(input.chunks(EXPERT_TOKENS * hidden.max(1)))
    {
        let work = assignments(piece, mlps.len(), shared);
        y.extend(experts::forward(&refs, &work, rows, piece.len())?);
    }
    Ok(y)
}

/// Which of `tokens` each of `experts` block MLPs runs on, with what weight: the routed ones as
/// chosen, the shared one (last, when `shared`) on every token with weight 1.
fn assignments(tokens: &[TokenRouting], experts: usize, shared: bool) -> Vec<Assignment> {
    let t = tokens.len();
    let mut work = vec![Assignment::default(); experts];
    for (k, r) in tokens.iter().enumerate() {
        for (&e, &w) in r.experts.iter().zip(&r.weights) {
            work[e].tokens.push(k);
            work[e].weights.push(w);
        }
    }
    if shared {
        work[experts - 1] = Assignment {
            tokens: (0..t).collect(),
            weights: vec![1.0; t],
        };
    }
    work
}

/// A DeepSeekMoE block.
#[derive(Debug, Clone)]
pub struct Moe {
    /// Router weight `[n_routed_experts, hidden]`, f32.
    gate: Tensor,
    e_score_correction_bias: Option<Vec<f32>>,
    experts: Vec<Mlp>,
    shared_experts: Option<Mlp>,
    /// The routed experts, then the shared one, as block matrices, when every matrix is one:
    /// the layer then runs as one fused kernel ([`experts::forward`]).
    fused: Option<Vec<BlockMlp>>,
    cfg: MoeConfig,
}

impl Moe {
    /// Loads `{prefix}.gate`, `{prefix}.experts.{e}`, `{prefix}.shared_experts`.
    pub fn load(w: &Weights, prefix: &str, hidden: usize, cfg: &MoeConfig) -> Result<Self> {
        let n = cfg.n_routed_experts;
        let gate = w.get_f32(&format!("{prefix}.gate.weight"), &[n, hidden])?;
        let bias_name = format!("{prefix}.gate.e_score_correction_bias");
        // Checkpoints of V3 always have the bias; a GGUF of a sigmoid-gated model may not.
        let e_score_correction_bias =
            if cfg.topk_method == TopkMethod::NoauxTc && (w.gguf().is_none() || w.contains(&bias_name)) {
                Some(w.get_exact_f32(&bias_name, &[n])?.to_vec1::<f32>()?)
            } else {
                None
            };
        let experts = (0..n)
            .map(|e| {
                Mlp::load(
                    w,
                    &format!("{prefix}.experts.{e}"),
                    hidden,
                    cfg.moe_intermediate_size,
                    false,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let shared_experts = if cfg.n_shared_experts > 0 {
            let inter = cfg.moe_intermediate_size * cfg.n_shared_experts;
            Some(Mlp::load(w, &format!("{prefix}.shared_experts"), hidden, inter, false)?)
        } else {
            None
        };
        let fused = experts
            .iter()
            .chain(shared_experts.as_ref())
            .map(Mlp::blocks)
            .collect::<Option<Vec<_>>>();
        Ok(Moe {
            gate,
            e_score_correction_bias,
            experts,
            shared_experts,
            fused,
            cfg: cfg.clone(),
        })
    }

    /// `x [tokens, hidden]` → `[tokens, hidden]`, and the routing decisions.
    pub fn forward(&self, x: &Tensor, layer: usize) -> Result<(Tensor, LayerRouting)> {
        let router_logits: Vec<Vec<f32>> = x.to_dtype(DType::F32)?.matmul(&self.gate.t()?)?.to_vec2()?;
        let bias = self.e_score_correction_bias.as_deref();
        let tokens: Vec<TokenRouting> = router_logits.iter().map(|l| route(&self.cfg, l, bias)).collect();
        let out = match &self.fused {
            Some(mlps) => self.forward_fused(mlps, x, &tokens)?,
            None => self.forward_per_expert(x, &tokens)?,
        };
        Ok((
            out,
            LayerRouting {
                layer,
                router_logits,
                tokens,
            },
        ))
    }

    /// The chosen experts (and the shared one) in two parallel passes over block matrices.
    fn forward_fused(&self, mlps: &[BlockMlp], x: &Tensor, tokens: &[TokenRouting]) -> Result<Tensor> {
        let input = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let y = fused(mlps, tokens, self.shared_experts.is_some(), &input)?;
        Ok(Tensor::from_vec(y, x.dims(), x.device())?.to_dtype(x.dtype())?)
    }

    /// Each chosen expert as its own MLP on the batch of its tokens (any weight storage).
    fn forward_per_expert(&self, x: &Tensor, tokens: &[TokenRouting]) -> Result<Tensor> {
        let mut out = match &self.shared_experts {
            Some(shared) => shared.forward(x)?,
            None => x.zeros_like()?,
        };
        for (e, expert) in self.experts.iter().enumerate() {
            let (rows, weights): (Vec<u32>, Vec<f32>) = tokens
                .iter()
                .enumerate()
                .filter_map(|(t, r)| r.experts.iter().position(|&x| x == e).map(|k| (t as u32, r.weights[k])))
                .unzip();
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            let rows = Tensor::from_vec(rows, n, x.device())?;
            let weights = Tensor::from_vec(weights, (n, 1), x.device())?.to_dtype(x.dtype())?;
            let y = expert.forward(&x.index_select(&rows, 0)?)?.broadcast_mul(&weights)?;
            out = out.index_add(&rows, &y, 0)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experts_taken_a_piece_at_a_time_equal_each_token_alone() {
        use crate::kernels::experts::tests::{matrix, mlp};
        // Three routed experts and a shared one; more tokens than two pieces.
        let (hidden, inter, t) = (64, 32, 2 * EXPERT_TOKENS + 37);
        let mlps: Vec<BlockMlp> = (0..4).map(|e| mlp(hidden, inter, e, matrix)).collect();
        let tokens: Vec<TokenRouting> = (0..t)
            .map(|k| TokenRouting {
                experts: vec![k % 3, (k / 3 + 1) % 3],
                weights: vec![0.75, 0.25 + (k % 5) as f32 / 10.0],
            })
            .collect();
        let input: Vec<f32> = (0..t * hidden).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let got = fused(&mlps, &tokens, true, &input).unwrap();
        let refs: Vec<&BlockMlp> = mlps.iter().collect();
        for k in (0..t).step_by(7).chain([EXPERT_TOKENS - 1, EXPERT_TOKENS, t - 1]) {
            let work = assignments(&tokens[k..k + 1], mlps.len(), true);
            let want = experts::forward(&refs, &work, &input[k * hidden..(k + 1) * hidden], 1).unwrap();
            let row = &got[k * hidden..(k + 1) * hidden];
            let err = row.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let norm = want.iter().map(|b| b.abs()).fold(0f32, f32::max);
            assert!(norm > 0.0 && err <= 1e-5 * norm, "token {k}: {err} of {norm}");
        }
    }

    fn cfg(scoring: ScoringFunc, method: TopkMethod, n_group: usize, topk_group: usize, k: usize) -> MoeConfig {
        MoeConfig {
            n_routed_experts: 8,
            n_shared_experts: 0,
            num_experts_per_tok: k,
            moe_intermediate_size: 4,
            first_k_dense_replace: 0,
            moe_layer_freq: 1,
            scoring_func: scoring,
            topk_method: method,
            n_group,
            topk_group,
            norm_topk_prob: false,
            routed_scaling_factor: 1.0,
            scale_normalized: true,
        }
    }

    #[test]
    fn greedy_softmax_picks_largest_and_scales() {
        let mut c = cfg(ScoringFunc::Softmax, TopkMethod::Greedy, 1, 1, 2);
        c.routed_scaling_factor = 2.0;
        let logits = [0.0f32, 3.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0];
        let r = route(&c, &logits, None);
        assert_eq!(r.experts, vec![1, 4]);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((r.weights[0] - 2.0 * 3f32.exp() / z).abs() < 1e-6);
        assert!((r.weights[1] - 2.0 * 2f32.exp() / z).abs() < 1e-6);
    }

    #[test]
    fn group_limited_uses_group_max() {
        // Groups of 2: {0,1} {2,3} {4,5} {6,7}. Group maxima 0.9, 0.8, 0.5, 0.85 → keep groups 0 and 3.
        let c = cfg(ScoringFunc::Sigmoid, TopkMethod::GroupLimitedGreedy, 4, 2, 3);
        let s = [0.9f32, 0.1, 0.8, 0.7, 0.5, 0.45, 0.85, 0.2];
        let logits: Vec<f32> = s.iter().map(|p| (p / (1.0 - p)).ln()).collect();
        let r = route(&c, &logits, None);
        assert_eq!(r.experts, vec![0, 6, 7]);
    }

    #[test]
    fn noaux_tc_chooses_with_bias_weighs_without() {
        // Groups by sum of top-2 corrected scores.
        let mut c = cfg(ScoringFunc::Sigmoid, TopkMethod::NoauxTc, 4, 2, 2);
        c.norm_topk_prob = true;
        c.routed_scaling_factor = 2.5;
        let s = [0.5f32, 0.5, 0.6, 0.1, 0.3, 0.3, 0.2, 0.2];
        let bias = [0.0f32, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0];
        // Corrected: [.5 .5 .6 .1 .8 .3 .2 .2]; group sums 1.0, 0.7, 1.1, 0.4 → groups 2 and 0;
        // top-2 corrected among {0,1,4,5}: expert 4 (0.8) then expert 0 (0.5, lower index wins the tie).
        let logits: Vec<f32> = s.iter().map(|p| (p / (1.0 - p)).ln()).collect();
        let r = route(&c, &logits, Some(&bias));
        assert_eq!(r.experts, vec![4, 0]);
        // Weights from the raw sigmoid scores 0.3 and 0.5, normalized, times 2.5.
        assert!((r.weights[0] - 2.5 * 0.3 / 0.8).abs() < 1e-5, "{:?}", r.weights);
        assert!((r.weights[1] - 2.5 * 0.5 / 0.8).abs() < 1e-5);
    }

    #[test]
    fn v2_normalized_weights_are_not_scaled() {
        let mut c = cfg(ScoringFunc::Softmax, TopkMethod::Greedy, 1, 1, 2);
        c.norm_topk_prob = true;
        c.routed_scaling_factor = 16.0;
        c.scale_normalized = false;
        let logits = [0.0f32, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let r = route(&c, &logits, None);
        let (a, b) = (2f32.exp(), 1f32.exp());
        assert_eq!(r.experts, vec![1, 2]);
        assert!((r.weights[0] - a / (a + b)).abs() < 1e-6, "{:?}", r.weights);
        // Without normalization V2 scales.
        c.norm_topk_prob = false;
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((route(&c, &logits, None).weights[0] - 16.0 * a / z).abs() < 1e-5);
    }
}
