//! A MoE layer's chosen experts as two parallel passes, for experts stored in r1's block formats.
//!
//! Run as separate matmuls, each chosen expert costs three thread-pool rounds and quantizes its
//! input twice, and a decode step of a DeepSeek model waits on hundreds of such rounds. Here the
//! whole layer takes two:
//!
//! 1. gate and up: every group of eight rows of every chosen expert's `gate` and `up` (shared
//!    experts included) is one work item (one interleaved group where the weights are
//!    interleaved), dotted with the tokens routed to that expert, giving
//!    `h = silu(gate · x) * (up · x)`. Each token's input is quantized once for all experts.
//! 2. down and sum: every group of eight output rows is one work item, which adds `weight · down_e · h_e` over
//!    the experts of each token.
//!
//! Experts that no token chose are never read.

use super::matmul::{segment_starts, segments, Acts, QuantMatrix};
use crate::error::{Error, Result};
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// A gated MLP `down(silu(gate · x) * (up · x))` whose matrices are r1 block matrices.
#[derive(Debug, Clone)]
pub(crate) struct BlockMlp {
    pub gate: Arc<QuantMatrix>,
    pub up: Arc<QuantMatrix>,
    pub down: Arc<QuantMatrix>,
}

impl BlockMlp {
    /// The intermediate width.
    fn inter(&self) -> usize {
        self.gate.shape().0
    }
}

/// The tokens one expert runs on, and the weight of its output for each.
#[derive(Debug, Clone, Default)]
pub(crate) struct Assignment {
    pub tokens: Vec<usize>,
    pub weights: Vec<f32>,
}

/// `Σ_e weight · mlp_e(x_token)` for every token of `x` (`[t, hidden]`), where `work[e]` says
/// which tokens expert `mlps[e]` runs on. Returns `[t, hidden]`.
pub(crate) fn forward(mlps: &[&BlockMlp], work: &[Assignment], x: &[f32], t: usize) -> Result<Vec<f32>> {
    let Some(first) = mlps.first() else {
        return Err(Error::InvalidArgument("an MoE layer with no experts".into()));
    };
    let hidden = first.gate.shape().1;
    let fits = |m: &BlockMlp| {
        m.gate.shape() == m.up.shape()
            && m.gate.shape().1 == hidden
            && m.down.shape() == (hidden, m.inter())
            && m.gate.kind() == first.gate.kind()
            && m.up.kind() == first.up.kind()
    };
    if x.len() != t * hidden || work.len() != mlps.len() || !mlps.iter().all(|m| fits(m)) {
        return Err(Error::InvalidArgument(format!(
            "experts of width {hidden} on input [{t}, {}] with {} assignments for {} experts",
            x.len() / hidden.max(1),
            work.len(),
            mlps.len()
        )));
    }
    if work
        .iter()
        .any(|a| a.tokens.len() != a.weights.len() || a.tokens.iter().any(|&k| k >= t))
    {
        return Err(Error::InvalidArgument(
            "an expert assignment names a token out of range".into(),
        ));
    }
    let used: Vec<usize> = (0..mlps.len()).filter(|&e| !work[e].tokens.is_empty()).collect();
    let h = gate_up(mlps, work, &used, x);
    Ok(down_sum(mlps, work, &used, &h, t, hidden))
}

