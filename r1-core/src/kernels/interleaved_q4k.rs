//! Q4_K weights repacked at load into groups of eight rows, the k-quant form of
//! [`super::interleaved`] (on CPUs with AVX-512 VNNI).
//!
//! A Q4_K super-block holds 256 weights of one row as eight sub-blocks of 32, each with a 6-bit
//! scale and a 6-bit min: weight = `d · sc_s · q - dmin · m_s`. Per group of eight rows and per
//! super-block the layout is:
//!
//! - 1,024 bytes of quants: chunk `c < 4`, then `j < 8`, 32 bytes each, byte `4r + i` holding
//!   quant `4j + i` of sub-block `2c` (low nibble) and of sub-block `2c + 1` (high nibble) of row
//!   `r`: the row-major block's byte `32c + 4j + i`, moved as it is;
//! - the scales as bytes, sub-block-major (`8s + r`): eight rows' scale for sub-block `s` load as
//!   one register;
//! - the mins as bytes in pairs (`16p + 2r + k` for sub-block `2p + k`), ready for `vpmaddwd`
//!   against two activation sub-block sums;
//! - the rows' `d`, then their `dmin`, as f16.
//!
//! 1,184 bytes against the file's 1,152 (the scales are unpacked from 6 bits to 8). In the
//! kernel, one `vpdpbusd` gives eight rows' dots of four quants with four broadcast activation
//! quants; each sub-block's integer sums are scaled in integers (`vpmulld` by the eight rows'
//! scales), and the f32 work is done once per super-block for eight rows.

use super::interleaved_k::{Layout, R};
use super::kquant::{scale_min_k4, Q8KBlock};
use half::f16;

/// Bytes of the file's Q4_K block (one row, 256 weights).
const ROW_BLOCK: usize = 144;
/// Bytes per group and super-block.
const GROUP_BLOCK: usize = 1024 + 64 + 64 + 32;
const SCALES: usize = 1024;
const MINS: usize = 1088;
const D: usize = 1152;
const DMIN: usize = 1168;

/// The layout's marker, for [`Grouped`](super::interleaved_k::Grouped).
#[derive(Debug, Clone)]
pub(crate) struct Q4K;

impl Layout for Q4K {
    const ROW_BLOCK: usize = ROW_BLOCK;
    const GROUP_BLOCK: usize = GROUP_BLOCK;

    fn pack(block: &[u8], r: usize, out: &mut [u8]) {
        pack(block, r, out)
    }

    fn unpack(group: &[u8], r: usize, bytes: &mut Vec<u8>) {
        unpack(group, r, bytes)
    }

    fn dots_scalar(group: &[u8], acts: &[Vec<Q8KBlock>], out: &mut [f32]) {
        group_dots_scalar(group, acts, out)
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn dots_vnni(group: &[u8], acts: &[Vec<Q8KBlock>], out: &mut [f32]) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe { x86::group_dots(group, acts, out) }
    }
}

/// Writes the file's Q4_K block of one row as row `r` of a group block.
fn pack(block: &[u8], r: usize, out: &mut [u8]) {
    for c in 0..4 {
        for j in 0..8 {
            out[256 * c + 32 * j + 4 * r..][..4].copy_from_slice(&block[16 + 32 * c + 4 * j..][..4]);
        }
    }
    for s in 0..8 {
        let (sc, m) = scale_min_k4(s, &block[4..16]);
        out[SCALES + 8 * s + r] = sc;
        out[MINS + 16 * (s / 2) + 2 * r + s % 2] = m;
    }
    out[D + 2 * r..][..2].copy_from_slice(&block[0..2]);
    out[DMIN + 2 * r..][..2].copy_from_slice(&block[2..4]);
}

