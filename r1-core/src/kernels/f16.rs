//! Half-precision rows: the KV cache of a quantized model keeps its keys and values as f16 (as
//! llama.cpp does), half the bytes that every decode step reads from the whole context, and the
//! attention kernels widen them to f32 as they go.
//!
//! Narrowing happens once per cached row, so it is `half`'s slice conversion. Widening happens
//! on every read of every row, inside the attention loops, so it is inlined: F16C's
//! `vcvtph2ps`, eight values an instruction, where the CPU has it (every CPU at r1's AVX2 level
//! and above), and `half`'s scalar conversion elsewhere.

use super::cpu::{level, Level};
use half::f16;
use half::slice::HalfFloatSliceExt;

/// An element type of cached key and value rows: f32, or f16 for half the memory traffic.
pub(crate) trait Element: Copy + Default + Send + Sync + std::fmt::Debug + 'static {
    /// Appends `src` converted to this type (rounded to nearest, ties to even) to `dst`.
    fn extend_from_f32(dst: &mut Vec<Self>, src: &[f32]);

    /// `src` as f32: the slice itself where it is f32, else widened into `buf` (at least as long).
    fn as_f32<'a>(src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32];

    /// Writes `src` as f32 into `dst` (of the same length).
    fn write_f32(src: &[Self], dst: &mut [f32]);
}

impl Element for f32 {
    fn extend_from_f32(dst: &mut Vec<f32>, src: &[f32]) {
        dst.extend_from_slice(src);
    }

    #[inline(always)]
    fn as_f32<'a>(src: &'a [f32], _buf: &'a mut [f32]) -> &'a [f32] {
        src
    }

    #[inline(always)]
    fn write_f32(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl Element for f16 {
    fn extend_from_f32(dst: &mut Vec<f16>, src: &[f32]) {
        let at = dst.len();
        dst.resize(at + src.len(), f16::ZERO);
        dst[at..].convert_from_f32_slice(src);
    }

    #[inline(always)]
    fn as_f32<'a>(src: &'a [f16], buf: &'a mut [f32]) -> &'a [f32] {
        let buf = &mut buf[..src.len()];
        widen(src, buf);
        buf
    }

    #[inline(always)]
    fn write_f32(src: &[f16], dst: &mut [f32]) {
        widen(src, dst);
    }
}

/// `dst[i] = src[i]` as f32, for `min(len)` values. Exact: every f16 is an f32.
#[inline(always)]
pub(crate) fn widen(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: the levels include the features (`cpu::detect`).
        Level::Avx512 => return unsafe { widen_avx512(src, dst) },
        Level::Avx2 => return unsafe { widen_f16c(src, dst) },
        Level::Baseline => {}
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// [`widen`] by F16C, eight values an instruction.
///
/// # Safety
/// The CPU must support F16C and AVX (inline it only into functions that enable them).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn widen_f16c(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let (src, dst) = (&src[..n], &mut dst[..n]);
    let mut s = src.chunks_exact(8);
    let mut d = dst.chunks_exact_mut(8);
    for (s8, d8) in (&mut s).zip(&mut d) {
        // SAFETY: `s8` holds eight f16 (16 bytes) and `d8` eight f32; the CPU has F16C and AVX
        // (this function's contract).
        unsafe {
            let halves = _mm_loadu_si128(s8.as_ptr() as *const __m128i);
            _mm256_storeu_ps(d8.as_mut_ptr(), _mm256_cvtph_ps(halves));
        }
    }
    for (x, y) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *x = y.to_f32();
    }
}

/// [`widen`] by AVX-512F, sixteen values an instruction, then [`widen_f16c`] for the rest.
///
/// # Safety
/// The CPU must support AVX-512F and F16C (inline it only into functions that enable them).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn widen_avx512(src: &[f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let whole = n / 16 * 16;
    for (s16, d16) in src[..whole].chunks_exact(16).zip(dst[..whole].chunks_exact_mut(16)) {
        // SAFETY: `s16` holds sixteen f16 (32 bytes) and `d16` sixteen f32; the CPU has
        // AVX-512F (this function's contract).
        unsafe {
            let halves = _mm256_loadu_si256(s16.as_ptr() as *const __m256i);
            _mm512_storeu_ps(d16.as_mut_ptr(), _mm512_cvtph_ps(halves));
        }
    }
    // SAFETY: the CPU has F16C (this function's contract).
    unsafe { widen_f16c(&src[whole..n], &mut dst[whole..n]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing_rounds_to_nearest_and_widening_is_exact() {
        // Values at and between f16 neighbours, subnormals, the largest finite, and beyond it.
        let src: Vec<f32> = (0..37)
            .map(|i| (i as f32 - 18.0) * 0.37 + 1e-3 * i as f32)
            .chain([1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, 6e-8, -3e-6, 65504.0, 1e6, -0.0])
            .collect();
        let mut half = Vec::new();
        f16::extend_from_f32(&mut half, &src);
        let want: Vec<f16> = src.iter().map(|&x| f16::from_f32(x)).collect();
        assert_eq!(half, want);
        // Ties go to even: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10.
        assert_eq!(half[37], f16::ONE);
        assert_eq!(half[38], f16::from_f32(1.0 + 2.0 / 1024.0));
        assert!(half[42].is_infinite());
        let mut buf = vec![0f32; src.len()];
        let wide = crate::kernels::cpu::vectorized(|| f16::as_f32(&half, &mut buf).to_vec());
        assert_eq!(wide, want.iter().map(|h| h.to_f32()).collect::<Vec<_>>());
        // Outside a vectorized copy (the intrinsics are then calls) and on ragged lengths.
        for n in [0, 1, 7, 8, 9, 17] {
            let mut out = vec![f32::NAN; n];
            widen(&half[..n], &mut out);
            assert_eq!(out, wide[..n]);
        }
    }
}
