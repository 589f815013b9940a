//! `y = x · Wᵀ` with `W` in a ggml block format: rows split over the thread pool, each
//! activation row quantized once, each weight block unpacked once per call.

use super::interleaved::Interleaved;
use super::interleaved_k::Grouped;
use super::interleaved_q4k::Q4K;
use super::interleaved_q6k::Q6K;
use super::kquant::{self, KFormat, Q8KBlock, QK_K};
use super::quant::{self, quantize_q8, quantize_rows, Format, Q8Block, QK};
use super::simd::{dot, dot_many};
use crate::error::{Error, Result};
use std::borrow::Cow;
use std::ops::Range;
use std::sync::Mutex;

/// The block formats r1's kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), activations in Q8_0/Q8_1.
    Legacy(Format),
    /// Super-blocks of 256 (Q4_K, Q6_K), activations in Q8_K.
    K(KFormat),
}

impl Kind {
    /// Weights per block.
    pub fn block_len(self) -> usize {
        match self {
            Kind::Legacy(_) => QK,
            Kind::K(_) => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Kind::Legacy(f) => f.block_bytes(),
            Kind::K(f) => f.block_bytes(),
        }
    }
}

/// The activation rows of one call, quantized for the matrix's kind.
#[derive(Clone)]
pub(crate) enum Acts {
    Q8(Vec<Vec<Q8Block>>),
    Q8K(Vec<Vec<Q8KBlock>>),
}

impl Acts {
    /// The rows `rows` (in that order), e.g. the tokens routed to one expert.
    pub(crate) fn select(&self, rows: &[usize]) -> Acts {
        match self {
            Acts::Q8(a) => Acts::Q8(rows.iter().map(|&r| a[r].clone()).collect()),
            Acts::Q8K(a) => Acts::Q8K(rows.iter().map(|&r| a[r].clone()).collect()),
        }
    }

    /// Number of activation rows.
    pub(crate) fn len(&self) -> usize {
        match self {
            Acts::Q8(a) => a.len(),
            Acts::Q8K(a) => a.len(),
        }
    }
}

/// A `[rows, cols]` matrix of ggml blocks (along a row), owned.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    kind: Kind,
    rows: usize,
    cols: usize,
    /// Row-major blocks; empty once the matrix is interleaved.
    data: Vec<u8>,
    /// The eight-rows-at-a-time layout, where the CPU and format have one.
    interleaved: Option<Packed>,
}

/// The interleaved layouts.
#[derive(Debug, Clone)]
enum Packed {
    Legacy(Interleaved),
    Q4K(Grouped<Q4K>),
    Q6K(Grouped<Q6K>),
}

impl Packed {
    fn row_bytes(&self, r: usize) -> Vec<u8> {
        match self {
            Packed::Legacy(m) => m.row_bytes(r),
            Packed::Q4K(m) => m.row_bytes(r),
            Packed::Q6K(m) => m.row_bytes(r),
        }
    }

    fn matmul(&self, x: &[f32], t: usize) -> Vec<f32> {
        match self {
            Packed::Legacy(m) => m.matmul(x, t),
            Packed::Q4K(m) => m.matmul(x, t),
            Packed::Q6K(m) => m.matmul(x, t),
        }
    }
}

impl QuantMatrix {
    /// Copies `bytes` (`rows * cols / block_len` blocks) into a matrix.
    pub fn new(kind: Kind, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        Self::check(kind, rows, cols, bytes.len())?;
        Self::from_vec(kind, rows, cols, bytes.to_vec())
    }

    /// A matrix over `data` (`rows * cols / block_len` blocks), taken as it is.
    pub fn from_vec(kind: Kind, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        Self::check(kind, rows, cols, data.len())?;
        Ok(QuantMatrix {
            kind,
            rows,
            cols,
            data,
            interleaved: None,
        })
    }

    fn check(kind: Kind, rows: usize, cols: usize, len: usize) -> Result<()> {
        let need = rows
            .checked_mul(cols / kind.block_len())
            .and_then(|b| b.checked_mul(kind.block_bytes()));
        if !cols.is_multiple_of(kind.block_len()) || need != Some(len) {
            return Err(Error::InvalidArgument(format!(
                "{kind:?} matrix [{rows}, {cols}] needs {} bytes, got {len}",
                need.map_or("more than usize".into(), |n| n.to_string())
            )));
        }
        Ok(())
    }