/// Appends row `r` of a group block to `bytes` as the file's Q4_K block.
fn unpack(group: &[u8], r: usize, bytes: &mut Vec<u8>) {
    let sc = |s: usize| group[SCALES + 8 * s + r];
    let m = |s: usize| group[MINS + 16 * (s / 2) + 2 * r + s % 2];
    bytes.extend_from_slice(&group[D + 2 * r..][..2]);
    bytes.extend_from_slice(&group[DMIN + 2 * r..][..2]);
    // The 6-bit packing that `scale_min_k4` reads: bytes 0..4 scales 0..4 with the top bits of
    // scales 4..8 above them, bytes 4..8 the same for the mins, bytes 8..12 the low nibbles of
    // scales 4..8 and mins 4..8.
    let packed: Vec<u8> = (0..4)
        .map(|j| sc(j) | (sc(j + 4) >> 4) << 6)
        .chain((0..4).map(|j| m(j) | (m(j + 4) >> 4) << 6))
        .chain((0..4).map(|j| (sc(j + 4) & 0x0f) | (m(j + 4) & 0x0f) << 4))
        .collect();
    bytes.extend_from_slice(&packed);
    for c in 0..4 {
        for j in 0..8 {
            bytes.extend_from_slice(&group[256 * c + 32 * j + 4 * r..][..4]);
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The reference: the same sums in plain Rust, from the layout's definition.
fn group_dots_scalar(group: &[u8], acts: &[Vec<Q8KBlock>], out: &mut [f32]) {
    for (t, act) in acts.iter().enumerate() {
        for r in 0..R {
            let mut sum = 0f32;
            for (b, blk) in group.chunks_exact(GROUP_BLOCK).enumerate() {
                let a = &act[b];
                let (mut isum, mut msum) = (0i32, 0i32);
                for s in 0..8 {
                    let (c, high) = (s / 2, s % 2 == 1);
                    let dot: i32 = (0..32)
                        .map(|k| {
                            let byte = blk[256 * c + 32 * (k / 4) + 4 * r + k % 4];
                            let q = if high { byte >> 4 } else { byte & 0x0f };
                            q as i32 * a.qs[32 * s + k] as i32
                        })
                        .sum();
                    isum += dot * blk[SCALES + 8 * s + r] as i32;
                    let bsum = a.bsums[2 * s] as i32 + a.bsums[2 * s + 1] as i32;
                    msum += blk[MINS + 16 * (s / 2) + 2 * r + s % 2] as i32 * bsum;
                }
                sum += a.d * (f16_at(blk, D + 2 * r) * isum as f32 - f16_at(blk, DMIN + 2 * r) * msum as f32);
            }
            out[t * R + r] = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q8KBlock, D, DMIN, GROUP_BLOCK, MINS, R, SCALES};
    use crate::kernels::interleaved_k::{fold, prefetch, spread, tiles_of_four, twice};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn halves(blk: &[u8], at: usize) -> __m256 {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(blk[at..at + 16].as_ptr() as *const __m128i)) }
    }

    /// `N` activation rows against the group's eight rows, one super-block at a time: per chunk
    /// of two sub-blocks the quants are unpacked once into eight 512-bit registers; each
    /// activation row then takes eight `vpdpbusd`, two integer scalings and adds, and per
    /// super-block the mins term (four `vpmaddwd`) and two FMAs for all eight rows.
    #[inline(always)]
    unsafe fn tile<const N: usize>(group: &[u8], acts: [&[Q8KBlock]; N], out: &mut [f32]) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); N];
            let mut acc_m = [_mm256_setzero_ps(); N];
            let low = _mm512_set1_epi8(0x0f);
            for (b, blk) in group.chunks_exact(GROUP_BLOCK).enumerate() {
                prefetch(blk, N);
                let mut wide = [_mm512_setzero_si512(); N];
                for c in 0..4 {
                    // Register p: the layout's runs j = 2p, 2p + 1 side by side (see `spread`).
                    let (mut lo, mut hi) = ([_mm512_setzero_si512(); 4], [_mm512_setzero_si512(); 4]);
                    for p in 0..4 {
                        let v = _mm512_loadu_si512(blk[256 * c + 64 * p..].as_ptr() as *const __m512i);
                        lo[p] = _mm512_and_si512(v, low);
                        hi[p] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
                    }
                    let scale = |s: usize| {
                        twice(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            blk[SCALES + 8 * s..].as_ptr() as *const __m128i
                        )))
                    };
                    let (sc_lo, sc_hi) = (scale(2 * c), scale(2 * c + 1));
                    for t in 0..N {
                        let qs = &acts[t][b].qs;
                        let (a_lo, a_hi) = (spread(qs, 64 * c), spread(qs, 64 * c + 32));
                        let (mut s_lo, mut s_hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                        for p in 0..4 {
                            s_lo = _mm512_dpbusd_epi32(s_lo, lo[p], a_lo[p]);
                            s_hi = _mm512_dpbusd_epi32(s_hi, hi[p], a_hi[p]);
                        }
                        let scaled = _mm512_add_epi32(_mm512_mullo_epi32(s_lo, sc_lo), _mm512_mullo_epi32(s_hi, sc_hi));
                        wide[t] = _mm512_add_epi32(wide[t], scaled);
                    }
                }
                // Loops, not `array::from_fn`: see `interleaved_k::spread`.
                let mut isum = [_mm256_setzero_si256(); N];
                for (s, w) in isum.iter_mut().zip(&wide) {
                    *s = fold(*w);
                }
                let mut mins = [_mm256_setzero_si256(); 4];
                for (p, m) in mins.iter_mut().enumerate() {
                    *m = _mm256_cvtepu8_epi16(_mm_loadu_si128(blk[MINS + 16 * p..].as_ptr() as *const __m128i));
                }
                let (d, dmin) = (halves(blk, D), halves(blk, DMIN));
                for t in 0..N {
                    let a = &acts[t][b];
                    // Sub-block sums of the activations (pairs of the block's sums of 16), as i16
                    // pairs (sub-blocks 2p, 2p + 1) broadcast for each p.
                    let bsums = _mm256_loadu_si256(a.bsums.as_ptr() as *const __m256i);
                    let sums = _mm256_madd_epi16(bsums, _mm256_set1_epi16(1));
                    let pairs = _mm256_packs_epi32(sums, sums);
                    let mut msum = _mm256_setzero_si256();
                    for (p, idx) in [0, 1, 4, 5].into_iter().enumerate() {
                        let pair = _mm256_permutevar8x32_epi32(pairs, _mm256_set1_epi32(idx));
                        msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mins[p], pair));
                    }
                    let ad = _mm256_set1_ps(a.d);
                    acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, ad), _mm256_cvtepi32_ps(isum[t]), acc[t]);
                    acc_m[t] = _mm256_fmadd_ps(_mm256_mul_ps(dmin, ad), _mm256_cvtepi32_ps(msum), acc_m[t]);
                }
            }
            for t in 0..N {
                _mm256_storeu_ps(out[t * R..].as_mut_ptr(), _mm256_sub_ps(acc[t], acc_m[t]));
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX512-VNNI and AVX512-VL with AVX2, FMA and F16C; every act has a
    /// block for each of the group's super-blocks; `out.len() >= 8 * acts.len()`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn group_dots(group: &[u8], acts: &[Vec<Q8KBlock>], out: &mut [f32]) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            tiles_of_four!(tile, group, acts, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::interleaved_k::check_layout;
    use super::super::kquant::KFormat;
    use super::*;

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn repacked_rows_round_trip_and_dot_as_the_row_kernel() {
        let mut state = 0x0bad_5eed_u64;
        // 11 rows: a full group and a partial one.
        let (rows, blocks) = (11, 2);
        let mut src = Vec::new();
        for _ in 0..rows * blocks {
            let mut b: Vec<u8> = (0..ROW_BLOCK).map(|_| xorshift(&mut state) as u8).collect();
            let d = f16::from_f32(((xorshift(&mut state) % 1000) as f32 + 1.0) / 100000.0);
            let dmin = f16::from_f32(((xorshift(&mut state) % 1000) as f32 + 1.0) / 100000.0);
            b[..2].copy_from_slice(&d.to_le_bytes());
            b[2..4].copy_from_slice(&dmin.to_le_bytes());
            src.extend(b);
        }
        check_layout::<Q4K>(KFormat::Q4K, &src, rows, blocks);
    }
}
