//! Hostile inputs, table by table (issue 12): bad configs through `config.json` and through GGUF
//! metadata, every fixture file cut short and with bytes flipped, and bad generation
//! parameters. Each case must give an error that names what was wrong, never a panic, and a
//! model loaded before them must still give the same logits after them.

mod common;
use candle_core::quantized::gguf_file;
use common::{edit_config, fixtures_dir, load_err, scratch};
use r1_core::{Engine, GenerateParams, LoadOptions, Model, Prompt, SamplingParams};
use serde_json::json;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Loads `path` and, when it loads, runs three tokens through it: whatever the bytes, the
/// outcome is a value (`Ok` or an error), never a panic. Returns the load's error, if any.
fn survives(path: &Path, case: &str) -> Option<String> {
    let run = catch_unwind(AssertUnwindSafe(|| match Model::load(path, &LoadOptions::default()) {
        Ok(model) => {
            let _ = model.forward(&[1, 2, 3], &mut model.new_cache());
            None
        }
        Err(e) => Some(e.to_string()),
    }));
    match run {
        Ok(outcome) => outcome,
        Err(_) => panic!("{case}: loading {} panicked", path.display()),
    }
}

/// A model that must keep working through everything else here.
struct Witness {
    model: Model,
    logits: Vec<f32>,
}

impl Witness {
    fn new() -> Self {
        let model = Model::load(fixtures_dir().join("llama_tiny"), &LoadOptions::default()).unwrap();
        let logits = Self::run(&model);
        Witness { model, logits }
    }

    fn run(model: &Model) -> Vec<f32> {
        let logits = model.forward(&[5, 6, 7], &mut model.new_cache()).unwrap();
        logits.last().to_vec()
    }

    fn still_works(&self) {
        assert_eq!(
            Self::run(&self.model),
            self.logits,
            "a loaded model changed after bad inputs"
        );
    }
}

