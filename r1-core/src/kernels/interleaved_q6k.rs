//! Q6_K weights repacked at load into groups of eight rows (see [`super::interleaved`]), on CPUs
//! with AVX-512 VNNI: the LM head of most Q4_K_M files, and some of their `ffn_down` matrices.
//!
//! A Q6_K super-block holds 256 weights of one row as 6-bit quants `q` (stored as `q + 32`) in
//! sixteen groups of 16, each group with a signed 8-bit scale: weight = `d · sc_g · (u - 32)`.
//! Per group of eight rows and per super-block the layout is:
//!
//! - the quants (`u`, 0..64) in the order the kernel takes them: chunk `k < 8` (weights
//!   `32k..32k + 32`), then `j < 8`, four weights of each row, weight `32k + 4j + i` of row `r`
//!   at place `4r + i` of run `j`; a chunk is four 64-byte registers `p`, runs `2p` and `2p + 1`
//!   side by side. The low four bits of registers 0 and 1 share 64 bytes (register 1's in the
//!   high nibbles), then those of 2 and 3: 1,024 bytes in all; the two high bits of all four
//!   share 64 bytes per chunk, register `p`'s at bits `2p`: 512 bytes;
//! - the scales in pairs, `16k + 2r + h` for group `2k + h`, ready both for `vpmaddwd` against the
//!   activations' group sums (the `-32` term) and, split, for scaling each group's dot;
//! - the rows' `d` as f16.
//!
//! 1,680 bytes, as in the file. The kernel rebuilds each register of quants from its nibbles and
//! bits with a few shifts and masks. (Stored a byte per quant, the layout was 30% larger than the
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
    let o = 32 * (e / 4) + 4 * r + e % 4;
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
    // byte b = 32h + 4r + i of register p is weight 32k + 8p + 4h + i.
    for k in 0..8 {
        for h in 0..2 {
            for i in 0..4 {
                let u = |p: usize| (w.q[32 * k + 8 * p + 4 * h + i] + 32) as u8;
                let b = 32 * h + 4 * r + i;
                out[128 * k + b] = u(0) & 0x0f | (u(1) & 0x0f) << 4;
                out[128 * k + 64 + b] = u(2) & 0x0f | (u(3) & 0x0f) << 4;
                out[QH + 64 * k + b] = u(0) >> 4 | (u(1) >> 4) << 2 | (u(2) >> 4) << 4 | (u(3) >> 4) << 6;
            }
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
    use crate::kernels::interleaved_k::{fold, prefetch, spread, tiles_of_four, twice};
    use std::arch::x86_64::*;

    /// `N` activation rows against the group's eight rows, one super-block at a time: per chunk
    /// of two groups of 16 the quants are rebuilt from three loads (two of low nibbles, one of
    /// high bits) into four 512-bit registers; each activation row takes four `vpdpbusd`, two
    /// integer scalings, and one `vpmaddwd` of the chunk's scale pairs with its group sums (the
    /// `-32` of the stored quants, taken out in integers at the end).
    #[inline(always)]
    unsafe fn tile<const N: usize>(group: &[u8], acts: [&[Q8KBlock]; N], out: &mut [f32]) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); N];
            for (b, blk) in group.chunks_exact(GROUP_BLOCK).enumerate() {
                prefetch(blk, N);
                let mut wide = [_mm512_setzero_si512(); N];
                let mut corr = [_mm256_setzero_si256(); N];
                // A loop, not `array::from_fn`: see `interleaved_k::spread`.
                let mut bsums = [_mm256_setzero_si256(); N];
                for (s, a) in bsums.iter_mut().zip(acts) {
                    *s = _mm256_loadu_si256(a[b].bsums.as_ptr() as *const __m256i);
                }
                for k in 0..8 {
                    // Register p: the layout's runs j = 2p, 2p + 1 side by side (see `spread`);
                    // p = 0, 1 are the first group of 16, p = 2, 3 the second.
                    // The four registers of quants from their nibbles and high bits: register p's
                    // high bits sit at 2p, moved to 4 (16-bit shifts: the masks drop what crosses
                    // a byte).
                    let l01 = _mm512_loadu_si512(blk[128 * k..][..64].as_ptr() as *const __m512i);
                    let l23 = _mm512_loadu_si512(blk[128 * k + 64..][..64].as_ptr() as *const __m512i);
                    let h = _mm512_loadu_si512(blk[QH + 64 * k..][..64].as_ptr() as *const __m512i);
                    let (low, high) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
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
                    // Dword r: (scale of group 2k, scale of group 2k + 1) of row r, as i16.
                    let pairs =
                        _mm256_cvtepi8_epi16(_mm_loadu_si128(blk[SCALES + 16 * k..].as_ptr() as *const __m128i));
                    let sc_lo = twice(_mm256_srai_epi32(_mm256_slli_epi32(pairs, 16), 16));
                    let sc_hi = twice(_mm256_srai_epi32(pairs, 16));
                    for t in 0..N {
                        let qs = &acts[t][b].qs;
                        let a = spread(qs, 32 * k);
                        let s_lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], a[0]);
                        let s_hi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[2], a[2]);
                        let s_lo = _mm512_dpbusd_epi32(s_lo, w[1], a[1]);
                        let s_hi = _mm512_dpbusd_epi32(s_hi, w[3], a[3]);
                        let scaled = _mm512_add_epi32(_mm512_mullo_epi32(s_lo, sc_lo), _mm512_mullo_epi32(s_hi, sc_hi));
                        wide[t] = _mm512_add_epi32(wide[t], scaled);
                        // The activations' sums of groups 2k and 2k + 1, as an i16 pair in every dword.
                        let group_sums = _mm256_permutevar8x32_epi32(bsums[t], _mm256_set1_epi32(k as i32));
                        corr[t] = _mm256_add_epi32(corr[t], _mm256_madd_epi16(pairs, group_sums));
                    }
                }
                let d = _mm256_cvtph_ps(_mm_loadu_si128(blk[D..D + 16].as_ptr() as *const __m128i));
                for t in 0..N {
                    let total = _mm256_sub_epi32(fold(wide[t]), _mm256_slli_epi32(corr[t], 5));
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(acts[t][b].d));
                    acc[t] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(total), acc[t]);
                }
            }
            for t in 0..N {
                _mm256_storeu_ps(out[t * R..].as_mut_ptr(), acc[t]);
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
