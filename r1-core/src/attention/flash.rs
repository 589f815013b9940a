//! Flash attention for several query rows (a prefill, a chunk of one): causal grouped-query
//! attention in tiles, with no score row as long as the context.
//!
//! For a block of query rows and one key/value head, the keys are taken a tile at a time. A
//! tile's scores are a small matrix product held in vector registers (queries × the tile's keys,
//! against keys transposed once per call, so one query value is broadcast against a run of
//! keys, with no horizontal sums); the softmax is kept online (a running maximum and sum per
//! query, the output rescaled when the maximum grows); then the probabilities × the tile's value
//! rows, another product in registers. Every multiply-add is a vector FMA: the two products are
//! [`QUERY_TILE`] × 64 register tiles, written with AVX-512 intrinsics where the CPU has it (the
//! compiler, left to itself, reloads each key vector for every query and runs at half that
//! speed) and as plain loops that [`vectorized`] compiles for the other levels.
//!
//! Keys (transposed) and values (one head's rows together) are packed per call into 64-byte
//! aligned buffers: a 512-bit load that straddles two cache lines costs two, and the cache's rows
//! start wherever the allocator put them. Keys and values may differ in width: MLA's expanded
//! prefill ([`super::mla`]) packs keys `[k_nope | k_rope]` of 192 and values of 128 per head.

use super::fused::Shape;
use crate::cache::SplitRows;
use crate::kernels::cpu::{level, max_of, sum_of, vectorized, Level};
use crate::kernels::exp::exp;
use crate::kernels::f16::Element;
use std::ops::Range;
use std::sync::Mutex;

/// Keys per tile: scored for [`QUERY_TILE`] queries at a time, their `QUERY_TILE × KEY_TILE`
/// sums held in registers.
pub(super) const KEY_TILE: usize = 64;
/// Queries per micro-kernel call: each key or value vector loaded serves this many queries.
const QUERY_TILE: usize = 4;
/// Value columns per pass of the value micro-kernel (its accumulators, `QUERY_TILE` × this,
/// stay in registers across a tile's keys).
const VALUE_COLS: usize = 64;
/// Queries a task aims for: the key tiles and value rows it reads are shared by that many
/// queries (query rows × the query heads of one key/value head).
const TASK_QUERIES: usize = 16;

/// [`super::fused::attend`] for several query rows: `q [len, heads, d]` against `k`, `v`
/// `[offset + len, kv_heads, d]`, causal. Returns `[len, heads * d]`.
pub(crate) fn attend<T: Element>(q: &[f32], k: SplitRows<'_, T>, v: SplitRows<'_, T>, s: Shape) -> Vec<f32> {
    let d = s.head_dim;
    let len = q.len() / (s.heads * d);
    let head = |rows: SplitRows<'_, T>, kv: usize, t: usize, out: &mut [f32]| {
        T::write_f32(&rows.row(t)[kv * d..(kv + 1) * d], out)
    };
    let mut out = vec![0f32; len * s.heads * s.value_dim];
    for heads in head_rounds(s.kv_heads) {
        let packed = Packed::new(
            s,
            s.offset + len,
            heads,
            |kv, t, out| head(k, kv, t, out),
            |kv, t, out| head(v, kv, t, out),
        );
        run(q, &packed, s, &mut out);
    }
    out
}

/// The key/value heads a layer's attention takes at a time, one per thread: packed, a head's
/// keys and values of a long context are f32 copies of the cache (32 MiB for all eight heads of
/// the benchmark's dense twin at 4,096 tokens, which put its peak RSS over its bound), so only
/// as many are packed at once as there are threads to pack them.
pub(crate) fn head_rounds(kv_heads: usize) -> impl Iterator<Item = Range<usize>> {
    let step = candle_core::utils::barrier_pool().n_workers() + 1;
    (0..kv_heads)
        .step_by(step)
        .map(move |first| first..(first + step).min(kv_heads))
}