    /// The row-major blocks (empty once interleaved).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// The block format.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The matrix of row-major blocks `src` in the interleaved layout ([`Interleaved`]), when
    /// this CPU has its kernel (AVX-512 VNNI) and the format has one.
    pub fn interleaved(kind: Kind, rows: usize, cols: usize, src: &[u8]) -> Option<Self> {
        if !Self::has_layout(kind) {
            return None;
        }
        Self::check(kind, rows, cols, src.len()).ok()?;
        let packed = match kind {
            Kind::Legacy(f) => Packed::Legacy(Interleaved::repack(f, rows, cols, src)?),
            Kind::K(KFormat::Q4K) => Packed::Q4K(Grouped::repack(rows, cols, src)?),
            Kind::K(KFormat::Q6K) => Packed::Q6K(Grouped::repack(rows, cols, src)?),
        };
        Some(QuantMatrix {
            kind,
            rows,
            cols,
            data: Vec::new(),
            interleaved: Some(packed),
        })
    }

    /// Whether this CPU and `kind` have an interleaved layout.
    fn has_layout(kind: Kind) -> bool {
        super::cpu::level() >= super::cpu::Level::Avx512
            && match kind {
                Kind::Legacy(f) => Interleaved::supports(f),
                Kind::K(KFormat::Q4K | KFormat::Q6K) => true,
            }
    }

    /// The matrix `[rows, cols]` whose `len` bytes of row-major blocks `read(range)` returns a
    /// range at a time. With `interleave`, and where this CPU and kind have an interleaved
    /// layout, it is read and packed a few megabytes of rows at a time, so the file's form of
    /// the matrix is never held whole beside the packed one; otherwise it is read whole and
    /// kept as it is.
    pub fn read(
        kind: Kind,
        rows: usize,
        cols: usize,
        len: usize,
        interleave: bool,
        mut read: impl FnMut(Range<usize>) -> Result<Vec<u8>>,
    ) -> Result<Self> {
        const PIECE_BYTES: usize = 8 << 20;
        Self::check(kind, rows, cols, len)?;
        if !interleave || rows == 0 || !Self::has_layout(kind) {
            return Self::from_vec(kind, rows, cols, read(0..len)?);
        }
        let row_bytes = cols / kind.block_len() * kind.block_bytes();
        let piece_rows = (PIECE_BYTES / row_bytes.max(1))
            .max(1)
            .next_multiple_of(super::interleaved::R);
        let unpacked = || Error::Internal(format!("{kind:?} [{rows}, {cols}] did not pack in pieces"));
        let mut packed: Option<QuantMatrix> = None;
        for first in (0..rows).step_by(piece_rows) {
            let n = piece_rows.min(rows - first);
            let bytes = read(first * row_bytes..(first + n) * row_bytes)?;
            let piece = Self::interleaved(kind, n, cols, &bytes).ok_or_else(unpacked)?;
            match packed.as_mut() {
                None => {
                    // Room for the whole matrix at once: grown by doubling, a large matrix had
                    // two copies of its front half alive at a reallocation (SmolLM2's 17 MB
                    // embedding table set its peak RSS there).
                    let mut first = piece;
                    first.reserve_rows(rows);
                    packed = Some(first)
                }
                Some(m) => m.append(piece).ok_or_else(unpacked)?,
            }
        }
        packed.ok_or_else(unpacked)
    }

    /// Keeps room for `rows` rows in all in the interleaved data, for [`append`](Self::append).
    fn reserve_rows(&mut self, rows: usize) {
        match self.interleaved.as_mut() {
            Some(Packed::Legacy(m)) => m.reserve_rows(rows),
            Some(Packed::Q4K(m)) => m.reserve_rows(rows),
            Some(Packed::Q6K(m)) => m.reserve_rows(rows),
            None => {}
        }
    }

    /// The rows of `next` after these: both interleaved, these rows filling whole groups.
    fn append(&mut self, next: QuantMatrix) -> Option<()> {
        if next.kind != self.kind || next.cols != self.cols {
            return None;
        }
        match (self.interleaved.as_mut()?, next.interleaved?) {
            (Packed::Legacy(a), Packed::Legacy(b)) => a.append(b)?,
            (Packed::Q4K(a), Packed::Q4K(b)) => a.append(b)?,
            (Packed::Q6K(a), Packed::Q6K(b)) => a.append(b)?,
            _ => return None,
        }
        self.rows += next.rows;
        Some(())
    }

