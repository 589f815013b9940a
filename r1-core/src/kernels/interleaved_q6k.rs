//! Q6_K weights repacked at load into groups of eight rows (see [`super::interleaved`]), on CPUs
//! with AVX-512 VNNI: the LM head of most Q4_K_M files, and some of their `ffn_down` matrices.
//!
//! A Q6_K super-block holds 256 weights of one row as 6-bit quants `q` (stored as `q + 32`) in
//! sixteen groups of 16, each group with a signed 8-bit scale: weight = `d · sc_g · (u - 32)`.
//! Per group of eight rows and per super-block the layout is:
//!
//! - the quants (`u`, 0..64) in the order the kernel takes them: chunk `k < 8` (weights
//!   `32k..32k + 32`) is four 64-byte registers `p`, each holding eight consecutive weights
//!   `32k + 8p..32k + 8p + 8` of every row, row `r` at bytes `8r..8r + 8` (the same layout as
//!   [`super::interleaved_q4k`]'s). The low four bits of registers 0 and 1 share 64 bytes
//!   (register 1's in the high nibbles), then those of 2 and 3: 1,024 bytes in all; the two
//!   high bits of all four share 64 bytes per chunk, register `p`'s at bits `2p`: 512 bytes;
//! - the scales in pairs, `16k + 2r + h` for group `2k + h`, ready both for `vpdpwssd` against
//!   the activations' group sums (the `-32` term) and, spread, for scaling each group's dot;
//! - the rows' `d` as f16.
//!
//! 1,680 bytes, as in the file. The kernel rebuilds each register of quants from its nibbles and
//! bits with a few shifts and masks, meets it with eight activation bytes broadcast from memory
//! (row `r`'s sums in lanes `2r` and `2r + 1`), and scales each group's sums in f32 (why: see
//! [`super::interleaved_q4k`]). (Stored a byte per quant, the layout was 30% larger than the
//! file: 41 MB more for the benchmark MoE's experts, which put its peak RSS over its bound, and
//! a fifth more bytes for every decode step to read.)

use super::interleaved_k::{Layout, R};
use super::kquant::{decode, KFormat, Q8KBlock};
use half::f16;

/// Bytes of the file's Q6_K block (one row, 256 weights).
const ROW_BLOCK: usize = 210;
/// Where the high bits of the quants start.
const QH: usize = 1024;
const SCALES: usize = QH + 512;
const D: usize = SCALES + 128;
/// Bytes per group and super-block.
const GROUP_BLOCK: usize = D + 16;

/// The layout's marker, for [`Grouped`](super::interleaved_k::Grouped).
#[derive(Debug, Clone)]
pub(crate) struct Q6K;

