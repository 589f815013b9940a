//! Streams a model's reasoning and answer for a prompt or chat.
//!
//! ```text
//! cargo run --release --example generate -- --model PATH --prompt "What is 7*6?" [flags]
//! ```
//! `--model` is a checkpoint folder (config.json + safetensors + tokenizer.json), one
//! `.safetensors` file in such a folder, or a GGUF file. `--help` lists every flag. With
//! `--ids-out FILE` the prompt and generated ids are written as JSON, and with
//! `--top-logprobs K` also each generated token's log-probability and its K best alternatives.
//! `--samples N` samples N answers (seeds `--seed`, `--seed` + 1, ...) and votes on their final
//! answers (self-consistency); `--reject-step-regex RE` rejects reasoning steps matching RE,
//! each sampled again up to `--max-step-retries N` times; `--distill-out FILE` (`.jsonl` or `.safetensors`, with
//! `--top-logprobs K`) appends the generation, or every sample, to a distillation dataset.

use clap::Parser;
use r1_core::{
    Channel, Consensus, DType, DistillRecord, DistillWriter, Engine, Event, Finish, GenerateParams, LoadOptions,
    Message, Prompt, QuantizeTo, SamplingParams, StepVerifier, Verdict,
};
use r1_examples::{peak_rss_kib, progress_bar};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// Streams a model's reasoning and answer.
#[derive(Debug, Parser)]
#[command(name = "generate")]
struct Args {
    /// Checkpoint folder, .safetensors file or GGUF file.
    #[arg(long)]
    model: String,
    /// The user message (with --raw, the whole prompt).
    #[arg(long, required_unless_present = "chat")]
    prompt: Option<String>,
    /// A system message (chat mode).
    #[arg(long)]
    system: Option<String>,
    /// A JSON list of {"role", "content"} messages instead of --prompt.
    #[arg(long)]
    chat: Option<String>,
    /// No chat template: tokenize the prompt as is (BOS per the model's files).
    #[arg(long)]
    raw: bool,
    /// Argmax decoding (default: DeepSeek-R1's temperature 0.6, top-p 0.95).
    #[arg(long)]
    greedy: bool,
    /// Sampling temperature.
    #[arg(long)]
    temperature: Option<f32>,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling threshold.
    #[arg(long)]
    top_p: Option<f32>,
    /// Min-p threshold.
    #[arg(long)]
    min_p: Option<f32>,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Presence penalty.
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Frequency penalty.
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// A stop sequence (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// Seed of the sampler.
    #[arg(long)]
    seed: Option<u64>,
    /// Compute threads (default: one per physical core).
    #[arg(long)]
    threads: Option<usize>,
    /// Weight storage of a checkpoint: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Quantize a checkpoint's linear weights while loading: q8_0 or q4_k.
    #[arg(long)]
    quantize: Option<String>,
    /// Prompt tokens per forward pass (0: the model's own, 512; 2,048 for MoE models).
    #[arg(long, default_value_t = 0)]
    prefill_chunk: usize,
    /// Report each generated token's log-probability and its K (0-20) best alternatives.
    #[arg(long)]
    top_logprobs: Option<usize>,
    /// Thinking budget: close the reasoning after N tokens.
    #[arg(long)]
    max_reasoning_tokens: Option<usize>,
    /// Write {"prompt_ids", "generated_ids"[, "logprobs", "top_logprobs"]} as JSON (with
    /// --samples: {"prompt_ids", "samples": [{"generated_ids", "final_answer", "seed"}], "vote"}).
    #[arg(long)]
    ids_out: Option<String>,
    /// Self-consistency: sample N answers (seeds --seed, --seed + 1, ...) and vote on their
    /// final answers.
    #[arg(long)]
    samples: Option<usize>,
    /// Append the generation (every sample, with --samples) to a distillation dataset, .jsonl
    /// or .safetensors; needs --top-logprobs.
    #[arg(long)]
    distill_out: Option<String>,
    /// A step verifier that rejects every reasoning step matching this regular expression.
    #[arg(long)]
    reject_step_regex: Option<String>,
    /// How many times a rejected step is sampled again (with --reject-step-regex).
    #[arg(long, default_value_t = 3)]
    max_step_retries: usize,
}