#[test]
fn bad_config_json_values_are_named() {
    let witness = Witness::new();
    let cases: &[(&str, &str, serde_json::Value, &str)] = &[
        ("llama_tiny", "vocab_size", json!(0), "`vocab_size` is 0"),
        (
            "llama_tiny",
            "vocab_size",
            json!(1u64 << 40),
            "`vocab_size` is 1099511627776",
        ),
        ("llama_tiny", "hidden_size", json!(0), "`hidden_size`"),
        ("llama_tiny", "hidden_size", json!(1 << 20), "`hidden_size` is 1048576"),
        ("llama_tiny", "num_attention_heads", json!(0), "`num_attention_heads`"),
        ("llama_tiny", "num_hidden_layers", json!(0), "`num_hidden_layers` is 0"),
        (
            "llama_tiny",
            "num_hidden_layers",
            json!(1_000_000_000),
            "`num_hidden_layers` is 1000000000",
        ),
        ("llama_tiny", "num_key_value_heads", json!(0), "`num_key_value_heads` 0"),
        (
            "llama_tiny",
            "num_key_value_heads",
            json!(3),
            "not a multiple of `num_key_value_heads` 3",
        ),
        ("llama_tiny", "head_dim", json!(0), "`head_dim` is 0"),
        ("llama_tiny", "head_dim", json!(15), "`head_dim` 15 must be even"),
        (
            "llama_tiny",
            "max_position_embeddings",
            json!(0),
            "`max_position_embeddings` is 0",
        ),
        ("llama_tiny", "intermediate_size", json!(0), "`intermediate_size` is 0"),
        ("llama_tiny", "rms_norm_eps", json!(-1.0), "`rms_norm_eps` -1"),
        (
            "llama_tiny",
            "eos_token_id",
            json!(512),
            "`eos_token_id` 512 is outside the vocabulary of 512",
        ),
        (
            "llama_tiny",
            "eos_token_id",
            json!([2, 100_000]),
            "`eos_token_id` 100000 is outside",
        ),
        (
            "llama_tiny",
            "eos_token_id",
            json!((1u64 << 32) + 5),
            "`eos_token_id` must be a token id",
        ),
        (
            "llama_tiny",
            "eos_token_id",
            json!(-1),
            "`eos_token_id` must be a token id",
        ),
        (
            "llama_tiny",
            "bos_token_id",
            json!(4096),
            "`bos_token_id` 4096 is outside",
        ),
        ("llama_tiny", "rope_theta", json!(0.0), "`rope_theta` 0"),
        (
            "llama_tiny",
            "rope_scaling",
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0}),
            "must be above `low_freq_factor`",
        ),
        (
            "llama_tiny",
            "rope_scaling",
            json!({"rope_type": "linear", "factor": -2.0}),
            "`rope_scaling.factor` -2",
        ),
        (
            "deepseek_v3_tiny",
            "n_routed_experts",
            json!(0),
            "`n_routed_experts` is 0",
        ),
        (
            "deepseek_v3_tiny",
            "n_routed_experts",
            json!(1 << 20),
            "`n_routed_experts` is 1048576",
        ),
        (
            "deepseek_v3_tiny",
            "num_experts_per_tok",
            json!(9),
            "`num_experts_per_tok` is 9; it must be in 1..=8",
        ),
        (
            "deepseek_v3_tiny",
            "num_experts_per_tok",
            json!(0),
            "`num_experts_per_tok` is 0",
        ),
        ("deepseek_v3_tiny", "n_group", json!(0), "`n_group` is 0"),
        ("deepseek_v3_tiny", "n_group", json!(3), "not a multiple of `n_group` 3"),
        // Groups of one expert under noaux_tc, which ranks groups by their two best: r1's
        // own out-of-bounds index before this check.
        ("deepseek_v3_tiny", "n_group", json!(8), "leaves 1 expert per group"),
        ("deepseek_v3_tiny", "topk_group", json!(0), "`topk_group` is 0"),
        (
            "deepseek_v3_tiny",
            "topk_group",
            json!(5),
            "`topk_group` is 5; it must be in 1..=4",
        ),
        ("deepseek_v3_tiny", "moe_layer_freq", json!(0), "`moe_layer_freq` is 0"),
        ("deepseek_v3_tiny", "kv_lora_rank", json!(0), "`kv_lora_rank` is 0"),
        (
            "deepseek_v3_tiny",
            "qk_rope_head_dim",
            json!(7),
            "`qk_rope_head_dim` 7 must be even",
        ),
        (
            "deepseek_v3_tiny",
            "routed_scaling_factor",
            json!(-1.0),
            "`routed_scaling_factor` -1",
        ),
        (
            "deepseek_v3_tiny",
            "moe_intermediate_size",
            json!(0),
            "`moe_intermediate_size` is 0",
        ),
    ];
    for (i, (fixture, key, value, needle)) in cases.iter().enumerate() {
        let dir = scratch(fixture, &format!("cfg{i}"));
        edit_config(&dir, |v| v[*key] = value.clone());
        let e = load_err(&dir).to_string();
        assert!(e.contains(needle), "{fixture} {key}={value}: {e}");
        assert!(
            e.contains("config.json"),
            "{fixture} {key}={value}: the error names no file: {e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    witness.still_works();
}

/// A copy of fixture GGUF `name` with metadata `key` set to `value` (candle's reader and
/// writer, so the file is otherwise byte for byte a valid GGUF).
fn gguf_with(name: &str, key: &str, value: gguf_file::Value, tag: &str) -> PathBuf {
    let src = fixtures_dir().join("gguf").join(name);
    let mut reader = std::fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut reader).unwrap();
    let mut metadata = content.metadata.clone();
    metadata.insert(key.to_string(), value);
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = content
        .tensor_infos
        .keys()
        .map(|n| {
            (
                n.clone(),
                content.tensor(&mut reader, n, &candle_core::Device::Cpu).unwrap(),
            )
        })
        .collect();
    let meta: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    common::write_temp_gguf(tag, &meta, &tensors)
}

