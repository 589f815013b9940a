//! ggml's legacy block formats and scalar dot products (the reference the SIMD code is tested
//! against).
//!
//! Every format packs 32 weights per block, row-major, blocks along the row:
//!
//! | format | bytes | layout | weight `j` |
//! | --- | --- | --- | --- |
//! | Q4_0 | 18 | `d: f16, qs: [u8; 16]` | `(nibble_j - 8) * d` |
//! | Q4_1 | 20 | `d: f16, m: f16, qs: [u8; 16]` | `nibble_j * d + m` |
//! | Q5_0 | 22 | `d: f16, qh: u32, qs: [u8; 16]` | `((nibble_j | bit_j << 4) - 16) * d` |
//! | Q5_1 | 24 | `d: f16, m: f16, qh: u32, qs: [u8; 16]` | `(nibble_j | bit_j << 4) * d + m` |
//! | Q8_0 | 34 | `d: f16, qs: [i8; 32]` | `qs_j * d` |
//!
//! Nibble `j < 16` is the low half of `qs[j]`, nibble `j >= 16` the high half of `qs[j - 16]`;
//! `bit_j` is bit `j` of `qh`.

use half::f16;

/// Weights per block.
pub const QK: usize = 32;

/// The block formats these kernels handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 4-bit, symmetric.
    Q4_0,
    /// 4-bit with an offset.
    Q4_1,
    /// 5-bit, symmetric.
    Q5_0,
    /// 5-bit with an offset.
    Q5_1,
    /// 8-bit, symmetric.
    Q8_0,
}

impl Format {
    /// Bytes per block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q5_1 => 24,
            Format::Q8_0 => 34,
        }
    }

    /// Whether the weights carry an offset `m`, so the activations need their block sums (Q8_1).
    pub fn has_offset(self) -> bool {
        matches!(self, Format::Q4_1 | Format::Q5_1)
    }
}

/// An activation row quantized to blocks of 32: scale, (scale × sum of quants), 32 quants.
#[derive(Debug, Clone, Copy, Default)]
pub struct Q8Block {
    /// Scale `amax / 127`, rounded to f16 as ggml stores it.
    pub d: f32,
    /// `d * Σ qs`, rounded to f16 (ggml's Q8_1 `s`).
    pub s: f32,
    /// `Σ qs`, exact: the interleaved kernels take their weights' offset out with it.
    pub sum: i32,
    /// Quants.
    pub qs: [i8; QK],
}

#[inline(always)]
fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Activation values from which [`quantize_rows`] splits its rows over the thread pool: below
/// it a round of the pool costs more than the quantization.
const PARALLEL_VALUES: usize = 16 * 1024;

/// Each `cols`-wide row of `x` quantized by `quantize` (one of [`quantize_q8`] and
/// [`super::kquant::quantize_q8k`]), in order. A prefill's rows are split over the thread pool:
/// quantized on the calling thread alone, they took 5% of a 512-token prefill's time while the
/// other threads waited.
pub(crate) fn quantize_rows<B: Send>(
    x: &[f32],
    cols: usize,
    quantize: impl Fn(&[f32], &mut Vec<B>) + Sync,
) -> Vec<Vec<B>> {
    if cols == 0 {
        return Vec::new();
    }
    let one = |row: &[f32]| {
        let mut q = Vec::new();
        quantize(row, &mut q);
        q
    };
    let rows = x.len() / cols;
    if x.len() < PARALLEL_VALUES || rows < 2 {
        return x.chunks_exact(cols).map(one).collect();
    }
    let parts = std::sync::Mutex::new(Vec::new());
    candle_core::utils::barrier_pool().execute_chunked(rows, |r: std::ops::Range<usize>| {
        let part: Vec<Vec<B>> = x[r.start * cols..r.end * cols].chunks_exact(cols).map(one).collect();
        // A poisoned lock only means another task panicked; its rows are lost either way.
        parts.lock().unwrap_or_else(|p| p.into_inner()).push((r.start, part));
    });
    let mut parts = parts.into_inner().unwrap_or_else(|p| p.into_inner());
    parts.sort_unstable_by_key(|(start, _)| *start);
    parts.into_iter().flat_map(|(_, part)| part).collect()
}

/// Quantizes `x` (a multiple of 32 long) like ggml's `quantize_row_q8_0` / `q8_1`.
pub fn quantize_q8(x: &[f32], out: &mut Vec<Q8Block>) {
    super::cpu::vectorized(
        #[inline(always)]
        || quantize_q8_blocks(x, out),
    )
}

