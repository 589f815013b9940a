//! Parses model output text from stdin into reasoning, answer, steps, final answer and tool calls;
//! prints one JSON object.
//!
//! ```text
//! cargo run --release --example parse_trace -- [--starts-in-reasoning] [--chunk-bytes K] < output.txt
//! ```
//! `--starts-in-reasoning`: the prompt ended with `<think>`. `--chunk-bytes K`: feed the text K
//! bytes at a time (cut at character boundaries) through the streaming parser.

use clap::Parser;
use r1_core::{Trace, TraceParser};
use std::io::Read;
use std::process::ExitCode;

/// Parses model output from stdin into a trace, printed as one JSON object.
#[derive(Debug, Parser)]
#[command(name = "parse_trace")]
struct Args {
    /// The prompt ended with `<think>`.
    #[arg(long)]
    starts_in_reasoning: bool,
    /// Feed the text this many bytes at a time through the streaming parser.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    chunk_bytes: Option<u64>,
}

/// Feeds `text` in pieces of about `k` bytes, each ending on a character boundary.
fn parse_chunked(text: &str, start: bool, k: usize) -> Trace {
    let mut p = TraceParser::new(start);
    let mut from = 0;
    while from < text.len() {
        let mut to = (from + k).min(text.len());
        while !text.is_char_boundary(to) {
            to += 1;
        }
        p.push(&text[from..to]);
        from = to;
    }
    p.finish().1
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (start, chunk) = (args.starts_in_reasoning, args.chunk_bytes.map(|k| k as usize));
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        eprintln!("parse_trace: reading stdin: {e}");
        return ExitCode::FAILURE;
    }
    let trace = match chunk {
        Some(k) => parse_chunked(&text, start, k),
        None => Trace::parse(&text, start),
    };
    let tool_calls: Vec<serde_json::Value> = trace
        .tool_calls
        .iter()
        .map(|c| serde_json::json!({"name": c.name, "arguments": serde_json::from_str::<serde_json::Value>(&c.arguments).ok()}))
        .collect();
    let json = serde_json::json!({
        "reasoning": trace.reasoning,
        "answer": trace.answer,
        "truncated": trace.truncated,
        "steps": trace.steps.iter().map(|s| s.text.as_str()).collect::<Vec<_>>(),
        "final_answer": trace.final_answer,
        "tool_calls": tool_calls,
        "errors": trace.errors,
    });
    println!("{json}");
    ExitCode::SUCCESS
}
