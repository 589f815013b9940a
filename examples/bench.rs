//! r1's side of `benches/compare_llama_cpp.sh`: load time, peak RSS, prefill and decode speed of
//! one model, as one JSON line (the same test shape as `llama-bench -p N -n M`).
//!
//! ```text
//! cargo run --release --example bench -- --model FILE_OR_DIR [--prompt-tokens 128] [--gen-tokens 64] [--threads N] [--batch N] [--cache auto|f32|f16]
//! ```
//! With `--batch N`, N sequences of `--prompt-tokens` each are prefilled in one batched pass and
//! decoded together (`Model::forward_batch`); the speeds are then the aggregates (tokens of all
//! sequences per second).
//!
//! With `--shared-prefix T` as well, the first `T` tokens of every prompt are the same and the
//! batch runs through `Engine::generate_batch_with` (greedy, `--gen-tokens` each), once sharing
//! the prefix and once not (`--no-share`): the line gives the seconds of the whole batch, the
//! prompt tokens reported cached, and the peak RSS.

use clap::Parser;
use r1_core::{BatchOptions, CachePrecision, Engine, GenerateParams, LoadOptions, Model, Prompt};
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
    /// Sequences decoded together.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// With `--batch`: tokens at the start of every prompt that are the same.
    #[arg(long)]
    shared_prefix: Option<usize>,
    /// With `--shared-prefix`: compute the shared prefix once per sequence (the baseline).
    #[arg(long)]
    no_share: bool,
    /// Most prompt tokens per forward pass (the model's default when not given).
    #[arg(long)]
    prefill_chunk: Option<usize>,
    /// KV cache precision: `auto` (f16 for quantized weights), `f32` or `f16`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "f16"])]
    cache: String,
}

fn run(args: &Args) -> r1_core::Result<String> {
    let mut options = LoadOptions::default();
    if let Some(n) = args.threads {
        options = options.with_threads(n);
    }
    if let Some(n) = args.prefill_chunk {
        options = options.with_prefill_chunk(n);
    }
    options = options.with_cache_precision(match args.cache.as_str() {
        "f32" => CachePrecision::F32,
        "f16" => CachePrecision::F16,
        _ => CachePrecision::Auto,
    });
    if let Some(shared) = args.shared_prefix {
        return shared_prefix(args, &Engine::load(&args.model, &options)?, shared);
    }
    let t0 = Instant::now();
    let model = Model::load(&args.model, &options)?;
    let load_s = t0.elapsed().as_secs_f64();
    // Like llama-bench: the content of the prompt does not matter, only its length.
    let vocab = model.vocab_size() as u32;
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    if args.batch > 1 {
        return batched(args, &model, load_s);
    }
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

/// `--batch N`: N prompts (each its own content) in one prefill pass, then N tokens a pass.
fn batched(args: &Args, model: &Model, load_s: f64) -> r1_core::Result<String> {
    let vocab = model.vocab_size() as u32;
    let prompts: Vec<Vec<u32>> = (0..args.batch as u32)
        .map(|s| {
            (0..args.prompt_tokens as u32)
                .map(|i| (i * 7919 + 13 + s * 104_729) % vocab)
                .collect()
        })
        .collect();
    let mut caches: Vec<_> = (0..args.batch).map(|_| model.new_cache()).collect();
    for c in &mut caches {
        c.reserve(args.prompt_tokens + args.gen_tokens);
    }
    let mut refs: Vec<&mut r1_core::Cache> = caches.iter_mut().collect();
    let inputs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let t1 = Instant::now();
    let logits = model.forward_batch(&inputs, &mut refs)?;
    let prefill_s = t1.elapsed().as_secs_f64();
    let mut next: Vec<u32> = (0..args.batch).map(|r| logits.row(r).map_or(0, argmax)).collect();
    let t2 = Instant::now();
    for _ in 0..args.gen_tokens {
        let inputs: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let inputs: Vec<&[u32]> = inputs.iter().map(|t| t.as_slice()).collect();
        let logits = model.forward_batch(&inputs, &mut refs)?;
        next = (0..args.batch).map(|r| logits.row(r).map_or(0, argmax)).collect();
    }
    let decode_s = t2.elapsed().as_secs_f64();
    let n = args.batch as f64;
    Ok(serde_json::json!({
        "load_s": load_s,
        "batch": args.batch,
        "prefill_tokens_per_s": n * args.prompt_tokens as f64 / prefill_s,
        "decode_tokens_per_s": n * args.gen_tokens as f64 / decode_s,
        "peak_rss_kib": peak_rss_kib(),
    })
    .to_string())
}

/// `--shared-prefix T`: the batch through the engine, its prompts' first `T` tokens the same.
fn shared_prefix(args: &Args, engine: &Engine, shared: usize) -> r1_core::Result<String> {
    let vocab = engine.model().vocab_size() as u32;
    let token = |i: usize, s: usize| {
        let s = if i < shared { 0 } else { s + 1 };
        ((i * 7919 + 13 + s * 104_729) % vocab as usize) as u32
    };
    let requests: Vec<(Prompt, GenerateParams)> = (0..args.batch)
        .map(|s| {
            let ids = (0..args.prompt_tokens).map(|i| token(i, s)).collect();
            (Prompt::Tokens(ids), GenerateParams::greedy(args.gen_tokens))
        })
        .collect();
    let options = BatchOptions::default().with_share_prefixes(!args.no_share);
    let t = Instant::now();
    let done = engine.generate_batch_with(&requests, &options, |_, _| {})?;
    let seconds = t.elapsed().as_secs_f64();
    let cached: usize = done.iter().map(|g| g.usage().cached_prompt_tokens).sum();
    Ok(serde_json::json!({
        "batch": args.batch,
        "prompt_tokens": args.prompt_tokens,
        "shared_prefix": shared,
        "share": !args.no_share,
        "seconds": seconds,
        "cached_prompt_tokens": cached,
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
