//! What the CPU can run, detected once at run time.
//!
//! A crate that depends on r1-core is compiled for the baseline of its target (x86-64: SSE2
//! only), and a wheel must run on any x86-64 CPU, so no hot path may rely on compile-time CPU
//! features. The hand-written kernels test for what they need; plain loops that the compiler
//! vectorizes run through [`vectorized`], which compiles them once per SIMD level and picks one.

use std::sync::OnceLock;

/// The SIMD levels r1 has code for, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// Whatever the target's baseline is.
    Baseline,
    /// AVX2, FMA and F16C (x86-64-v3).
    Avx2,
    /// AVX-512 (F, BW, VL, VNNI) with AVX2, FMA and F16C.
    Avx512,
}

/// The level r1 runs: the best this CPU has, or lower where the environment variable `R1_SIMD`
/// (`baseline`, `avx2`, `avx512`) asks for it, to compare paths or rule one out. Read once.
pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("R1_SIMD").as_deref() {
            Ok("baseline") => Level::Baseline,
            Ok("avx2") => Level::Avx2,
            _ => Level::Avx512,
        };
        detect().min(cap)
    })
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
        Level::Avx512
    } else if avx2 {
        Level::Avx2
    } else {
        Level::Baseline
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Baseline
}

/// Runs `f` compiled for the best SIMD level the CPU has. `f`'s loops are vectorized for that
/// level; each call site gets its own copies. Only code inlined into the level's function is
/// compiled with its features, so `f` must be `#[inline(always)] || ...` and the functions it
/// calls `#[inline(always)]` (the inliner would otherwise keep a large body apart, compiled for
/// the baseline).
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: `level` found every feature these functions enable.
        Level::Avx512 => return unsafe { x86::avx512(f) },
        Level::Avx2 => return unsafe { x86::avx2(f) },
        Level::Baseline => {}
    }
    f()
}

