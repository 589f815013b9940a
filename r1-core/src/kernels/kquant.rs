//! ggml's k-quant formats Q4_K and Q6_K (super-blocks of 256 weights) against activations
//! quantized to Q8_K, as llama.cpp computes them.
//!
//! | format | bytes | layout | weight |
//! | --- | --- | --- | --- |
//! | Q4_K | 144 | `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]` | `d * sc_j * q - dmin * m_j`, `q` in 0..16, 8 sub-blocks of 32 with 6-bit `sc_j`, `m_j` |
//! | Q6_K | 210 | `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16` | `d * sc_g * q`, `q` in -32..32, 16 groups of 16 |
//!
//! Both reduce to one shape: 256 unsigned bytes `u` (Q6_K stores `q + 32`), a signed scale per
//! group of 16, and a correction from the activations' group sums (`bsums`):
//! `Σ_g sc_g Σ_{i∈g} u_i a_i` is exact in integers, the rest is two f32 products per block.

use half::f16;

/// Weights per super-block.
pub const QK_K: usize = 256;

/// The k-quant formats with r1 kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KFormat {
    /// 4.5 bits per weight.
    Q4K,
    /// 6.5 bits per weight.
    Q6K,
}

impl KFormat {
    /// Bytes per super-block.
    pub fn block_bytes(self) -> usize {
        match self {
            KFormat::Q4K => 144,
            KFormat::Q6K => 210,
        }
    }
}

/// 256 activations quantized like ggml's `quantize_row_q8_K`: the element of largest magnitude
/// maps to -127; `d` is f32; `bsums` are the sums of each 16 quants.
#[derive(Debug, Clone, Copy)]
pub struct Q8KBlock {
    /// Scale.
    pub d: f32,
    /// Quants.
    pub qs: [i8; QK_K],
    /// Sums of each group of 16 quants.
    pub bsums: [i16; 16],
}

/// Quantizes `x` (a multiple of 256 long) to Q8_K blocks.
pub fn quantize_q8k(x: &[f32], out: &mut Vec<Q8KBlock>) {
    super::cpu::vectorized(
        #[inline(always)]
        || quantize_q8k_blocks(x, out),
    )
}

#[inline(always)]
fn quantize_q8k_blocks(x: &[f32], out: &mut Vec<Q8KBlock>) {
    out.clear();
    for chunk in x.chunks_exact(QK_K) {
        // The value of largest magnitude, found by two reductions that vectorize (ggml keeps
        // the first such value; where +m and -m tie this takes +m, which negates the scale and
        // every quant, so every product is the same).
        let hi = chunk.iter().fold(0f32, |m, &v| m.max(v));
        let lo = chunk.iter().fold(0f32, |m, &v| m.min(v));
        let (amax, max) = if -lo > hi { (-lo, lo) } else { (hi, hi) };
        let mut b = Q8KBlock {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; 16],
        };
        if amax != 0.0 {
            let iscale = -127.0 / max;
            for (q, &v) in b.qs.iter_mut().zip(chunk) {
                *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
            }
            for (g, s) in b.bsums.iter_mut().enumerate() {
                *s = b.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
            }
            b.d = 1.0 / iscale;
        }
        out.push(b);
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_K's eight 6-bit scales and eight 6-bit mins from its 12 packed bytes, four at a time in
/// `u32` lanes: bytes 0..4 hold scales 0..4 (low six bits) and bytes 4..8 mins 0..4; bytes
/// 8..12 hold the low four bits of scales 4..8 (low nibbles) and of mins 4..8 (high nibbles),
/// whose top two bits are the spare top bits of bytes 0..4 and 4..8. Equal to
/// [`scale_min_k4`] for every `j` (tested), without a branch or a byte loop.
#[inline(always)]
fn scales_mins_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a, b, c) = (word(0), word(1), word(2));
    let scales_hi = (c & LOW4) | (((a >> 6) & LOW2) << 4);
    let mins_hi = ((c >> 4) & LOW4) | (((b >> 6) & LOW2) << 4);
    let join = |lo: u32, hi: u32| {
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&lo.to_le_bytes());
        out[4..].copy_from_slice(&hi.to_le_bytes());
        out
    };
    (join(a & LOW6, scales_hi), join(b & LOW6, mins_hi))
}

