//! `y = x · Wᵀ` with `W` in a legacy block format: rows split over the thread pool, each
//! activation row quantized once.

use super::quant::{dequantize_row, quantize_q8, Format, Q8Block, QK};
use super::simd::{dot, dot_many};
use crate::error::{Error, Result};
use std::ops::Range;
use std::sync::Mutex;

/// A `[rows, cols]` matrix of ggml blocks (32 weights each along a row), owned.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl QuantMatrix {
    /// Copies `bytes` (`rows * cols / 32` blocks) into a matrix.
    pub fn new(format: Format, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        if !cols.is_multiple_of(QK) || bytes.len() != rows * cols / QK * format.block_bytes() {
            return Err(Error::InvalidArgument(format!(
                "{format:?} matrix [{rows}, {cols}] needs {} bytes, got {}",
                rows * cols / QK * format.block_bytes(),
                bytes.len()
            )));
        }
        Ok(QuantMatrix {
            format,
            rows,
            cols,
            data: bytes.to_vec(),
        })
    }

    /// `[rows, cols]`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    fn row(&self, r: usize) -> &[u8] {
        let n = self.cols / QK * self.format.block_bytes();
        &self.data[r * n..(r + 1) * n]
    }

    /// Row `r` as f32.
    pub fn dequantize_row(&self, r: usize, out: &mut Vec<f32>) {
        dequantize_row(self.format, self.row(r), out);
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
        let acts: Vec<Vec<Q8Block>> = x
            .chunks_exact(self.cols)
            .map(|row| {
                let mut q = Vec::with_capacity(self.cols / QK);
                quantize_q8(row, &mut q);
                q
            })
            .collect();
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
                let w = self.row(r);
                if t == 1 {
                    out[i] = dot(self.format, w, &acts[0]);
                    continue;
                }
                dot_many(self.format, w, &acts, &mut column);
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
        let y = y.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let m = QuantMatrix::new(Format::Q8_0, rows, cols, &bytes).unwrap();
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
}