fn sampling(a: &Args) -> SamplingParams {
    let mut s = if a.greedy {
        SamplingParams::greedy()
    } else {
        SamplingParams::deepseek_r1()
    };
    if let Some(t) = a.temperature {
        s = s.with_temperature(t);
    }
    if let Some(k) = a.top_k {
        s = s.with_top_k(k);
    }
    if let Some(p) = a.top_p {
        s = s.with_top_p(p);
    }
    if let Some(p) = a.min_p {
        s = s.with_min_p(p);
    }
    if let Some(seed) = a.seed {
        s = s.with_seed(seed);
    }
    s.with_penalties(a.repeat_penalty, a.presence_penalty, a.frequency_penalty)
}

fn prompt(a: &Args) -> Result<Prompt, String> {
    if let Some(file) = &a.chat {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        let messages: Vec<Message> = serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
        return Ok(Prompt::Chat(messages));
    }
    let text = a.prompt.clone().unwrap_or_default();
    if a.raw {
        return Ok(Prompt::Raw(text));
    }
    let mut messages: Vec<Message> = a.system.iter().map(|s| Message::system(s)).collect();
    messages.push(Message::user(&text));
    Ok(Prompt::Chat(messages))
}

fn load_options(a: &Args) -> Result<LoadOptions, String> {
    let dtype: DType = a.dtype.parse().map_err(|e: r1_core::Error| e.to_string())?;
    let quantize: Option<QuantizeTo> = a.quantize.as_deref().map(str::parse).transpose()?;
    let mut o = LoadOptions::default()
        .with_dtype(dtype)
        .with_quantize(quantize)
        .with_prefill_chunk(a.prefill_chunk)
        .with_progress(progress_bar());
    if let Some(n) = a.threads {
        o = o.with_threads(n);
    }
    Ok(o)
}

/// Streams events to stdout: a header where the channel changes, reasoning dimmed on a terminal.
struct Printer {
    color: bool,
    current: Option<Channel>,
}

impl Printer {
    fn new() -> Self {
        Printer {
            color: std::io::stdout().is_terminal(),
            current: None,
        }
    }

    fn event(&mut self, event: &Event) {
        let mut out = std::io::stdout().lock();
        if !event.text.is_empty() && self.current != Some(event.channel) {
            let reasoning = event.channel == Channel::Reasoning;
            let header = if reasoning { "\n[reasoning]\n" } else { "\n[answer]\n" };
            let style = match (self.color, reasoning) {
                (true, true) => "\x1b[2m",
                (true, false) => "\x1b[0m",
                _ => "",
            };
            let _ = write!(out, "{}{header}{style}", if self.color { "\x1b[0m" } else { "" });
            self.current = Some(event.channel);
        }
        let _ = write!(out, "{}", event.text);
        let _ = out.flush();
    }

    /// Ends a stream: the style reset and the usage line.
    fn finish(&mut self, finish: Option<&Finish>) {
        let mut out = std::io::stdout().lock();
        if self.color {
            let _ = write!(out, "\x1b[0m");
        }
        self.current = None;
        if let Some(f) = finish {
            let u = f.usage;
            let _ = writeln!(
                out,
                "\n\n[usage] prompt {} tokens, reasoning {}, answer {}{}; prefill {:.1} tok/s, decode {:.1} tok/s; finish: {}",
                u.prompt_tokens,
                u.reasoning_tokens,
                u.answer_tokens,
                if u.reasoning_budget_hit { " (thinking budget hit)" } else { "" },
                u.prefill_tokens_per_s,
                u.decode_tokens_per_s,
                f.reason.name()
            );
        }
    }
}

fn params(a: &Args) -> Result<GenerateParams, String> {
    let mut params = GenerateParams::default()
        .with_max_tokens(a.max_tokens)
        .with_sampling(sampling(a))
        .with_stop(a.stop.clone());
    params.top_logprobs = a.top_logprobs;
    params.max_reasoning_tokens = a.max_reasoning_tokens;
    if let Some(re) = &a.reject_step_regex {
        let re = regex::Regex::new(re).map_err(|e| format!("--reject-step-regex: {e}"))?;
        let verifier = StepVerifier::new(move |step, _| match re.is_match(step) {
            true => Verdict::Reject,
            false => Verdict::Accept,
        });
        params.verifier = Some(verifier.with_max_retries(a.max_step_retries));
    }
    Ok(params)
}

fn distill_writer(a: &Args) -> Result<Option<DistillWriter>, String> {
    let Some(path) = &a.distill_out else {
        return Ok(None);
    };
    let k = a.top_logprobs.ok_or("--distill-out needs --top-logprobs K")?;
    DistillWriter::create(path, k).map(Some).map_err(|e| e.to_string())
}

