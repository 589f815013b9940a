//! Weights repacked at load so that eight rows are computed together (ggml's legacy block
//! formats Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0, on CPUs with AVX-512 VNNI).
//!
//! Computed row by row, each 32-weight block costs a conversion to f32 and a scaling FMA per
//! token, which is most of the work: the integer dot itself is one instruction. Here the blocks
//! of eight consecutive rows are stored side by side, eight quants of each row in turn, so a
//! 512-bit register holds eight quants of all eight rows (row `r` in lanes `2r` and `2r + 1`):
//! `vpdpbusd` against those eight activation quants, broadcast from memory to every 64-bit
//! lane, gives eight rows' partial dots at once, and the scaling is done once for the eight rows
//! (their scales sit in one register). The layout, per group of eight rows and per block
//! (ik_llama.cpp's `_R8` idea, written from that description):
//!
//! - Q4_0 / Q4_1: 128 bytes of nibbles; byte `64k + 8r + i` holds quant `8k + i` of row `r` in its
//!   low nibble and quant `16 + 8k + i` in its high nibble (`k < 2`): the row-major block's byte
//!   `8k + i`; then the eight rows' `d` as f16, and for Q4_1 their `m`.
//! - Q5_0 / Q5_1: the same nibbles, then the eight rows' 32 high bits as little-endian `u32`s in
//!   the order of rows 0, 1, 4, 5, 2, 3, 6, 7 (so that one byte shuffle within each 128-bit lane
//!   of the register reaches them; see `x86::high_bits`), then `d` (and `m`).
//! - Q8_0: 256 bytes; byte `64p + 8r + i` is quant `8p + i` of row `r`, plus 128 (`p < 4`): the
//!   instruction multiplies unsigned by signed bytes. Then the eight `d` as f16.
//!
//! The stored quants are unsigned (`u`), so a weight is `d * (u - offset)` (offset 8 for Q4_0,
//! 128 for Q8_0) or `d * u + m` (Q4_1). The offset is taken out in integers, exactly: `Σ u·a -
//! offset · Σ a`, with each activation block's quant sum computed once (offset 16 for Q5_0). Rows past the last
//! multiple of eight are zero rows in the last group. The memory is the file's: the same quants
//! and f16 scales, reordered.

use super::quant::{quantize_q8, quantize_rows, Format, Q8Block, QK};
use half::f16;
use std::ops::Range;
use std::sync::Mutex;

/// Rows per group.
pub(crate) const R: usize = 8;

