//! MLA's absorbed decode as one fused pass over the latent cache.
//!
//! With one query token, every head's query is moved into latent space (`q_nope · W_UK`), so
//! head `h` scores cached token `t` as `q_lat[h] · c[t] + q_rope[h] · k_rope[t]` and its output
//! is `Σ_t p[h, t] · c[t]` (then `· W_UVᵀ`, outside). All heads read the same rows, so here each
//! cached row is read once for all heads, with no `[heads, tokens]` score tensor and no pass
//! per product. The tokens are cut into blocks that run in parallel, each with its own softmax
//! maximum and sum, merged at the end (the split-K form of online softmax): with 8 heads and
//! one token there is nothing else to share between threads.

use super::decode::{ahead, score_tile, split_softmax, tile_rows, TILE};
use super::fused::{axpy, dot, Partial};
use crate::cache::SplitRows;
use crate::error::{Error, Result};
use crate::kernels::cpu::vectorized;
use crate::kernels::matmul::Acts;
use crate::kernels::QuantMatrix;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;

/// The shapes of one absorbed decode step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LatentShape {
    /// Query heads.
    pub heads: usize,
    /// Latent width (`kv_lora_rank`).
    pub rank: usize,
    /// Rope key width (`qk_rope_head_dim`).
    pub rope: usize,
    /// Score scale.
    pub scale: f32,
}

/// `softmax(q_lat · cᵀ + q_rope · k_ropeᵀ) · c` per head: `q_lat [heads, rank]`, `q_rope
/// [heads, rope]`, `c [total, rank]`, `k_rope [total, rope]` → `[heads, rank]`.
pub(crate) fn attend(
    q_lat: &[f32],
    q_rope: &[f32],
    c: SplitRows<'_>,
    k_rope: SplitRows<'_>,
    s: LatentShape,
) -> Vec<f32> {
    split_softmax(
        c.len(),
        s.heads,
        s.rank,
        #[inline(always)]
        |rows| block(q_lat, q_rope, c, k_rope, s, rows),
    )
}

/// Scores, softmax terms and weighted latent sums of cached tokens `rows`, for every head.
#[inline(always)]
fn block(
    q_lat: &[f32],
    q_rope: &[f32],
    c: SplitRows<'_>,
    k_rope: SplitRows<'_>,
    s: LatentShape,
    rows: Range<usize>,
) -> Partial {
    let (n, r, e) = (rows.len(), s.rank, s.rope);
    let mut scores = vec![0f32; s.heads * n];
    let (mut latent, mut rope) = ([0f32; TILE], [0f32; TILE]);
    for first in (0..n).step_by(TILE) {
        let m = TILE.min(n - first);
        let next = first + TILE..(first + 2 * TILE).min(n);
        ahead(next.clone(), |j| c.row(rows.start + j));
        ahead(next, |j| k_rope.row(rows.start + j));
        // f32 rows: borrowed as they are, no buffer.
        let cs = tile_rows(|j| c.row(rows.start + first + j), m, r, &mut []);
        let ks = tile_rows(|j| k_rope.row(rows.start + first + j), m, e, &mut []);
        for h in 0..s.heads {
            score_tile(&q_lat[h * r..(h + 1) * r], &cs[..m], &mut latent);
            score_tile(&q_rope[h * e..(h + 1) * e], &ks[..m], &mut rope);
            for (j, o) in scores[h * n + first..][..m].iter_mut().enumerate() {
                *o = (latent[j] + rope[j]) * s.scale;
            }
        }
    }
    Partial::new(&mut scores, s.heads, s.heads, r, |i| c.row(rows.start + i))
}

