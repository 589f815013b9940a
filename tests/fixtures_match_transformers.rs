//! The project's own fixtures (`tests/fixtures/`, made by `make_fixtures.py` with transformers):
//! every variant of the issue, checked to float32 rounding.

mod common;
use common::*;

macro_rules! fixture_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let dir = fixtures_dir().join(stringify!($name));
                let mut o = check_folder(&dir);
                if dir.join("model.bf16.safetensors").is_file() {
                    let b = check_bf16_weights(&dir);
                    o.lines.extend(b.lines);
                    o.failures.extend(b.failures);
                }
                report(o);
            }
        )*

        /// A fixture folder without a test here would be silently unchecked.
        #[test]
        fn every_fixture_folder_is_tested() {
            let tested = [$(stringify!($name)),*];
            for folder in reference_folders(&fixtures_dir()) {
                let name = folder.file_name().unwrap().to_string_lossy().to_string();
                assert!(tested.contains(&name.as_str()), "fixture {name} has no test");
            }
        }
    };
}

fixture_tests!(
    llama_tiny,
    qwen2_tiny,
    deepseek_v3_tiny,
    deepseek_v3_noqlora_sharded,
    deepseek_v2_greedy,
    deepseek_v2_group_limited,
    deepseek_v3_fp8,
);

/// The fixtures converted by llama.cpp's own converter (`tests/fixtures/gguf`, made by
/// `make_gguf_fixtures.sh`): the GGUF reader must reproduce transformers' references.
/// F32 files to float32 rounding; Q8_0 files within the 8-bit activation noise (llama.cpp itself
/// is at 1.7–2.8e-2 on them).
///
/// `deepseek_v2_group_limited` is left out: its YaRN `mscale` (1.0 ≠ `mscale_all_dim` 0.5) has no
/// GGUF key, so no GGUF reader can recover its cos/sin factor (llama.cpp misses it too).
#[test]
fn gguf_fixtures_match_transformers() {
    let dir = fixtures_dir().join("gguf");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "gguf"));
    files.sort();
    assert!(files.len() >= 8, "expected the converted fixtures in {}", dir.display());
    let mut all = Outcome::default();
    for file in files {
        let stem = file.file_name().unwrap().to_string_lossy().to_string();
        let name = stem.split('.').next().unwrap().to_string();
        if name == "deepseek_v2_group_limited" {
            continue;
        }
        let reference = Reference::load(&fixtures_dir().join(&name));
        let model = r1_core::Model::load(&file, &Default::default()).unwrap_or_else(|e| panic!("{stem}: {e}"));
        if stem.contains(".f32.") {
            let o = check_model(&stem, &model, &reference);
            all.lines.extend(o.lines);
            all.failures.extend(o.failures);
        } else {
            for i in 0..reference.n_sequences() {
                let ids = reference.ids(&format!("input_ids.{i}"));
                let got = flat(&model.forward(&ids, &mut model.new_cache()).unwrap());
                all.close(
                    &format!("{stem} logits.{i}"),
                    rel_l2(&got, &reference.f32s(&format!("logits.{i}"))),
                    5e-2,
                );
            }
        }
    }
    report(all);
}

/// Older llama.cpp converters wrote DeepSeek's `kv_b_proj` whole as `attn_kv_b`; newer ones split
/// it into `attn_k_b` and `attn_v_b` (the converted fixtures). The fixture rewritten in the older
/// layout (candle's GGUF writer, the split tensors joined back) must give the same references.
#[test]
fn gguf_deepseek2_unsplit_kv_b_matches_transformers() {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    let name = "deepseek_v3_tiny";
    let src = fixtures_dir().join(format!("gguf/{name}.f32.gguf"));
    let mut file = std::fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut joined = 0;
    for tensor_name in content.tensor_infos.keys() {
        if tensor_name.ends_with("attn_v_b.weight") {
            continue;
        }
        let q = content.tensor(&mut file, tensor_name, &Device::Cpu).unwrap();
        let Some(block) = tensor_name.strip_suffix("attn_k_b.weight") else {
            tensors.push((tensor_name.clone(), q));
            continue;
        };
        // attn_k_b [heads, kv_lora, nope] (W_UK transposed), attn_v_b [heads, v, kv_lora]
        // → attn_kv_b [heads * (nope + v), kv_lora], each head's nope rows then its v rows.
        let k = q.dequantize(&Device::Cpu).unwrap();
        let v = content
            .tensor(&mut file, &format!("{block}attn_v_b.weight"), &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let (heads, kv_lora, _) = k.dims3().unwrap();
        let kv_b = Tensor::cat(&[&k.transpose(1, 2).unwrap(), &v], 1)
            .unwrap()
            .reshape(((), kv_lora))
            .unwrap();
        assert_eq!(kv_b.dim(0).unwrap() % heads, 0);
        tensors.push((
            format!("{block}attn_kv_b.weight"),
            QTensor::quantize(&kv_b, GgmlDType::F32).unwrap(),
        ));
        joined += 1;
    }
    let split = content
        .tensor_infos
        .keys()
        .filter(|n| n.ends_with("attn_v_b.weight"))
        .count();
    assert!(joined > 0 && joined == split, "{joined} attn_k_b, {split} attn_v_b");
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let out = write_temp_gguf("unsplit-kv-b", &metadata, &tensors);
    let model = r1_core::Model::load(&out, &Default::default());
    std::fs::remove_file(&out).ok();
    let model = model.unwrap();
    report(check_model(
        &format!("{name} (attn_kv_b)"),
        &model,
        &Reference::load(&fixtures_dir().join(name)),
    ));
}
