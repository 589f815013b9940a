//! In-situ quantization: a checkpoint's linear weights quantized while loading, one matrix at a
//! time (the f32 copy of one matrix is the most ever held), for memory and CPU speed.

use super::Matrix;
use crate::error::Result;
use crate::kernels::matmul::Kind;
use crate::kernels::quant::{Format, QK};
use crate::kernels::QuantMatrix;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use half::f16;
use std::sync::Arc;

/// The formats a checkpoint can be quantized to while loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuantizeTo {
    /// 8.5 bits per weight (ggml Q8_0): nearly lossless, ~3.8x smaller than f32.
    Q8_0,
    /// 4.5 bits per weight (ggml Q4_K, blocks of 256): ~7x smaller; matrices whose rows are not a
    /// multiple of 256 fall back to Q8_0.
    Q4K,
}

impl std::str::FromStr for QuantizeTo {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" | "q8" => Ok(QuantizeTo::Q8_0),
            "q4_k" | "q4k" => Ok(QuantizeTo::Q4K),
            other => Err(format!("unknown quantization `{other}` (q8_0 or q4_k)")),
        }
    }
}

/// ggml's `quantize_row_q8_0`: per 32 weights, `d = amax / 127` (stored f16), `q = round(w / d)`.
pub fn quantize_q8_0(weights: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(weights.len() / QK * Format::Q8_0.block_bytes());
    for block in weights.chunks_exact(QK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend(block.iter().map(|w| (w * id).round() as i8 as u8));
    }
    out
}

/// Quantizes a dense `[rows, cols]` matrix; keeps it dense when no format fits its rows.
pub fn quantize_matrix(w: &Tensor, to: QuantizeTo) -> Result<Matrix> {
    let (rows, cols) = w.dims2()?;
    if to == QuantizeTo::Q4K && cols.is_multiple_of(256) {
        let q = QTensor::quantize(&w.to_dtype(candle_core::DType::F32)?, GgmlDType::Q4K)?;
        return Ok(Matrix::Quantized(Arc::new(q)));
    }
    if cols.is_multiple_of(QK) {
        let values = w.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let m = QuantMatrix::new(Kind::Legacy(Format::Q8_0), rows, cols, &quantize_q8_0(&values))?;
        return Ok(Matrix::Blocks(Arc::new(m)));
    }
    Ok(Matrix::Dense(w.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::dequantize_row;

    #[test]
    fn q8_0_round_trip_is_within_half_a_step() {
        let w: Vec<f32> = (0..64).map(|i| ((i * 37 % 29) as f32 - 14.0) / 7.0).collect();
        let bytes = quantize_q8_0(&w);
        assert_eq!(bytes.len(), 2 * 34);
        let mut back = Vec::new();
        dequantize_row(Format::Q8_0, &bytes, &mut back);
        for (blk, (a, b)) in w.chunks(32).zip(back.chunks(32)).enumerate() {
            let step = blk_amax(a) / 127.0;
            for (x, y) in a.iter().zip(b) {
                // Half a quantization step, plus the f16 rounding of the scale.
                assert!((x - y).abs() <= 0.5 * step + 1e-3 * x.abs(), "block {blk}: {x} vs {y}");
            }
        }
    }

    fn blk_amax(b: &[f32]) -> f32 {
        b.iter().fold(0f32, |m, v| m.max(v.abs()))
    }
}