/// Causal attention of `q [len, heads, head_dim]` over the packed keys and values of
/// `offset + len` positions, for the key/value heads `packed` holds and the query heads sharing
/// them: their columns of `out` (`[len, heads * value_dim]`) are written.
pub(crate) fn run(q: &[f32], packed: &Packed, s: Shape, out: &mut [f32]) {
    let dv = s.value_dim;
    let len = q.len() / (s.heads * s.head_dim);
    let group = s.heads / s.kv_heads;
    let rows_per_task = TASK_QUERIES.div_ceil(group).max(1);
    let blocks = len.div_ceil(rows_per_task);
    let (first_kv, n_kv) = (packed.first, packed.heads.len());
    let out = Mutex::new(out);
    // A task is a block of query rows for one key/value head and the query heads sharing it.
    // The last rows see the most keys: tasks are handed out from them down, so that the pool's
    // last grabs are the cheap ones.
    candle_core::utils::barrier_pool().execute_chunked(blocks * n_kv, |range: Range<usize>| {
        let mut tile = Flash::default();
        let mut done: Vec<(usize, usize, Vec<f32>)> = Vec::new();
        let kernels = Kernels::for_cpu();
        vectorized(
            #[inline(always)]
            || {
                for task in range {
                    let (block, kv) = (blocks - 1 - task / n_kv, first_kv + task % n_kv);
                    let rows = block * rows_per_task..((block + 1) * rows_per_task).min(len);
                    tile.run(kernels, q, packed, s, rows.clone(), kv);
                    done.push((rows.start, kv, tile.output(rows.len() * group, dv)));
                }
            },
        );
        // A poisoned lock only means another task panicked; its rows are lost either way.
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        for (first, kv, acc) in done {
            for (qi, chunk) in acc.chunks_exact(dv).enumerate() {
                let (r, g) = (qi / group, qi % group);
                let at = ((first + r) * s.heads + kv * group + g) * dv;
                out[at..at + dv].copy_from_slice(chunk);
            }
        }
    });
}

/// Which micro-kernels run: the AVX-512 ones, or the plain loops with or without FMA (without
/// it, `mul_add` would be a call into libm per value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernels {
    Avx512,
    Fma,
    Plain,
}

impl Kernels {
    fn for_cpu() -> Self {
        match level() {
            Level::Avx512 => Kernels::Avx512,
            Level::Avx2 => Kernels::Fma,
            Level::Baseline => Kernels::Plain,
        }
    }
}

/// A zeroed buffer of f32 whose first value is 64-byte aligned.
struct Aligned {
    buf: Vec<f32>,
    at: usize,
    len: usize,
}

impl Aligned {
    fn zeros(len: usize) -> Self {
        let buf = vec![0f32; len + 16];
        // An f32 pointer is 4-aligned, so at most 15 values from a 64-byte boundary.
        let at = buf.as_ptr().align_offset(64).min(15);
        Aligned { buf, at, len }
    }

    fn as_slice(&self) -> &[f32] {
        &self.buf[self.at..self.at + self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.at..self.at + self.len]
    }
}

/// One call's keys and values, packed per key/value head: the keys as tiles `[dk, KEY_TILE]`
/// (key `i · KEY_TILE + c` of head `kv` in column `c` of tile `i`, zero past the last key), the
/// values as that head's rows one after another (a stream the hardware prefetcher follows;
/// in a GQA cache a head's slice of each row is a short strided read).
pub(crate) struct Packed {
    /// The first key/value head packed.
    first: usize,
    /// Per key/value head from `first`: its key tiles and its value rows.
    heads: Vec<(Aligned, Aligned)>,
    dk: usize,
    dv: usize,
}