impl Layout for Q6K {
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

/// Where weight `e` (0..256) of row `r` lies in a group block: its low four bits in byte `lo`
/// from bit `lo_shift`, its high two in byte `hi` from bit `hi_shift`. Each byte holds quants of
/// one row only.
fn place(e: usize, r: usize) -> (usize, u32, usize, u32) {
    // Its place had every quant a byte of its own: chunk k, register p, byte b.
    let o = 64 * (e / 8) + 8 * r + e % 8;
    let (k, p, b) = (o / 256, o % 256 / 64, o % 64);
    (
        128 * k + 64 * (p / 2) + b,
        4 * (p % 2) as u32,
        QH + 64 * k + b,
        2 * p as u32,
    )
}

/// The quant `u` (0..64) of weight `e` of row `r`.
fn quant(group: &[u8], e: usize, r: usize) -> u8 {
    let (lo, lo_shift, hi, hi_shift) = place(e, r);
    (group[lo] >> lo_shift) & 0x0f | ((group[hi] >> hi_shift) & 0x03) << 4
}

/// Writes the file's Q6_K block of one row as row `r` of a group block.
fn pack(block: &[u8], r: usize, out: &mut [u8]) {
    let w = decode(KFormat::Q6K, block);
    // Row r's bytes written whole, each from the quants it holds (see `place`): in chunk k,
    // byte b = 8r + i of register p is weight 32k + 8p + i.
    for k in 0..8 {
        for i in 0..8 {
            let u = |p: usize| (w.q[32 * k + 8 * p + i] + 32) as u8;
            let b = 8 * r + i;
            out[128 * k + b] = u(0) & 0x0f | (u(1) & 0x0f) << 4;
            out[128 * k + 64 + b] = u(2) & 0x0f | (u(3) & 0x0f) << 4;
            out[QH + 64 * k + b] = u(0) >> 4 | (u(1) >> 4) << 2 | (u(2) >> 4) << 4 | (u(3) >> 4) << 6;
        }
    }
    for g in 0..16 {
        out[SCALES + 16 * (g / 2) + 2 * r + g % 2] = block[192 + g];
    }
    out[D + 2 * r..][..2].copy_from_slice(&block[208..210]);
}

/// Appends row `r` of a group block to `bytes` as the file's Q6_K block: four low bits of
/// weights `l` and `l + 64` share a byte of `ql` (and `l + 32`, `l + 96`), their two high bits a
/// byte of `qh`, in each half of 128 weights.
fn unpack(group: &[u8], r: usize, bytes: &mut Vec<u8>) {
    let u = |e: usize| quant(group, e, r);
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for h in 0..2 {
        for l in 0..32 {
            let e = 128 * h + l;
            ql[64 * h + l] = (u(e) & 0x0f) | (u(e + 64) & 0x0f) << 4;
            ql[64 * h + 32 + l] = (u(e + 32) & 0x0f) | (u(e + 96) & 0x0f) << 4;
            qh[32 * h + l] = (u(e) >> 4) | (u(e + 32) >> 4) << 2 | (u(e + 64) >> 4) << 4 | (u(e + 96) >> 4) << 6;
        }
    }
    bytes.extend_from_slice(&ql);
    bytes.extend_from_slice(&qh);
    bytes.extend((0..16).map(|g| group[SCALES + 16 * (g / 2) + 2 * r + g % 2]));
    bytes.extend_from_slice(&group[D + 2 * r..][..2]);
}

/// The reference: the same sums in plain Rust, from the layout's definition.
fn group_dots_scalar(group: &[u8], acts: &[Vec<Q8KBlock>], out: &mut [f32]) {
    for (t, act) in acts.iter().enumerate() {
        for r in 0..R {
            let mut sum = 0f32;
            for (b, blk) in group.chunks_exact(GROUP_BLOCK).enumerate() {
                let a = &act[b];
                let mut isum = 0i32;
                for g in 0..16 {
                    let dot: i32 = (16 * g..16 * g + 16)
                        .map(|e| (quant(blk, e, r) as i32 - 32) * a.qs[e] as i32)
                        .sum();
                    isum += dot * blk[SCALES + 16 * (g / 2) + 2 * r + g % 2] as i8 as i32;
                }
                sum += a.d * f16::from_le_bytes([blk[D + 2 * r], blk[D + 2 * r + 1]]).to_f32() * isum as f32;
            }
            out[t * R + r] = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q8KBlock, D, GROUP_BLOCK, QH, R, SCALES};
    use crate::kernels::interleaved_k::{fold, fold_pairs, lanes_of, pairs, prefetch, tiles_of_eight};
    use std::arch::x86_64::*;

    /// `N` activation rows against the group's eight rows, one super-block at a time: per chunk
    /// of two groups of 16 the quants are rebuilt from three loads (two of low nibbles, one of
    /// high bits) into four 512-bit registers and the two groups' scales spread to f32; each
    /// activation row takes four `vpdpbusd` and two conversions and FMAs; per super-block, four
    /// `vpdpwssd` of the scale pairs with the group sums give the `-32` of the stored quants.
    #[inline(always)]
    unsafe fn tile<const N: usize>(group: &[u8], acts: [&[Q8KBlock]; N], out: &mut [f32]) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read
        // (every act has a block for each of the group's; `qs` holds 256 bytes, `bsums` 32).
        unsafe {
            let mut acc = [_mm512_setzero_ps(); N];
            let (low, high) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
            for (b, blk) in group.chunks_exact(GROUP_BLOCK).enumerate() {
                prefetch(blk, N);
                let mut part = [_mm512_setzero_ps(); N];
                for k in 0..8 {
                    // The four registers of quants from their nibbles and high bits: register p's
                    // high bits sit at 2p, moved to 4 (16-bit shifts: the masks drop what crosses
                    // a byte). p = 0, 1 are the first group of 16, p = 2, 3 the second.
                    let l01 = _mm512_loadu_si512(blk[128 * k..][..64].as_ptr() as *const __m512i);
                    let l23 = _mm512_loadu_si512(blk[128 * k + 64..][..64].as_ptr() as *const __m512i);
                    let h = _mm512_loadu_si512(blk[QH + 64 * k..][..64].as_ptr() as *const __m512i);
                    let w = [
                        _mm512_or_si512(
                            _mm512_and_si512(l01, low),
                            _mm512_and_si512(_mm512_slli_epi16::<4>(h), high),
                        ),
                        _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16::<4>(l01), low),
                            _mm512_and_si512(_mm512_slli_epi16::<2>(h), high),
                        ),
                        _mm512_or_si512(_mm512_and_si512(l23, low), _mm512_and_si512(h, high)),
                        _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16::<4>(l23), low),
                            _mm512_and_si512(_mm512_srli_epi16::<2>(h), high),
                        ),
                    ];
                    // Lane 2r + h: row r's scale of group 2k + h; spread to both lanes of row r.
                    let sc = _mm512_cvtepi8_epi32(_mm_loadu_si128(blk[SCALES + 16 * k..].as_ptr() as *const __m128i));
                    let sc_lo = _mm512_cvtepi32_ps(_mm512_shuffle_epi32::<0b1010_0000>(sc));
                    let sc_hi = _mm512_cvtepi32_ps(_mm512_shuffle_epi32::<0b1111_0101>(sc));
                    for t in 0..N {
                        let qs = acts[t][b].qs.as_ptr().add(32 * k) as *const u8;
                        let s_lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], lanes_of(qs));
                        let s_hi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[2], lanes_of(qs.add(16)));
                        let s_lo = _mm512_dpbusd_epi32(s_lo, w[1], lanes_of(qs.add(8)));
                        let s_hi = _mm512_dpbusd_epi32(s_hi, w[3], lanes_of(qs.add(24)));
                        part[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s_lo), sc_lo, part[t]);
                        part[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s_hi), sc_hi, part[t]);
                    }
                }
                // Dword r + 8j of register q: (scale of group 4q + 2j, of group 4q + 2j + 1) of
                // row r as i16, against the activations' sums of those groups in lanes 8j..8j + 8.
                let mut sc = [_mm512_setzero_si512(); 4];
                for (q, sc) in sc.iter_mut().enumerate() {
                    *sc = _mm512_cvtepi8_epi16(_mm256_loadu_si256(blk[SCALES + 32 * q..].as_ptr() as *const __m256i));
                }
                let d = pairs(_mm256_cvtph_ps(_mm_loadu_si128(
                    blk[D..D + 16].as_ptr() as *const __m128i
                )));
                for t in 0..N {
                    let a = &acts[t][b];
                    let bsums = _mm512_castsi256_si512(_mm256_loadu_si256(a.bsums.as_ptr() as *const __m256i));
                    let mut corr = _mm512_setzero_si512();
                    for (q, sc) in sc.iter().enumerate() {
                        let (k0, k1) = (2 * q as i32, 2 * q as i32 + 1);
                        let idx = _mm512_setr_epi32(k0, k0, k0, k0, k0, k0, k0, k0, k1, k1, k1, k1, k1, k1, k1, k1);
                        corr = _mm512_dpwssd_epi32(corr, *sc, _mm512_permutexvar_epi32(idx, bsums));
                    }
                    // Lanes r and r + 8 of `corr` both belong to row r, as do lanes 2r and 2r + 1
                    // of `part`: 32 times each row's sum is taken out of `part`, half per lane.
                    let corr = pairs(_mm256_cvtepi32_ps(fold(corr)));
                    let v = _mm512_mul_ps(d, _mm512_fnmadd_ps(corr, _mm512_set1_ps(16.0), part[t]));
                    acc[t] = _mm512_fmadd_ps(v, _mm512_set1_ps(a.d), acc[t]);
                }
            }
            for t in 0..N {
                _mm256_storeu_ps(out[t * R..][..R].as_mut_ptr(), fold_pairs(acc[t]));
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX512-VNNI, -BW and -VL with AVX2, FMA and F16C; every act has a
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
        let mut state = 0x6a09_e667_u64;
        // 11 rows: a full group and a partial one.
        let (rows, blocks) = (11, 2);
        let mut src = Vec::new();
        for _ in 0..rows * blocks {
            let mut b: Vec<u8> = (0..ROW_BLOCK).map(|_| xorshift(&mut state) as u8).collect();
            let d = f16::from_f32(((xorshift(&mut state) % 1000) as f32 + 1.0) / 100000.0);
            b[208..210].copy_from_slice(&d.to_le_bytes());
            src.extend(b);
        }
        check_layout::<Q6K>(KFormat::Q6K, &src, rows, blocks);
    }
}
