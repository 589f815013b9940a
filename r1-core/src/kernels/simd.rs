//! AVX2 + FMA dot products for the block formats of [`super::quant`], chosen at run time.
//!
//! Per block: the 32 weights are unpacked to bytes in one 256-bit register, multiplied with the 32
//! activation quants by `maddubs` (u8 × i8 pairs summed to i16; signed weights go through the
//! usual `sign` trick so the left operand is non-negative), widened to eight i32 sums, converted
//! to f32 and accumulated with the block's `d_w * d_a` by one FMA. The offset term `m_w * s_a` of
//! Q4_1/Q5_1 is summed separately. The integer part is exact, so results differ from the scalar
//! reference only by the f32 summation order.

use super::cpu::{level, Level};
use super::quant::{dot_scalar, Format, Q8Block};

/// `Σ_blocks` dot of a weight row with an activation row, with the fastest code the CPU runs.
pub fn dot(format: Format, row: &[u8], act: &[Q8Block]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if level() >= Level::Avx2 {
        // SAFETY: the CPU supports AVX2, FMA and F16C (what `Level::Avx2` means).
        return unsafe { x86::dot(format, row, act) };
    }
    dot_scalar(format, row, act)
}

/// The dots of one weight row with several activation rows (`out[t]` for `acts[t]`): each weight
/// block is unpacked once and used for every row, which is what makes a prefill faster per token
/// than a decode.
pub fn dot_many(format: Format, row: &[u8], acts: &[Vec<Q8Block>], out: &mut [f32]) {
    // The kernels read activation blocks unchecked: rows too short give NaN instead.
    let blocks = row.len() / format.block_bytes();
    if acts.iter().any(|a| a.len() < blocks) || out.len() < acts.len() {
        return out.iter_mut().for_each(|o| *o = f32::NAN);
    }
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: `Level::Avx512` includes AVX2, FMA, F16C, AVX512-VNNI and AVX512-VL.
        Level::Avx512 => return unsafe { x86::dot_many_vnni(format, row, acts, out) },
        // SAFETY: `Level::Avx2` means AVX2, FMA and F16C.
        Level::Avx2 => return unsafe { x86::dot_many(format, row, acts, out) },
        Level::Baseline => {}
    }
    for (o, a) in out.iter_mut().zip(acts) {
        *o = dot_scalar(format, row, a);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::cpu::f16_at;
    use super::{Format, Q8Block};
    use std::arch::x86_64::*;

    /// 16 bytes of nibbles → 32 bytes: low nibbles (elements 0..16) then high ones (16..32).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn nibbles(qs: &[u8]) -> __m256i {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            let v = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
            let lo = _mm_and_si128(v, _mm_set1_epi8(0x0f));
            let hi = _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(0x0f));
            _mm256_set_m128i(hi, lo)
        }
    }

    /// The 32 bits of `qh` as 32 bytes: 0xFF where the bit is set, 0 elsewhere.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn bit_bytes(qh: u32) -> __m256i {
        // Byte k of the result takes byte k/8 of qh; OR-ing every bit but bit k%8 leaves all
        // ones exactly where that bit was set.
        let shuffle = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), shuffle);
        let others = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe_u64 as i64);
        _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi64x(-1))
    }

    /// Eight i32 partial sums of `u8 × i8` pairs, as f32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn mul_sum_us8(x: __m256i, y: __m256i) -> __m256 {
        let dot16 = _mm256_maddubs_epi16(x, y);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(dot16, _mm256_set1_epi16(1)))
    }

    /// Eight i32 partial sums of `i8 × i8` pairs, as f32 (`|x| · (y · sign x)`).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn mul_sum_i8(x: __m256i, y: __m256i) -> __m256 {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe { mul_sum_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x)) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// The block loop for one format: `block(bytes, act) -> (i32 sums as f32, d_w, m_w * s_a)`.
    /// Generic over the block function so each format gets its own loop with no branch inside.
    /// Four accumulators take turns, so consecutive blocks' FMAs do not wait on each other's
    /// latency (one chain made a decode step latency-bound at ~9 cycles a block).
    #[inline(always)]
    unsafe fn blocks<F: Fn(&[u8], &Q8Block) -> (__m256, f32, f32)>(
        size: usize,
        row: &[u8],
        act: &[Q8Block],
        block: F,
    ) -> f32 {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut offsets = [0f32; 4];
            let (row4, act4) = (row.chunks_exact(4 * size), act.chunks_exact(4));
            let (row_rest, act_rest) = (row4.remainder(), act4.remainder());
            for (b4, a4) in row4.zip(act4) {
                for k in 0..4 {
                    let (sums, d, offset) = block(&b4[k * size..(k + 1) * size], &a4[k]);
                    acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * a4[k].d), sums, acc[k]);
                    offsets[k] += offset;
                }
            }
            for (b, a) in row_rest.chunks_exact(size).zip(act_rest) {
                let (sums, d, offset) = block(b, a);
                acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), sums, acc[0]);
                offsets[0] += offset;
            }
            let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            hsum(acc) + (offsets[0] + offsets[1]) + (offsets[2] + offsets[3])
        }
    }

    /// A weight block unpacked to 32 bytes: (bytes, signed?, d_w, m_w).
    #[inline(always)]
    unsafe fn unpack(format: Format, b: &[u8]) -> (__m256i, bool, f32, f32) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            match format {
                Format::Q4_0 => (
                    _mm256_sub_epi8(nibbles(&b[2..18]), _mm256_set1_epi8(8)),
                    true,
                    f16_at(b, 0),
                    0.0,
                ),
                Format::Q4_1 => (nibbles(&b[4..20]), false, f16_at(b, 0), f16_at(b, 2)),
                Format::Q5_0 => {
                    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                    let high = _mm256_andnot_si256(bit_bytes(qh), _mm256_set1_epi8(0xf0_u8 as i8));
                    (_mm256_or_si256(nibbles(&b[6..22]), high), true, f16_at(b, 0), 0.0)
                }
                Format::Q5_1 => {
                    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                    let high = _mm256_and_si256(bit_bytes(qh), _mm256_set1_epi8(0x10));
                    (
                        _mm256_or_si256(nibbles(&b[8..24]), high),
                        false,
                        f16_at(b, 0),
                        f16_at(b, 2),
                    )
                }
                Format::Q8_0 => (
                    _mm256_loadu_si256(b[2..34].as_ptr() as *const __m256i),
                    true,
                    f16_at(b, 0),
                    0.0,
                ),
            }
        }
    }

    /// `N ≤ 16` activation rows against one weight row: the `N` accumulators stay in registers and
    /// each weight block is unpacked once for all of them. `dot` multiplies 32 unsigned × 32 signed
    /// bytes into eight i32 sums (VNNI's `vpdpbusd`, or `maddubs` + `madd`). Inlined into a copy per
    /// format and `N`, so the format's unpacking, sign handling and offset term are fixed at
    /// compile time and the row loop has no branch.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; every `acts[k]` holds at least the row's block count.
    #[inline(always)]
    unsafe fn tile<const N: usize>(
        format: Format,
        row: &[u8],
        acts: [&[Q8Block]; N],
        out: &mut [f32],
        dot: impl Fn(__m256i, __m256i) -> __m256i,
    ) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); N];
            let mut offsets = [0f32; N];
            for (i, b) in row.chunks_exact(format.block_bytes()).enumerate() {
                let (x, signed, d, m) = unpack(format, b);
                // Signed weights: |x| on the left, x's sign moved onto the activations.
                let ax = if signed { _mm256_sign_epi8(x, x) } else { x };
                for k in 0..N {
                    // SAFETY: the caller guarantees `i` is within every activation row.
                    let a = acts[k].get_unchecked(i);
                    let mut y = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                    if signed {
                        y = _mm256_sign_epi8(y, x);
                    }
                    let sums = _mm256_cvtepi32_ps(dot(ax, y));
                    acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), sums, acc[k]);
                    if format.has_offset() {
                        offsets[k] += m * a.s;
                    }
                }
            }
            for k in 0..N {
                out[k] = hsum(acc[k]) + offsets[k];
            }
        }
    }

    /// The activation rows in tiles, for one fixed format.
    #[inline(always)]
    unsafe fn tiles(
        format: Format,
        row: &[u8],
        acts: &[Vec<Q8Block>],
        out: &mut [f32],
        wide: bool,
        dot: impl Fn(__m256i, __m256i) -> __m256i + Copy,
    ) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            // Tiles of sixteen (`wide`: AVX-512's 32 vector registers hold the accumulators) or eight,
            // then the remainder as tiles of four, two and one.
            for r in super::super::cpu::tiles(acts.len(), if wide { 16 } else { 8 }) {
                let (a, o) = (&acts[r.clone()], &mut out[r]);
                match a.len() {
                    16 => tile::<16>(format, row, std::array::from_fn(|k| a[k].as_slice()), o, dot),
                    8 => tile::<8>(format, row, std::array::from_fn(|k| a[k].as_slice()), o, dot),
                    4 => tile::<4>(format, row, std::array::from_fn(|k| a[k].as_slice()), o, dot),
                    2 => tile::<2>(format, row, std::array::from_fn(|k| a[k].as_slice()), o, dot),
                    _ => tile::<1>(format, row, [a[0].as_slice()], o, dot),
                }
            }
        }
    }

    /// [`tiles`] with the format a constant in each arm, so each gets its own loop.
    #[inline(always)]
    unsafe fn tiles_per_format(
        format: Format,
        row: &[u8],
        acts: &[Vec<Q8Block>],
        out: &mut [f32],
        wide: bool,
        dot: impl Fn(__m256i, __m256i) -> __m256i + Copy,
    ) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            match format {
                Format::Q4_0 => tiles(Format::Q4_0, row, acts, out, wide, dot),
                Format::Q4_1 => tiles(Format::Q4_1, row, acts, out, wide, dot),
                Format::Q5_0 => tiles(Format::Q5_0, row, acts, out, wide, dot),
                Format::Q5_1 => tiles(Format::Q5_1, row, acts, out, wide, dot),
                Format::Q8_0 => tiles(Format::Q8_0, row, acts, out, wide, dot),
            }
        }
    }

    /// # Safety
    /// As [`dot`]; `out.len() >= acts.len()` and every `acts[t]` holds the row's block count.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_many(format: Format, row: &[u8], acts: &[Vec<Q8Block>], out: &mut [f32]) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            tiles_per_format(format, row, acts, out, false, |ax, y| {
                _mm256_madd_epi16(_mm256_maddubs_epi16(ax, y), _mm256_set1_epi16(1))
            })
        }
    }

    /// [`dot_many`] with AVX-512 VNNI's `vpdpbusd` (u8 × i8 → i32 in one instruction).
    ///
    /// # Safety
    /// As [`dot_many`], and the CPU must support AVX512-VNNI and AVX512-VL.
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub unsafe fn dot_many_vnni(format: Format, row: &[u8], acts: &[Vec<Q8Block>], out: &mut [f32]) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            tiles_per_format(format, row, acts, out, true, |ax, y| {
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, y)
            })
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `row` holds whole blocks, `act` at least as many.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(format: Format, row: &[u8], act: &[Q8Block]) -> f32 {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            let size = format.block_bytes();
            let y = |a: &Q8Block| _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
            match format {
                Format::Q4_0 => blocks(size, row, act, |b, a| {
                    let x = _mm256_sub_epi8(nibbles(&b[2..18]), _mm256_set1_epi8(8));
                    (mul_sum_i8(x, y(a)), f16_at(b, 0), 0.0)
                }),
                Format::Q4_1 => blocks(size, row, act, |b, a| {
                    (mul_sum_us8(nibbles(&b[4..20]), y(a)), f16_at(b, 0), f16_at(b, 2) * a.s)
                }),
                Format::Q5_0 => blocks(size, row, act, |b, a| {
                    // (nibble | bit << 4) - 16 = nibble - 16 where the bit is clear: set the top four
                    // bits (0xF0) of those bytes, reading them as i8.
                    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                    let high = _mm256_andnot_si256(bit_bytes(qh), _mm256_set1_epi8(0xf0_u8 as i8));
                    (
                        mul_sum_i8(_mm256_or_si256(nibbles(&b[6..22]), high), y(a)),
                        f16_at(b, 0),
                        0.0,
                    )
                }),
                Format::Q5_1 => blocks(size, row, act, |b, a| {
                    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                    let high = _mm256_and_si256(bit_bytes(qh), _mm256_set1_epi8(0x10));
                    (
                        mul_sum_us8(_mm256_or_si256(nibbles(&b[8..24]), high), y(a)),
                        f16_at(b, 0),
                        f16_at(b, 2) * a.s,
                    )
                }),
                Format::Q8_0 => blocks(size, row, act, |b, a| {
                    let x = _mm256_loadu_si256(b[2..34].as_ptr() as *const __m256i);
                    (mul_sum_i8(x, y(a)), f16_at(b, 0), 0.0)
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::quant::{dot_scalar, quantize_q8, Format, QK};
    use super::*;

    /// Deterministic pseudo-random bytes and floats (xorshift), no test depends on a seed crate.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn random_row(format: Format, blocks: usize, state: &mut u64) -> Vec<u8> {
        let mut row = Vec::new();
        for _ in 0..blocks {
            let mut b: Vec<u8> = (0..format.block_bytes()).map(|_| xorshift(state) as u8).collect();
            // Keep the f16 scales finite and moderate.
            let d = half::f16::from_f32(((xorshift(state) % 1000) as f32 - 500.0) / 10000.0);
            b[..2].copy_from_slice(&d.to_le_bytes());
            if format.has_offset() {
                let m = half::f16::from_f32(((xorshift(state) % 1000) as f32 - 500.0) / 5000.0);
                b[2..4].copy_from_slice(&m.to_le_bytes());
            }
            row.extend(b);
        }
        row
    }

    #[test]
    fn simd_equals_scalar_for_every_format() {
        let mut state = 0x9e3779b97f4a7c15;
        for format in [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q5_1, Format::Q8_0] {
            for blocks in [1, 2, 7, 28] {
                let row = random_row(format, blocks, &mut state);
                let x: Vec<f32> = (0..blocks * QK)
                    .map(|_| ((xorshift(&mut state) % 2001) as f32 - 1000.0) / 300.0)
                    .collect();
                let mut act = Vec::new();
                quantize_q8(&x, &mut act);
                let (s, v) = (dot_scalar(format, &row, &act), dot(format, &row, &act));
                assert!(
                    (s - v).abs() <= 1e-5 * s.abs().max(1.0),
                    "{format:?} x{blocks}: scalar {s} simd {v}"
                );
            }
        }
    }

    #[test]
    fn every_tile_size_equals_scalar_for_every_format() {
        // 23 activation rows: tiles of 16 (with VNNI) or 8, then 4, 2 and 1.
        let mut state = 0x2545f4914f6cdd1d;
        for format in [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q5_1, Format::Q8_0] {
            let blocks = 5;
            let row = random_row(format, blocks, &mut state);
            let acts: Vec<Vec<_>> = (0..23)
                .map(|_| {
                    let x: Vec<f32> = (0..blocks * QK)
                        .map(|_| ((xorshift(&mut state) % 2001) as f32 - 1000.0) / 300.0)
                        .collect();
                    let mut act = Vec::new();
                    quantize_q8(&x, &mut act);
                    act
                })
                .collect();
            let want: Vec<f32> = acts.iter().map(|a| dot_scalar(format, &row, a)).collect();
            let mut got = vec![0f32; acts.len()];
            dot_many(format, &row, &acts, &mut got);
            let mut paths = vec![("dispatched", got)];
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                let mut avx2 = vec![0f32; acts.len()];
                // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
                unsafe { x86::dot_many(format, &row, &acts, &mut avx2) };
                paths.push(("avx2", avx2));
            }
            for (path, got) in paths {
                for (t, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{format:?} {path} row {t}: {g} vs {w}"
                    );
                }
            }
        }
        // Activation rows shorter than the weight row give NaN, never a read out of bounds.
        let row = random_row(Format::Q8_0, 2, &mut state);
        let mut short = Vec::new();
        quantize_q8(&[0.5; QK], &mut short);
        let mut out = [0f32; 1];
        dot_many(Format::Q8_0, &row, &[short], &mut out);
        assert!(out[0].is_nan());
    }
}
