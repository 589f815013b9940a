//! `exp` for f32 that the compiler vectorizes.
//!
//! The standard library's `f32::exp` is a call into libm per value, which no loop vectorizes:
//! attention's softmax takes one exponential per score, as many as there are multiply-adds in a
//! head's dot product, and with libm's call they cost more than the dot products did. This is
//! the classic range reduction (`exp(x) = 2^n · exp(r)`, `|r| ≤ ln 2 / 2`) with Cephes' degree-6
//! polynomial for `exp(r)`: straight-line arithmetic, so a loop of it compiles to vector
//! instructions at each SIMD level of [`super::cpu::vectorized`]. Its error is within 2 ulp of
//! the exact value (the test below checks every 1/64 step of the range softmax uses, against
//! f64).

/// Below this `exp` is under f32's smallest normal number; softmax treats it as 0 (a masked
/// score of `-inf` gives exactly 0).
const LOWEST: f32 = -87.33;
/// Above this `exp` overflows f32.
const HIGHEST: f32 = 88.72;

/// `e^x` for f32 (within 2 ulp; 0 below -87.33, where f32 would be subnormal; `inf` above
/// 88.72; NaN for NaN). Inline it into a [`super::cpu::vectorized`] loop to have it vectorized.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, so that `n · LN2_HI` is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 · 2^23 rounds to the nearest integer in the float itself (ties to even), with
    // no rounding instruction the baseline target may lack.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(LOWEST, HIGHEST);
    let rounded = clamped * LOG2E + ROUND;
    let n = rounded - ROUND;
    // The integer n is in the low mantissa bits of `rounded`: no float-to-int conversion, whose
    // saturating semantics the compiler cannot vectorize well.
    let ni = rounded.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // 2^n in two halves, so that n = 128 (x near HIGHEST) does not overflow the exponent field.
    let half = ni >> 1;
    let two = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    let y = er * two(half) * two(ni - half);
    if x < LOWEST {
        0.0
    } else if x > HIGHEST {
        f32::INFINITY
    } else {
        y // NaN stays NaN through the clamp and the polynomial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units of the last place between two finite positive f32.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        let mut worst = 0;
        for i in -87 * 64..=88 * 64 {
            let x = i as f32 / 64.0;
            let want = (x as f64).exp() as f32;
            let got = exp(x);
            worst = worst.max(ulps(got, want));
            assert!(ulps(got, want) <= 2, "exp({x}) = {got}, want {want}");
        }
        assert!(worst >= 1, "compared with f64 at all");
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(88.7).is_finite() && exp(88.7) > 3.0e38);
    }

    #[test]
    fn exp_vectorized_equals_exp() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 7.0).collect();
        let got = super::super::cpu::vectorized(
            #[inline(always)]
            || x.iter().map(|&v| exp(v)).collect::<Vec<f32>>(),
        );
        for (g, &v) in got.iter().zip(&x) {
            assert_eq!(g.to_bits(), exp(v).to_bits());
        }
    }
}
