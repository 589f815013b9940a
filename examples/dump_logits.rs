//! Writes a model's logits for given token ids to a safetensors file (tensor `logits`, f32,
//! `[n_ids, vocab]`), for comparison with other implementations.
//!
//! ```text
//! cargo run --release --example dump_logits -- --model DIR --ids 5,17,3 --out FILE.safetensors \
//!     [--incremental] [--dtype f32|bf16]
//! ```
//! `--incremental` runs the ids one at a time through the cache instead of one full pass.

use clap::Parser;
use r1_core::{DType, LoadOptions, Model};
use std::process::ExitCode;

/// Writes a model's logits for token ids to a safetensors file.
#[derive(Debug, Parser)]
#[command(name = "dump_logits")]
struct Args {
    /// Checkpoint folder, .safetensors file or GGUF file.
    #[arg(long)]
    model: String,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    ids: Vec<u32>,
    /// The safetensors file to write.
    #[arg(long)]
    out: String,
    /// Run the ids one at a time through the cache.
    #[arg(long)]
    incremental: bool,
    /// Weight storage: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

fn run(args: &Args) -> Result<(), String> {
    let dtype: DType = args.dtype.parse().map_err(|e: r1_core::Error| e.to_string())?;
    let model = Model::load(&args.model, &LoadOptions::default().with_dtype(dtype)).map_err(|e| e.to_string())?;
    let mut cache = model.new_cache();
    let values: Vec<f32> = if args.incremental {
        let mut all = Vec::new();
        for &id in &args.ids {
            all.extend(model.forward(&[id], &mut cache).map_err(|e| e.to_string())?.into_vec());
        }
        all
    } else {
        model
            .forward(&args.ids, &mut cache)
            .map_err(|e| e.to_string())?
            .into_vec()
    };
    let shape = (args.ids.len(), model.vocab_size());
    let logits = candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu).map_err(|e| e.to_string())?;
    let tensors = std::collections::HashMap::from([("logits".to_string(), logits)]);
    candle_core::safetensors::save(&tensors, &args.out).map_err(|e| format!("{}: {e}", args.out))
}

fn main() -> ExitCode {
    r1_examples::exit_code("dump_logits", run(&Args::parse()))
}