/// Q4_K's 6-bit scale and min of sub-block `j` (ggml's `get_scale_min_k4`).
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// A super-block decoded to signed integer weights with their per-16 scales and per-32 mins:
/// weight `i` = `d * scales[i / 16] * q[i] - dmin * mins[i / 32]`.
pub struct Decoded {
    /// Integer weights.
    pub q: [i32; QK_K],
    /// Scale of each group of 16.
    pub scales: [i32; 16],
    /// Min of each group of 32 (Q4_K; zero for Q6_K).
    pub mins: [i32; 8],
    /// Super-block scale.
    pub d: f32,
    /// Super-block scale of the mins.
    pub dmin: f32,
}

/// Decodes one super-block (the scalar reference of the layouts).
pub fn decode(format: KFormat, b: &[u8]) -> Decoded {
    let mut r = Decoded {
        q: [0; QK_K],
        scales: [0; 16],
        mins: [0; 8],
        d: 0.0,
        dmin: 0.0,
    };
    match format {
        KFormat::Q4K => {
            r.d = f16_at(b, 0);
            r.dmin = f16_at(b, 2);
            let (scales, qs) = (&b[4..16], &b[16..144]);
            for j in 0..8 {
                let (sc, m) = scale_min_k4(j, scales);
                r.scales[2 * j] = sc as i32;
                r.scales[2 * j + 1] = sc as i32;
                r.mins[j] = m as i32;
            }
            for c in 0..4 {
                for l in 0..32 {
                    r.q[64 * c + l] = (qs[32 * c + l] & 0x0f) as i32;
                    r.q[64 * c + 32 + l] = (qs[32 * c + l] >> 4) as i32;
                }
            }
        }
        KFormat::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            r.d = f16_at(b, 208);
            for (g, s) in r.scales.iter_mut().enumerate() {
                *s = sc[g] as i8 as i32;
            }
            for h in 0..2 {
                let (ql, qh) = (&ql[64 * h..], &qh[32 * h..]);
                for l in 0..32 {
                    let y = &mut r.q[128 * h..];
                    y[l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                    y[l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    y[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    y[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                }
            }
        }
    }
    r
}

/// Scalar dot product of one weight row (whole super-blocks) with Q8_K activations.
pub fn dot_scalar(format: KFormat, row: &[u8], act: &[Q8KBlock]) -> f32 {
    let mut sum = 0f32;
    for (b, a) in row.chunks_exact(format.block_bytes()).zip(act) {
        let r = decode(format, b);
        let mut isum = 0i64;
        let mut msum = 0i64;
        for g in 0..16 {
            let s: i32 = (16 * g..16 * g + 16).map(|i| r.q[i] * a.qs[i] as i32).sum();
            isum += (r.scales[g] * s) as i64;
            msum += (r.mins[g / 2] * a.bsums[g] as i32) as i64;
        }
        sum += a.d * (r.d * isum as f32 - r.dmin * msum as f32);
    }
    sum
}

/// Dequantizes a row.
pub fn dequantize_row(format: KFormat, row: &[u8], out: &mut Vec<f32>) {
    out.clear();
    for b in row.chunks_exact(format.block_bytes()) {
        let r = decode(format, b);
        out.extend((0..QK_K).map(|i| r.d * (r.scales[i / 16] * r.q[i]) as f32 - r.dmin * r.mins[i / 32] as f32));
    }
}

/// `out[t]` = dot of one weight row with `acts[t]`, with the fastest code the CPU runs; each
/// super-block is unpacked once for all rows.
pub fn dot_many(format: KFormat, row: &[u8], acts: &[Vec<Q8KBlock>], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::cpu::level() >= super::cpu::Level::Avx2 {
        // SAFETY: the CPU supports AVX2, FMA and F16C (what `Level::Avx2` means).
        unsafe { x86::dot_many(format, row, acts, out) };
        return;
    }
    for (o, a) in out.iter_mut().zip(acts) {
        *o = dot_scalar(format, row, a);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::cpu::f16_at;
    use super::{scales_mins_k4, KFormat, Q8KBlock};
    use std::arch::x86_64::*;

    /// A super-block as eight registers of 32 unsigned bytes, the matching pairs of per-16
    /// scales (as i16), and the f32 terms.
    struct Unpacked {
        u: [__m256i; 8],
        scales: [__m256i; 8],
        d: f32,
        dmin: f32,
        /// Per group of 16 (as i16 lanes), what multiplies the activations' group sums:
        /// Q4_K the sub-block mins, Q6_K `-32 * sc_g` (the `+32` of the stored bytes undone).
        bsum_weights: __m256i,
    }

    #[inline(always)]
    unsafe fn pair(lo: i32, hi: i32) -> __m256i {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe { _mm256_set_m128i(_mm_set1_epi16(hi as i16), _mm_set1_epi16(lo as i16)) }
    }

    #[inline(always)]
    unsafe fn unpack(format: KFormat, b: &[u8]) -> Unpacked {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            let mask4 = _mm256_set1_epi8(0x0f);
            let mut out = Unpacked {
                u: [_mm256_setzero_si256(); 8],
                scales: [_mm256_setzero_si256(); 8],
                d: 0.0,
                dmin: 0.0,
                bsum_weights: _mm256_setzero_si256(),
            };
            match format {
                KFormat::Q4K => {
                    out.d = f16_at(b, 0);
                    out.dmin = f16_at(b, 2);
                    let (sc, mins) = scales_mins_k4(&b[4..16]);
                    // The eight scales as i16 in both 128-bit lanes; scales[j] broadcasts scale j
                    // (bytes 2j, 2j + 1) over the register with one shuffle.
                    let sc16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(sc.as_ptr() as *const __m128i));
                    let sc256 = _mm256_broadcastsi128_si256(sc16);
                    for (j, s) in out.scales.iter_mut().enumerate() {
                        let pick = _mm256_set1_epi16((2 * j as i16) | ((2 * j as i16 + 1) << 8));
                        *s = _mm256_shuffle_epi8(sc256, pick);
                    }
                    // Each min once per group of 16: m0 m0 m1 m1 ... m7 m7 as i16.
                    let m8 = _mm_loadl_epi64(mins.as_ptr() as *const __m128i);
                    out.bsum_weights = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
                    for c in 0..4 {
                        let v = _mm256_loadu_si256(b[16 + 32 * c..].as_ptr() as *const __m256i);
                        out.u[2 * c] = _mm256_and_si256(v, mask4);
                        out.u[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask4);
                    }
                }
                KFormat::Q6K => {
                    out.d = f16_at(b, 208);
                    let mut sc = [0i32; 16];
                    let mut neg32 = [0i16; 16];
                    for g in 0..16 {
                        sc[g] = b[192 + g] as i8 as i32;
                        neg32[g] = (-32 * sc[g]) as i16;
                    }
                    out.bsum_weights = _mm256_loadu_si256(neg32.as_ptr() as *const __m256i);
                    let mask2 = _mm256_set1_epi8(3);
                    for h in 0..2 {
                        let ql0 = _mm256_loadu_si256(b[64 * h..].as_ptr() as *const __m256i);
                        let ql1 = _mm256_loadu_si256(b[64 * h + 32..].as_ptr() as *const __m256i);
                        let qh = _mm256_loadu_si256(b[128 + 32 * h..].as_ptr() as *const __m256i);
                        let high = |shift: i32| -> __m256i {
                            let bits = match shift {
                                0 => qh,
                                2 => _mm256_srli_epi16(qh, 2),
                                4 => _mm256_srli_epi16(qh, 4),
                                _ => _mm256_srli_epi16(qh, 6),
                            };
                            _mm256_slli_epi16(_mm256_and_si256(bits, mask2), 4)
                        };
                        let lo0 = _mm256_and_si256(ql0, mask4);
                        let lo1 = _mm256_and_si256(ql1, mask4);
                        let hi0 = _mm256_and_si256(_mm256_srli_epi16(ql0, 4), mask4);
                        let hi1 = _mm256_and_si256(_mm256_srli_epi16(ql1, 4), mask4);
                        out.u[4 * h] = _mm256_or_si256(lo0, high(0));
                        out.u[4 * h + 1] = _mm256_or_si256(lo1, high(2));
                        out.u[4 * h + 2] = _mm256_or_si256(hi0, high(4));
                        out.u[4 * h + 3] = _mm256_or_si256(hi1, high(6));
                    }
                    for k in 0..8 {
                        out.scales[k] = pair(sc[2 * k], sc[2 * k + 1]);
                    }
                }
            }
            out
        }
    }

    #[inline(always)]
    unsafe fn hsum_ps(v: __m256) -> f32 {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }

    /// `N` activation rows against one weight row: each super-block is unpacked once for all of
    /// them, and each row keeps two f32 vector accumulators in registers (the scaled integer
    /// sums, and the offset terms), reduced to a number only at the end of the row. One copy per
    /// `N`, so the loops over rows unroll. It and its helpers are `inline(always)` without
    /// features of their own, so they are compiled inside `dot_many`, with its features.
    #[inline(always)]
    unsafe fn tile<const N: usize>(format: KFormat, row: &[u8], acts: [&[Q8KBlock]; N], out: &mut [f32]) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            let mut sums = [_mm256_setzero_ps(); N];
            let mut offsets = [_mm256_setzero_ps(); N];
            for (i, b) in row.chunks_exact(format.block_bytes()).enumerate() {
                let w = unpack(format, b);
                for t in 0..N {
                    let a = &acts[t][i];
                    let mut sum = _mm256_setzero_si256();
                    for k in 0..8 {
                        let y = _mm256_loadu_si256(a.qs[32 * k..].as_ptr() as *const __m256i);
                        let p16 = _mm256_maddubs_epi16(w.u[k], y);
                        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p16, w.scales[k]));
                    }
                    let bsums = _mm256_loadu_si256(a.bsums.as_ptr() as *const __m256i);
                    let corr = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, w.bsum_weights));
                    let d = a.d * w.d;
                    sums[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sum), sums[t]);
                    // Q4_K subtracts dmin · Σ_g min_g · bsum_g; Q6_K's stored bytes are q + 32,
                    // undone by -32 · Σ_g sc_g · bsum_g at the block's own scale.
                    let c = match format {
                        KFormat::Q4K => -a.d * w.dmin,
                        KFormat::Q6K => d,
                    };
                    offsets[t] = _mm256_fmadd_ps(_mm256_set1_ps(c), corr, offsets[t]);
                }
            }
            for t in 0..N {
                out[t] = hsum_ps(_mm256_add_ps(sums[t], offsets[t]));
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; `row` holds whole super-blocks; every `acts[t]`
    /// has as many blocks; `out.len() == acts.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_many(format: KFormat, row: &[u8], acts: &[Vec<Q8KBlock>], out: &mut [f32]) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            for r in super::super::cpu::tiles(acts.len(), 8) {
                let (a, o) = (&acts[r.clone()], &mut out[r]);
                match a.len() {
                    8 => tile::<8>(format, row, std::array::from_fn(|k| a[k].as_slice()), o),
                    4 => tile::<4>(format, row, std::array::from_fn(|k| a[k].as_slice()), o),
                    2 => tile::<2>(format, row, std::array::from_fn(|k| a[k].as_slice()), o),
                    _ => tile::<1>(format, row, [a[0].as_slice()], o),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn random_row(format: KFormat, blocks: usize, state: &mut u64) -> Vec<u8> {
        let mut row = Vec::new();
        for _ in 0..blocks {
            let mut b: Vec<u8> = (0..format.block_bytes()).map(|_| xorshift(state) as u8).collect();
            let d = f16::from_f32(((xorshift(state) % 1000) as f32 + 1.0) / 100000.0).to_le_bytes();
            match format {
                KFormat::Q4K => {
                    b[..2].copy_from_slice(&d);
                    b[2..4].copy_from_slice(&f16::from_f32(((xorshift(state) % 1000) as f32) / 100000.0).to_le_bytes());
                }
                KFormat::Q6K => b[208..210].copy_from_slice(&d),
            }
            row.extend(b);
        }
        row
    }

    #[test]
    fn q4k_scales_by_hand() {
        // Sub-block 5 (j >= 4): sc = low nibble of s[9] | top two bits of s[1] << 4.
        let mut s = [0u8; 12];
        s[9] = 0x3a; // low nibble 0xa (sc), high nibble 0x3 (m)
        s[1] = 0b1100_0000; // top bits 3 → sc += 48
        s[5] = 0b0100_0000; // top bits 1 → m += 16
        assert_eq!(scale_min_k4(5, &s), (0x0a + 48, 0x03 + 16));
        assert_eq!(scale_min_k4(1, &s), (s[1] & 63, s[5] & 63));
    }

    #[test]
    fn packed_scales_and_mins_unpack_like_the_byte_rule() {
        let mut state = 0x51f1_5eed_u64;
        for _ in 0..200 {
            let s: Vec<u8> = (0..12).map(|_| xorshift(&mut state) as u8).collect();
            let (sc, mins) = scales_mins_k4(&s);
            for j in 0..8 {
                assert_eq!((sc[j], mins[j]), scale_min_k4(j, &s), "j {j} of {s:?}");
            }
        }
    }

    #[test]
    fn q8k_maps_the_largest_element_to_minus_127() {
        let mut x = vec![0.5f32; 256];
        x[7] = 2.0;
        let mut q = Vec::new();
        quantize_q8k(&x, &mut q);
        assert_eq!(q[0].qs[7], -127);
        assert_eq!(q[0].qs[0], -32); // 0.5 * -63.5 = -31.75
        assert!((q[0].d * q[0].qs[7] as f32 - 2.0).abs() < 1e-6);
        assert_eq!(q[0].bsums[0], q[0].qs[..16].iter().map(|&v| v as i16).sum::<i16>());
    }

    #[test]
    fn every_tile_size_equals_scalar() {
        // 23 activation rows: tiles of 8, 8, 4, 2 and 1.
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for format in [KFormat::Q4K, KFormat::Q6K] {
            let row = random_row(format, 2, &mut state);
            let acts: Vec<Vec<Q8KBlock>> = (0..23)
                .map(|_| {
                    let x: Vec<f32> = (0..2 * QK_K)
                        .map(|_| ((xorshift(&mut state) % 2001) as f32 - 1000.0) / 300.0)
                        .collect();
                    let mut act = Vec::new();
                    quantize_q8k(&x, &mut act);
                    act
                })
                .collect();
            let mut got = vec![0f32; acts.len()];
            dot_many(format, &row, &acts, &mut got);
            for (t, (g, a)) in got.iter().zip(&acts).enumerate() {
                let w = dot_scalar(format, &row, a);
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{format:?} row {t}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn simd_equals_scalar_and_dequantized() {
        let mut state = 0x2545f4914f6cdd1d;
        for format in [KFormat::Q4K, KFormat::Q6K] {
            for blocks in [1, 3] {
                let row = random_row(format, blocks, &mut state);
                let x: Vec<f32> = (0..blocks * QK_K)
                    .map(|_| ((xorshift(&mut state) % 2001) as f32 - 1000.0) / 300.0)
                    .collect();
                let mut act = Vec::new();
                quantize_q8k(&x, &mut act);
                let s = dot_scalar(format, &row, &act);
                let mut many = [0f32; 3];
                dot_many(format, &row, &vec![act.clone(); 3], &mut many);
                for m in many {
                    assert!(
                        (s - m).abs() <= 1e-5 * s.abs().max(1.0),
                        "{format:?}: scalar {s} simd {m}"
                    );
                }
                // Against the dequantized weights times the dequantized activations.
                let mut w = Vec::new();
                dequantize_row(format, &row, &mut w);
                let exact: f32 = w
                    .iter()
                    .enumerate()
                    .map(|(i, wi)| wi * act[i / QK_K].d * act[i / QK_K].qs[i % QK_K] as f32)
                    .sum();
                assert!(
                    (s - exact).abs() <= 1e-4 * exact.abs().max(1.0),
                    "{format:?}: {s} vs {exact}"
                );
            }
        }
    }
}