#[test]
fn bad_gguf_metadata_values_are_named() {
    use gguf_file::Value::{U32, U64};
    let witness = Witness::new();
    let cases: &[(&str, &str, gguf_file::Value, &str)] = &[
        (
            "llama_tiny.f32.gguf",
            "llama.block_count",
            U32(0),
            "`num_hidden_layers` is 0",
        ),
        (
            "llama_tiny.f32.gguf",
            "llama.block_count",
            U32(1 << 30),
            "`num_hidden_layers` is 1073741824",
        ),
        // `hidden / heads` was a division by zero here.
        (
            "llama_tiny.f32.gguf",
            "llama.attention.head_count",
            U32(0),
            "`num_attention_heads` is 0",
        ),
        (
            "llama_tiny.f32.gguf",
            "llama.attention.head_count_kv",
            U32(0),
            "0 kv heads",
        ),
        (
            "llama_tiny.f32.gguf",
            "llama.embedding_length",
            U64(1 << 40),
            "`hidden_size` is 1099511627776",
        ),
        (
            "llama_tiny.f32.gguf",
            "llama.context_length",
            U32(0),
            "`max_position_embeddings` is 0",
        ),
        (
            "llama_tiny.f32.gguf",
            "tokenizer.ggml.bos_token_id",
            U32(1_000_000),
            "`bos_token_id` 1000000 is outside",
        ),
        (
            "llama_tiny.f32.gguf",
            "tokenizer.ggml.eos_token_id",
            U64(u64::MAX),
            "`eos_token_id` 4294967295 is outside",
        ),
        (
            "deepseek_v3_tiny.f32.gguf",
            "deepseek2.expert_count",
            U32(0),
            "`n_routed_experts` is 0",
        ),
        (
            "deepseek_v3_tiny.f32.gguf",
            "deepseek2.expert_used_count",
            U32(100),
            "`num_experts_per_tok` is 100",
        ),
        (
            "deepseek_v3_tiny.f32.gguf",
            "deepseek2.expert_group_count",
            U32(8),
            "leaves 1 expert per group",
        ),
        (
            "deepseek_v3_tiny.f32.gguf",
            "deepseek2.expert_group_count",
            U32(3),
            "not a multiple of `n_group` 3",
        ),
        (
            "deepseek_v3_tiny.f32.gguf",
            "deepseek2.attention.kv_lora_rank",
            U32(0),
            "`kv_lora_rank` is 0",
        ),
    ];
    for (i, (file, key, value, needle)) in cases.iter().enumerate() {
        let path = gguf_with(file, key, value.clone(), &format!("meta{i}"));
        let e = survives(&path, key).unwrap_or_else(|| panic!("{file} with {key} = {value:?} loaded"));
        assert!(e.contains(needle), "{file} {key}={value:?}: {e}");
        std::fs::remove_file(&path).unwrap();
    }
    witness.still_works();
}