/// `[t, rows]` from `dots(g, out)`, which writes the rows of groups `g..g + span` (those that
/// exist) for every token, `out[(k * t + tok) * 8 + r]` for the `k`-th of them: the spans are
/// split over the thread pool and their rows put in place (rows past `rows` in the last group
/// dropped). Every interleaved layout's matmul.
pub(crate) fn over_groups(rows: usize, t: usize, span: usize, dots: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let groups = rows.div_ceil(R);
    let y = Mutex::new(vec![0f32; t * rows]);
    candle_core::utils::barrier_pool().execute_chunked(groups.div_ceil(span), |spans: Range<usize>| {
        let (first, last) = (spans.start * span, (spans.end * span).min(groups));
        let n = last - first;
        let mut part = vec![0f32; t * R * n];
        let mut out = vec![0f32; span * t * R];
        for g in spans.map(|s| s * span) {
            dots(g, &mut out);
            for k in 0..span.min(groups - g) {
                for tok in 0..t {
                    part[(tok * n + g + k - first) * R..][..R].copy_from_slice(&out[(k * t + tok) * R..][..R]);
                }
            }
        }
        // A poisoned lock only means another task panicked; its rows are lost either way.
        let mut y = y.lock().unwrap_or_else(|p| p.into_inner());
        let end = (last * R).min(rows);
        for tok in 0..t {
            y[tok * rows + first * R..tok * rows + end].copy_from_slice(&part[tok * n * R..][..end - first * R]);
        }
    });
    y.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// A `[rows, cols]` matrix in the interleaved layout.
#[derive(Debug, Clone)]
pub(crate) struct Interleaved {
    format: Format,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl Interleaved {
    /// Whether `format` has an interleaved form.
    pub(crate) fn supports(format: Format) -> bool {
        matches!(
            format,
            Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 | Format::Q8_0
        )
    }

    /// Quant bytes per block of a group (eight rows).
    fn quant_bytes(format: Format) -> usize {
        match format {
            Format::Q8_0 => R * QK,
            Format::Q5_0 | Format::Q5_1 => R * QK / 2 + 4 * R,
            _ => R * QK / 2,
        }
    }

    /// Bytes per block of a group: quants, then `d` (and `m`) of the eight rows as f16.
    fn group_block_bytes(format: Format) -> usize {
        Self::quant_bytes(format) + if format.has_offset() { 4 * R } else { 2 * R }
    }

    fn blocks(&self) -> usize {
        self.cols / QK
    }

    /// Repacks row-major blocks (`rows` rows of `cols / 32` blocks); `None` for a format
    /// without an interleaved form.
    pub(crate) fn repack(format: Format, rows: usize, cols: usize, src: &[u8]) -> Option<Self> {
        if !Self::supports(format) || !cols.is_multiple_of(QK) {
            return None;
        }
        let (blocks, bb) = (cols / QK, format.block_bytes());
        if src.len() != rows * blocks * bb {
            return None;
        }
        let gbb = Self::group_block_bytes(format);
        let groups = rows.div_ceil(R);
        let mut data = vec![0u8; groups * blocks * gbb];
        for g in 0..groups {
            for b in 0..blocks {
                let out = &mut data[(g * blocks + b) * gbb..][..gbb];
                for r in 0..R {
                    let row = g * R + r;
                    if row >= rows {
                        continue; // a zero row: zero quants and zero scales
                    }
                    let block = &src[(row * blocks + b) * bb..][..bb];
                    pack_block(format, block, r, out);
                }
            }
        }
        Some(Interleaved {
            format,
            rows,
            cols,
            data,
        })
    }

    /// Keeps room for `rows` rows in all (a matrix packed a piece at a time).
    pub(crate) fn reserve_rows(&mut self, rows: usize) {
        let bytes = rows.div_ceil(R) * self.blocks() * Self::group_block_bytes(self.format);
        self.data.reserve_exact(bytes.saturating_sub(self.data.len()));
    }

    /// The rows of `next` after these (a matrix packed a piece at a time): `None` unless
    /// these rows fill whole groups and `next` has the same format and columns.
    pub(crate) fn append(&mut self, next: Interleaved) -> Option<()> {
        if !self.rows.is_multiple_of(R) || next.format != self.format || next.cols != self.cols {
            return None;
        }
        self.rows += next.rows;
        self.data.extend_from_slice(&next.data);
        Some(())
    }

    /// Row `r` as row-major blocks, as the file stored it.
    pub(crate) fn row_bytes(&self, r: usize) -> Vec<u8> {
        let (g, k, gbb) = (r / R, r % R, Self::group_block_bytes(self.format));
        let mut bytes = Vec::with_capacity(self.blocks() * self.format.block_bytes());
        for b in 0..self.blocks() {
            unpack_block(
                self.format,
                &self.data[(g * self.blocks() + b) * gbb..][..gbb],
                k,
                &mut bytes,
            );
        }
        bytes
    }

    /// The activation rows of `x` (`[t, cols]`), quantized as the kernel reads them.
    pub(crate) fn quantize(&self, x: &[f32]) -> Vec<Vec<Q8Block>> {
        quantize_rows(x, self.cols, quantize_q8)
    }

    /// `x [t, cols]` → `[t, rows]`, pairs of groups of eight rows split over the thread pool.
    pub(crate) fn matmul(&self, x: &[f32], t: usize) -> Vec<f32> {
        let acts = self.quantize(x);
        let groups = self.rows.div_ceil(R);
        over_groups(self.rows, t, 2, |g, out| {
            let (a, b) = out.split_at_mut(t * R);
            if g + 1 < groups {
                self.pair_dots(g, self, g + 1, &acts, a, b);
            } else {
                self.group_dots(g, &acts, a);
            }
        })
    }

    fn group(&self, g: usize) -> &[u8] {
        let n = self.blocks() * Self::group_block_bytes(self.format);
        &self.data[g * n..][..n]
    }

    /// The eight rows of group `g` against every activation row: `out[t * 8 + r]` (rows past
    /// the matrix's last are zero).
    pub(crate) fn group_dots(&self, g: usize, acts: &[Vec<Q8Block>], out: &mut [f32]) {
        self.dots(&[self.group(g)], acts, &mut [out]);
    }

    /// [`group_dots`](Self::group_dots) of group `g` into `out` and of `other`'s group `h`
    /// into `other_out`, at once where the two matrices have the same format and width: sixteen
    /// rows against tiles of four tokens, which beat eight rows against tiles of eight (one core:
    /// Q5_0 at 8 tokens 2.95 against 2.63 G block-dots/s, Q8_0 at 128 tokens 2.81–2.98 against
    /// 2.46–2.49; at one token eight rows alone were 5–10% faster).
    pub(crate) fn pair_dots(
        &self,
        g: usize,
        other: &Interleaved,
        h: usize,
        acts: &[Vec<Q8Block>],
        out: &mut [f32],
        other_out: &mut [f32],
    ) {
        if other.format == self.format && other.cols == self.cols {
            self.dots(&[self.group(g), other.group(h)], acts, &mut [out, other_out]);
        } else {
            self.group_dots(g, acts, out);
            other.group_dots(h, acts, other_out);
        }
    }

    /// Every activation row against `groups` (blocks of this matrix's format and width).
    fn dots(&self, groups: &[&[u8]], acts: &[Vec<Q8Block>], outs: &mut [&mut [f32]]) {
        if acts.iter().any(|a| a.len() < self.blocks()) || outs.iter().any(|o| o.len() < R * acts.len()) {
            return outs.iter_mut().for_each(|o| o.iter_mut().for_each(|v| *v = f32::NAN));
        }
        #[cfg(target_arch = "x86_64")]
        if super::cpu::level() >= super::cpu::Level::Avx512 {
            // SAFETY: `Level::Avx512` includes AVX512-VNNI/VL/BW, AVX2, FMA and F16C; the
            // groups are this matrix's (of one length), every activation row has a block for
            // each of their blocks, and each of `outs` room for eight rows per token (both
            // checked above).
            return unsafe { x86::group_dots(self.format, groups, acts, outs) };
        }
        for (group, out) in groups.iter().zip(outs.iter_mut()) {
            group_dots_scalar(self.format, group, acts, out);
        }
    }
}

/// The offset the stored unsigned quants carry (see the module comment).
fn offset(format: Format) -> i32 {
    match format {
        Format::Q4_0 => 8,
        Format::Q5_0 => 16,
        Format::Q8_0 => 128,
        _ => 0,
    }
}

/// Writes row-major `block` as row `r` of an interleaved group block.
fn pack_block(format: Format, block: &[u8], r: usize, out: &mut [u8]) {
    let qb = Interleaved::quant_bytes(format);
    match format {
        Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 => {
            let (qh_at, qs_at) = nibble_offsets(format);
            if let Some(h) = qh_at {
                out[R * QK / 2 + 4 * high_slot(r)..][..4].copy_from_slice(&block[h..h + 4]);
            }
            let qs = &block[qs_at..];
            // Source byte j holds quant j (low) and quant 16 + j (high): exactly the pair the
            // layout keeps together, so bytes move as they are.
            for k in 0..2 {
                out[64 * k + 8 * r..][..8].copy_from_slice(&qs[8 * k..8 * k + 8]);
            }
        }
        _ => {
            for p in 0..4 {
                for i in 0..8 {
                    out[64 * p + 8 * r + i] = (block[2 + 8 * p + i] as i8 as i32 + 128) as u8;
                }
            }
        }
    }
    out[qb + 2 * r..][..2].copy_from_slice(&block[0..2]);
    if format.has_offset() {
        out[qb + 2 * R + 2 * r..][..2].copy_from_slice(&block[2..4]);
    }
}

/// Where row `r`'s Q5 high bits lie among the eight rows' (see the module comment).
fn high_slot(r: usize) -> usize {
    [0, 1, 4, 5, 2, 3, 6, 7][r]
}

/// Where a row-major block keeps its high bits (Q5) and its quants.
fn nibble_offsets(format: Format) -> (Option<usize>, usize) {
    match format {
        Format::Q4_0 | Format::Q8_0 => (None, 2),
        Format::Q4_1 => (None, 4),
        Format::Q5_0 => (Some(2), 6),
        Format::Q5_1 => (Some(4), 8),
    }
}

/// Appends row `r` of an interleaved group block to `bytes` as a row-major block.
fn unpack_block(format: Format, block: &[u8], r: usize, bytes: &mut Vec<u8>) {
    let qb = Interleaved::quant_bytes(format);
    bytes.extend_from_slice(&block[qb + 2 * r..][..2]);
    if format.has_offset() {
        bytes.extend_from_slice(&block[qb + 2 * R + 2 * r..][..2]);
    }
    if nibble_offsets(format).0.is_some() {
        bytes.extend_from_slice(&block[R * QK / 2 + 4 * high_slot(r)..][..4]);
    }
    match format {
        Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q5_1 => {
            for k in 0..2 {
                bytes.extend_from_slice(&block[64 * k + 8 * r..][..8]);
            }
        }
        _ => {
            for p in 0..4 {
                bytes.extend(
                    block[64 * p + 8 * r..][..8]
                        .iter()
                        .map(|&u| (u as i32 - 128) as i8 as u8),
                );
            }
        }
    }
}

/// The stored quant `k` (0..32) of row `r` of a group block, unsigned.
fn quant(format: Format, block: &[u8], r: usize, k: usize) -> i32 {
    match format {
        Format::Q8_0 => block[64 * (k / 8) + 8 * r + k % 8] as i32,
        _ => {
            let byte = block[64 * ((k % 16) / 8) + 8 * r + k % 8];
            let nibble = (if k < 16 { byte & 0x0f } else { byte >> 4 }) as i32;
            let high = match nibble_offsets(format).0 {
                Some(_) => {
                    let qh = &block[R * QK / 2 + 4 * high_slot(r)..][..4];
                    ((u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]) >> k) & 1) as i32
                }
                None => 0,
            };
            nibble | high << 4
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The reference: the same sums in plain Rust, straight from the layout's definition.
fn group_dots_scalar(format: Format, group: &[u8], acts: &[Vec<Q8Block>], out: &mut [f32]) {
    let (gbb, qb) = (Interleaved::group_block_bytes(format), Interleaved::quant_bytes(format));
    for (t, act) in acts.iter().enumerate() {
        for r in 0..R {
            let mut sum = 0f32;
            for (b, block) in group.chunks_exact(gbb).enumerate() {
                let a = &act[b];
                let isum: i32 = (0..QK).map(|k| quant(format, block, r, k) * a.qs[k] as i32).sum();
                let d = f16_at(block, qb + 2 * r);
                sum += if format.has_offset() {
                    d * a.d * isum as f32 + f16_at(block, qb + 2 * R + 2 * r) * a.s
                } else {
                    d * a.d * (isum - offset(format) * a.sum) as f32
                };
            }
            out[t * R + r] = sum;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{offset, Interleaved, R};
    use crate::kernels::cpu::tiles;
    use crate::kernels::interleaved_k::{fold_pairs, lanes_of, pairs, prefetch};
    use crate::kernels::quant::{Format, Q8Block, QK};
    use std::arch::x86_64::*;

    /// The eight rows' f16 scales at `at` as eight f32 lanes (one per row).
    #[inline(always)]
    unsafe fn scales(block: &[u8], at: usize) -> __m256 {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(block[at..at + 16].as_ptr() as *const __m128i)) }
    }

    /// Q5's fifth bits for register `p` (quants `8p..8p + 8` of each row, see `tile`) added to
    /// its quants `w`: `qh` holds the eight rows' 32 high bits as dwords in the layout's order
    /// (rows 0, 1, 4, 5, 2, 3, 6, 7), in both 256-bit halves. The 128-bit lane `L` of the
    /// register holds rows `2L` and `2L + 1`, whose dwords that order puts in the same lane:
    /// one byte shuffle copies byte `p` of each row's dword to its eight bytes, and byte `i`
    /// tests its bit `i`.
    #[inline(always)]
    unsafe fn with_high_bits(w: __m512i, qh: __m512i, p: usize) -> __m512i {
        // SAFETY: the caller has AVX-512 F and BW.
        unsafe {
            // Control byte 16L + 8j + i: the lane's dword j (L < 2) or 2 + j (L >= 2), byte p.
            let mut pick = [0u8; 64];
            for (n, c) in pick.iter_mut().enumerate() {
                let (lane, j) = (n / 16, n % 16 / 8);
                *c = (4 * (j + if lane >= 2 { 2 } else { 0 }) + p) as u8;
            }
            let bytes = _mm512_shuffle_epi8(qh, _mm512_loadu_si512(pick.as_ptr() as *const __m512i));
            let bit = _mm512_set1_epi64(0x8040_2010_0804_0201u64 as i64);
            _mm512_mask_add_epi8(w, _mm512_test_epi8_mask(bytes, bit), w, _mm512_set1_epi8(0x10))
        }
    }

    /// `N` activation rows against the eight rows of each of `G` groups (of one format and
    /// width), one block at a time. Each group's block is unpacked once into four registers
    /// (register `p`: quants `8p..8p + 8` of the eight rows); each activation row then takes
    /// four `vpdpbusd` per group against its quants `8p..8p + 8` broadcast from memory, one
    /// conversion, one multiplication and one FMA for all eight weight rows. Lanes `2r` and
    /// `2r + 1` hold halves of row `r`'s sums until the end.
    ///
    /// The weights' offset (`Σ u·a - offset · Σ a`) is the dot chain's starting value, half in
    /// each lane of a pair: every offset is even. Q4_1 / Q5_1's `m · s` term is a second FMA
    /// into the same sum, from `m` in the pair's first lane only.
    #[inline(always)]
    unsafe fn tile<const N: usize, const G: usize>(
        format: Format,
        groups: [&[u8]; G],
        acts: [&[Q8Block]; N],
        outs: [&mut [f32]; G],
    ) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read
        // (every act's `qs` holds 32 bytes).
        unsafe {
            let (gbb, qb) = (Interleaved::group_block_bytes(format), Interleaved::quant_bytes(format));
            let half_offset = offset(format) / 2;
            let mut acc = [[_mm512_setzero_ps(); N]; G];
            for b in 0..groups[0].len() / gbb {
                let mut w = [[_mm512_setzero_si512(); 4]; G];
                let mut d = [_mm512_setzero_ps(); G];
                let mut m = [_mm512_setzero_ps(); G];
                for g in 0..G {
                    let block = &groups[g][b * gbb..][..gbb];
                    prefetch(block, N);
                    w[g] = weights(format, block);
                    d[g] = pairs(scales(block, qb));
                    if format.has_offset() {
                        m[g] = _mm512_maskz_mov_ps(0x5555, pairs(scales(block, qb + 2 * R)));
                    }
                }
                for t in 0..N {
                    let a = &acts[t][b];
                    let qs = a.qs.as_ptr() as *const u8;
                    let start = _mm512_set1_epi32(-half_offset * a.sum);
                    let ad = _mm512_set1_ps(a.d);
                    for g in 0..G {
                        let mut isum = start;
                        for (p, w) in w[g].iter().enumerate() {
                            isum = _mm512_dpbusd_epi32(isum, *w, lanes_of(qs.add(8 * p)));
                        }
                        let scale = _mm512_mul_ps(d[g], ad);
                        acc[g][t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(isum), acc[g][t]);
                        if format.has_offset() {
                            acc[g][t] = _mm512_fmadd_ps(m[g], _mm512_set1_ps(a.s), acc[g][t]);
                        }
                    }
                }
            }
            for (g, out) in outs.into_iter().enumerate() {
                for t in 0..N {
                    _mm256_storeu_ps(out[t * R..][..R].as_mut_ptr(), fold_pairs(acc[g][t]));
                }
            }
        }
    }

    /// One group block's quants as four registers of unsigned bytes, register `p` holding
    /// quants `8p..8p + 8` of the eight rows.
    #[inline(always)]
    unsafe fn weights(format: Format, block: &[u8]) -> [__m512i; 4] {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            // A function, not a closure: a closure's body is compiled without the caller's
            // target features (see `interleaved_k`'s module comment).
            /// # Safety
            /// The CPU has AVX-512 F (inline it only into functions that enable it).
            #[inline(always)]
            unsafe fn load(block: &[u8], at: usize) -> __m512i {
                // SAFETY: the caller's CPU has AVX-512 F; the slice is checked.
                unsafe { _mm512_loadu_si512(block[at..at + 64].as_ptr() as *const __m512i) }
            }
            let mut w = [_mm512_setzero_si512(); 4];
            if format == Format::Q8_0 {
                for (p, w) in w.iter_mut().enumerate() {
                    *w = load(block, 64 * p);
                }
                return w;
            }
            // Low nibbles: quants 0..16 (registers 0, 1); high nibbles: 16..32 (2, 3).
            let low = _mm512_set1_epi8(0x0f);
            for k in 0..2 {
                let v = load(block, 64 * k);
                w[k] = _mm512_and_si512(v, low);
                w[2 + k] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            }
            if matches!(format, Format::Q5_0 | Format::Q5_1) {
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(block[R * QK / 2..].as_ptr() as *const __m256i));
                for (p, w) in w.iter_mut().enumerate() {
                    *w = with_high_bits(*w, qh, p);
                }
            }
            w
        }
    }

    /// Every activation row against the groups `groups` (one or two, of `format`): for group
    /// `k`, `outs[k][t * 8 + r]`.
    ///
    /// # Safety
    /// The CPU must support AVX512-VNNI, AVX512-BW and AVX512-VL with AVX2, FMA and F16C; the
    /// groups have the same length; every act has a block for each of their blocks; each of
    /// `outs` holds `8 * acts.len()` values.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn group_dots(format: Format, groups: &[&[u8]], acts: &[Vec<Q8Block>], outs: &mut [&mut [f32]]) {
        // SAFETY: this function's contract is what the operations below need: the caller has
        // checked the CPU for its target features, and passes slices as long as its loads read.
        unsafe {
            // Tiles of up to 8 rows for one group, 4 for two (their sums fill the registers).
            let widest = if groups.len() == 2 { 4 } else { 8 };
            for r in tiles(acts.len(), widest) {
                let a = &acts[r.clone()];
                let at = r.start * R..r.end * R;
                // One copy of the tile per format, size and group count, so the format's
                // branches fold away.
                macro_rules! tiled {
                    ($f:expr) => {
                        match (groups, &mut *outs) {
                            ([g0, g1], [o0, o1]) => {
                                let gs = [*g0, *g1];
                                let os = [&mut o0[at.clone()], &mut o1[at.clone()]];
                                match a.len() {
                                    4 => tile::<4, 2>($f, gs, std::array::from_fn(|k| a[k].as_slice()), os),
                                    2 => tile::<2, 2>($f, gs, std::array::from_fn(|k| a[k].as_slice()), os),
                                    _ => tile::<1, 2>($f, gs, [a[0].as_slice()], os),
                                }
                            }
                            ([g0], [o0]) => {
                                let (gs, os) = ([*g0], [&mut o0[at.clone()]]);
                                match a.len() {
                                    8 => tile::<8, 1>($f, gs, std::array::from_fn(|k| a[k].as_slice()), os),
                                    4 => tile::<4, 1>($f, gs, std::array::from_fn(|k| a[k].as_slice()), os),
                                    2 => tile::<2, 1>($f, gs, std::array::from_fn(|k| a[k].as_slice()), os),
                                    _ => tile::<1, 1>($f, gs, [a[0].as_slice()], os),
                                }
                            }
                            _ => {}
                        }
                    };
                }
                match format {
                    Format::Q4_0 => tiled!(Format::Q4_0),
                    Format::Q4_1 => tiled!(Format::Q4_1),
                    Format::Q5_0 => tiled!(Format::Q5_0),
                    Format::Q5_1 => tiled!(Format::Q5_1),
                    Format::Q8_0 => tiled!(Format::Q8_0),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::quant::{dequantize_row as dequantize_row_major, dot_scalar};
    use super::*;

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// `rows` row-major blocks of random quants with moderate f16 scales (and offsets).
    fn random_matrix(format: Format, rows: usize, blocks: usize, state: &mut u64) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rows * blocks {
            let mut b: Vec<u8> = (0..format.block_bytes()).map(|_| xorshift(state) as u8).collect();
            let d = f16::from_f32(((xorshift(state) % 1000) as f32 - 500.0) / 10000.0);
            b[..2].copy_from_slice(&d.to_le_bytes());
            if format.has_offset() {
                let m = f16::from_f32(((xorshift(state) % 1000) as f32 - 500.0) / 5000.0);
                b[2..4].copy_from_slice(&m.to_le_bytes());
            }
            out.extend(b);
        }
        out
    }

    #[test]
    fn repacked_rows_dequantize_as_before_and_dot_as_the_row_kernels() {
        let mut state = 0x5eed_1234_u64;
        for format in [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q5_1, Format::Q8_0] {
            // 19 rows: two full groups and a partial one; 23 tokens: tiles of 8, 8, 4, 2, 1; 15
            // and 1: few enough for the 512-bit tile where the CPU has it.
            let (rows, blocks) = (19, 3);
            let src = random_matrix(format, rows, blocks, &mut state);
            let m = Interleaved::repack(format, rows, blocks * QK, &src).unwrap();
            let row_bytes = blocks * format.block_bytes();
            let (mut got, mut want) = (Vec::new(), Vec::new());
            for r in 0..rows {
                dequantize_row_major(format, &m.row_bytes(r), &mut got);
                dequantize_row_major(format, &src[r * row_bytes..(r + 1) * row_bytes], &mut want);
                assert_eq!(got, want, "{format:?} row {r}");
            }
            for t in [23, 15, 1] {
                let x: Vec<f32> = (0..t * blocks * QK)
                    .map(|_| ((xorshift(&mut state) % 2001) as f32 - 1000.0) / 300.0)
                    .collect();
                let y = m.matmul(&x, t);
                let acts = m.quantize(&x);
                for (tok, act) in acts.iter().enumerate() {
                    for r in 0..rows {
                        let w = dot_scalar(format, &src[r * row_bytes..(r + 1) * row_bytes], act);
                        let g = y[tok * rows + r];
                        assert!(
                            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                            "{format:?} token {tok} row {r}: {g} vs {w}"
                        );
                    }
                }
                // The plain-Rust form of the layout gives the same sums.
                let gbb = Interleaved::group_block_bytes(format);
                let mut scalar = vec![0f32; t * R];
                group_dots_scalar(format, &m.data[..blocks * gbb], &acts, &mut scalar);
                for tok in 0..t {
                    for r in 0..R {
                        let g = y[tok * rows + r];
                        assert!(
                            (g - scalar[tok * R + r]).abs() <= 1e-5 * g.abs().max(1.0),
                            "{format:?} scalar form"
                        );
                    }
                }
            }
        }
        assert!(Interleaved::repack(Format::Q5_0, 8, 64, &[0; 8 * 22]).is_none());
    }
}
