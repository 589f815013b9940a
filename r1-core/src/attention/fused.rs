//! Grouped-query attention as fused passes over the cache, without a score tensor.
//!
//! Keys and values are read where the cache keeps them: token-major rows of `kv_heads ×
//! head_dim` floats. A prefill (several query rows) runs as flash attention, tiles of keys
//! against blocks of queries with the softmax kept online ([`attend`]); a decode step (one
//! query row) splits the keys into blocks scored in parallel and merges their partial softmaxes
//! ([`super::decode`]). No `[heads, len, context]` tensor is built and no step copies the history,
//! which is what made long contexts slow and large.
//!
//! The tasks run on candle's spinning pool, like r1's matmul kernels.

use super::decode::{accumulate_tile, ahead, tile_buffer, tile_rows, TILE};
use crate::cache::SplitRows;
use crate::kernels::cpu::{max_of, sum_of, vectorized};
use crate::kernels::exp::exp;
use crate::kernels::f16::Element;

/// The shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (each shared by `heads / kv_heads` consecutive query heads).
    pub kv_heads: usize,
    /// Dimensions per head of queries and keys.
    pub head_dim: usize,
    /// Dimensions per head of values (and of the output): `head_dim` but in MLA's expanded
    /// form. The one-query kernel here takes them equal.
    pub value_dim: usize,
    /// Position of the first query row (the tokens cached before this step).
    pub offset: usize,
    /// Score scale (`1 / sqrt(head_dim)`).
    pub scale: f32,
}

/// `q [len, heads, d]` against `k`, `v` `[total, kv_heads, d]` (total = offset + len), causal:
/// query row `i` sees keys `0..=offset + i`. Returns `[len, heads * d]`. Several query rows run
/// as flash attention ([`super::flash`]), one as a split-key decode ([`super::decode`]).
pub(crate) fn attend<T: Element>(q: &[f32], k: SplitRows<'_, T>, v: SplitRows<'_, T>, s: Shape) -> Vec<f32> {
    if q.len() == s.heads * s.head_dim {
        return super::decode::attend_one(q, k, v, s);
    }
    super::flash::attend(q, k, v, s)
}

/// One block of keys' share of a split softmax: per query the block's score maximum, the sum
/// of `exp(s - max)`, and `Σ exp(s - max) · v[t]`. Blocks of keys then run in parallel, and
/// [`merge`] rescales them to the overall maximum (the split-K form of online softmax).
pub(super) struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

impl Partial {
    /// From the block's `scores [queries, n]` (overwritten with their exponentials) and its
    /// value rows (`value(i)` for key `i` of the block): `width` values for every `group`
    /// consecutive queries (query `h` takes the row's slice `h / group`).
    #[inline(always)]
    pub(super) fn new<'a, T: Element>(
        scores: &mut [f32],
        queries: usize,
        group: usize,
        width: usize,
        value: impl Fn(usize) -> &'a [T],
    ) -> Self {
        let n = scores.len() / queries;
        let mut p = Partial {
            max: vec![f32::NEG_INFINITY; queries],
            sum: vec![0.0; queries],
            acc: vec![0.0; queries * width],
        };
        for (h, row) in scores.chunks_exact_mut(n).enumerate() {
            let max = max_of(row);
            // The exponentials in a loop of their own, which vectorizes; the sum after.
            row.iter_mut().for_each(|x| *x = exp(*x - max));
            p.max[h] = max;
            p.sum[h] = sum_of(row);
        }
        // A tile of value rows at a time, per key/value head, for the queries it serves.
        let mut wide = tile_buffer::<T>(width);
        let mut p_tile = [0f32; TILE];
        for first in (0..n).step_by(TILE) {
            let m = TILE.min(n - first);
            for kv in 0..queries.div_ceil(group) {
                let slice = |j: usize| &value(j)[kv * width..][..width];
                ahead(first + TILE..(first + 2 * TILE).min(n), slice);
                let rows = tile_rows(|j| slice(first + j), m, width, &mut wide);
                for h in kv * group..((kv + 1) * group).min(queries) {
                    p_tile[..m].copy_from_slice(&scores[h * n + first..][..m]);
                    accumulate_tile(&p_tile[..m], &rows[..m], &mut p.acc[h * width..][..width]);
                }
            }
        }
        p
    }
}

/// The blocks' partial softmaxes as one `[queries, width]`: each rescaled to the overall
/// maximum, summed, and normalized (compiled at the CPU's SIMD level, like the blocks).
pub(super) fn merge(parts: &[Partial], queries: usize, width: usize) -> Vec<f32> {
    vectorized(
        #[inline(always)]
        || merge_parts(parts, queries, width),
    )
}

#[inline(always)]
fn merge_parts(parts: &[Partial], queries: usize, width: usize) -> Vec<f32> {
    let mut out = vec![0f32; queries * width];
    for (h, o) in out.chunks_exact_mut(width).enumerate() {
        let max = parts.iter().map(|p| p.max[h]).fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for p in parts {
            let w = (p.max[h] - max).exp();
            sum += w * p.sum[h];
            axpy(w, &p.acc[h * width..(h + 1) * width], o);
        }
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|x| *x *= inv);
    }
    out
}

