//! CPU hot paths that candle does not do fast enough: matmuls with ggml's legacy block formats
//! (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), whose dot products candle runs as scalar loops.
//!
//! The arithmetic is ggml's: each activation row is quantized to 8-bit blocks of 32 (Q8_0, or
//! Q8_1 with the block sum for the formats with an offset), each weight block's integer dot
//! product with it is exact, and blocks are summed in f32 with both scales. [`quant`] holds the
//! formats and a scalar implementation of every dot product; [`simd`] the AVX2 versions, which
//! tests compare with the scalar ones.

pub(crate) mod cpu;
pub(crate) mod exp;
pub(crate) mod experts;
pub(crate) mod f16;
pub(crate) mod interleaved;
pub(crate) mod interleaved_k;
pub(crate) mod interleaved_q4k;
pub(crate) mod interleaved_q6k;
pub(crate) mod kquant;
pub(crate) mod matmul;
pub(crate) mod quant;
pub(crate) mod simd;

pub(crate) use matmul::{matmul_all, QuantMatrix};
