//! Writes a distillation dataset: a teacher model's generations for a file of prompts, with each
//! generated token's top-k log-probabilities and the parsed trace.
//!
//! ```text
//! cargo run --release --example distill -- --model PATH --prompts prompts.jsonl \
//!     --out data.jsonl --top-logprobs 5 [--greedy] [--max-tokens N] [--seed N]
//! ```
//! Each line of `--prompts` is `{"messages": [{"role", "content"}, ...]}` or `{"prompt": TEXT}`
//! (one user message). `--out` ends in `.jsonl` or `.safetensors` (see `r1_core::DistillWriter`).
//! The job resumes: prompts whose rendered text is already in `--out` are skipped. With
//! `--seed N`, line `i` (from 0) is sampled with seed `N + i`, so a resumed job writes what an
//! uninterrupted one would.

use clap::Parser;
use r1_core::{DistillRecord, DistillWriter, Engine, GenerateParams, LoadOptions, Message, Prompt, SamplingParams};
use r1_examples::progress_bar;
use std::process::ExitCode;

/// Writes a distillation dataset.
#[derive(Debug, Parser)]
#[command(name = "distill")]
struct Args {
    /// Teacher: checkpoint folder, .safetensors file or GGUF file.
    #[arg(long)]
    model: String,
    /// JSONL file of {"messages": [...]} or {"prompt": "..."} lines.
    #[arg(long)]
    prompts: String,
    /// The dataset: .jsonl or .safetensors (resumed if it exists).
    #[arg(long)]
    out: String,
    /// Log-probabilities kept per generated token (1-20).
    #[arg(long)]
    top_logprobs: usize,
    /// Argmax decoding (default: DeepSeek-R1's temperature 0.6, top-p 0.95).
    #[arg(long)]
    greedy: bool,
    /// Most tokens per generation.
    #[arg(long, default_value_t = 2048)]
    max_tokens: usize,
    /// Base seed: line i is sampled with seed + i.
    #[arg(long)]
    seed: Option<u64>,
}

/// One line of the prompts file as a chat.
fn prompt_of(line: &str, n: usize) -> Result<Prompt, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("line {n}: {e}"))?;
    if let Some(messages) = value.get("messages") {
        let messages: Vec<Message> =
            serde_json::from_value(messages.clone()).map_err(|e| format!("line {n}: messages: {e}"))?;
        return Ok(Prompt::Chat(messages));
    }
    match value.get("prompt").and_then(|p| p.as_str()) {
        Some(text) => Ok(Prompt::Chat(vec![Message::user(text)])),
        None => Err(format!("line {n}: neither \"messages\" nor a \"prompt\" string")),
    }
}

fn run(a: &Args) -> Result<(), String> {
    let text = std::fs::read_to_string(&a.prompts).map_err(|e| format!("{}: {e}", a.prompts))?;
    let lines: Vec<(usize, &str)> = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).collect();
    let prompts = lines
        .iter()
        .map(|&(i, l)| prompt_of(l, i + 1).map(|p| (i, p)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", a.prompts))?;
    let mut out = DistillWriter::create(&a.out, a.top_logprobs).map_err(|e| e.to_string())?;
    let engine =
        Engine::load(&a.model, &LoadOptions::default().with_progress(progress_bar())).map_err(|e| e.to_string())?;
    let bar = indicatif::ProgressBar::new(prompts.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("distill {bar:40} {pos}/{len} prompts ({eta}) {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut skipped, mut written) = (0, 0);
    for (i, prompt) in &prompts {
        let prompt_text = engine
            .prompt_text(prompt)
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        if out.contains(&prompt_text) {
            skipped += 1;
            bar.inc(1);
            continue;
        }
        let mut sampling = if a.greedy {
            SamplingParams::greedy()
        } else {
            SamplingParams::deepseek_r1()
        };
        if let Some(seed) = a.seed {
            sampling = sampling.with_seed(seed.wrapping_add(*i as u64));
        }
        let params = GenerateParams::default()
            .with_max_tokens(a.max_tokens)
            .with_sampling(sampling)
            .with_top_logprobs(a.top_logprobs);
        let mut g = engine.generate(prompt, &params).map_err(|e| e.to_string())?;
        g.by_ref().try_for_each(|e| e.map(drop)).map_err(|e| e.to_string())?;
        let record = DistillRecord::from_generation(&prompt_text, &g).map_err(|e| e.to_string())?;
        out.write(&record).map_err(|e| e.to_string())?;
        written += 1;
        bar.set_message(format!("{} tokens", g.generated_ids().len()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let total = out.len();
    out.finish().map_err(|e| e.to_string())?;
    eprintln!(
        "distill: {written} written, {skipped} already in {}; {total} generations in the dataset",
        a.out
    );
    Ok(())
}

fn main() -> ExitCode {
    r1_examples::exit_code("distill", run(&Args::parse()))
}
