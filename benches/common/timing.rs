//! Timing shared by the micro-benchmarks (`benches/kernels.rs`, `benches/attention.rs`).

use std::time::Instant;

/// Best time of `reps` calls, in seconds: the machine's noise only ever adds time.
pub fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}