/// Pass 1: `h[e]` (`[tokens of e, inter_e]`) for every used expert `e`, in `used` order.
fn gate_up(mlps: &[&BlockMlp], work: &[Assignment], used: &[usize], x: &[f32]) -> Vec<Vec<f32>> {
    // One quantization of the input for all gate matrices, one for all up matrices (the same
    // one when their kinds agree, as in every GGUF we know).
    let gate_acts = mlps[0].gate.quantize(x);
    let up_acts = (mlps[0].up.kind() != mlps[0].gate.kind()).then(|| mlps[0].up.quantize(x));
    let per_expert: Vec<(Acts, Option<Acts>)> = used
        .iter()
        .map(|&e| {
            let tokens = &work[e].tokens;
            (gate_acts.select(tokens), up_acts.as_ref().map(|a| a.select(tokens)))
        })
        .collect();
    // Work items: groups of eight rows of the used experts, one expert after the other.
    let groups = |e: usize| mlps[e].inter().div_ceil(8);
    let (starts, total) = segment_starts(used.iter().map(|&e| groups(e)));
    let h: Vec<Mutex<Vec<f32>>> = used
        .iter()
        .map(|&e| Mutex::new(vec![0f32; work[e].tokens.len() * mlps[e].inter()]))
        .collect();
    candle_core::utils::barrier_pool().execute_chunked(total, |items: Range<usize>| {
        for (u, range) in segments(&starts, total, items) {
            let (m, (g_acts, u_acts)) = (mlps[used[u]], &per_expert[u]);
            let (n, inter) = (g_acts.len(), m.inter());
            let (mut g, mut v) = (vec![0f32; n * 8], vec![0f32; n * 8]);
            let rows = range.start * 8..(range.end * 8).min(inter);
            let mut part = vec![0f32; n * rows.len()];
            for first in rows.clone().step_by(8) {
                match u_acts {
                    Some(u_acts) => {
                        m.gate.block_dots(first, g_acts, &mut g);
                        m.up.block_dots(first, u_acts, &mut v);
                    }
                    None => m.gate.block_dots_pair(&m.up, first, g_acts, &mut g, &mut v),
                }
                silu_times(&mut g, &v);
                for r in first..(first + 8).min(inter) {
                    for k in 0..n {
                        part[k * rows.len() + r - rows.start] = g[k * 8 + r - first];
                    }
                }
            }
            // A poisoned lock only means another task panicked; its rows are lost either way.
            let mut out = h[u].lock().unwrap_or_else(|p| p.into_inner());
            for k in 0..n {
                out[k * inter + rows.start..k * inter + rows.end]
                    .copy_from_slice(&part[k * rows.len()..(k + 1) * rows.len()]);
            }
        }
    });
    h.into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

/// Pass 2: `y[token] = Σ_e weight · down_e · h_e[token]`, each task a range of output rows.
fn down_sum(
    mlps: &[&BlockMlp],
    work: &[Assignment],
    used: &[usize],
    h: &[Vec<f32>],
    t: usize,
    hidden: usize,
) -> Vec<f32> {
    let acts: Vec<Acts> = used.iter().zip(h).map(|(&e, h)| mlps[e].down.quantize(h)).collect();
    let y = Mutex::new(vec![0f32; t * hidden]);
    // Work items: groups of eight output rows.
    candle_core::utils::barrier_pool().execute_chunked(hidden.div_ceil(8), |groups: Range<usize>| {
        let rows = groups.start * 8..(groups.end * 8).min(hidden);
        let width = rows.len();
        let mut part = vec![0f32; t * width];
        let mut col = Vec::new();
        for first in rows.clone().step_by(8) {
            for (u, &e) in used.iter().enumerate() {
                col.resize(acts[u].len() * 8, 0.0);
                mlps[e].down.block_dots(first, &acts[u], &mut col);
                for (k, (&tok, &w)) in work[e].tokens.iter().zip(&work[e].weights).enumerate() {
                    for r in first..(first + 8).min(hidden) {
                        part[tok * width + r - rows.start] += w * col[k * 8 + r - first];
                    }
                }
            }
        }
        // A poisoned lock only means another task panicked; its rows are lost either way.
        let mut y = y.lock().unwrap_or_else(|p| p.into_inner());
        for tok in 0..t {
            y[tok * hidden + rows.start..tok * hidden + rows.end]
                .copy_from_slice(&part[tok * width..(tok + 1) * width]);
        }
    });
    y.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// `g = silu(g) · v`, vectorized: with libm's `exp`, a call per value, SiLU took 4.5% of a
/// dense model's prefill.
fn silu_times(g: &mut [f32], v: &[f32]) {
    super::cpu::vectorized(
        #[inline(always)]
        || {
            for (g, v) in g.iter_mut().zip(v) {
                *g = *g / (1.0 + super::exp::exp(-*g)) * v;
            }
        },
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::matmul::Kind;
    use super::super::quant::{Format, QK};
    use super::*;

    /// A Q8_0 matrix whose weights are small multiples of 1/64 (exact in f32), from `seed`.
    pub(crate) fn matrix(rows: usize, cols: usize, seed: usize) -> QuantMatrix {
        let mut bytes = Vec::new();
        for r in 0..rows {
            for b in 0..cols / QK {
                bytes.extend(half::f16::from_f32(1.0 / 64.0).to_le_bytes());
                bytes.extend((0..QK).map(|j| ((r * 7 + b * 5 + j * 3 + seed * 11) % 21) as u8 - 10));
            }
        }
        QuantMatrix::new(Kind::Legacy(Format::Q8_0), rows, cols, &bytes).unwrap()
    }

    /// Expert `e`'s gate, up and down matrices from `make(rows, cols, seed)`, seeds 3e..3e + 3.
    pub(crate) fn mlp(
        hidden: usize,
        inter: usize,
        e: usize,
        make: impl Fn(usize, usize, usize) -> QuantMatrix,
    ) -> BlockMlp {
        BlockMlp {
            gate: Arc::new(make(inter, hidden, 3 * e)),
            up: Arc::new(make(inter, hidden, 3 * e + 1)),
            down: Arc::new(make(hidden, inter, 3 * e + 2)),
        }
    }

    /// A Q4_K matrix of pseudo-random blocks with small scales, interleaved where this CPU
    /// interleaves Q4_K (as GGUF experts are loaded).
    pub(crate) fn q4k_matrix(rows: usize, cols: usize, seed: u64) -> QuantMatrix {
        let mut state = 0x9e37_79b9_7f4a_7c15 ^ seed;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / 256 {
            let mut b: Vec<u8> = (0..144).map(|_| next()).collect();
            b[..2].copy_from_slice(&half::f16::from_f32(0.001).to_le_bytes());
            b[2..4].copy_from_slice(&half::f16::from_f32(0.002).to_le_bytes());
            bytes.extend(b);
        }
        let kind = Kind::K(super::super::kquant::KFormat::Q4K);
        QuantMatrix::interleaved(kind, rows, cols, &bytes)
            .unwrap_or_else(|| QuantMatrix::new(kind, rows, cols, &bytes).unwrap())
    }

    /// `forward` against each expert's three matmuls (tested against dequantized weights in
    /// `matmul`), run one expert and one token at a time: the same quantization of the same
    /// inputs, so only the f32 summation order may differ.
    fn check_against_own_matmuls(mlps: &[BlockMlp], work: &[Assignment], x: &[f32], t: usize) {
        let hidden = mlps[0].gate.shape().1;
        let refs: Vec<&BlockMlp> = mlps.iter().collect();
        let y = forward(&refs, work, x, t).unwrap();
        for tok in 0..t {
            let xt = &x[tok * hidden..(tok + 1) * hidden];
            let mut want = vec![0f64; hidden];
            for (m, a) in mlps.iter().zip(work) {
                let Some(k) = a.tokens.iter().position(|&v| v == tok) else {
                    continue;
                };
                let g = m.gate.matmul(xt, 1).unwrap();
                let u = m.up.matmul(xt, 1).unwrap();
                let h: Vec<f32> = g.iter().zip(&u).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
                for (w, d) in want.iter_mut().zip(m.down.matmul(&h, 1).unwrap()) {
                    *w += (a.weights[k] * d) as f64;
                }
            }
            let got = &y[tok * hidden..(tok + 1) * hidden];
            let err: f64 = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).powi(2)).sum();
            let norm: f64 = want.iter().map(|w| w * w).sum();
            assert!(
                norm > 0.0 && (err / norm).sqrt() <= 1e-5,
                "token {tok}: {:e}",
                (err / norm).sqrt()
            );
        }
    }

    #[test]
    fn silu_times_is_silu_times_the_up_value() {
        let xs = [-100.0f32, -20.0, -3.5, -1.0, -0.0, 0.0, 0.25, 1.0, 4.0, 30.0, 100.0];
        let mut g = xs.to_vec();
        let v: Vec<f32> = (0..xs.len()).map(|i| 0.5 + i as f32).collect();
        silu_times(&mut g, &v);
        for ((x, got), v) in xs.iter().zip(&g).zip(&v) {
            let want = (*x as f64 / (1.0 + (-*x as f64).exp()) * *v as f64) as f32;
            assert!(
                (got - want).abs() <= 4.0 * f32::EPSILON * want.abs().max(1e-30),
                "{x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn interleaved_q4k_experts_equal_their_own_matmuls() {
        // Q4_K rows hold whole super-blocks of 256, so both widths are 256 (32 groups of eight).
        let (hidden, inter, t) = (256, 256, 3);
        let mlps: Vec<BlockMlp> = (0..2)
            .map(|e| mlp(hidden, inter, e, |r, c, seed| q4k_matrix(r, c, seed as u64)))
            .collect();
        let work = vec![
            Assignment {
                tokens: vec![0, 1],
                weights: vec![0.6, 0.3],
            },
            Assignment {
                tokens: vec![1, 2],
                weights: vec![0.5, 1.0],
            },
        ];
        let x: Vec<f32> = (0..t * hidden)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0)
            .collect();
        check_against_own_matmuls(&mlps, &work, &x, t);
    }

    #[test]
    fn equals_each_expert_run_as_its_own_matmuls() {
        let (hidden, t) = (64, 3);
        let mlps: Vec<BlockMlp> = (0..4)
            .map(|e| {
                let inter = if e == 3 { 64 } else { 32 }; // the last plays a wider shared expert
                mlp(hidden, inter, e, matrix)
            })
            .collect();
        let work = vec![
            Assignment {
                tokens: vec![0, 2],
                weights: vec![0.7, 0.25],
            },
            Assignment::default(), // chosen by no token: never read
            Assignment {
                tokens: vec![1, 2],
                weights: vec![0.4, 0.75],
            },
            Assignment {
                tokens: vec![0, 1, 2],
                weights: vec![1.0; 3],
            },
        ];
        let x: Vec<f32> = (0..t * hidden)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 100.0)
            .collect();
        let refs: Vec<&BlockMlp> = mlps.iter().collect();
        check_against_own_matmuls(&mlps, &work, &x, t);
        let bad = vec![
            Assignment {
                tokens: vec![5],
                weights: vec![1.0]
            };
            4
        ];
        assert!(forward(&refs, &bad, &x, t).is_err());
    }
}