impl Packed {
    /// The keys and values of `total` positions for the key/value heads `kvs` (of
    /// `s.head_dim` and `s.value_dim`): `key(kv, t, out)` writes head `kv`'s key at position `t`
    /// into `out`, `value(kv, t, out)` its value. Heads are packed in parallel, each into
    /// buffers of its own (done serially, a long context's packing was the pool's idle time).
    pub(crate) fn new(
        s: Shape,
        total: usize,
        kvs: Range<usize>,
        key: impl Fn(usize, usize, &mut [f32]) + Sync,
        value: impl Fn(usize, usize, &mut [f32]) + Sync,
    ) -> Self {
        let (dk, dv, tiles) = (s.head_dim, s.value_dim, total.div_ceil(KEY_TILE));
        let first = kvs.start;
        let heads = Mutex::new(Vec::with_capacity(kvs.len()));
        candle_core::utils::barrier_pool().execute_chunked(kvs.len(), |range: Range<usize>| {
            let mut done = Vec::new();
            for kv in range.map(|i| first + i) {
                let (mut keys, mut values) = (Aligned::zeros(tiles * dk * KEY_TILE), Aligned::zeros(total * dv));
                let (kd, vd) = (keys.as_mut_slice(), values.as_mut_slice());
                let mut row = vec![0f32; dk];
                // At the CPU's SIMD level: an f16 cache's rows are widened here.
                vectorized(
                    #[inline(always)]
                    || {
                        for t in 0..total {
                            key(kv, t, &mut row);
                            let tile = &mut kd[(t / KEY_TILE) * dk * KEY_TILE..][..dk * KEY_TILE];
                            for (j, &x) in row.iter().enumerate() {
                                tile[j * KEY_TILE + t % KEY_TILE] = x;
                            }
                            value(kv, t, &mut vd[t * dv..][..dv]);
                        }
                    },
                );
                done.push((kv, keys, values));
            }
            // A poisoned lock only means another task panicked; its heads are lost either way.
            heads.lock().unwrap_or_else(|p| p.into_inner()).extend(done);
        });
        let mut heads = heads.into_inner().unwrap_or_else(|p| p.into_inner());
        heads.sort_by_key(|(kv, _, _)| *kv);
        Packed {
            first,
            heads: heads.into_iter().map(|(_, k, v)| (k, v)).collect(),
            dk,
            dv,
        }
    }

    /// Tile `i` of head `kv`'s keys: `[dk, KEY_TILE]`.
    #[inline(always)]
    fn key_tile(&self, kv: usize, i: usize) -> &[f32] {
        &self.heads[kv - self.first].0.as_slice()[i * self.dk * KEY_TILE..][..self.dk * KEY_TILE]
    }

    /// Head `kv`'s value rows `first..first + n`: `[n, dv]`.
    #[inline(always)]
    fn values(&self, kv: usize, first: usize, n: usize) -> &[f32] {
        &self.heads[kv - self.first].1.as_slice()[first * self.dv..][..n * self.dv]
    }
}

