//! Streams a model's reasoning and answer for a prompt or chat.
//!
//! ```text
//! cargo run --release --example generate -- --model PATH --prompt "What is 7*6?" [flags]
//!   --model PATH          checkpoint folder (config.json + safetensors + tokenizer.json)
//!   --prompt TEXT         the user message (or, with --raw, the whole prompt)
//!   --system TEXT         a system message (chat mode)
//!   --chat FILE           a JSON list of {"role", "content"} messages instead of --prompt
//!   --raw                 no chat template: tokenize the prompt as is (BOS per the model's files)
//!   --greedy              argmax decoding (default: DeepSeek-R1's temperature 0.6, top-p 0.95)
//!   --temperature T --top-k K --top-p P --min-p P
//!   --repeat-penalty R --presence-penalty P --frequency-penalty F
//!   --stop TEXT           a stop sequence (repeatable)
//!   --max-tokens N        default 512
//!   --seed N              seed of the sampler
//!   --threads N           compute threads
//!   --dtype f32|bf16      weight storage
//!   --quantize q8_0|q4_k  quantize a checkpoint's linear weights while loading
//!   --ids-out FILE        write {"prompt_ids": [...], "generated_ids": [...]} as JSON
//! ```

use r1_core::Message;
use r1_core::{Engine, FinishReason, GenerateParams, Prompt};
use r1_core::SamplingParams;
use r1_core::Channel;
use r1_core::QuantizeTo;
use r1_core::{DType, LoadOptions};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

#[derive(Debug)]
struct Args {
    model: String,
    prompt: Option<String>,
    system: Option<String>,
    chat: Option<String>,
    raw: bool,
    sampling: SamplingParams,
    stop: Vec<String>,
    max_tokens: usize,
    threads: Option<usize>,
    dtype: DType,
    quantize: Option<QuantizeTo>,
    ids_out: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        model: String::new(),
        prompt: None,
        system: None,
        chat: None,
        raw: false,
        sampling: SamplingParams::deepseek_r1(),
        stop: vec![],
        max_tokens: 512,
        threads: None,
        dtype: DType::F32,
        quantize: None,
        ids_out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{flag}: {v:?} is not a valid number"))
        }
        match flag.as_str() {
            "--model" => a.model = val()?,
            "--prompt" => a.prompt = Some(val()?),
            "--system" => a.system = Some(val()?),
            "--chat" => a.chat = Some(val()?),
            "--raw" => a.raw = true,
            "--greedy" => {
                a.sampling = SamplingParams {
                    seed: a.sampling.seed,
                    ..SamplingParams::greedy()
                }
            }
            "--temperature" => a.sampling.temperature = num(&flag, val()?)?,
            "--top-k" => a.sampling.top_k = num(&flag, val()?)?,
            "--top-p" => a.sampling.top_p = num(&flag, val()?)?,
            "--min-p" => a.sampling.min_p = num(&flag, val()?)?,
            "--repeat-penalty" => a.sampling.repetition_penalty = num(&flag, val()?)?,
            "--presence-penalty" => a.sampling.presence_penalty = num(&flag, val()?)?,
            "--frequency-penalty" => a.sampling.frequency_penalty = num(&flag, val()?)?,
            "--seed" => a.sampling.seed = Some(num(&flag, val()?)?),
            "--stop" => a.stop.push(val()?),
            "--max-tokens" => a.max_tokens = num(&flag, val()?)?,
            "--threads" => a.threads = Some(num(&flag, val()?)?),
            "--dtype" => {
                a.dtype = match val()?.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    other => return Err(format!("--dtype {other:?}: use f32 or bf16")),
                }
            }
            "--ids-out" => a.ids_out = Some(val()?),
            "--quantize" => a.quantize = Some(val()?.parse()?),
            "-h" | "--help" => {
                return Err(include_str!("generate.rs")
                    .lines()
                    .skip(2)
                    .take(19)
                    .map(|l| l.trim_start_matches("//! "))
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if a.model.is_empty() {
        return Err("--model is required".into());
    }
    if a.prompt.is_none() && a.chat.is_none() {
        return Err("--prompt or --chat is required".into());
    }
    Ok(a)
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

/// A loading bar on stderr, fed by the library's progress callback; it clears itself when done.
fn progress_bar() -> r1_core::ProgressFn {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("loading {bar:40} {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    std::sync::Arc::new(move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
        if done >= total {
            bar.finish_and_clear();
        }
    })
}

fn run(a: &Args) -> Result<(), String> {
    let engine = Engine::load(
        &a.model,
        &LoadOptions {
            dtype: a.dtype,
            quantize: a.quantize,
            progress: Some(progress_bar()),
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let prompt = prompt(a)?;
    let params = GenerateParams {
        max_tokens: a.max_tokens,
        sampling: a.sampling.clone(),
        stop: a.stop.clone(),
        ..Default::default()
    };
    let mut generation = engine.generate(&prompt, &params).map_err(|e| e.to_string())?;
    let color = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let mut current: Option<Channel> = None;
    let mut finish = None;
    for event in generation.by_ref() {
        let event = event.map_err(|e| e.to_string())?;
        if !event.text.is_empty() && current != Some(event.channel) {
            // Set the reasoning apart: a header per channel, and dim text on a terminal.
            let header = match event.channel {
                Channel::Reasoning => "\n[reasoning]\n",
                Channel::Answer => "\n[answer]\n",
            };
            let style = match (color, event.channel) {
                (true, Channel::Reasoning) => "\x1b[2m",
                (true, Channel::Answer) => "\x1b[0m",
                _ => "",
            };
            let _ = write!(out, "{}{header}{style}", if color { "\x1b[0m" } else { "" });
            current = Some(event.channel);
        }
        let _ = write!(out, "{}", event.text);
        let _ = out.flush();
        finish = event.finish.or(finish);
    }
    if color {
        let _ = write!(out, "\x1b[0m");
    }
    if let Some(f) = finish {
        let u = f.usage;
        let reason = match f.reason {
            FinishReason::EndToken => "end token",
            FinishReason::StopSequence => "stop sequence",
            FinishReason::MaxTokens => "max tokens",
            FinishReason::Cancelled => "cancelled",
            FinishReason::ContextFull => "context full",
        };
        let _ = writeln!(
            out,
            "\n\n[usage] prompt {} tokens, reasoning {}, answer {}; prefill {:.1} tok/s, decode {:.1} tok/s; finish: {reason}",
            u.prompt_tokens, u.reasoning_tokens, u.answer_tokens, u.prefill_tokens_per_s, u.decode_tokens_per_s
        );
    }
    if let Some(path) = &a.ids_out {
        let json =
            serde_json::json!({"prompt_ids": generation.prompt_ids(), "generated_ids": generation.generated_ids()});
        std::fs::write(path, json.to_string()).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("generate: {msg}");
            return ExitCode::from(2);
        }
    };
    if let Some(n) = args.threads {
        // candle sizes its thread pools from these on first use, which has not happened yet.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("generate: {msg}");
            ExitCode::FAILURE
        }
    }
}
