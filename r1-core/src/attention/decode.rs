//! One query row against the whole cache: a decode step's attention.
//!
//! A decode step has one query row, so the work is split over the keys: a task is a block of
//! cached tokens for every head, and the blocks' partial softmaxes are merged per head
//! ([`Partial`], [`merge`]). A task reads its cache rows whole and in order (every key/value
//! head of a token is one contiguous row), so at long contexts the step is one stream over the
//! cache, which the hardware prefetcher follows; one head's slice of each row would be a short
//! strided read, which it does not.
//!
//! Keys and values go [`TILE`] tokens at a time. A query's scores against a tile are sixteen
//! dot products whose sixteen vector accumulators are reduced together, one shuffle tree for
//! all of them ([`score_tile`]): reduced one by one, the horizontal sums cost more than the
//! products for heads of 64. The tile's value rows are summed into the output with its
//! accumulators held in registers across the tile ([`accumulate_tile`]).

use super::fused::{dot, merge, Partial, Shape};
use crate::cache::SplitRows;
use crate::kernels::cpu::{level, prefetch_lines, vectorized, Level};
use crate::kernels::f16::Element;
use std::ops::Range;
use std::sync::Mutex;

/// Tokens scored and summed together.
pub(super) const TILE: usize = 16;
/// Most tokens per task: a block's rows (256 × 512 floats for MLA's latent) stay in L2
/// between the score pass and the value pass.
pub(super) const KEY_BLOCK: usize = 256;
/// Fewest tokens per task (one tile), where a short context is split between threads.
const MIN_KEY_BLOCK: usize = TILE;

/// `q [heads, head_dim]` (the query row at position `s.offset`) against keys and values
/// `[offset + 1, kv_heads, head_dim]`. Returns `[heads * head_dim]`.
pub(super) fn attend_one<T: Element>(q: &[f32], k: SplitRows<'_, T>, v: SplitRows<'_, T>, s: Shape) -> Vec<f32> {
    split_softmax(
        s.offset + 1,
        s.heads,
        s.head_dim,
        #[inline(always)]
        |rows| block(q, k, v, s, rows),
    )
}

/// The attention of `queries` queries over `tokens` cached tokens, `[queries, width]`:
/// `block(rows)` for blocks of the tokens, run in parallel (compiled at the CPU's SIMD level:
/// `block` must be `#[inline(always)]`), their partial softmaxes merged per query.
pub(super) fn split_softmax(
    tokens: usize,
    queries: usize,
    width: usize,
    block: impl Fn(Range<usize>) -> Partial + Sync,
) -> Vec<f32> {
    // Blocks small enough that every thread has one, down to one tile per block.
    let threads = candle_core::utils::get_num_threads().max(1);
    let size = tokens.div_ceil(threads).clamp(MIN_KEY_BLOCK, KEY_BLOCK);
    let blocks = tokens.div_ceil(size);
    let parts: Mutex<Vec<(usize, Partial)>> = Mutex::new(Vec::with_capacity(blocks));
    candle_core::utils::barrier_pool().execute_chunked(blocks, |range: Range<usize>| {
        let mut done = Vec::new();
        vectorized(
            #[inline(always)]
            || {
                for b in range {
                    done.push((b, block(b * size..((b + 1) * size).min(tokens))));
                }
            },
        );
        // A poisoned lock only means another task panicked; its blocks are lost either way.
        parts.lock().unwrap_or_else(|p| p.into_inner()).extend(done);
    });
    let mut parts = parts.into_inner().unwrap_or_else(|p| p.into_inner());
    parts.sort_by_key(|(b, _)| *b);
    let parts: Vec<Partial> = parts.into_iter().map(|(_, p)| p).collect();
    merge(&parts, queries, width)
}

/// Every head's scores, softmax terms and weighted value sums over the cached tokens `rows`.
#[inline(always)]
fn block<T: Element>(q: &[f32], k: SplitRows<'_, T>, v: SplitRows<'_, T>, s: Shape, rows: Range<usize>) -> Partial {
    let (d, group) = (s.head_dim, s.heads / s.kv_heads);
    let n = rows.len();
    let mut scores = vec![0f32; s.heads * n];
    let mut wide = tile_buffer::<T>(d);
    let mut tile_scores = [0f32; TILE];
    for first in (0..n).step_by(TILE) {
        let m = TILE.min(n - first);
        for kv in 0..s.kv_heads {
            let key = |j: usize| &k.row(rows.start + j)[kv * d..][..d];
            ahead(first + TILE..(first + 2 * TILE).min(n), key);
            let keys = tile_rows(|j| key(first + j), m, d, &mut wide);
            for h in kv * group..(kv + 1) * group {
                score_tile(&q[h * d..][..d], &keys[..m], &mut tile_scores);
                for (o, x) in scores[h * n + first..][..m].iter_mut().zip(&tile_scores) {
                    *o = x * s.scale;
                }
            }
        }
    }
    Partial::new(&mut scores, s.heads, group, d, |i| v.row(rows.start + i))
}