/// The working memory of one task, reused across tasks: its queries (scaled, padded to a
/// multiple of [`QUERY_TILE`] with zeros), a tile's scores, the running maxima and sums, and the
/// output accumulators; queries ordered (row, head in group).
#[derive(Default)]
struct Flash {
    q: Vec<f32>,
    scores: Vec<[f32; KEY_TILE]>,
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

impl Flash {
    /// softmax(q·Kᵀ · scale) · V for query rows `rows` and the heads of key/value head `kv`,
    /// into `acc` (unnormalized) with `max` and `sum`. Inlined into [`vectorized`]'s copies,
    /// like the micro-kernels it calls.
    #[inline(always)]
    fn run(&mut self, kernels: Kernels, q: &[f32], packed: &Packed, s: Shape, rows: Range<usize>, kv: usize) {
        let (d, dv) = (s.head_dim, s.value_dim);
        let group = s.heads / s.kv_heads;
        let nq = rows.len() * group;
        let padded = nq.next_multiple_of(QUERY_TILE);
        self.q.clear();
        self.q.resize(padded * d, 0.0);
        for qi in 0..nq {
            let (r, g) = (rows.start + qi / group, qi % group);
            let src = &q[(r * s.heads + kv * group + g) * d..][..d];
            for (dst, &x) in self.q[qi * d..(qi + 1) * d].iter_mut().zip(src) {
                *dst = x * s.scale;
            }
        }
        self.scores.clear();
        self.scores.resize(padded, [0.0; KEY_TILE]);
        self.max.clear();
        self.max.resize(padded, f32::NEG_INFINITY);
        self.sum.clear();
        self.sum.resize(padded, 0.0);
        self.acc.clear();
        self.acc.resize(padded * dv, 0.0);
        // Keys query `qi` sees (padding rows see what the last real one does).
        let visible = |qi: usize| s.offset + rows.start + qi.min(nq - 1) / group + 1;
        let total = s.offset + rows.end;
        for (i, first) in (0..total).step_by(KEY_TILE).enumerate() {
            let n = KEY_TILE.min(total - first);
            let kt = packed.key_tile(kv, i);
            for qt in (0..padded).step_by(QUERY_TILE) {
                let scores = (&mut self.scores[qt..qt + QUERY_TILE])
                    .try_into()
                    .expect("a query tile");
                score(kernels, &self.q[qt * d..(qt + QUERY_TILE) * d], kt, d, scores);
            }
            for qi in 0..padded {
                let seen = visible(qi).saturating_sub(first).min(n);
                self.scores[qi][seen..].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
                let rescale = online_softmax(&mut self.scores[qi], &mut self.max[qi], &mut self.sum[qi]);
                if rescale != 1.0 {
                    self.acc[qi * dv..(qi + 1) * dv].iter_mut().for_each(|x| *x *= rescale);
                }
            }
            let values = packed.values(kv, first, n);
            for qt in (0..padded).step_by(QUERY_TILE) {
                let p = (&self.scores[qt..qt + QUERY_TILE]).try_into().expect("a query tile");
                value(
                    kernels,
                    p,
                    values,
                    n,
                    &mut self.acc[qt * dv..(qt + QUERY_TILE) * dv],
                    dv,
                );
            }
        }
    }

    /// The first `nq` queries' outputs, `[nq, d]`: the accumulators over their sums.
    fn output(&self, nq: usize, d: usize) -> Vec<f32> {
        let mut out = self.acc[..nq * d].to_vec();
        for (row, &sum) in out.chunks_exact_mut(d).zip(&self.sum) {
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|x| *x *= inv);
        }
        out
    }
}

/// A tile's scores as probabilities under the running softmax of their query: the row's new
/// maximum replaces `max`, the row becomes `exp(score - max)`, and `sum` takes the old sum
/// rescaled plus the row's. Returns the factor the query's accumulated output must be scaled by
/// (1 when the maximum did not grow).
#[inline(always)]
fn online_softmax(row: &mut [f32; KEY_TILE], max: &mut f32, sum: &mut f32) -> f32 {
    let tile_max = max_of(row);
    if tile_max == f32::NEG_INFINITY {
        // Every key of the tile is masked for this query.
        row.iter_mut().for_each(|x| *x = 0.0);
        return 1.0;
    }
    let new_max = max.max(tile_max);
    let rescale = if new_max > *max { exp(*max - new_max) } else { 1.0 };
    for x in row.iter_mut() {
        *x = exp(*x - new_max);
    }
    *max = new_max;
    *sum = *sum * rescale + sum_of(row);
    rescale
}