/// `a · b`, with sixteen accumulators so the compiler keeps it in vector registers (one
/// 512-bit register, or two of 256), and fused multiply-adds. Inlined into a [`vectorized`]
/// loop they are single instructions; at the baseline level `mul_add` is a call into libm,
/// correct and slower, like the rest of that level.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] = x[j].mul_add(y[j], acc[j]);
        }
    }
    // Halves added pairwise (a few vector adds): summed in lane order, the sixteen would be a
    // chain of dependent scalar adds, longer than the products for a head of 64 or 128.
    for half in [8, 4, 2, 1] {
        for j in 0..half {
            acc[j] += acc[j + half];
        }
    }
    acc[0] + tail
}

/// `out += p * x`, by fused multiply-adds (see [`dot`]).
#[inline(always)]
pub(super) fn axpy(p: f32, x: &[f32], out: &mut [f32]) {
    for (o, &xi) in out.iter_mut().zip(x) {
        *o = p.mul_add(xi, *o);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The textbook form, in f64: scores, mask, softmax, weighted sum.
    fn reference(q: &[f32], k: &[f32], v: &[f32], s: Shape) -> Vec<f32> {
        let d = s.head_dim;
        let len = q.len() / (s.heads * d);
        let row = s.kv_heads * d;
        let mut out = vec![0f32; len * s.heads * d];
        for i in 0..len {
            for h in 0..s.heads {
                let kv = h / (s.heads / s.kv_heads);
                let visible = s.offset + i + 1;
                let scores: Vec<f64> = (0..visible)
                    .map(|t| {
                        (0..d)
                            .map(|j| q[(i * s.heads + h) * d + j] as f64 * k[t * row + kv * d + j] as f64)
                            .sum::<f64>()
                            * s.scale as f64
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                for j in 0..d {
                    let o: f64 = (0..visible)
                        .map(|t| (scores[t] - max).exp() / z * v[t * row + kv * d + j] as f64)
                        .sum();
                    out[(i * s.heads + h) * d + j] = o as f32;
                }
            }
        }
        out
    }

    /// Values in [-1, 1), from a hash of the index.
    pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn fused_attention_equals_the_textbook_form() {
        for (heads, kv_heads, d, offset, len) in [
            (4, 2, 8, 0, 5),
            (6, 3, 13, 7, 1),
            (2, 2, 64, 30, 4),
            (9, 3, 64, 0, 1),
            (9, 3, 64, 5, 11),
            (12, 2, 128, 3, 9),
            // One query over one, exactly one, and several key blocks (ragged).
            (4, 2, 8, super::super::decode::KEY_BLOCK - 1, 1),
            (4, 2, 8, super::super::decode::KEY_BLOCK, 1),
            (9, 3, 64, 3 * super::super::decode::KEY_BLOCK + 40, 1),
            // Prefills over several key tiles, with ragged tiles, query blocks and value columns.
            (4, 2, 8, 70, 40),
            (9, 3, 64, 100, 37),
            (6, 3, 13, 60, 9),
            (12, 2, 128, 3, 130),
            (2, 1, 72, 0, 2 * super::super::flash::KEY_TILE + 1),
        ] {
            let total = offset + len;
            let s = Shape {
                heads,
                kv_heads,
                head_dim: d,
                value_dim: d,
                offset,
                scale: 1.0 / (d as f32).sqrt(),
            };
            let q = values(len * heads * d, 1);
            let k = values(total * kv_heads * d, 2);
            let v = values(total * kv_heads * d, 3);
            let want = reference(&q, &k, &v, s);
            let width = kv_heads * d;
            let got = attend(&q, SplitRows::whole(&k, width), SplitRows::whole(&v, width), s);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(
                err < 1e-5,
                "heads {heads}/{kv_heads} d {d} offset {offset} len {len}: {err}"
            );
            // Keys and values cached in f16: the textbook form over the same rounded values.
            let half = |x: &[f32]| x.iter().map(|&a| half::f16::from_f32(a)).collect::<Vec<_>>();
            let wide = |x: &[half::f16]| x.iter().map(|a| a.to_f32()).collect::<Vec<_>>();
            let (kh, vh) = (half(&k), half(&v));
            let want_half = reference(&q, &wide(&kh), &wide(&vh), s);
            let got_half = attend(&q, SplitRows::whole(&kh, width), SplitRows::whole(&vh, width), s);
            let err = got_half
                .iter()
                .zip(&want_half)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                err < 1e-5,
                "f16: heads {heads}/{kv_heads} d {d} offset {offset} len {len}: {err}"
            );
            // The same rows held as a shared prefix and own rows, cut anywhere: the same result.
            for cut in [0, 1, offset / 2, offset, total - 1] {
                let split = |x: &[f32]| (x[..cut * width].to_vec(), x[cut * width..].to_vec());
                let ((kh, kt), (vh, vt)) = (split(&k), split(&v));
                let view = |head, tail| SplitRows::parts(head, tail, width);
                let cut_got = attend(&q, view(&kh, &kt), view(&vh, &vt), s);
                assert_eq!(cut_got, got, "cut at {cut}: heads {heads}/{kv_heads} offset {offset}");
            }
        }
    }
}