#[inline(always)]
fn quantize_q8_blocks(x: &[f32], out: &mut Vec<Q8Block>) {
    out.clear();
    for chunk in x.chunks_exact(QK) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut b = Q8Block {
            d: f16_round(d),
            ..Default::default()
        };
        // Ties to even, as ggml's SIMD quantizers round (`_mm256_round_ps`): unlike `f32::round`
        // it is one vector instruction, so the loop stays vectorized.
        for (q, &v) in b.qs.iter_mut().zip(chunk) {
            *q = (v * id).round_ties_even() as i8;
        }
        b.sum = b.qs.iter().map(|&q| q as i32).sum();
        b.s = f16_round(b.sum as f32 * d);
        out.push(b);
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The 32 integer weights of a block (before scale and offset), and `(d, m)`.
pub fn decode_block(format: Format, b: &[u8]) -> ([i32; QK], f32, f32) {
    let mut q = [0i32; QK];
    let nibbles = |qs: &[u8], q: &mut [i32; QK]| {
        for j in 0..16 {
            q[j] = (qs[j] & 0x0f) as i32;
            q[j + 16] = (qs[j] >> 4) as i32;
        }
    };
    let high_bits = |qh: u32, q: &mut [i32; QK]| {
        for (j, v) in q.iter_mut().enumerate() {
            *v |= (((qh >> j) & 1) as i32) << 4;
        }
    };
    match format {
        Format::Q4_0 => {
            nibbles(&b[2..18], &mut q);
            q.iter_mut().for_each(|v| *v -= 8);
            (q, f16_at(b, 0), 0.0)
        }
        Format::Q4_1 => {
            nibbles(&b[4..20], &mut q);
            (q, f16_at(b, 0), f16_at(b, 2))
        }
        Format::Q5_0 => {
            nibbles(&b[6..22], &mut q);
            high_bits(u32::from_le_bytes([b[2], b[3], b[4], b[5]]), &mut q);
            q.iter_mut().for_each(|v| *v -= 16);
            (q, f16_at(b, 0), 0.0)
        }
        Format::Q5_1 => {
            nibbles(&b[8..24], &mut q);
            high_bits(u32::from_le_bytes([b[4], b[5], b[6], b[7]]), &mut q);
            (q, f16_at(b, 0), f16_at(b, 2))
        }
        Format::Q8_0 => {
            for (v, &x) in q.iter_mut().zip(&b[2..34]) {
                *v = x as i8 as i32;
            }
            (q, f16_at(b, 0), 0.0)
        }
    }
}

/// Dot product of one weight row (whole blocks) with a quantized activation row, in ggml's
/// order: per block `d_w * d_a * Σ q_w q_a (+ m_w * s_a)`, summed in f32.
pub fn dot_scalar(format: Format, row: &[u8], act: &[Q8Block]) -> f32 {
    let mut sum = 0f32;
    for (b, a) in row.chunks_exact(format.block_bytes()).zip(act) {
        let (q, d, m) = decode_block(format, b);
        let isum: i32 = q.iter().zip(&a.qs).map(|(w, x)| w * *x as i32).sum();
        sum += d * a.d * isum as f32 + m * a.s;
    }
    sum
}

/// Dequantizes a row (used by tests and by embeddings).
pub fn dequantize_row(format: Format, row: &[u8], out: &mut Vec<f32>) {
    out.clear();
    for b in row.chunks_exact(format.block_bytes()) {
        let (q, d, m) = decode_block(format, b);
        out.extend(q.iter().map(|&v| v as f32 * d + m));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_quantized_over_the_pool_equal_rows_quantized_one_by_one() {
        // 97 rows of 256: past the parallel threshold, and not a multiple of any chunking.
        let cols = 256;
        let x: Vec<f32> = (0..97 * cols)
            .map(|i| ((i * 7919 % 2001) as f32 - 1000.0) / 300.0)
            .collect();
        let rows = quantize_rows(&x, cols, quantize_q8);
        assert_eq!(rows.len(), 97);
        for (r, got) in rows.iter().enumerate() {
            let mut want = Vec::new();
            quantize_q8(&x[r * cols..(r + 1) * cols], &mut want);
            assert_eq!(got.len(), want.len(), "row {r}");
            assert!(
                got.iter().zip(&want).all(|(a, b)| a.qs == b.qs && a.d == b.d),
                "row {r}"
            );
        }
        assert!(quantize_rows(&x, 0, quantize_q8).is_empty());
    }

    #[test]
    fn q4_0_block_by_hand() {
        // d = 0.5; qs[0] = 0x9F: element 0 = 15 - 8 = 7, element 16 = 9 - 8 = 1; the rest 8 → 0.
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2..].fill(0x88);
        b[2] = 0x9f;
        let mut w = Vec::new();
        dequantize_row(Format::Q4_0, &b, &mut w);
        assert_eq!(w[0], 3.5);
        assert_eq!(w[16], 0.5);
        assert!(w.iter().enumerate().all(|(i, &v)| i == 0 || i == 16 || v == 0.0));
    }

    #[test]
    fn q5_1_high_bits_and_offset() {
        // d = 1, m = -2, qh bit 3 set, qs all zero: element 3 = 16 - 2 = 14, others -2.
        let mut b = vec![0u8; 24];
        b[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-2.0).to_le_bytes());
        b[4] = 0b1000;
        let mut w = Vec::new();
        dequantize_row(Format::Q5_1, &b, &mut w);
        assert_eq!(w[3], 14.0);
        assert_eq!(w[0], -2.0);
    }

    #[test]
    fn q8_quantization_by_hand() {
        let mut x = vec![0f32; 32];
        x[0] = 1.27;
        x[1] = -0.635;
        let mut q = Vec::new();
        quantize_q8(&x, &mut q);
        assert_eq!(q[0].qs[0], 127);
        assert_eq!(q[0].qs[1], -64); // -63.5 rounds away from zero
        assert!((q[0].d - 0.01).abs() < 1e-5);
        assert!((q[0].s - 0.63).abs() < 1e-3);
    }
}
