//! AVX2 + FMA dot products for the block formats of [`super::quant`], chosen at run time.
//!
//! Per block: the 32 weights are unpacked to bytes in one 256-bit register, multiplied with the 32
//! activation quants by `maddubs` (u8 × i8 pairs summed to i16; signed weights go through the
//! usual `sign` trick so the left operand is non-negative), widened to eight i32 sums, converted
//! to f32 and accumulated with the block's `d_w * d_a` by one FMA. The offset term `m_w * s_a` of
//! Q4_1/Q5_1 is summed separately. The integer part is exact, so results differ from the scalar
//! reference only by the f32 summation order.

use super::quant::{dot_scalar, Format, Q8Block};

/// `Σ_blocks` dot of a weight row with an activation row, with the fastest code the CPU runs.
pub fn dot(format: Format, row: &[u8], act: &[Q8Block]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { x86::dot(format, row, act) };
        }
    }
    dot_scalar(format, row, act)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Format, Q8Block};
    use half::f16;
    use std::arch::x86_64::*;

    #[inline(always)]
    fn f16_at(b: &[u8], i: usize) -> f32 {
        f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
    }

    /// 16 bytes of nibbles → 32 bytes: low nibbles (elements 0..16) then high ones (16..32).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn nibbles(qs: &[u8]) -> __m256i {
        let v = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
        let lo = _mm_and_si128(v, _mm_set1_epi8(0x0f));
        let hi = _mm_and_si128(_mm_srli_epi16(v, 4), _mm_set1_epi8(0x0f));
        _mm256_set_m128i(hi, lo)
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
        mul_sum_us8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA; `row` holds whole blocks, `act` at least as many.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(format: Format, row: &[u8], act: &[Q8Block]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0f32;
        for (b, a) in row.chunks_exact(format.block_bytes()).zip(act) {
            let y = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
            let d = _mm256_set1_ps(f16_at(b, 0) * a.d);
            let sums = match format {
                Format::Q4_0 => mul_sum_i8(_mm256_sub_epi8(nibbles(&b[2..18]), _mm256_set1_epi8(8)), y),
                Format::Q4_1 => {
                    offsets += f16_at(b, 2) * a.s;
                    mul_sum_us8(nibbles(&b[4..20]), y)
                }
                Format::Q5_0 => {
                    // (nibble | bit << 4) - 16 = nibble - 16 where the bit is clear: set the top
                    // four bits (0xF0) of those bytes, reading them as i8.
                    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                    let high = _mm256_andnot_si256(bit_bytes(qh), _mm256_set1_epi8(0xf0_u8 as i8));
                    mul_sum_i8(_mm256_or_si256(nibbles(&b[6..22]), high), y)
                }
                Format::Q5_1 => {
                    offsets += f16_at(b, 2) * a.s;
                    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                    let high = _mm256_and_si256(bit_bytes(qh), _mm256_set1_epi8(0x10));
                    mul_sum_us8(_mm256_or_si256(nibbles(&b[8..24]), high), y)
                }
                Format::Q8_0 => mul_sum_i8(_mm256_loadu_si256(b[2..34].as_ptr() as *const __m256i), y),
            };
            acc = _mm256_fmadd_ps(d, sums, acc);
        }
        hsum(acc) + offsets
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
}
