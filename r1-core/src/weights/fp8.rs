//! DeepSeek's FP8 checkpoints: E4M3 weights with one f32 scale per block.
//!
//! A weight `W [out, in]` is stored as `fp8 [out, in]` plus `weight_scale_inv
//! [ceil(out/br), ceil(in/bc)]`; `W[i][j] = e4m3(fp8[i][j]) * scale_inv[i/br][j/bc]`. Blocks at the
//! right and bottom edges are smaller when a dimension is not a multiple of the block size.

/// Decodes one OCP FP8 E4M3 ("fn": no infinities) byte: 1 sign bit, 4 exponent bits with bias 7,
/// 3 mantissa bits; `S.1111.111` is NaN, the largest finite value is 448.
pub fn e4m3_to_f32(byte: u8) -> f32 {
    let sign = if byte & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((byte >> 3) & 0x0f) as i32;
    let mant = (byte & 0x07) as f32;
    if exp == 0x0f && byte & 0x07 == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        // Subnormal: 0.mmm * 2^(1-7).
        sign * mant / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + mant / 8.0) * 2f32.powi(exp - 7)
    }
}

/// The 256 E4M3 values, so dequantization is one table look-up per weight.
fn table() -> [f32; 256] {
    let mut t = [0f32; 256];
    for (b, v) in t.iter_mut().enumerate() {
        *v = e4m3_to_f32(b as u8);
    }
    t
}

/// Dequantizes a row-major `[rows, cols]` FP8 matrix with block scales `[ceil(rows/br), ceil(cols/bc)]`.
///
/// The caller has checked that `data.len() == rows * cols` and the scale count.
pub fn dequantize_blocks(data: &[u8], scales: &[f32], rows: usize, cols: usize, block: [usize; 2]) -> Vec<f32> {
    let lut = table();
    let scale_cols = cols.div_ceil(block[1]);
    let mut out = Vec::with_capacity(rows * cols);
    for (i, row) in data.chunks_exact(cols).enumerate() {
        let scale_row = &scales[(i / block[0]) * scale_cols..][..scale_cols];
        out.extend(
            row.iter()
                .enumerate()
                .map(|(j, &q)| lut[q as usize] * scale_row[j / block[1]]),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_known_values() {
        // Hand-computed from the bit layout.
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0); // exp 7, mant 0
        assert_eq!(e4m3_to_f32(0xb8), -1.0);
        assert_eq!(e4m3_to_f32(0x7e), 448.0); // exp 15, mant 6: 1.75 * 2^8
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6)); // smallest normal
        assert_eq!(e4m3_to_f32(0x3c), 1.5);
        assert!(e4m3_to_f32(0x7f).is_nan());
        assert!(e4m3_to_f32(0xff).is_nan());
    }

    #[test]
    fn edge_blocks_use_their_own_scale() {
        // 3 x 5 matrix, blocks of 2 x 2: scales [2, 3]; every weight byte is 1.0 (0x38).
        let data = vec![0x38u8; 15];
        let scales = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = dequantize_blocks(&data, &scales, 3, 5, [2, 2]);
        let expect = [
            1.0, 1.0, 2.0, 2.0, 3.0, //
            1.0, 1.0, 2.0, 2.0, 3.0, //
            4.0, 4.0, 5.0, 5.0, 6.0,
        ];
        assert_eq!(w, expect);
    }
}