/// Asks for the rows `row(j)`, `j` in `next`, ahead of their use: the next tile's, while this
/// one is computed. A tile's rows are read, then computed on; without this the memory would
/// idle through the computing and the core through the reading.
#[inline(always)]
pub(super) fn ahead<'a, T: 'a>(next: Range<usize>, row: impl Fn(usize) -> &'a [T]) {
    for j in next {
        let r = row(j);
        prefetch_lines(r.as_ptr(), size_of_val(r));
    }
}

/// Room to widen a tile of rows of `width` to f32: none where they are f32 already.
pub(super) fn tile_buffer<T>(width: usize) -> Vec<f32> {
    vec![
        0f32;
        if size_of::<T>() == size_of::<f32>() {
            0
        } else {
            TILE * width
        }
    ]
}

/// Rows `row(0..m)` of `width` as f32: the rows themselves, or widened into `wide`.
#[inline(always)]
pub(super) fn tile_rows<'a, T: Element>(
    row: impl Fn(usize) -> &'a [T],
    m: usize,
    width: usize,
    wide: &'a mut [f32],
) -> [&'a [f32]; TILE] {
    let mut rows: [&[f32]; TILE] = [&[]; TILE];
    // f32 rows need no buffer: `wide` is then empty and every row borrows nothing from it.
    let mut bufs = wide.chunks_mut(width.max(1));
    for (j, slot) in rows.iter_mut().take(m).enumerate() {
        *slot = T::as_f32(row(j), bufs.next().unwrap_or_default());
    }
    rows
}

/// `out[j] = q · keys[j]` for up to [`TILE`] key rows as long as `q`.
#[inline(always)]
pub(super) fn score_tile(q: &[f32], keys: &[&[f32]], out: &mut [f32; TILE]) {
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 && keys.len() == TILE && q.len().is_multiple_of(16) {
        // SAFETY: the CPU has AVX-512F (`level`); lengths are checked by slicing inside.
        return unsafe { x86::score_tile(q, keys, out) };
    }
    for (o, key) in out.iter_mut().zip(keys) {
        *o = dot(q, key);
    }
}

