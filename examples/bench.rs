//! r1's side of `benches/compare_llama_cpp.sh`: load time, peak RSS, prefill and decode speed of
//! one model, as one JSON line (the same test shape as `llama-bench -p N -n M`).
//!
//! ```text
//! cargo run --release --example bench -- --model FILE_OR_DIR [--prompt-tokens 128] [--gen-tokens 64] [--threads N]
//! ```

use r1_core::{LoadOptions, Model};
use std::process::ExitCode;
use std::time::Instant;

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Peak resident set size of this process in KiB (Linux `VmHWM`).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn run(args: &[String]) -> Result<String, String> {
    let model_path = arg(args, "--model").ok_or("--model is required")?;
    let n_prompt: usize = arg(args, "--prompt-tokens")
        .map_or(Ok(128), |v| v.parse())
        .map_err(|_| "--prompt-tokens")?;
    let n_gen: usize = arg(args, "--gen-tokens")
        .map_or(Ok(64), |v| v.parse())
        .map_err(|_| "--gen-tokens")?;
    let t0 = Instant::now();
    let model = Model::load(&model_path, &LoadOptions::default()).map_err(|e| e.to_string())?;
    let load_s = t0.elapsed().as_secs_f64();
    // Like llama-bench: the content of the prompt does not matter, only its length.
    let vocab = model.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..n_prompt as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let mut cache = model.new_cache();
    let t1 = Instant::now();
    let logits = model.forward_last(&prompt, &mut cache).map_err(|e| e.to_string())?;
    let prefill_s = t1.elapsed().as_secs_f64();
    let mut next = argmax(&logits.to_vec1::<f32>().map_err(|e| e.to_string())?);
    let t2 = Instant::now();
    for _ in 0..n_gen {
        let logits = model.forward_last(&[next], &mut cache).map_err(|e| e.to_string())?;
        next = argmax(&logits.to_vec1::<f32>().map_err(|e| e.to_string())?);
    }
    let decode_s = t2.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "load_s": load_s,
        "prefill_tokens_per_s": n_prompt as f64 / prefill_s,
        "decode_tokens_per_s": n_gen as f64 / decode_s,
        "peak_rss_kib": peak_rss_kib(),
    })
    .to_string())
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0 as u32
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(n) = arg(&args, "--threads") {
        // candle sizes its thread pools from these on first use.
        std::env::set_var("RAYON_NUM_THREADS", &n);
        std::env::set_var("CANDLE_NUM_THREADS", &n);
    }
    match run(&args) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
