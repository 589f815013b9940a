//! Parses model output text from stdin into reasoning, answer, steps, final answer and tool calls;
//! prints one JSON object.
//!
//! ```text
//! cargo run --release --example parse_trace -- [--starts-in-reasoning] [--chunk-bytes K] < output.txt
//! ```
//! `--starts-in-reasoning`: the prompt ended with `<think>`. `--chunk-bytes K`: feed the text K
//! bytes at a time (cut at character boundaries) through the streaming parser.

use r1_core::{Trace, TraceParser};
use std::io::Read;
use std::process::ExitCode;

fn parse_args() -> Result<(bool, Option<usize>), String> {
    let (mut start, mut chunk) = (false, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--starts-in-reasoning" => start = true,
            "--chunk-bytes" => {
                let v = it.next().ok_or("--chunk-bytes needs a value")?;
                let k: usize = v.parse().map_err(|_| format!("--chunk-bytes {v:?} is not a number"))?;
                if k == 0 {
                    return Err("--chunk-bytes must be at least 1".into());
                }
                chunk = Some(k);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((start, chunk))
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
    let (start, chunk) = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("parse_trace: {msg}");
            return ExitCode::from(2);
        }
    };
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
        .map(|c| serde_json::json!({"name": c.name, "arguments": c.arguments.as_ref().ok()}))
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
