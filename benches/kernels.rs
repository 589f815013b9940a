//! Throughput of r1's quantized matmul kernels on one matrix the size of a Qwen2.5-0.5B MLP
//! projection (`[4864, 896]`; 2304 wide for the k-quants, whose rows need multiples of 256), for
//! a decode step (1 token), a batch-8 decode step (8) and a prefill (128 tokens), in weight-block dots per second.
//!
//! ```text
//! cargo bench --bench kernels            # RAYON_NUM_THREADS=1 CANDLE_NUM_THREADS=1 for one thread
//! ```
//!
//! The weights are pseudo-random bytes with finite scales: speed does not depend on the values.

use r1_core::internals::Format;
use r1_core::internals::KFormat;
use r1_core::internals::{Kind, QuantMatrix};
#[path = "common/timing.rs"]
mod timing;
use timing::best_of;

fn xorshift(state: &mut u64) -> u8 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state as u8
}

/// A `[rows, cols]` matrix of random blocks whose f16 scales are all 0.01.
fn matrix(kind: Kind, rows: usize, cols: usize) -> QuantMatrix {
    let mut state = 0x9e37_79b9_7f4a_7c15;
    let mut bytes: Vec<u8> = (0..rows * cols / kind.block_len() * kind.block_bytes())
        .map(|_| xorshift(&mut state))
        .collect();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for block in bytes.chunks_mut(kind.block_bytes()) {
        let at = match kind {
            Kind::Legacy(_) => 0..2,
            // Q4_K: d and dmin lead the block; Q6_K: d ends it.
            Kind::K(KFormat::Q4K) => 0..4,
            Kind::K(KFormat::Q6K) => block.len() - 2..block.len(),
        };
        for i in at.step_by(2) {
            block[i..i + 2].copy_from_slice(&scale);
        }
    }
    QuantMatrix::new(kind, rows, cols, &bytes).expect("block-aligned matrix")
}

fn main() {
    let kinds = [
        ("Q4_0", Kind::Legacy(Format::Q4_0), 896),
        ("Q4_1", Kind::Legacy(Format::Q4_1), 896),
        ("Q5_0", Kind::Legacy(Format::Q5_0), 896),
        ("Q8_0", Kind::Legacy(Format::Q8_0), 896),
        ("Q4_K", Kind::K(KFormat::Q4K), 2304),
        ("Q6_K", Kind::K(KFormat::Q6K), 2304),
    ];
    let rows = std::env::var("ROWS").ok().and_then(|r| r.parse().ok()).unwrap_or(4864);
    println!("| format | layout | matrix | tokens | ms | G block-dots/s (blocks of 32) |");
    println!("|---|---|---|---|---|---|");
    for (name, kind, cols) in kinds {
        let rows_layout = matrix(kind, rows, cols);
        // The eight-row interleaved layout, where this CPU and format have one.
        let interleaved = QuantMatrix::interleaved(kind, rows, cols, rows_layout.bytes());
        let layouts = std::iter::once(("rows", &rows_layout)).chain(interleaved.as_ref().map(|m| ("interleaved", m)));
        for (layout, m) in layouts {
            for t in [1, 8, 128] {
                let x: Vec<f32> = (0..t * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
                let reps = if t == 128 { 20 } else { 200 };
                let s = best_of(reps, || {
                    std::hint::black_box(m.matmul(&x, t).expect("shapes match"));
                });
                let dots = (rows * cols / 32 * t) as f64;
                println!(
                    "| {name} | {layout} | [{rows}, {cols}] | {t} | {:.3} | {:.2} |",
                    s * 1e3,
                    dots / s / 1e9
                );
            }
        }
    }
}