    fn row(&self, r: usize) -> Cow<'_, [u8]> {
        if let Some(m) = &self.interleaved {
            return Cow::Owned(m.row_bytes(r));
        }
        let n = self.cols / self.kind.block_len() * self.kind.block_bytes();
        Cow::Borrowed(&self.data[r * n..(r + 1) * n])
    }

    /// Row `r` as f32.
    pub fn dequantize_row(&self, r: usize, out: &mut Vec<f32>) {
        match self.kind {
            Kind::Legacy(f) => quant::dequantize_row(f, &self.row(r), out),
            Kind::K(f) => kquant::dequantize_row(f, &self.row(r), out),
        }
    }

    /// Quantizes the rows of `x` (`[t, cols]`) as this matrix's products need them; matrices of
    /// the same kind and width can share the result.
    pub(crate) fn quantize(&self, x: &[f32]) -> Acts {
        match self.kind {
            Kind::Legacy(_) => Acts::Q8(quantize_rows(x, self.cols, quantize_q8)),
            Kind::K(_) => Acts::Q8K(quantize_rows(x, self.cols, kquant::quantize_q8k)),
        }
    }

    /// Dots of weight row `r` with every activation row (`out.len() == acts.len()`).
    pub(crate) fn row_dots(&self, r: usize, acts: &Acts, out: &mut [f32]) {
        match (self.kind, acts) {
            (Kind::Legacy(f), Acts::Q8(a)) if a.len() == 1 => out[0] = dot(f, &self.row(r), &a[0]),
            (Kind::Legacy(f), Acts::Q8(a)) => dot_many(f, &self.row(r), a, out),
            (Kind::K(f), Acts::Q8K(a)) => kquant::dot_many(f, &self.row(r), a, out),
            // `quantize` makes the activations of the matrix's own kind.
            _ => out.iter_mut().for_each(|o| *o = f32::NAN),
        }
    }

    /// Rows `first..first + 8` (those that exist) against every activation row, as
    /// `out[t * 8 + i]` for row `first + i`: one interleaved group where the matrix has them,
    /// else row by row. What the MoE kernel asks, so its experts can be interleaved too.
    pub(crate) fn block_dots(&self, first: usize, acts: &Acts, out: &mut [f32]) {
        match (&self.interleaved, acts, first % 8) {
            (Some(Packed::Q4K(m)), Acts::Q8K(a), 0) => return m.group_dots(first / 8, a, out),
            (Some(Packed::Q6K(m)), Acts::Q8K(a), 0) => return m.group_dots(first / 8, a, out),
            (Some(Packed::Legacy(m)), Acts::Q8(a), 0) => return m.group_dots(first / 8, a, out),
            _ => {}
        }
        let mut col = vec![0f32; acts.len()];
        for r in first..(first + 8).min(self.rows) {
            self.row_dots(r, acts, &mut col);
            for (k, v) in col.iter().enumerate() {
                out[k * 8 + r - first] = *v;
            }
        }
    }

    /// [`block_dots`](Self::block_dots) of this matrix into `out` and of `other` into
    /// `other_out`, for the same rows and activations (a gated MLP's gate and up): one pass of
    /// the kernel over both where they share an interleaved legacy layout.
    pub(crate) fn block_dots_pair(
        &self,
        other: &QuantMatrix,
        first: usize,
        acts: &Acts,
        out: &mut [f32],
        other_out: &mut [f32],
    ) {
        if let (Some(Packed::Legacy(m)), Some(Packed::Legacy(o)), Acts::Q8(a), 0) =
            (&self.interleaved, &other.interleaved, acts, first % 8)
        {
            return m.pair_dots(first / 8, o, first / 8, a, out, other_out);
        }
        self.block_dots(first, acts, out);
        other.block_dots(first, acts, other_out);
    }

    /// `x [t, cols]` (row-major) → `[t, rows]`.
    pub fn matmul(&self, x: &[f32], t: usize) -> Result<Vec<f32>> {
        if x.len() != t * self.cols {
            return Err(Error::InvalidArgument(format!(
                "input of {} values is not [{t}, {}]",
                x.len(),
                self.cols
            )));
        }
        if let Some(m) = &self.interleaved {
            return Ok(m.matmul(x, t));
        }
        let acts = self.quantize(x);
        // Each task computes a range of output rows for every input row, so a weight row is read
        // once per call however many tokens there are. candle's spinning barrier pool runs the
        // tasks: waking sleeping threads for each of a decode step's ~200 matmuls costs more
        // than the matmuls of a small model.
        let y = Mutex::new(vec![0f32; t * self.rows]);
        candle_core::utils::barrier_pool().execute_chunked(self.rows, |rows: Range<usize>| {
            let width = rows.len();
            let mut out = vec![0f32; t * width];
            let mut column = vec![0f32; t];
            for (i, r) in rows.clone().enumerate() {
                self.row_dots(r, &acts, &mut column);
                for (ti, v) in column.iter().enumerate() {
                    out[ti * width + i] = *v;
                }
            }
            // A poisoned lock only means another task panicked; its rows are lost either way.
            let mut y = y.lock().unwrap_or_else(|p| p.into_inner());
            for ti in 0..t {
                y[ti * self.rows + rows.start..ti * self.rows + rows.end]
                    .copy_from_slice(&out[ti * width..(ti + 1) * width]);
            }
        });
        Ok(y.into_inner().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Where each of consecutive segments of `sizes` items starts in their flat range, and the
/// range's length: the layout [`segments`] splits.
pub(crate) fn segment_starts(sizes: impl Iterator<Item = usize>) -> (Vec<usize>, usize) {
    let mut total = 0;
    let starts = sizes
        .map(|n| {
            total += n;
            total - n
        })
        .collect();
    (starts, total)
}

/// The pieces of the flat item range `items` as (segment, rows within it), where segment `u`
/// covers `starts[u]..starts[u + 1]` (the last ends at `total`).
pub(crate) fn segments(starts: &[usize], total: usize, items: Range<usize>) -> Vec<(usize, Range<usize>)> {
    let mut out = Vec::new();
    for (u, &s) in starts.iter().enumerate() {
        let end = starts.get(u + 1).copied().unwrap_or(total);
        let (a, b) = (items.start.max(s), items.end.min(end));
        if a < b {
            out.push((u, a - s..b - s));
        }
    }
    out
}

/// `x [t, cols]` through several matrices of that width at once (a layer's q, k and v
/// projections, MLA's `q_a` and `kv_a`): the input is quantized once per activation format, and
/// one round of the thread pool computes every matrix's groups of eight rows, where one round
/// each made a decode step wait at the pool's barrier once per matrix. Returns `[t, rows]` per
/// matrix.
pub(crate) fn matmul_all(mats: &[&QuantMatrix], x: &[f32], t: usize) -> Result<Vec<Vec<f32>>> {
    let Some(cols) = mats.first().map(|m| m.cols) else {
        return Ok(Vec::new());
    };
    if x.len() != t * cols || mats.iter().any(|m| m.cols != cols) {
        return Err(Error::InvalidArgument(format!(
            "input of {} values is not [{t}, {cols}] for every matrix",
            x.len()
        )));
    }
    let legacy = |m: &&QuantMatrix| matches!(m.kind, Kind::Legacy(_));
    let q8 = mats
        .iter()
        .any(legacy)
        .then(|| Acts::Q8(quantize_rows(x, cols, quantize_q8)));
    let q8k = (!mats.iter().all(legacy)).then(|| Acts::Q8K(quantize_rows(x, cols, kquant::quantize_q8k)));
    let acts = |m: &QuantMatrix| match m.kind {
        Kind::Legacy(_) => q8.as_ref(),
        Kind::K(_) => q8k.as_ref(),
    };
    let groups = |m: &QuantMatrix| m.rows.div_ceil(8);
    let (starts, total) = segment_starts(mats.iter().map(|m| groups(m)));
    let ys: Vec<Mutex<Vec<f32>>> = mats.iter().map(|m| Mutex::new(vec![0f32; t * m.rows])).collect();
    candle_core::utils::barrier_pool().execute_chunked(total, |items: Range<usize>| {
        let mut dots = vec![0f32; t * 8];
        for (i, range) in segments(&starts, total, items) {
            let (m, Some(a)) = (mats[i], acts(mats[i])) else {
                continue;
            };
            let rows = range.start * 8..(range.end * 8).min(m.rows);
            let mut part = vec![0f32; t * rows.len()];
            for first in rows.clone().step_by(8) {
                m.block_dots(first, a, &mut dots);
                for r in first..(first + 8).min(m.rows) {
                    for k in 0..t {
                        part[k * rows.len() + r - rows.start] = dots[k * 8 + r - first];
                    }
                }
            }
            // A poisoned lock only means another task panicked; its rows are lost either way.
            let mut y = ys[i].lock().unwrap_or_else(|p| p.into_inner());
            for k in 0..t {
                y[k * m.rows + rows.start..k * m.rows + rows.end]
                    .copy_from_slice(&part[k * rows.len()..(k + 1) * rows.len()]);
            }
        }
    });
    Ok(ys
        .into_iter()
        .map(|y| y.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_split_a_range_over_segments() {
        assert_eq!(segment_starts([4, 6, 2].into_iter()), (vec![0, 4, 10], 12));
        assert_eq!(segments(&[0, 4, 10], 12, 2..11), vec![(0, 2..4), (1, 0..6), (2, 0..1)]);
        assert_eq!(segments(&[0, 4], 6, 4..6), vec![(1, 0..2)]);
    }

    #[test]
    fn matrices_run_together_equal_each_run_alone() {
        use super::super::experts::tests::{matrix, q4k_matrix};
        // Q8_0 and Q4_K rows (two activation formats) of one width, row counts not multiples
        // of eight, the Q4_K interleaved where this CPU interleaves it.
        let (cols, t) = (512, 5);
        let (a, b) = (matrix(37, cols, 1), q4k_matrix(21, cols, 2));
        let x: Vec<f32> = (0..t * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let all = matmul_all(&[&a, &b, &a], &x, t).unwrap();
        for (got, m) in all.iter().zip([&a, &b, &a]) {
            let want = m.matmul(&x, t).unwrap();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{g} vs {w}");
            }
        }
        assert!(matmul_all(&[&a, &b], &x[1..], t).is_err());
    }

    #[test]
    fn matmul_matches_dequantized_product() {
        // A Q8_0 matrix whose weights are small integers times 1/64, so dequantization is exact.
        let (rows, cols, t) = (37, 64, 3);
        let mut bytes = Vec::new();
        for r in 0..rows {
            for blk in 0..cols / QK {
                bytes.extend(half::f16::from_f32(1.0 / 64.0).to_le_bytes());
                bytes.extend((0..QK).map(|j| ((r * 7 + blk * 5 + j * 3) % 21) as i8 as u8 - 10));
            }
        }
        let m = QuantMatrix::new(Kind::Legacy(Format::Q8_0), rows, cols, &bytes).unwrap();
        let x: Vec<f32> = (0..t * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let y = m.matmul(&x, t).unwrap();
        let mut w = Vec::new();
        for ti in 0..t {
            for r in 0..rows {
                m.dequantize_row(r, &mut w);
                let exact: f32 = w.iter().zip(&x[ti * cols..(ti + 1) * cols]).map(|(a, b)| a * b).sum();
                // Only the 8-bit activation quantization separates the two: ≤ 0.5% of the scale.
                let scale: f32 = w
                    .iter()
                    .zip(&x[ti * cols..(ti + 1) * cols])
                    .map(|(a, b)| (a * b).abs())
                    .sum();
                assert!(
                    (y[ti * rows + r] - exact).abs() <= 0.005 * scale + 1e-6,
                    "t{ti} r{r}: {} vs {exact}",
                    y[ti * rows + r]
                );
            }
        }
        assert!(m.matmul(&x[1..], t).is_err());
    }
    #[test]
    fn a_matrix_read_in_pieces_holds_the_rows_of_the_whole() {
        // Q8_0, 4,100 rows of 2,176 bytes: 8.9 MB, two pieces of 8 MB of whole groups of rows,
        // the last group a partial one.
        let (kind, rows, cols) = (Kind::Legacy(Format::Q8_0), 4100, 2048);
        let mut state = 0x9e37_79b9_u32;
        let mut bytes = Vec::new();
        for _ in 0..rows * cols / QK {
            bytes.extend(half::f16::from_f32(0.01).to_le_bytes());
            bytes.extend((0..QK).map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            }));
        }
        let whole = QuantMatrix::new(kind, rows, cols, &bytes).unwrap();
        let mut reads = Vec::new();
        let m = QuantMatrix::read(kind, rows, cols, bytes.len(), true, |r| {
            reads.push(r.clone());
            Ok(bytes[r].to_vec())
        })
        .unwrap();
        let layout = QuantMatrix::has_layout(kind);
        assert_eq!(m.interleaved.is_some(), layout);
        assert_eq!(reads.len(), if layout { 2 } else { 1 }, "{reads:?}");
        assert_eq!(reads.last().unwrap().end, bytes.len());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for r in 0..rows {
            m.dequantize_row(r, &mut a);
            whole.dequantize_row(r, &mut b);
            assert_eq!(a, b, "row {r}");
        }
        // A short source is an error, and so is a read that fails.
        assert!(QuantMatrix::read(kind, rows, cols, bytes.len() - 1, true, |_| Ok(vec![])).is_err());
        let failing = QuantMatrix::read(kind, rows, cols, bytes.len(), true, |_| {
            Err(Error::InvalidArgument("cut".into()))
        });
        assert!(failing.is_err());
    }
}