/// `acc += Σ_j p[j] · rows[j]` for up to [`TILE`] rows as long as `acc`.
#[inline(always)]
pub(super) fn accumulate_tile(p: &[f32], rows: &[&[f32]], acc: &mut [f32]) {
    debug_assert!(
        rows.len() <= TILE && p.len() == rows.len(),
        "a tile is at most {TILE} rows"
    );
    #[cfg(target_arch = "x86_64")]
    if level() == Level::Avx512 {
        // SAFETY: the CPU has AVX-512F (`level`); lengths are checked by slicing inside.
        return unsafe { x86::accumulate_tile(p, rows, acc) };
    }
    for (&pj, row) in p.iter().zip(rows) {
        super::fused::axpy(pj, row, acc);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::TILE;
    use std::arch::x86_64::*;

    /// Accumulator slot `p` holds key `ORDER[p]`, so that [`reduce`]'s lanes come out in key order.
    const ORDER: [usize; TILE] = {
        let mut order = [0; TILE];
        let mut p = 0;
        while p < TILE {
            order[p] = 4 * (p % 4) + p / 4;
            p += 1;
        }
        order
    };

    /// [`super::score_tile`] for sixteen keys: one accumulator per key across the dimensions,
    /// then one reduction tree for all sixteen.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `q.len()` is a multiple of 16 and every key at least as
    /// long (checked by slicing: a short one panics, never reads past).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn score_tile(q: &[f32], keys: &[&[f32]], out: &mut [f32; TILE]) {
        let d = q.len();
        let keys: [&[f32]; TILE] = std::array::from_fn(|p| &keys[ORDER[p]][..d]);
        let mut acc = [_mm512_setzero_ps(); TILE];
        for c in (0..d).step_by(16) {
            // SAFETY: `c + 16 <= d` and every slice holds `d` floats.
            let x = unsafe { _mm512_loadu_ps(q[c..c + 16].as_ptr()) };
            for (a, key) in acc.iter_mut().zip(&keys) {
                // SAFETY: as above.
                *a = _mm512_fmadd_ps(x, unsafe { _mm512_loadu_ps(key[c..c + 16].as_ptr()) }, *a);
            }
        }
        // SAFETY: `out` holds 16 floats.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), reduce(acc)) };
    }

    /// The sums of sixteen vectors as one: lane `4q + m` is the sum of `v[4m + q]`. Each level
    /// adds halves of pairs of vectors, packing two vectors' partial sums into one: 512-bit
    /// halves, then 256-bit quarters across lanes, then within 128-bit lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn reduce(v: [__m512; TILE]) -> __m512 {
        // Loops rather than `array::from_fn` or closures, whose bodies are compiled without
        // this function's target features (see `interleaved_k`'s module comment).
        // Each vector folded to eight lanes, two vectors a register: [a(q0+q2), a(q1+q3), b…].
        let mut w = [_mm512_setzero_ps(); 8];
        for (k, w) in w.iter_mut().enumerate() {
            let (a, b) = (v[2 * k], v[2 * k + 1]);
            *w = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            );
        }
        // Folded to four lanes, four vectors a register: 128-bit lane q holds v[4m + q].
        let mut x = [_mm512_setzero_ps(); 4];
        for (m, x) in x.iter_mut().enumerate() {
            let (a, b) = (w[2 * m], w[2 * m + 1]);
            *x = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            );
        }
        // Within each 128-bit lane: two values per vector, then one.
        let y0 = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
        let y1 = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
        // Pairs of values moved as one 64-bit unit: [y0 pair, y1 pair] per lane, added as floats.
        let (y0, y1) = (_mm512_castps_pd(y0), _mm512_castps_pd(y1));
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(y0, y1)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(y0, y1)),
        )
    }

    /// [`super::accumulate_tile`]: 64 columns at a time in four registers across all the rows,
    /// then 16, then one.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; every row is at least as long as `acc` (checked by
    /// slicing, as above).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn accumulate_tile(p: &[f32], rows: &[&[f32]], acc: &mut [f32]) {
        let width = acc.len();
        let m = rows.len().min(p.len()).min(TILE);
        let rows: [&[f32]; TILE] = std::array::from_fn(|j| if j < m { &rows[j][..width] } else { &[] });
        let (p, rows) = (&p[..m], &rows[..m]);
        let mut c = 0;
        while c + 64 <= width {
            // SAFETY: `c + 64 <= width`, and `acc` and every row hold `width` floats.
            unsafe {
                let mut a = [_mm512_setzero_ps(); 4];
                for (i, a) in a.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(acc[c + 16 * i..c + 16 * i + 16].as_ptr());
                }
                for (&pj, row) in p.iter().zip(rows) {
                    let x = _mm512_set1_ps(pj);
                    for (i, a) in a.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(x, _mm512_loadu_ps(row[c + 16 * i..c + 16 * i + 16].as_ptr()), *a);
                    }
                }
                for (i, a) in a.iter().enumerate() {
                    _mm512_storeu_ps(acc[c + 16 * i..c + 16 * i + 16].as_mut_ptr(), *a);
                }
            }
            c += 64;
        }
        while c + 16 <= width {
            // SAFETY: `c + 16 <= width`, as above.
            unsafe {
                let mut a = _mm512_loadu_ps(acc[c..c + 16].as_ptr());
                for (&pj, row) in p.iter().zip(rows) {
                    a = _mm512_fmadd_ps(_mm512_set1_ps(pj), _mm512_loadu_ps(row[c..c + 16].as_ptr()), a);
                }
                _mm512_storeu_ps(acc[c..c + 16].as_mut_ptr(), a);
            }
            c += 16;
        }
        for (&pj, row) in p.iter().zip(rows) {
            for (o, &x) in acc[c..].iter_mut().zip(&row[c..]) {
                *o = pj.mul_add(x, *o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fused::tests::values;
    use super::*;

    #[test]
    fn tiles_of_scores_and_sums_equal_plain_loops() {
        for (d, m) in [(64, TILE), (128, TILE), (48, TILE), (72, TILE), (64, 5), (17, 3)] {
            let q = values(d, 1);
            let keys: Vec<Vec<f32>> = (0..m).map(|j| values(d, 10 + j as u32)).collect();
            let rows: Vec<&[f32]> = keys.iter().map(|k| k.as_slice()).collect();
            let mut got = [0f32; TILE];
            vectorized(|| score_tile(&q, &rows, &mut got));
            for j in 0..m {
                let want: f64 = q.iter().zip(&keys[j]).map(|(a, b)| *a as f64 * *b as f64).sum();
                assert!(
                    (got[j] as f64 - want).abs() < 1e-4,
                    "d {d} key {j}: {} vs {want}",
                    got[j]
                );
            }
            let p = values(m, 7);
            let mut acc = values(d, 8);
            let want: Vec<f64> = (0..d)
                .map(|c| acc[c] as f64 + (0..m).map(|j| p[j] as f64 * keys[j][c] as f64).sum::<f64>())
                .collect();
            vectorized(|| accumulate_tile(&p, &rows, &mut acc));
            for c in 0..d {
                assert!((acc[c] as f64 - want[c]).abs() < 1e-4, "d {d} column {c}");
            }
        }
    }
}
