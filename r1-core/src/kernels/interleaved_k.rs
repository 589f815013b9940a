//! What the interleaved k-quant layouts share ([`super::interleaved_q4k`],
//! [`super::interleaved_q6k`]): groups of eight rows, one group block per super-block of 256
//! weights, activations in Q8_K, groups split over the thread pool. A layout says how one
//! row's block is packed into a group block and back, and how a group is dotted.
//!
//! The kernels fill arrays of registers in loops, never with `std::array::from_fn(|p| ..)`: an
//! intrinsic inside a closure is compiled without the calling kernel's target features, so it
//! may stay a call. It did: `_mm512_permutexvar_epi32` became one, and SmolLM2 decoded 2.4x and
//! prefilled 3.8x slower.

use super::interleaved::over_groups;
pub(crate) use super::interleaved::R;
use super::kquant::{quantize_q8k, Q8KBlock, QK_K};
use super::quant::quantize_rows;
use std::marker::PhantomData;

/// `$tile::<N>(group, acts, out)` over `$acts` in tiles of eight, four, two and one rows: the
/// dispatch both k-quant layouts' VNNI kernels run (their tiles are const-generic over `N`).
/// Eight rows share each register of unpacked weights and scales among more activation rows
/// than four did (Q4_K at 128 tokens: 3.05 -> 3.2 G block-dots/s on one core).
#[cfg(target_arch = "x86_64")]
macro_rules! tiles_of_eight {
    ($tile:ident, $group:expr, $acts:expr, $out:expr) => {
        for r in $crate::kernels::cpu::tiles($acts.len(), 8) {
            let (a, o) = (&$acts[r.clone()], &mut $out[r.start * R..r.end * R]);
            match a.len() {
                8 => $tile::<8>($group, std::array::from_fn(|k| a[k].as_slice()), o),
                4 => $tile::<4>($group, std::array::from_fn(|k| a[k].as_slice()), o),
                2 => $tile::<2>($group, std::array::from_fn(|k| a[k].as_slice()), o),
                _ => $tile::<1>($group, [a[0].as_slice()], o),
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use tiles_of_eight;

/// The eight bytes at `p` in every 64-bit lane: one `vpbroadcastq` from memory, which takes a
/// load port, not an arithmetic one. Against the k-quant layouts' registers (eight consecutive
/// quants of each of eight rows, row `r` in lanes `2r` and `2r + 1`) these are the activations
/// every lane pair meets.
///
/// # Safety
/// The CPU has AVX-512 F; `p` points at eight readable bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn lanes_of(p: *const u8) -> std::arch::x86_64::__m512i {
    // SAFETY: the caller's contract.
    unsafe { std::arch::x86_64::_mm512_set1_epi64(std::ptr::read_unaligned(p as *const i64)) }
}

/// Eight values, one per row, each in its row's lane pair `2r, 2r + 1`.
///
/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn pairs(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's CPU has AVX-512 F (this function's contract).
    unsafe {
        let idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(x))
    }
}

/// Each row's lane pair `2r, 2r + 1` added: the eight rows' sums.
///
/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn fold_pairs(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's CPU has AVX-512 F (this function's contract).
    unsafe {
        let sum = _mm512_add_ps(x, _mm512_permute_ps::<0b1011_0001>(x));
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14);
        _mm512_castps512_ps256(_mm512_permutexvar_ps(even, sum))
    }
}

/// How far ahead of the block being computed the kernels ask for weights, for a tile of
/// `tokens` activation rows. A decode step reads every weight once, from memory, and with the
/// hardware prefetcher alone the cores waited on it. One or two rows stream the weights fast,
/// and 4 KiB ahead served them best: the dense twin of the MoE benchmark decoded at 137
/// tokens/s with no prefetch, 160–164 at 2 to 4 KiB ahead, 150 at 8 KiB. Four rows and more
/// (a batch, a prefill) compute longer per byte and want the weights from further off: the
/// Q8_0 LM head of Qwen2.5 (151,936 × 896) for 8 rows took 4.7 ms at 4 KiB, 4.4 at 8 KiB, 2.8
/// at 16 KiB and 3.0 at 32 KiB (docs/performance.md).
pub(crate) const fn prefetch_ahead(tokens: usize) -> usize {
    if tokens >= 4 {
        16 << 10
    } else {
        4 << 10
    }
}