/// Asks the CPU to bring the cache line at `p` in ahead of its use (a hint: nothing is read, and
/// no address faults, so `p` may point anywhere).
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is in every x86-64 baseline, and a prefetch accesses no memory.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch`] for every 64-byte line of the `bytes` bytes from `start` (which, like `p`
/// there, may point anywhere).
#[inline(always)]
pub(crate) fn prefetch_lines<T>(start: *const T, bytes: usize) {
    let start = start as *const u8;
    for line in (0..bytes).step_by(64) {
        prefetch(start.wrapping_add(line));
    }
}

/// `0..n` cut into the tile sizes of a kernel whose largest tile is `widest` (16 or 8): as many
/// of the largest as fit, then the rest as tiles of four, two and one.
pub(crate) fn tiles(n: usize, widest: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let left = n - at;
        let size = match left {
            0 => return None,
            _ if left >= widest => widest,
            16.. => 16,
            8.. => 8,
            4..=7 => 4,
            2..=3 => 2,
            _ => 1,
        };
        at += size;
        Some(at - size..at)
    })
}

/// The largest value of `x` (`-inf` for none; NaNs are not looked for).
///
/// A horizontal reduction the compiler does not vectorize by itself: a float `max` or sum in
/// one chain may not be reordered, and written over lanes it is left half scalar. Here it is
/// one vector instruction per 16 (or 8) values and a reduction across the register, at the
/// level the CPU has; inlined into a [`vectorized`] loop of the same level.
#[inline(always)]
pub(crate) fn max_of(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: `level` found every feature these functions enable.
        Level::Avx512 => return unsafe { x86::max512(x) },
        Level::Avx2 => return unsafe { x86::max256(x) },
        Level::Baseline => {}
    }
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// The sum of `x`, over vector lanes as [`max_of`] (so in another order than one chain).
#[inline(always)]
pub(crate) fn sum_of(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: `level` found every feature these functions enable.
        Level::Avx512 => return unsafe { x86::sum512(x) },
        Level::Avx2 => return unsafe { x86::sum256(x) },
        Level::Baseline => {}
    }
    x.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max512(x: &[f32]) -> f32 {
        let chunks = x.chunks_exact(16);
        let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in chunks {
            // SAFETY: `c` holds 16 floats; the CPU has AVX-512F (this function's contract).
            m = _mm512_max_ps(m, unsafe { _mm512_loadu_ps(c.as_ptr()) });
        }
        _mm512_reduce_max_ps(m).max(tail)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum512(x: &[f32]) -> f32 {
        let chunks = x.chunks_exact(16);
        let tail: f32 = chunks.remainder().iter().sum();
        let mut s = _mm512_setzero_ps();
        for c in chunks {
            // SAFETY: `c` holds 16 floats; the CPU has AVX-512F (this function's contract).
            s = _mm512_add_ps(s, unsafe { _mm512_loadu_ps(c.as_ptr()) });
        }
        _mm512_reduce_add_ps(s) + tail
    }

    /// The eight lanes of `v` reduced by `f` (a vector max or add).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn across(v: __m256, f: impl Fn(__m128, __m128) -> __m128) -> f32 {
        let v = f(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let v = f(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(f(v, _mm_movehdup_ps(v)))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn max256(x: &[f32]) -> f32 {
        let chunks = x.chunks_exact(8);
        let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in chunks {
            // SAFETY: `c` holds 8 floats; the CPU has AVX2 (this function's contract).
            m = _mm256_max_ps(m, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        across(m, |a, b| _mm_max_ps(a, b)).max(tail)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn sum256(x: &[f32]) -> f32 {
        let chunks = x.chunks_exact(8);
        let tail: f32 = chunks.remainder().iter().sum();
        let mut s = _mm256_setzero_ps();
        for c in chunks {
            // SAFETY: `c` holds 8 floats; the CPU has AVX2 (this function's contract).
            s = _mm256_add_ps(s, unsafe { _mm256_loadu_ps(c.as_ptr()) });
        }
        across(s, |a, b| _mm_add_ps(a, b)) + tail
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        f()
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        f()
    }
}

/// The little-endian f16 at byte `i` of `b`, converted by F16C: `half`'s conversion costs a call
/// and a feature test per value unless the whole crate is compiled with F16C.
///
/// # Safety
/// The CPU must support F16C (inline it only into functions that enable it).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn f16_at(b: &[u8], i: usize) -> f32 {
    // SAFETY: this function's contract is what the operations below need: the caller has
    // checked the CPU for its target features, and passes slices as long as its loads read.
    unsafe {
        use std::arch::x86_64::*;
        let bits = u16::from_le_bytes([b[i], b[i + 1]]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_range_largest_first() {
        let sizes = |n, w| tiles(n, w).map(|r| r.len()).collect::<Vec<_>>();
        assert_eq!(sizes(23, 16), [16, 4, 2, 1]);
        assert_eq!(sizes(23, 8), [8, 8, 4, 2, 1]);
        assert_eq!(sizes(0, 8), Vec::<usize>::new());
        assert_eq!(tiles(11, 8).last(), Some(10..11));
    }

    #[test]
    fn vectorized_runs_the_closure_once_at_any_level() {
        let mut calls = 0;
        let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let sum = vectorized(|| {
            calls += 1;
            x.iter().sum::<f32>()
        });
        assert_eq!((sum, calls), (4950.0, 1));
    }

    #[test]
    fn max_and_sum_equal_plain_folds() {
        for n in [0, 1, 7, 8, 15, 16, 17, 64, 100] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 23) as f32 - 11.0) / 4.0).collect();
            let want_max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let want_sum: f64 = x.iter().map(|&v| v as f64).sum();
            assert_eq!(max_of(&x), want_max, "max of {n}");
            assert!((sum_of(&x) as f64 - want_sum).abs() < 1e-4, "sum of {n}");
            // Inlined into a vectorized loop too.
            assert_eq!(vectorized(|| max_of(&x)), want_max);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f16_at_matches_half() {
        if level() == Level::Baseline {
            return;
        }
        for v in [0.0f32, 1.0, -2.5, 65504.0, 1e-7, f32::INFINITY] {
            let h = half::f16::from_f32(v);
            // SAFETY: the CPU has F16C (checked above).
            assert_eq!(unsafe { f16_at(&h.to_le_bytes(), 0) }, h.to_f32());
        }
    }
}
