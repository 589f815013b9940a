//! Quantized inference: in-situ quantization of checkpoints, and GGUF files' weights checked
//! apart from activation quantization by exporting them to a checkpoint.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use r1_core::internals::GgufFile;
use r1_core::internals::ModelConfig;
use r1_core::internals::Weights;
use r1_core::Architecture;
use r1_core::QuantizeTo;
use r1_core::{CachePrecision, LoadOptions, Model};
use std::collections::HashMap;
use std::path::Path;

/// Q8_0 weights plus 8-bit activations stay within 3% of transformers' float32 logits (measured
/// 1.6–2.8%) and keep the greedy choice on nearly every position. In MoE models quantization may
/// flip a close expert choice, which moves a whole position's logits (deepseek_v3_tiny: 16%), so
/// there only the greedy choices are required.
#[test]
fn q8_0_in_situ_quantization_stays_close_to_transformers() {
    let mut o = Outcome::default();
    for dir in reference_folders(&fixtures_dir()) {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let reference = Reference::load(&dir);
        let opts = LoadOptions::default().with_quantize(Some(QuantizeTo::Q8_0));
        let model = Model::load(&dir, &opts).unwrap();
        for i in 0..reference.n_sequences() {
            let ids = reference.ids(&format!("input_ids.{i}"));
            let got = flat(&model.forward(&ids, &mut model.new_cache()).unwrap());
            let want = reference.f32s(&format!("logits.{i}"));
            let err = rel_l2(&got, &want);
            if !model.is_moe() {
                o.close(&format!("{name} logits.{i} (Q8_0)"), err, 3e-2);
            } else {
                o.lines
                    .push(format!("info {name} logits.{i} (Q8_0, MoE): rel_l2 {err:.2e}"));
            }
            let vocab = want.len() / ids.len();
            let agree = got
                .chunks(vocab)
                .zip(want.chunks(vocab))
                .filter(|(a, b)| argmax(a) == argmax(b))
                .count();
            o.equal(
                &format!("{name} argmax.{i} (Q8_0) ≥ {}/{}", ids.len() - 1, ids.len()),
                &(agree + 1 >= ids.len()),
                &true,
            );
        }
    }
    report(o);
}

#[test]
fn q4_k_quantizes_rows_of_256_and_falls_back_otherwise() {
    use r1_core::internals::quantize_matrix;
    use r1_core::internals::Matrix;
    let w = Tensor::from_vec(
        (0..8 * 256)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 700.0)
            .collect::<Vec<f32>>(),
        (8, 256),
        &Device::Cpu,
    )
    .unwrap();
    let Matrix::Quantized(q) = quantize_matrix(&w, QuantizeTo::Q4K).unwrap() else {
        panic!("256-wide rows must become Q4_K")
    };
    let back = flat(&q.dequantize(&Device::Cpu).unwrap());
    // 4-bit levels with 6-bit block scales and minimums: ~6% RMS error on uniform data.
    assert!(
        rel_l2(&back, &flat(&w)) < 0.08,
        "Q4_K round trip error {}",
        rel_l2(&back, &flat(&w))
    );
    let narrow = w.narrow(1, 0, 64).unwrap().contiguous().unwrap();
    assert!(
        matches!(quantize_matrix(&narrow, QuantizeTo::Q4K).unwrap(), Matrix::Blocks(_)),
        "64-wide rows fall back to Q8_0"
    );
}