/// Every binary fixture: the GGUF files and the safetensors of each checkpoint folder.
fn binary_fixtures() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(fixtures_dir().join("gguf"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for folder in ["llama_tiny", "qwen2_tiny", "deepseek_v2_greedy", "deepseek_v3_tiny"] {
        out.push(fixtures_dir().join(folder).join("model.safetensors"));
    }
    out.sort();
    out
}

/// A loadable copy of `bytes` in place of `original`: a GGUF file on its own, or a checkpoint
/// folder with the original's config and tokenizer beside the new weights.
fn place(original: &Path, bytes: &[u8], tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r1-hostile-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let name = original.file_name().unwrap();
    if original.extension().is_some_and(|e| e == "gguf") {
        std::fs::write(dir.join(name), bytes).unwrap();
        return dir.join(name);
    }
    std::fs::copy(original.with_file_name("config.json"), dir.join("config.json")).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
    dir
}

/// Offsets to cut a file of `len` bytes at: every byte of the first 64 (magic, version,
/// counts, the first key), then 60 more spread over the rest.
fn cuts(len: usize) -> Vec<usize> {
    let mut at: Vec<usize> = (0..len.min(64)).collect();
    at.extend((1..=60).map(|i| len * i / 61));
    at.push(len - 1);
    at.sort();
    at.dedup();
    at
}

#[test]
fn truncated_files_are_errors() {
    let witness = Witness::new();
    let mut cases = 0;
    for original in binary_fixtures() {
        let bytes = std::fs::read(&original).unwrap();
        for n in cuts(bytes.len()) {
            let path = place(&original, &bytes[..n], "cut");
            let outcome = survives(&path, &format!("{} cut at {n}", original.display()));
            // GGUF files end with up to 31 bytes of alignment padding; a cut into it loses nothing.
            let padding = original.extension().is_some_and(|e| e == "gguf") && n + 32 > bytes.len();
            if !padding {
                let e =
                    outcome.unwrap_or_else(|| panic!("{} cut at {n} of {} loaded", original.display(), bytes.len()));
                assert!(e.contains(original.file_name().unwrap().to_str().unwrap()), "{e}");
            }
            cases += 1;
        }
    }
    eprintln!("{cases} truncations");
    assert!(cases > 1000);
    witness.still_works();
}

#[test]
fn flipped_bytes_never_crash() {
    let witness = Witness::new();
    // xorshift64*: the same flips on every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let (mut loaded, mut refused) = (0, 0);
    for original in binary_fixtures() {
        let bytes = std::fs::read(&original).unwrap();
        // Most flips land where the parser reads (the first 4 KiB), some in the data.
        for i in 0..120 {
            let mut b = bytes.clone();
            let span = if i % 4 == 3 { b.len() } else { b.len().min(4096) };
            let at = next() as usize % span;
            b[at] ^= 1 << (next() % 8);
            // Every other case flips a second byte nearby (a count's high bytes).
            if i % 2 == 1 {
                let near = (at + 1 + next() as usize % 8).min(b.len() - 1);
                b[near] = next() as u8;
            }
            let path = place(&original, &b, "flip");
            match survives(&path, &format!("{} flipped at {at}", original.display())) {
                None => loaded += 1,
                Some(_) => refused += 1,
            }
        }
    }
    eprintln!("byte flips: {loaded} loaded, {refused} refused with an error");
    assert!(refused > 0 && loaded + refused == 120 * binary_fixtures().len());
    witness.still_works();
}

#[test]
fn bad_generation_parameters_are_named() {
    let engine = Engine::load(fixtures_dir().join("llama_tiny"), &LoadOptions::default()).unwrap();
    let prompt = Prompt::Tokens(vec![5, 6, 7]);
    let sampled = |f: &dyn Fn(&mut SamplingParams)| {
        let mut p = GenerateParams::default().with_max_tokens(4);
        f(&mut p.sampling);
        p
    };
    let cases: Vec<(GenerateParams, &str)> = vec![
        (sampled(&|s| s.temperature = f32::NAN), "temperature NaN"),
        (sampled(&|s| s.temperature = -1.0), "temperature -1"),
        (sampled(&|s| s.temperature = f32::INFINITY), "temperature inf"),
        (sampled(&|s| s.top_p = 0.0), "top_p 0"),
        (sampled(&|s| s.top_p = 1.5), "top_p 1.5"),
        (sampled(&|s| s.top_p = f32::NAN), "top_p NaN"),
        (sampled(&|s| s.min_p = 2.0), "min_p 2"),
        (sampled(&|s| s.repetition_penalty = 0.0), "repetition_penalty 0"),
        (
            sampled(&|s| s.presence_penalty = f32::INFINITY),
            "presence and frequency",
        ),
        (
            sampled(&|s| s.logit_bias = vec![(3, f32::NAN)]),
            "logit_bias of token 3 is NaN",
        ),
        (
            sampled(&|s| s.logit_bias = vec![(3, f32::INFINITY)]),
            "logit_bias of token 3 is inf",
        ),
        (
            sampled(&|s| s.logit_bias = vec![(3, 1.0), (3, 2.0)]),
            "logit_bias lists token 3 twice",
        ),
        (
            sampled(&|s| s.logit_bias = vec![(512, 1.0)]),
            "logit_bias holds token id 512",
        ),
        (
            sampled(&|s| s.logit_bias = (0..1_000_000).map(|t| (t, 1.0)).collect()),
            "logit_bias holds token id 512",
        ),
        (GenerateParams::default().with_max_tokens(0), "max_tokens is 0"),
        (
            GenerateParams::default().with_stop(vec![String::new()]),
            "stop[0] is 0 bytes",
        ),
        (
            GenerateParams::default().with_stop(vec!["x".repeat(2000)]),
            "stop[0] is 2000 bytes",
        ),
        (
            GenerateParams::default().with_stop(vec!["ab".into(); 10_000]),
            "10000 stop sequences",
        ),
        (
            GenerateParams::default().with_stop_token_ids(vec![600]),
            "stop_token_ids holds token id 600",
        ),
        (GenerateParams::default().with_top_logprobs(21), "top_logprobs 21"),
    ];
    for (params, needle) in cases {
        let e = match engine.generate(&prompt, &params) {
            Ok(_) => panic!("{needle}: accepted"),
            Err(e) => e,
        };
        assert_eq!(e.code(), r1_core::ErrorCode::InvalidArgument, "{needle}: {e}");
        assert!(e.to_string().contains(needle), "{needle}: {e}");
    }
}

#[test]
fn extreme_but_valid_parameters_work() {
    let engine = Engine::load(fixtures_dir().join("llama_tiny"), &LoadOptions::default()).unwrap();
    let prompt = Prompt::Tokens(vec![5, 6, 7]);
    let run = |p: &GenerateParams| {
        let mut g = engine.generate(&prompt, p).unwrap();
        for e in g.by_ref() {
            e.unwrap();
        }
        g.generated_ids().to_vec()
    };
    let greedy = run(&GenerateParams::greedy(8));
    // A vanishing temperature is the argmax (relative logits go to -inf, not the best to +inf).
    let mut cold = GenerateParams::greedy(8);
    cold.sampling.temperature = 1e-30;
    cold.sampling.seed = Some(1);
    assert_eq!(run(&cold), greedy);
    // Huge temperature and top_k are valid: a draw from (nearly) the uniform distribution.
    let mut hot = GenerateParams::greedy(8);
    hot.sampling.temperature = 1e30;
    hot.sampling.top_k = usize::MAX;
    hot.sampling.seed = Some(1);
    assert_eq!(run(&hot).len(), 8);
    // "Until the context is full": no allocation of the whole context up front, and it stops
    // there (the fixture's context is 256 positions).
    let ids = run(&GenerateParams::greedy(usize::MAX).with_stop_token_ids(vec![]));
    assert!(!ids.is_empty() && ids.len() <= 253, "{}", ids.len());
    // A bias of -inf bans a token: the greedy token never comes.
    let mut banned = GenerateParams::greedy(8);
    banned.sampling.logit_bias = vec![(greedy[0], f32::NEG_INFINITY)];
    assert_ne!(run(&banned)[0], greedy[0]);
}

#[test]
fn a_tokenizer_that_panics_gives_an_error() {
    // The tokenizers crate asserts `stride < max_length` when it truncates; a tokenizer.json
    // may say otherwise, and the assertion fires on the first long input.
    let dir = scratch("llama_tiny", "tokpanic");
    let src = fixtures_dir().join("llama_tiny");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap()).unwrap();
    t["truncation"] = json!({"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 4});
    std::fs::write(dir.join("tokenizer.json"), t.to_string()).unwrap();
    let engine = Engine::load(&dir, &LoadOptions::default()).unwrap();
    let e = engine
        .generate(
            &Prompt::Raw("a long enough prompt to truncate".into()),
            &GenerateParams::greedy(2),
        )
        .err()
        .expect("the broken tokenizer encoded");
    assert!(
        e.to_string().contains("panicked") && e.to_string().contains("stride"),
        "{e}"
    );
    // The engine is still usable for token ids.
    assert!(engine
        .generate(&Prompt::Tokens(vec![5, 6]), &GenerateParams::greedy(2))
        .is_ok());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_million_characters_encode_in_linear_time() {
    let path = common::models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        return common::missing_data("SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-models.sh smollm2)");
    }
    let engine = Engine::load(&path, &LoadOptions::default()).unwrap();
    let tok = engine.tokenizer();
    // One word of a million letters (one pre-token: the worst case of BPE's merge loop), a
    // million digits, and ordinary text; each timed at 1/10 and at full size.
    let words = "the quick brown fox jumps over the lazy dog ".repeat(25_000);
    for (what, text) in [
        ("letters", "a".repeat(1_000_000)),
        ("digits", "7".repeat(1_000_000)),
        ("words", words),
    ] {
        let time = |s: &str| {
            let t0 = std::time::Instant::now();
            let n = tok.encode(s, false).unwrap().len();
            (n, t0.elapsed().as_secs_f64())
        };
        let (n_small, small) = time(&text[..text.len() / 10]);
        let (n, full) = time(&text);
        eprintln!(
            "{what}: {} chars -> {n} tokens in {full:.2} s; a tenth -> {n_small} in {small:.3} s",
            text.len()
        );
        assert!(full < 20.0, "{what}: {full} s");
        // Linear, with room for noise: ten times the input costs at most 30 times the time.
        assert!(
            full < 30.0 * small.max(0.01),
            "{what}: {small} s for a tenth, {full} s for all"
        );
    }
}

/// Loads a copy of each fixture model (GGUF, safetensors) while `meddle(file, bytes)` changes
/// its weights file at the first progress report; the load errors, one per model.
fn load_while(tag: &str, meddle: fn(&Path, &[u8])) -> Vec<r1_core::Error> {
    let originals = [
        fixtures_dir().join("gguf/llama_tiny.f32.gguf"),
        fixtures_dir().join("llama_tiny/model.safetensors"),
    ];
    originals
        .iter()
        .map(|original| {
            let bytes = std::fs::read(original).unwrap();
            let path = place(original, &bytes, tag);
            let file = if path.is_dir() {
                path.join("model.safetensors")
            } else {
                path.clone()
            };
            let done = std::sync::atomic::AtomicBool::new(false);
            let options = LoadOptions::default().with_progress(move |_, _| {
                if !done.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    meddle(&file, &bytes);
                }
                true
            });
            Model::load(&path, &options).expect_err("the file loaded")
        })
        .collect()
}

#[test]
fn a_file_rewritten_while_it_loads_is_an_error() {
    let witness = Witness::new();
    // The same bytes written again: same size, same contents, a new modification time, as
    // when another program saves over the file.
    for e in load_while("rewrite", |file, bytes| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(file, bytes).unwrap();
    }) {
        assert!(e.to_string().contains("changed while the model was loading"), "{e}");
    }
    witness.still_works();
}

#[test]
fn a_file_truncated_while_it_loads_is_an_error() {
    let witness = Witness::new();
    // The file cut to half its size: a read through a mapping of the lost half would kill the
    // process with SIGBUS.
    for e in load_while("truncate", |file, bytes| {
        let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
        f.set_len(bytes.len() as u64 / 2).unwrap();
    }) {
        let msg = e.to_string();
        assert!(msg.contains("ends before byte") && msg.contains("truncated"), "{msg}");
        assert_eq!(e.code(), r1_core::ErrorCode::Format, "{msg}");
    }
    witness.still_works();
}