/// [`score_tile`] by `kernels`.
#[inline(always)]
fn score(kernels: Kernels, q: &[f32], kt: &[f32], d: usize, out: &mut [[f32; KEY_TILE]; QUERY_TILE]) {
    #[cfg(target_arch = "x86_64")]
    if kernels == Kernels::Avx512 {
        // SAFETY: `Kernels::Avx512` is chosen only where the CPU has AVX-512F.
        return unsafe { x86::score_tile(q, kt, d, out) };
    }
    match kernels {
        Kernels::Plain => score_tile::<false>(q, kt, d, out),
        _ => score_tile::<true>(q, kt, d, out),
    }
}

/// [`value_tile`] by `kernels`.
#[inline(always)]
fn value(kernels: Kernels, p: &[[f32; KEY_TILE]; QUERY_TILE], values: &[f32], n: usize, acc: &mut [f32], d: usize) {
    #[cfg(target_arch = "x86_64")]
    if kernels == Kernels::Avx512 {
        // SAFETY: `Kernels::Avx512` is chosen only where the CPU has AVX-512F (and FMA).
        return unsafe { x86::value_tile(p, values, n, acc, d) };
    }
    match kernels {
        Kernels::Plain => value_tile::<false>(p, values, n, acc, d, 0),
        _ => value_tile::<true>(p, values, n, acc, d, 0),
    }
}

/// `a * b + c`, as one fused multiply-add where `FUSED` (the caller has checked the CPU for FMA).
#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// One tile of scores: `out[r][c] = q[r] · kt[.., c]` for the [`QUERY_TILE`] queries `q`
/// (`[QUERY_TILE, d]`) and the tile's keys `kt` (`[d, KEY_TILE]`). The reference form, and the
/// kernel below AVX-512.
#[inline(always)]
fn score_tile<const FUSED: bool>(q: &[f32], kt: &[f32], d: usize, out: &mut [[f32; KEY_TILE]; QUERY_TILE]) {
    let mut acc = [[0f32; KEY_TILE]; QUERY_TILE];
    for (j, keys) in kt.chunks_exact(KEY_TILE).take(d).enumerate() {
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = q[r * d + j];
            for (a, &kc) in acc.iter_mut().zip(keys) {
                *a = madd::<FUSED>(x, kc, *a);
            }
        }
    }
    *out = acc;
}

