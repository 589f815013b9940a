//! Throughput of r1's fused attention on the shapes of the benchmark models, for a prefill chunk
//! of 512 query rows at the start of a context and at its end (offset 3,584: the last chunk of a
//! 4,096-token prefill), and for one decode row at 4,096 tokens, in GFLOP/s: each visible
//! (query, key) pair of a head costs `4 · head_dim` FLOPs (its score, and its share of the
//! output). The decode row runs over an f32 and an f16 cache; its GB/s are the cache bytes read.
//!
//! ```text
//! cargo bench --bench attention          # RAYON_NUM_THREADS=1 CANDLE_NUM_THREADS=1 for one thread
//! ```

use r1_core::internals::{attention, attention_f16};
#[path = "common/timing.rs"]
mod timing;
use timing::best_of;

/// Values in [-1, 1), from a hash of the index.
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// One way to run the kernel: the cache's element type, its bytes, the call.
type Run<'a> = (&'a str, usize, &'a dyn Fn() -> Vec<f32>);

/// `x` rounded to f16.
fn half(x: &[f32]) -> Vec<half::f16> {
    x.iter().map(|&a| half::f16::from_f32(a)).collect()
}

fn main() {
    let shapes = [
        ("SmolLM2-135M", 9, 3, 64),
        ("Qwen2.5-0.5B", 14, 2, 64),
        ("dense twin", 8, 8, 128),
    ];
    println!("| shapes (heads / kv heads × dim) | cache | query rows | offset | ms | GFLOP/s | cache GB/s |");
    println!("|---|---|---|---|---|---|---|");
    for (name, heads, kv_heads, d) in shapes {
        for (len, offset) in [(512, 0), (512, 3584), (1, 4095)] {
            let total = offset + len;
            let q = values(len * heads * d, 1);
            let k = values(total * kv_heads * d, 2);
            let v = values(total * kv_heads * d, 3);
            let reps = if len == 1 { 50 } else { 5 };
            let (kh, vh) = (half(&k), half(&v));
            let caches: [Run<'_>; 2] = [
                ("f32", 4, &|| attention(&q, &k, &v, heads, kv_heads, d, offset)),
                ("f16", 2, &|| attention_f16(&q, &kh, &vh, heads, kv_heads, d, offset)),
            ];
            // Prefill packs the cache once per call whatever its type: f16 only for decode.
            for (cache, bytes, run) in &caches[..if len == 1 { 2 } else { 1 }] {
                let s = best_of(reps, || {
                    std::hint::black_box(run());
                });
                // Visible pairs: row i sees offset + i + 1 keys.
                let pairs = (0..len).map(|i| offset + i + 1).sum::<usize>() * heads;
                let gflops = (4 * d * pairs) as f64 / s / 1e9;
                let gbs = (2 * total * kv_heads * d * bytes) as f64 / s / 1e9;
                println!(
                    "| {name} ({heads} / {kv_heads} × {d}) | {cache} | {len} | {offset} | {:.3} | {gflops:.1} | {gbs:.1} |",
                    s * 1e3
                );
            }
        }
    }
}
