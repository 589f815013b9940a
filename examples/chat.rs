//! An interactive multi-turn chat over one [`Session`]: each line on stdin is a user message;
//! the reasoning is shown set apart (dim on a terminal), then the answer. Earlier turns stay in
//! the session's cache, so a turn only runs what is new. `/reset` starts over, `/exit` (or the
//! end of input) quits.
//!
//! ```text
//! cargo run --release --example chat -- --model PATH [--greedy] [--max-tokens N] [--threads N]
//! ```
//! With `--json`, each turn prints one JSON line instead: `{"prompt_tokens", "cached_prompt_tokens",
//! "generated_ids", "reasoning", "answer"}`.

use clap::Parser;
use r1_core::{Channel, Engine, GenerateParams, LoadOptions, Message, SamplingParams, Session};
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

/// Chats with a model, one user message per line.
#[derive(Debug, Parser)]
#[command(name = "chat")]
struct Args {
    /// Checkpoint folder, .safetensors file or GGUF file.
    #[arg(long)]
    model: String,
    /// A system message opening the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Argmax decoding (default: DeepSeek-R1's temperature 0.6, top-p 0.95).
    #[arg(long)]
    greedy: bool,
    /// Sampling temperature.
    #[arg(long)]
    temperature: Option<f32>,
    /// Seed of the sampler.
    #[arg(long)]
    seed: Option<u64>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// Thinking budget per reply.
    #[arg(long)]
    max_reasoning_tokens: Option<usize>,
    /// Compute threads (default: one per physical core).
    #[arg(long)]
    threads: Option<usize>,
    /// One JSON line per turn instead of the interactive display.
    #[arg(long)]
    json: bool,
}

/// What one turn produced.
struct Turn {
    prompt_tokens: usize,
    cached_prompt_tokens: usize,
    generated_ids: Vec<u32>,
    reasoning: String,
    answer: String,
}

/// Streams one reply; `show` prints the text as it comes.
fn reply(session: &mut Session, chat: &[Message], params: &GenerateParams, show: bool) -> r1_core::Result<Turn> {
    let mut generation = session.chat(chat, params)?;
    let color = show && std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut current = None;
    let mut usage = None;
    for event in generation.by_ref() {
        let event = event?;
        if show && !event.text.is_empty() {
            if current != Some(event.channel) {
                let header = match (event.channel == Channel::Reasoning, color) {
                    (true, true) => "\x1b[2m[reasoning]\n",
                    (true, false) => "[reasoning]\n",
                    (false, true) => "\x1b[0m\n[answer]\n",
                    (false, false) => "\n[answer]\n",
                };
                let _ = write!(out, "{header}");
                current = Some(event.channel);
            }
            let _ = write!(out, "{}", event.text);
            let _ = out.flush();
        }
        if let Some(f) = event.finish {
            usage = Some(f.usage);
        }
    }
    if color {
        let _ = write!(out, "\x1b[0m");
    }
    let usage = usage.unwrap_or_else(|| generation.usage());
    let (reasoning, answer) = generation
        .trace()
        .map(|t| (t.reasoning.clone(), t.answer.clone()))
        .unwrap_or_default();
    Ok(Turn {
        prompt_tokens: usage.prompt_tokens,
        cached_prompt_tokens: usage.cached_prompt_tokens,
        generated_ids: generation.generated_ids().to_vec(),
        reasoning,
        answer,
    })
}

fn run(a: &Args) -> Result<(), String> {
    let mut options = LoadOptions::default();
    if let Some(n) = a.threads {
        options = options.with_threads(n);
    }
    let engine = Engine::load(&a.model, &options).map_err(|e| e.to_string())?;
    let mut sampling = if a.greedy {
        SamplingParams::greedy()
    } else {
        SamplingParams::deepseek_r1()
    };
    if let Some(t) = a.temperature {
        sampling = sampling.with_temperature(t);
    }
    if let Some(s) = a.seed {
        sampling = sampling.with_seed(s);
    }
    let mut params = GenerateParams::default()
        .with_max_tokens(a.max_tokens)
        .with_sampling(sampling);
    params.max_reasoning_tokens = a.max_reasoning_tokens;
    let opening: Vec<Message> = a.system.iter().map(|s| Message::system(s)).collect();
    let mut chat = opening.clone();
    let mut session = engine.session();
    let interactive = !a.json && std::io::stdin().is_terminal();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        match line.trim() {
            "/exit" => break,
            "/reset" => {
                chat = opening.clone();
                session.reset().map_err(|e| e.to_string())?;
                if !a.json {
                    println!("[conversation reset]");
                }
                continue;
            }
            "" if interactive => continue,
            _ => {}
        }
        chat.push(Message::user(&line));
        let turn = reply(&mut session, &chat, &params, !a.json).map_err(|e| e.to_string())?;
        if a.json {
            let json = serde_json::json!({
                "prompt_tokens": turn.prompt_tokens,
                "cached_prompt_tokens": turn.cached_prompt_tokens,
                "generated_ids": turn.generated_ids,
                "reasoning": turn.reasoning,
                "answer": turn.answer,
            });
            println!("{json}");
        } else {
            println!(
                "\n[{} prompt tokens, {} from the cache]\n",
                turn.prompt_tokens, turn.cached_prompt_tokens
            );
        }
        chat.push(Message::assistant(&turn.answer));
    }
    Ok(())
}

fn main() -> ExitCode {
    r1_examples::exit_code("chat", run(&Args::parse()))
}