/// `acc[r][from..] += Σ_t p[r][t] · values[t][from..]` for the [`QUERY_TILE`] accumulators
/// `acc` (`[QUERY_TILE, d]`) over the tile's first `n` value rows (`[n, d]`), [`VALUE_COLS`]
/// columns at a time. The reference form, and the kernel below AVX-512 (from column 0) or for
/// the columns past its last full run of 64.
#[inline(always)]
fn value_tile<const FUSED: bool>(
    p: &[[f32; KEY_TILE]; QUERY_TILE],
    values: &[f32],
    n: usize,
    acc: &mut [f32],
    d: usize,
    from: usize,
) {
    let mut c0 = from;
    while c0 + VALUE_COLS <= d {
        let mut regs = [[0f32; VALUE_COLS]; QUERY_TILE];
        for (r, reg) in regs.iter_mut().enumerate() {
            reg.copy_from_slice(&acc[r * d + c0..][..VALUE_COLS]);
        }
        for (t, row) in values.chunks_exact(d).take(n).enumerate() {
            let vt: &[f32; VALUE_COLS] = row[c0..c0 + VALUE_COLS].try_into().expect("a run of columns");
            for (r, reg) in regs.iter_mut().enumerate() {
                let pr = p[r][t];
                for (a, &x) in reg.iter_mut().zip(vt) {
                    *a = madd::<FUSED>(pr, x, *a);
                }
            }
        }
        for (r, reg) in regs.iter().enumerate() {
            acc[r * d + c0..][..VALUE_COLS].copy_from_slice(reg);
        }
        c0 += VALUE_COLS;
    }
    if c0 < d {
        for (t, row) in values.chunks_exact(d).take(n).enumerate() {
            for r in 0..QUERY_TILE {
                let pr = p[r][t];
                for (a, &x) in acc[r * d + c0..(r + 1) * d].iter_mut().zip(&row[c0..]) {
                    *a = madd::<FUSED>(pr, x, *a);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{KEY_TILE, QUERY_TILE, VALUE_COLS};
    use std::arch::x86_64::*;

    /// Four 16-float runs from `p` (64 floats).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load4(p: &[f32]) -> [__m512; 4] {
        let p = &p[..64];
        // SAFETY: `p` holds 64 floats; the CPU has AVX-512F (this function's contract).
        unsafe {
            [
                _mm512_loadu_ps(p.as_ptr()),
                _mm512_loadu_ps(p[16..].as_ptr()),
                _mm512_loadu_ps(p[32..].as_ptr()),
                _mm512_loadu_ps(p[48..].as_ptr()),
            ]
        }
    }

    /// [`super::score_tile`] in registers: per key dimension, the tile's 64 keys are loaded once
    /// (four registers) for the four queries' broadcast values.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `kt` holds `d` rows of `KEY_TILE` and `q` `QUERY_TILE` rows
    /// of `d` (both checked by slicing: a short one panics, never reads past).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn score_tile(q: &[f32], kt: &[f32], d: usize, out: &mut [[f32; KEY_TILE]; QUERY_TILE]) {
        let (q, kt) = (&q[..QUERY_TILE * d], &kt[..d * KEY_TILE]);
        let mut acc = [[_mm512_setzero_ps(); 4]; QUERY_TILE];
        for j in 0..d {
            // SAFETY: this function's contract.
            let keys = unsafe { load4(&kt[j * KEY_TILE..]) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(q[r * d + j]);
                for (a, &k) in acc.iter_mut().zip(&keys) {
                    *a = _mm512_fmadd_ps(x, k, *a);
                }
            }
        }
        for (row, acc) in out.iter_mut().zip(&acc) {
            for (c, &a) in acc.iter().enumerate() {
                // SAFETY: a row holds KEY_TILE = 64 floats.
                unsafe { _mm512_storeu_ps(row[16 * c..].as_mut_ptr(), a) };
            }
        }
    }

    /// [`super::value_tile`] in registers for each full run of 64 columns (the rest by the
    /// plain form): per value row, its 64 columns are loaded once for the four queries.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `values` holds `n` rows of `d` and `acc` `QUERY_TILE` rows
    /// of `d` (checked by slicing, as above).
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn value_tile(
        p: &[[f32; KEY_TILE]; QUERY_TILE],
        values: &[f32],
        n: usize,
        acc: &mut [f32],
        d: usize,
    ) {
        let (values, acc) = (&values[..n * d], &mut acc[..QUERY_TILE * d]);
        let mut c0 = 0;
        while c0 + VALUE_COLS <= d {
            let mut regs = [[_mm512_setzero_ps(); 4]; QUERY_TILE];
            for (r, reg) in regs.iter_mut().enumerate() {
                // SAFETY: this function's contract (every run is in bounds of its row).
                *reg = unsafe { load4(&acc[r * d + c0..]) };
            }
            for t in 0..n {
                // SAFETY: as above.
                let v = unsafe { load4(&values[t * d + c0..]) };
                for (r, regs) in regs.iter_mut().enumerate() {
                    let pr = _mm512_set1_ps(p[r][t]);
                    for (a, &x) in regs.iter_mut().zip(&v) {
                        *a = _mm512_fmadd_ps(pr, x, *a);
                    }
                }
            }
            for (r, regs) in regs.iter().enumerate() {
                let row = &mut acc[r * d + c0..][..VALUE_COLS];
                for (c, &a) in regs.iter().enumerate() {
                    // SAFETY: `row` holds 64 floats.
                    unsafe { _mm512_storeu_ps(row[16 * c..].as_mut_ptr(), a) };
                }
            }
            c0 += VALUE_COLS;
        }
        super::value_tile::<true>(p, values, n, acc, d, c0);
    }
}