/// Per head `h`, `x[h] · w[h]` for `x [heads, n]` and `w [heads, n, m]` (`transposed`: `w
/// [heads, m, n]`, so the products are dots with its rows) → `[heads, m]`. The query's move
/// into latent space (`q_nope · W_UK`) and the output's move out of it (`· W_UVᵀ`): one row
/// times a small matrix per head, which a GEMM library runs far below speed; heads run in
/// parallel.
pub(crate) fn per_head_product(x: &[f32], w: &[f32], heads: usize, n: usize, m: usize, transposed: bool) -> Vec<f32> {
    let out = Mutex::new(vec![0f32; heads * m]);
    candle_core::utils::barrier_pool().execute_chunked(heads, |range: Range<usize>| {
        let mut done = Vec::new();
        vectorized(
            #[inline(always)]
            || {
                for h in range {
                    let (xh, wh) = (&x[h * n..(h + 1) * n], &w[h * n * m..(h + 1) * n * m]);
                    let mut o = vec![0f32; m];
                    if transposed {
                        for (o, row) in o.iter_mut().zip(wh.chunks_exact(n)) {
                            *o = dot(xh, row);
                        }
                    } else {
                        for (&xi, row) in xh.iter().zip(wh.chunks_exact(m)) {
                            axpy(xi, row, &mut o);
                        }
                    }
                    done.push((h, o));
                }
            },
        );
        // A poisoned lock only means another task panicked; its heads are lost either way.
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        for (h, o) in done {
            out[h * m..(h + 1) * m].copy_from_slice(&o);
        }
    });
    out.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// [`per_head_product`] for matrices kept in r1's block formats: `out[h] = mats[h] · x[h]`, each
/// `mats[h]` `[m, n]` and `x [heads, n]` → `[heads, m]`, all heads' groups of eight rows in one
/// round of the pool (each head's input quantized once, as the block kernels take it).
pub(crate) fn per_head_blocks(x: &[f32], mats: &[Arc<QuantMatrix>]) -> Result<Vec<f32>> {
    let Some((m, n)) = mats.first().map(|w| w.shape()) else {
        return Ok(Vec::new());
    };
    if x.len() != mats.len() * n || mats.iter().any(|w| w.shape() != (m, n)) {
        return Err(Error::InvalidArgument(format!(
            "per-head products of {} matrices [{m}, {n}] on {} values",
            mats.len(),
            x.len()
        )));
    }
    let acts: Vec<Acts> = mats
        .iter()
        .zip(x.chunks_exact(n))
        .map(|(w, xh)| w.quantize(xh))
        .collect();
    let groups = m.div_ceil(8);
    let out = Mutex::new(vec![0f32; mats.len() * m]);
    candle_core::utils::barrier_pool().execute_chunked(mats.len() * groups, |range: Range<usize>| {
        let mut done = Vec::with_capacity(range.len());
        let mut dots = [0f32; 8];
        for task in range {
            let (h, first) = (task / groups, task % groups * 8);
            mats[h].block_dots(first, &acts[h], &mut dots);
            done.push((h * m + first, dots));
        }
        // A poisoned lock only means another task panicked; its rows are lost either way.
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        for (at, dots) in done {
            let rows = (m - at % m).min(8);
            out[at..at + rows].copy_from_slice(&dots[..rows]);
        }
    });
    Ok(out.into_inner().unwrap_or_else(|p| p.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook form in f64: all scores, softmax, weighted sum.
    fn reference(q_lat: &[f32], q_rope: &[f32], c: &[f32], k_rope: &[f32], s: LatentShape) -> Vec<f64> {
        let (r, e) = (s.rank, s.rope);
        let total = c.len() / r;
        let mut out = vec![0f64; s.heads * r];
        for h in 0..s.heads {
            let scores: Vec<f64> = (0..total)
                .map(|t| {
                    let a: f64 = (0..r).map(|j| q_lat[h * r + j] as f64 * c[t * r + j] as f64).sum();
                    let b: f64 = (0..e)
                        .map(|j| q_rope[h * e + j] as f64 * k_rope[t * e + j] as f64)
                        .sum();
                    (a + b) * s.scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = w.iter().sum();
            for t in 0..total {
                for j in 0..r {
                    out[h * r + j] += w[t] / sum * c[t * r + j] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn per_head_blocks_equal_the_sums_of_their_dequantized_rows() {
        use crate::kernels::kquant::KFormat;
        use crate::kernels::matmul::Kind;
        use crate::kernels::quant::Format;
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        let (heads, m) = (3, 24);
        for (kind, n) in [
            (Kind::Legacy(Format::Q8_0), 64),
            (Kind::Legacy(Format::Q5_0), 96),
            (Kind::K(KFormat::Q4K), 256),
        ] {
            // Matrices quantized from known values by ggml's quantizers (candle's), so their
            // blocks are well formed.
            let ggml = match kind {
                Kind::Legacy(Format::Q8_0) => GgmlDType::Q8_0,
                Kind::Legacy(_) => GgmlDType::Q5_0,
                Kind::K(_) => GgmlDType::Q4K,
            };
            let mats: Vec<Arc<QuantMatrix>> = (0..heads)
                .map(|h| {
                    let dense = Tensor::from_vec(values(m * n, 11 + h as u32), (m, n), &Device::Cpu).unwrap();
                    let q = QTensor::quantize(&dense, ggml).unwrap();
                    Arc::new(QuantMatrix::new(kind, m, n, &q.data().unwrap()).unwrap())
                })
                .collect();
            let x = values(heads * n, 7);
            let got = per_head_blocks(&x, &mats).unwrap();
            let mut want = Vec::new();
            let mut row = Vec::new();
            for (h, w) in mats.iter().enumerate() {
                for r in 0..m {
                    w.dequantize_row(r, &mut row);
                    want.push(row.iter().zip(&x[h * n..(h + 1) * n]).map(|(a, b)| a * b).sum::<f32>());
                }
            }
            // The activations are quantized to 8 bits, as every block kernel does.
            let err: f32 = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                .sqrt();
            let norm: f32 = want.iter().map(|b| b * b).sum::<f32>().sqrt();
            assert!(err / norm < 1e-2, "{kind:?}: relative error {}", err / norm);
        }
        assert!(per_head_blocks(&[0.0; 5], &[]).unwrap().is_empty());
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                ((i.wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503)) >> 16) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn per_head_products_equal_the_sums() {
        let (heads, n, m) = (3, 5, 7);
        let (x, w) = (values(heads * n, 5), values(heads * n * m, 6));
        let plain = per_head_product(&x, &w, heads, n, m, false);
        let transposed = per_head_product(&x, &w, heads, n, m, true);
        for h in 0..heads {
            for j in 0..m {
                let want: f32 = (0..n).map(|i| x[h * n + i] * w[(h * n + i) * m + j]).sum();
                assert!((plain[h * m + j] - want).abs() < 1e-5);
                let want_t: f32 = (0..n).map(|i| x[h * n + i] * w[(h * m + j) * n + i]).sum();
                assert!((transposed[h * m + j] - want_t).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn fused_latent_attention_equals_the_textbook_form() {
        // One block, a partial block, and several blocks with a ragged end.
        for (heads, rank, rope, total) in [
            (2, 16, 8, 5),
            (8, 64, 16, 300),
            (4, 32, 8, 3 * super::super::decode::KEY_BLOCK + 17),
        ] {
            let s = LatentShape {
                heads,
                rank,
                rope,
                scale: 0.3,
            };
            let (ql, qr) = (values(heads * rank, 1), values(heads * rope, 2));
            let (c, kr) = (values(total * rank, 3), values(total * rope, 4));
            let got = attend(&ql, &qr, SplitRows::whole(&c, rank), SplitRows::whole(&kr, rope), s);
            let want = reference(&ql, &qr, &c, &kr, s);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() < 1e-5,
                    "{heads}x{rank}+{rope}, {total} tokens, [{i}]: {g} vs {w}"
                );
            }
            // A shared prefix and own rows, cut anywhere: the same result.
            for cut in [1, total / 2, total - 1] {
                let (c0, c1) = c.split_at(cut * rank);
                let (k0, k1) = kr.split_at(cut * rope);
                let view = (SplitRows::parts(c0, c1, rank), SplitRows::parts(k0, k1, rope));
                assert_eq!(attend(&ql, &qr, view.0, view.1, s), got, "cut at {cut}");
            }
        }
    }
}
