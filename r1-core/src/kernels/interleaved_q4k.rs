//! Q4_K weights repacked at load into groups of eight rows, the k-quant form of
//! [`super::interleaved`] (on CPUs with AVX-512 VNNI).
//!
//! A Q4_K super-block holds 256 weights of one row as eight sub-blocks of 32, each with a 6-bit
//! scale and a 6-bit min: weight = `d · sc_s · q - dmin · m_s`. Per group of eight rows and per
//! super-block the layout is:
//!
//! - 1,024 bytes of quants: chunk `c < 4`, then run `p < 4`, 64 bytes each, byte `8r + k`
//!   holding quant `8p + k` of sub-block `2c` (low nibble) and of sub-block `2c + 1` (high
//!   nibble) of row `r`: the row-major block's byte `32c + 8p + k`, moved as it is;
//! - the scales as bytes, sub-block-major (`8s + r`);
//! - the mins as bytes in pairs (`16p + 2r + k` for sub-block `2p + k`);
//! - the rows' `d`, then their `dmin`, as f16.
//!
//! 1,184 bytes against the file's 1,152 (the scales are unpacked from 6 bits to 8).
//!
//! In the kernel a 512-bit register of quants holds eight consecutive quants of each of the
//! eight rows, row `r` in lanes `2r` and `2r + 1`, so the activations they meet are the same
//! eight bytes in every lane pair: one `vpbroadcastq` from memory, which takes a load port, not
//! an arithmetic one. On this CPU the two 512-bit arithmetic ports run `vpdpbusd` and every
//! other vector instruction alike, so the kernel's speed is its count of arithmetic
//! instructions per `vpdpbusd`. The earlier layout (four quants of each row per 32 bytes)
//! needed a `vpermd` per `vpdpbusd` to spread the activations, and scaled each sub-block's
//! integer sums with `vpmulld` (two instructions, one port). Here each sub-block's sums go to
//! f32 and are scaled by one FMA, and the high nibbles are kept in place (masked, not shifted:
//! sixteen times the quant, a factor taken out of that sub-block's scale). The mins term is four
//! `vpdpwssd` per super-block against the activations' sums of 16, broadcast the same way. Q4_K
//! at 128 tokens on one core: 2.57 → 3.15 G block-dots/s (with tiles of eight rows).

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
        for p in 0..4 {
            out[256 * c + 64 * p + 8 * r..][..8].copy_from_slice(&block[16 + 32 * c + 8 * p..][..8]);
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
        for p in 0..4 {
            bytes.extend_from_slice(&group[256 * c + 64 * p + 8 * r..][..8]);
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
                            let byte = blk[256 * c + 64 * (k / 8) + 8 * r + k % 8];
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
    use crate::kernels::interleaved_k::{fold_pairs, lanes_of, pairs, prefetch, tiles_of_eight};
    use std::arch::x86_64::*;

    /// The eight rows' f16 values at `blk[at..at + 16]`, in lane pairs.
    #[inline(always)]
    unsafe fn halves(blk: &[u8], at: usize) -> __m512 {
        // SAFETY: the caller has AVX-512 F and F16C; the slice holds the 16 bytes.
        unsafe {
            pairs(_mm256_cvtph_ps(_mm_loadu_si128(
                blk[at..at + 16].as_ptr() as *const __m128i
            )))
        }
    }

    /// The eight rows' scales of sub-block `s` as f32 in lane pairs, times `factor`.
    #[inline(always)]
    unsafe fn scales(blk: &[u8], s: usize, factor: f32) -> __m512 {
        // SAFETY: the caller has AVX-512 F; the slice holds the 8 bytes.
        unsafe {
            let sc = _mm_loadl_epi64(blk[SCALES + 8 * s..][..8].as_ptr() as *const __m128i);
            let sc = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(sc, sc));
            _mm512_mul_ps(_mm512_cvtepi32_ps(sc), _mm512_set1_ps(factor))
        }
    }

    /// The mins of sub-blocks `2k, 2k + 1` for `vpdpwssd`: lane `2r + j` holds row `r`'s min of
    /// sub-block `2k + j` in both of its 16-bit halves, as the activations' two sums of 16 in
    /// that sub-block come in a lane.
    #[inline(always)]
    unsafe fn mins(blk: &[u8], k: usize) -> __m512i {
        // SAFETY: the caller has AVX-512 F; the slice holds the 16 bytes.
        unsafe {
            let m = _mm512_cvtepu8_epi32(_mm_loadu_si128(blk[MINS + 16 * k..][..16].as_ptr() as *const __m128i));
            _mm512_or_si512(m, _mm512_slli_epi32(m, 16))
        }
    }

    /// `N` activation rows against the group's eight rows, one super-block at a time: per chunk
    /// of two sub-blocks the quants are masked once into eight 512-bit registers; each
    /// activation row then takes eight `vpdpbusd` and two conversions and FMAs, and per
    /// super-block four `vpdpwssd` for the mins and three operations to scale. Lanes `2r` and
    /// `2r + 1` hold halves of row `r`'s sums until the end.
    #[inline(always)]
    unsafe fn tile<const N: usize>(group: &[u8], acts: [&[Q8KBlock]; N], out: &mut [f32]) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read
        // (every act has a block for each of the group's; `qs` holds 256 bytes, `bsums` 32).
        unsafe {
            let mut acc = [_mm512_setzero_ps(); N];
            let low = _mm512_set1_epi8(0x0f);
            let high = _mm512_set1_epi8(0xf0u8 as i8);
            for (b, blk) in group.chunks_exact(GROUP_BLOCK).enumerate() {
                prefetch(blk, N);
                let mut part = [_mm512_setzero_ps(); N];
                for c in 0..4 {
                    let (mut lo, mut hi) = ([_mm512_setzero_si512(); 4], [_mm512_setzero_si512(); 4]);
                    for p in 0..4 {
                        let v = _mm512_loadu_si512(blk[256 * c + 64 * p..].as_ptr() as *const __m512i);
                        lo[p] = _mm512_and_si512(v, low);
                        hi[p] = _mm512_and_si512(v, high);
                    }
                    // The high nibbles are sixteen times their quants.
                    let (sc_lo, sc_hi) = (scales(blk, 2 * c, 1.0), scales(blk, 2 * c + 1, 1.0 / 16.0));
                    for t in 0..N {
                        let qs = acts[t][b].qs.as_ptr().add(64 * c) as *const u8;
                        let (mut s_lo, mut s_hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                        for p in 0..4 {
                            s_lo = _mm512_dpbusd_epi32(s_lo, lo[p], lanes_of(qs.add(8 * p)));
                            s_hi = _mm512_dpbusd_epi32(s_hi, hi[p], lanes_of(qs.add(32 + 8 * p)));
                        }
                        part[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s_lo), sc_lo, part[t]);
                        part[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s_hi), sc_hi, part[t]);
                    }
                }
                // Loops, not `array::from_fn`: see `interleaved_k`'s module comment.
                let mut m = [_mm512_setzero_si512(); 4];
                for (k, m) in m.iter_mut().enumerate() {
                    *m = mins(blk, k);
                }
                let (d, dmin) = (halves(blk, D), halves(blk, DMIN));
                for t in 0..N {
                    let a = &acts[t][b];
                    let bsums = a.bsums.as_ptr() as *const u8;
                    let mut msum = _mm512_setzero_si512();
                    for (k, m) in m.iter().enumerate() {
                        msum = _mm512_dpwssd_epi32(msum, *m, lanes_of(bsums.add(8 * k)));
                    }
                    let v = _mm512_fmsub_ps(d, part[t], _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(msum)));
                    acc[t] = _mm512_fmadd_ps(v, _mm512_set1_ps(a.d), acc[t]);
                }
            }
            for t in 0..N {
                _mm256_storeu_ps(out[t * R..][..R].as_mut_ptr(), fold_pairs(acc[t]));
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
            tiles_of_eight!(tile, group, acts, out);
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