/// Asks the CPU to fetch the bytes [`prefetch_ahead`]`(tokens)` past `block`, as many as it
/// holds (a hint: the address may lie past the end of the weights).
#[inline(always)]
pub(crate) fn prefetch(block: &[u8], tokens: usize) {
    super::cpu::prefetch_lines(block.as_ptr().wrapping_add(prefetch_ahead(tokens)), block.len());
}

/// The two halves of a 512-bit register of i32 added (eight rows' sums, where lanes `r` and
/// `r + 8` belong to row `r`).
///
/// # Safety
/// The CPU has AVX-512 F and AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn fold(x: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: the caller's CPU has AVX-512 F and AVX2 (this function's contract).
    unsafe { _mm256_add_epi32(_mm512_castsi512_si256(x), _mm512_extracti64x4_epi64(x, 1)) }
}

/// One k-quant format's interleaved layout.
pub(crate) trait Layout {
    /// Bytes of the file's block (one row, 256 weights).
    const ROW_BLOCK: usize;
    /// Bytes of a group block (eight rows, 256 weights each).
    const GROUP_BLOCK: usize;
    /// Writes the file's block of one row as row `r` of a group block.
    fn pack(block: &[u8], r: usize, out: &mut [u8]);
    /// Appends row `r` of a group block to `bytes` as the file's block.
    fn unpack(group: &[u8], r: usize, bytes: &mut Vec<u8>);
    /// The eight rows of `group` (its blocks, in order) against every activation row,
    /// `out[t * 8 + r]`, in plain Rust: the reference.
    fn dots_scalar(group: &[u8], acts: &[Vec<Q8KBlock>], out: &mut [f32]);
    /// [`dots_scalar`](Layout::dots_scalar) with AVX-512 VNNI.
    ///
    /// # Safety
    /// The CPU must support AVX512-VNNI/BW/VL, AVX2, FMA and F16C; every act has a block for each
    /// of the group's; `out.len() >= 8 * acts.len()`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dots_vnni(group: &[u8], acts: &[Vec<Q8KBlock>], out: &mut [f32]);
}

/// A `[rows, cols]` k-quant matrix in layout `L`.
#[derive(Debug, Clone)]
pub(crate) struct Grouped<L> {
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    layout: PhantomData<fn() -> L>,
}

impl<L: Layout> Grouped<L> {
    fn blocks(&self) -> usize {
        self.cols / QK_K
    }

    /// Repacks the file's row-major blocks.
    pub(crate) fn repack(rows: usize, cols: usize, src: &[u8]) -> Option<Self> {
        let blocks = cols / QK_K;
        if !cols.is_multiple_of(QK_K) || src.len() != rows * blocks * L::ROW_BLOCK {
            return None;
        }
        let (groups, row_bytes) = (rows.div_ceil(R), blocks * L::ROW_BLOCK);
        let mut data = vec![0u8; groups * blocks * L::GROUP_BLOCK];
        for g in 0..groups {
            for b in 0..blocks {
                let out = &mut data[(g * blocks + b) * L::GROUP_BLOCK..][..L::GROUP_BLOCK];
                for r in 0..R.min(rows - g * R) {
                    L::pack(
                        &src[(g * R + r) * row_bytes + b * L::ROW_BLOCK..][..L::ROW_BLOCK],
                        r,
                        out,
                    );
                }
            }
        }
        Some(Grouped {
            rows,
            cols,
            data,
            layout: PhantomData,
        })
    }

    /// Keeps room for `rows` rows in all (a matrix packed a piece at a time).
    pub(crate) fn reserve_rows(&mut self, rows: usize) {
        let bytes = rows.div_ceil(R) * self.blocks() * L::GROUP_BLOCK;
        self.data.reserve_exact(bytes.saturating_sub(self.data.len()));
    }