fn run(a: &Args) -> Result<(), String> {
    let mut distill = distill_writer(a)?;
    let engine = Engine::load(&a.model, &load_options(a)?).map_err(|e| e.to_string())?;
    let prompt = prompt(a)?;
    let prompt_text = engine
        .prompt_text(&prompt)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let params = params(a)?;
    if let Some(n) = a.samples {
        let c = run_samples(&engine, &prompt, &params, n)?;
        if let Some(w) = distill.as_mut() {
            for i in 0..c.samples.len() {
                let record = DistillRecord::from_sample(&prompt_text, &c, i).map_err(|e| e.to_string())?;
                w.write(&record).map_err(|e| e.to_string())?;
            }
        }
        if let Some(path) = &a.ids_out {
            std::fs::write(path, samples_json(&c).to_string()).map_err(|e| format!("{path}: {e}"))?;
        }
        return distill.map_or(Ok(()), |w| w.finish().map_err(|e| e.to_string()));
    }
    let mut generation = engine.generate(&prompt, &params).map_err(|e| e.to_string())?;
    let mut printer = Printer::new();
    let mut finish = None;
    for event in generation.by_ref() {
        let event = event.map_err(|e| e.to_string())?;
        printer.event(&event);
        finish = event.finish.or(finish);
    }
    printer.finish(finish.as_ref());
    if let Some(kib) = peak_rss_kib() {
        eprintln!("[memory] peak RSS {} MB", kib / 1024);
    }
    if let Some(mut w) = distill {
        let record = DistillRecord::from_generation(&prompt_text, &generation).map_err(|e| e.to_string())?;
        w.write(&record).and_then(|_| w.finish()).map_err(|e| e.to_string())?;
    }
    if let Some(path) = &a.ids_out {
        let mut json =
            serde_json::json!({"prompt_ids": generation.prompt_ids(), "generated_ids": generation.generated_ids()});
        if a.top_logprobs.is_some() {
            let lp = generation.logprobs();
            json["logprobs"] = lp.iter().map(|t| t.logprob).collect();
            json["top_logprobs"] = lp
                .iter()
                .map(|t| {
                    t.top
                        .iter()
                        .map(|&(id, l)| serde_json::json!([id, l]))
                        .collect::<serde_json::Value>()
                })
                .collect();
        }
        if a.reject_step_regex.is_some() {
            let steps: Vec<serde_json::Value> = generation
                .steps()
                .iter()
                .map(
                    |s| serde_json::json!({"text": s.text, "tries": s.tries, "retries_exhausted": s.retries_exhausted}),
                )
                .collect();
            json["steps"] = steps.into();
            json["rejected_steps"] = generation.usage().rejected_steps.into();
        }
        std::fs::write(path, json.to_string()).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

/// Self-consistency: the samples decode together; each is printed under its own header once
/// done, then the vote.
fn run_samples(engine: &Engine, prompt: &Prompt, params: &GenerateParams, n: usize) -> Result<Consensus, String> {
    let c = engine.self_consistency(prompt, params, n).map_err(|e| e.to_string())?;
    for (i, s) in c.samples.iter().enumerate() {
        println!("\n[sample {i}] seed {}", s.seed);
        if !s.trace.reasoning.is_empty() {
            println!("[reasoning]\n{}", s.trace.reasoning);
        }
        println!("[answer]\n{}", s.trace.answer);
        let u = s.usage;
        println!(
            "[usage] reasoning {}, answer {}; finish: {}",
            u.reasoning_tokens,
            u.answer_tokens,
            s.finish_reason.name()
        );
    }
    let counts: Vec<String> = c.vote.counts.iter().map(|(a, n)| format!("{a:?}: {n}")).collect();
    println!("[vote] {:?} ({})", c.vote.answer, counts.join(", "));
    Ok(c)
}

/// The --ids-out JSON of a self-consistency run.
fn samples_json(c: &Consensus) -> serde_json::Value {
    let samples: Vec<serde_json::Value> = c
        .samples
        .iter()
        .map(|s| serde_json::json!({"generated_ids": s.generated_ids, "final_answer": s.final_answer, "seed": s.seed}))
        .collect();
    let counts: serde_json::Map<String, serde_json::Value> =
        c.vote.counts.iter().map(|(a, n)| (a.clone(), (*n).into())).collect();
    serde_json::json!({
        "prompt_ids": c.prompt_ids,
        "samples": samples,
        "vote": {"answer": c.vote.answer, "counts": counts},
    })
}

fn main() -> ExitCode {
    r1_examples::exit_code("generate", run(&Args::parse()))
}
