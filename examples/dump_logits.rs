//! Writes a model's logits for given token ids to a safetensors file (tensor `logits`, f32,
//! `[n_ids, vocab]`), for comparison with other implementations.
//!
//! ```text
//! cargo run --release --example dump_logits -- --model DIR --ids 5,17,3 --out FILE.safetensors \
//!     [--incremental] [--dtype f32|bf16]
//! ```
//! `--incremental` runs the ids one at a time through the cache instead of one full pass.

use r1_core::{DType, LoadOptions, Model, Tensor};
use std::collections::HashMap;
use std::process::ExitCode;

struct Args {
    model: String,
    ids: Vec<u32>,
    out: String,
    incremental: bool,
    dtype: DType,
}

const USAGE: &str =
    "usage: dump_logits --model DIR --ids 5,17,3 --out FILE.safetensors [--incremental] [--dtype f32|bf16]";

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut model, mut ids, mut out, mut incremental, mut dtype) = (None, None, None, false, DType::F32);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--model" => model = Some(value()?),
            "--ids" => {
                let v = value()?;
                let parsed: Result<Vec<u32>, _> = v.split(',').map(|s| s.trim().parse::<u32>()).collect();
                ids = Some(parsed.map_err(|e| format!("--ids {v:?}: {e}"))?);
            }
            "--out" => out = Some(value()?),
            "--incremental" => incremental = true,
            "--dtype" => {
                dtype = match value()?.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    other => return Err(format!("--dtype {other:?}: use f32 or bf16")),
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Args {
        model: model.ok_or(format!("--model is required\n{USAGE}"))?,
        ids: ids
            .filter(|i| !i.is_empty())
            .ok_or(format!("--ids is required\n{USAGE}"))?,
        out: out.ok_or(format!("--out is required\n{USAGE}"))?,
        incremental,
        dtype,
    })
}

fn run(args: &Args) -> r1_core::Result<()> {
    let model = Model::load(
        &args.model,
        &LoadOptions {
            dtype: args.dtype,
            ..Default::default()
        },
    )?;
    let mut cache = model.new_cache();
    let logits = if args.incremental {
        let rows = args
            .ids
            .iter()
            .map(|&id| model.forward(&[id], &mut cache))
            .collect::<r1_core::Result<Vec<_>>>()?;
        Tensor::cat(&rows, 0)?
    } else {
        model.forward(&args.ids, &mut cache)?
    };
    let tensors = HashMap::from([("logits".to_string(), logits)]);
    candle_core::safetensors::save(&tensors, &args.out)?;
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("dump_logits: {msg}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dump_logits: {e}");
            ExitCode::FAILURE
        }
    }
}