/// GGUF `llama` files store q/k rows of each head permuted for interleaved rope; the Hugging Face
/// layout pairs `(i, i + d/2)`. Undoes `reshape(heads, 2, d/2) → swap(1, 2)` of the converter.
fn unpermute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    let d = rows / heads;
    w.reshape((heads, d / 2, 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// The first `layers` layers of a GGUF file's weights, dequantized, as a Hugging Face checkpoint.
fn export_checkpoint(cfg: &ModelConfig, w: &Weights, dir: &Path) {
    let gqa = match &cfg.attention {
        r1_core::internals::AttentionConfig::Gqa(g) => g.clone(),
        _ => panic!("this export handles Llama and Qwen2"),
    };
    let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = (gqa.num_heads * gqa.head_dim, gqa.num_kv_heads * gqa.head_dim);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: &str, shape: &[usize]| {
        t.insert(name.to_string(), w.get(name, shape).unwrap());
    };
    put("model.embed_tokens.weight", &[cfg.vocab_size, h]);
    put("model.norm.weight", &[h]);
    if w.contains("lm_head.weight") {
        put("lm_head.weight", &[cfg.vocab_size, h]);
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (n, s) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![inter, h]),
            ("mlp.up_proj.weight", vec![inter, h]),
            ("mlp.down_proj.weight", vec![h, inter]),
        ] {
            put(&format!("{p}.{n}"), &s);
        }
        if gqa.qkv_bias {
            for (n, s) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                put(&format!("{p}.self_attn.{n}.bias"), &[s]);
            }
        }
    }
    if cfg.arch == Architecture::Llama {
        for l in 0..cfg.num_hidden_layers {
            for (n, heads) in [("q_proj", gqa.num_heads), ("k_proj", gqa.num_kv_heads)] {
                let key = format!("model.layers.{l}.self_attn.{n}.weight");
                let fixed = unpermute(&t[&key], heads);
                t.insert(key, fixed);
            }
        }
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    let rope_theta = cfg.rope.theta;
    let config = serde_json::json!({
        "architectures": [cfg.arch.hf_name()],
        "vocab_size": cfg.vocab_size, "hidden_size": h, "intermediate_size": inter,
        "num_hidden_layers": cfg.num_hidden_layers, "num_attention_heads": gqa.num_heads,
        "num_key_value_heads": gqa.num_kv_heads, "head_dim": gqa.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": !t.contains_key("lm_head.weight"),
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

/// A real GGUF file's weights, dequantized, run through the GGUF path (exact f32 products) and
/// through the safetensors path of the exported checkpoint: the two agree to float32 rounding,
/// which checks the name table, the config translation and the rope layouts.
#[test]
fn gguf_weights_equal_their_exported_checkpoint() {
    let models = std::env::var_os("R1_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cache/r1/models"));
    let mut o = Outcome::default();
    for file in [
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ] {
        let path = models.join(file);
        if !path.is_file() {
            missing_data(&format!("{} (run scripts/fetch-models.sh)", path.display()));
            continue;
        }
        let g = GgufFile::open(&path).unwrap();
        let mut cfg = r1_core::internals::gguf_config(&g).unwrap();
        cfg.num_hidden_layers = 3; // three layers check every mapping; the rest repeat them
        let w = Weights::from_gguf(g, DType::F32, &Device::Cpu)
            .unwrap()
            .with_dense_matrices(true);
        // Both in f32 (a quantized file's cache is f16 by default): the weights are compared here.
        let gguf_model = r1_core::internals::model_from_weights(cfg.clone(), &w, CachePrecision::F32).unwrap();
        let dir = std::env::temp_dir().join(format!("r1-export-{}-{file}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        export_checkpoint(&cfg, &w, &dir);
        let st_model = Model::load(&dir, &LoadOptions::default()).unwrap();
        let ids: Vec<u32> = (0..12).map(|i| (i * 7919 + 101) % cfg.vocab_size as u32).collect();
        let a = flat(&gguf_model.forward(&ids, &mut gguf_model.new_cache()).unwrap());
        let b = flat(&st_model.forward(&ids, &mut st_model.new_cache()).unwrap());
        o.close(
            &format!("{file}: GGUF path vs exported checkpoint (3 layers)"),
            rel_l2(&a, &b),
            1e-5,
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    report(o);
}

/// Every GGUF tensor type the issue names, read by r1's GGUF reader into a linear layer: its
/// product equals the product with the matrix dequantized by candle (an implementation apart from
/// r1's kernels) up to the 8-bit activation quantization. The file is written by candle's GGUF
/// writer, one `[48, 512]` matrix per type.
#[test]
fn every_gguf_tensor_type_computes_its_dequantized_product() {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use r1_core::internals::Linear;
    let types = [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];
    let (rows, cols, tokens) = (48, 512, 5);
    let values = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 - 1001.0) / 1001.0)
            .collect()
    };
    let w = Tensor::from_vec(values(rows * cols, 1), (rows, cols), &Device::Cpu).unwrap();
    let quantized: Vec<(String, QTensor)> = types
        .iter()
        .enumerate()
        .map(|(i, &t)| (format!("blk.{i}.attn_q.weight"), QTensor::quantize(&w, t).unwrap()))
        .collect();
    let arch = gguf_file::Value::String("llama".into());
    let path = write_temp_gguf("types", &[("general.architecture", &arch)], &quantized);
    let weights = Weights::from_gguf(GgufFile::open(&path).unwrap(), DType::F32, &Device::Cpu).unwrap();
    let x = Tensor::from_vec(values(tokens * cols, 2), (tokens, cols), &Device::Cpu).unwrap();
    let mut o = Outcome::default();
    for (i, ((_, q), t)) in quantized.iter().zip(types).enumerate() {
        let linear = Linear::load(
            &weights,
            &format!("model.layers.{i}.self_attn.q_proj"),
            cols,
            rows,
            false,
        )
        .unwrap_or_else(|e| panic!("{t:?}: {e}"));
        let got = flat(&linear.forward(&x).unwrap());
        let want = flat(&x.matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap()).unwrap());
        // Float types are exact up to summation order; block types add the 8-bit activations
        // (measured 1.6–3.8e-4 on these values).
        let tol = if matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            1e-5
        } else {
            2e-3
        };
        o.close(&format!("{t:?}"), rel_l2(&got, &want), tol);
    }
    std::fs::remove_file(&path).ok();
    report(o);
}
