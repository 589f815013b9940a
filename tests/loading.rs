//! Loading: bad files, configs and arguments give errors that name what was wrong and where (never a
//! panic), and what must be skipped is skipped.

mod common;
use common::{edit_config, fixtures_dir, load_err, scratch};
use r1_core::{Error, LoadOptions, Model};
use std::path::Path;

#[test]
fn missing_folder_and_config_are_named() {
    let e = load_err(Path::new("/nonexistent/r1-model"));
    assert!(e.to_string().contains("/nonexistent/r1-model"), "{e}");
    let dir = scratch("llama_tiny", "noconfig");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("config.json"),
        "{e}"
    );
}

#[test]
fn unknown_architecture_is_named() {
    let dir = scratch("llama_tiny", "arch");
    edit_config(&dir, |v| {
        v["architectures"] = serde_json::json!(["MambaForCausalLM"]);
        v["model_type"] = serde_json::json!("mamba");
    });
    let e = load_err(&dir);
    assert!(
        matches!(e, Error::Unsupported(_)) && e.to_string().contains("MambaForCausalLM"),
        "{e}"
    );
}

#[test]
fn unsupported_options_are_named() {
    let dir = scratch("deepseek_v3_tiny", "topk");
    edit_config(&dir, |v| v["topk_method"] = serde_json::json!("random"));
    let e = load_err(&dir);
    assert!(e.to_string().contains("topk_method `random`"), "{e}");

    let dir = scratch("llama_tiny", "rope");
    edit_config(&dir, |v| {
        v["rope_scaling"] = serde_json::json!({"rope_type": "dynamic", "factor": 2.0})
    });
    assert!(load_err(&dir).to_string().contains("`dynamic`"));

    let dir = scratch("llama_tiny", "quant");
    edit_config(&dir, |v| {
        v["quantization_config"] = serde_json::json!({"quant_method": "gptq"})
    });
    assert!(load_err(&dir).to_string().contains("gptq"));

    let dir = scratch("llama_tiny", "act");
    edit_config(&dir, |v| v["hidden_act"] = serde_json::json!("gelu"));
    assert!(load_err(&dir).to_string().contains("gelu"));
}

#[test]
fn bad_config_values_are_named() {
    let dir = scratch("llama_tiny", "badfield");
    edit_config(&dir, |v| v["hidden_size"] = serde_json::json!("wide"));
    let e = load_err(&dir);
    assert!(e.to_string().contains("`hidden_size`"), "{e}");

    let dir = scratch("deepseek_v3_tiny", "groups");
    edit_config(&dir, |v| v["n_group"] = serde_json::json!(3));
    let e = load_err(&dir);
    assert!(e.to_string().contains("`n_group` 3"), "{e}");

    let dir = scratch("llama_tiny", "json");
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    assert!(matches!(load_err(&dir), Error::Json { .. }));
}

#[test]
fn config_contradicting_weights_names_tensor_and_shapes() {
    let dir = scratch("llama_tiny", "shape");
    edit_config(&dir, |v| v["intermediate_size"] = serde_json::json!(100));
    let e = load_err(&dir);
    let msg = e.to_string();
    assert!(matches!(e, Error::BadWeights { .. }), "{msg}");
    assert!(
        msg.contains("model.safetensors") && msg.contains("mlp.gate_proj.weight") && msg.contains("100"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = scratch("llama_tiny", "missing");
    edit_config(&dir, |v| v["num_hidden_layers"] = serde_json::json!(3));
    let e = load_err(&dir);
    assert!(
        matches!(&e, Error::MissingTensor { name, .. } if name.starts_with("model.layers.2.")),
        "{e}"
    );
}

#[test]
fn truncated_and_corrupt_files_are_named() {
    let dir = scratch("llama_tiny", "trunc");
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(e, Error::BadWeights { .. }) && e.to_string().contains("truncated"),
        "{e}"
    );

    std::fs::write(&p, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage").unwrap();
    let e = load_err(&dir);
    assert!(
        matches!(e, Error::BadWeights { .. }) && e.to_string().contains("model.safetensors"),
        "{e}"
    );

    std::fs::write(&p, b"").unwrap();
    assert!(matches!(load_err(&dir), Error::BadWeights { .. }));
}

#[test]
fn bad_tokens_and_full_context_are_errors_and_leave_the_cache_intact() {
    let model = Model::load(fixtures_dir().join("llama_tiny"), &LoadOptions::default()).unwrap();
    let mut cache = model.new_cache();
    model.forward(&[7, 8], &mut cache).unwrap();
    let e = model.forward(&[9, 100_000], &mut cache).unwrap_err();
    assert!(e.to_string().contains("100000"), "{e}");
    assert!(model.forward(&[], &mut cache).is_err());
    assert_eq!(cache.len(), 2, "a failed step must not advance the cache");
    let room = cache.max_len() - cache.len();
    let e = model.forward(&vec![7; room + 1], &mut cache).unwrap_err();
    assert!(e.to_string().contains("context full"), "{e}");
    cache.reset();
    assert_eq!(cache.len(), 0);
}

#[test]
fn mtp_layer_is_skipped() {
    // deepseek_v3_tiny has 3 decoder layers. Declared as 2 layers + 1 MTP layer, the tensors of
    // `model.layers.2.*` become the MTP layer's, which must be left alone, not rejected.
    let dir = scratch("deepseek_v3_tiny", "mtp");
    edit_config(&dir, |v| {
        v["num_hidden_layers"] = serde_json::json!(2);
        v["num_nextn_predict_layers"] = serde_json::json!(1);
    });
    let model = Model::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(model.num_layers(), 2);
    let logits = model.forward(&[7, 8, 9], &mut model.new_cache()).unwrap();
    assert_eq!(logits.shape(), (3, 512));
}