    /// The rows of `next` after these (a matrix packed a piece at a time): `None` unless
    /// these rows fill whole groups and `next` has the same columns.
    pub(crate) fn append(&mut self, next: Grouped<L>) -> Option<()> {
        if !self.rows.is_multiple_of(R) || next.cols != self.cols {
            return None;
        }
        self.rows += next.rows;
        self.data.extend_from_slice(&next.data);
        Some(())
    }

    /// The blocks of group `g`.
    pub(crate) fn group(&self, g: usize) -> &[u8] {
        &self.data[g * self.blocks() * L::GROUP_BLOCK..][..self.blocks() * L::GROUP_BLOCK]
    }

    /// Row `r` as the file's row-major blocks.
    pub(crate) fn row_bytes(&self, r: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.blocks() * L::ROW_BLOCK);
        for block in self.group(r / R).chunks_exact(L::GROUP_BLOCK) {
            L::unpack(block, r % R, &mut bytes);
        }
        bytes
    }

    /// The eight rows of group `g` against every activation row: `out[t * 8 + r]` (rows past
    /// the matrix's last are zero).
    pub(crate) fn group_dots(&self, g: usize, acts: &[Vec<Q8KBlock>], out: &mut [f32]) {
        let group = self.group(g);
        if acts.iter().any(|a| a.len() < self.blocks()) || out.len() < R * acts.len() {
            return out.iter_mut().for_each(|o| *o = f32::NAN);
        }
        #[cfg(target_arch = "x86_64")]
        if super::cpu::level() >= super::cpu::Level::Avx512 {
            // SAFETY: `Level::Avx512` includes AVX512-VNNI/BW/VL, AVX2, FMA and F16C; the acts and
            // `out` were checked just above.
            return unsafe { L::dots_vnni(group, acts, out) };
        }
        L::dots_scalar(group, acts, out);
    }

    /// `x [t, cols]` → `[t, rows]`, groups of eight rows split over the thread pool.
    pub(crate) fn matmul(&self, x: &[f32], t: usize) -> Vec<f32> {
        let acts = quantize_rows(x, self.cols, quantize_q8k);
        over_groups(self.rows, t, 1, |g, out| self.group_dots(g, &acts, out))
    }
}

/// The checks every layout's test runs on the file's blocks `src` (`rows` rows of `blocks`
/// super-blocks of `format`): each row comes back byte for byte, and the matmul (both kernels)
/// equals the file's own row kernel.
#[cfg(test)]
pub(crate) fn check_layout<L: Layout>(format: super::kquant::KFormat, src: &[u8], rows: usize, blocks: usize) {
    use super::kquant::dot_scalar;
    let m = Grouped::<L>::repack(rows, blocks * QK_K, src).unwrap();
    let row = |r: usize| &src[r * blocks * L::ROW_BLOCK..(r + 1) * blocks * L::ROW_BLOCK];
    for r in 0..rows {
        assert_eq!(m.row_bytes(r), row(r), "row {r}");
    }
    let t = 15; // tiles of 8, 4, 2 and 1
    let x: Vec<f32> = (0..t * blocks * QK_K)
        .map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 300.0)
        .collect();
    let y = m.matmul(&x, t);
    let acts: Vec<Vec<Q8KBlock>> = x
        .chunks_exact(blocks * QK_K)
        .map(|row| {
            let mut q = Vec::new();
            quantize_q8k(row, &mut q);
            q
        })
        .collect();
    let mut scalar = vec![0f32; t * R];
    L::dots_scalar(m.group(0), &acts, &mut scalar);
    for (tok, act) in acts.iter().enumerate() {
        for r in 0..rows {
            let want = dot_scalar(format, row(r), act);
            let close = |v: f32| (v - want).abs() <= 1e-4 * want.abs().max(1.0);
            assert!(
                close(y[tok * rows + r]),
                "token {tok} row {r}: {} vs {want}",
                y[tok * rows + r]
            );
            assert!(r >= R || close(scalar[tok * R + r]), "plain form, token {tok} row {r}");
        }
    }
    assert!(Grouped::<L>::repack(rows, 100, src).is_none());
}
