//! r1's side of `benches/compare_llama_cpp.sh`: load time, peak RSS, prefill and decode speed of
//! one model, as one JSON line (the same test shape as `llama-bench -p N -n M`).
//!
//! ```text
//! cargo run --release --example bench -- --model FILE_OR_DIR [--prompt-tokens 128] [--gen-tokens 64] [--threads N]
//! ```

use clap::Parser;
use r1_core::{LoadOptions, Model};
use r1_examples::peak_rss_kib;
use std::process::ExitCode;
use std::time::Instant;

/// Load time, peak RSS, prefill and decode speed of one model, as one JSON line.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Checkpoint folder, .safetensors file or GGUF file.
    #[arg(long)]
    model: String,
    /// Prompt length.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to decode.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Compute threads.
    #[arg(long)]
    threads: Option<usize>,
}

fn run(args: &Args) -> r1_core::Result<String> {
    let mut options = LoadOptions::default();
    if let Some(n) = args.threads {
        options = options.with_threads(n);
    }
    let t0 = Instant::now();
    let model = Model::load(&args.model, &options)?;
    let load_s = t0.elapsed().as_secs_f64();
    // Like llama-bench: the content of the prompt does not matter, only its length.
    let vocab = model.vocab_size() as u32;
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let mut cache = model.new_cache();
    cache.reserve(args.prompt_tokens + args.gen_tokens);
    let t1 = Instant::now();
    let mut next = argmax(model.forward_last(&prompt, &mut cache)?.last());
    let prefill_s = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    for _ in 0..args.gen_tokens {
        next = argmax(model.forward_last(&[next], &mut cache)?.last());
    }
    let decode_s = t2.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "load_s": load_s,
        "prefill_tokens_per_s": args.prompt_tokens as f64 / prefill_s,
        "decode_tokens_per_s": args.gen_tokens as f64 / decode_s,
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
    let args = Args::parse();
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
