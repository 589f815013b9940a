//! Shared by the integration tests: reference folders (a tiny checkpoint plus transformers'
//! outputs in `reference.safetensors`) and the checks run against them.

#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use r1_core::{LoadOptions, Model};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Relative L2 error `‖a − b‖ / ‖b‖`, in f64.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

/// The project's own fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// `../shared/oracle` beside the repository, when present (CI has it; users do not).
pub fn shared_oracle_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/oracle");
    dir.is_dir().then_some(dir)
}

/// Every sub-folder of `dir` that holds a `reference.safetensors`, sorted.
pub fn reference_folders(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.retain(|p| p.join("reference.safetensors").is_file());
    out.sort();
    out
}

/// A reference folder's tensors.
pub struct Reference {
    pub tensors: HashMap<String, Tensor>,
}

impl Reference {
    pub fn load(dir: &Path) -> Reference {
        let tensors = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Reference { tensors }
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn f32s(&self, name: &str) -> Vec<f32> {
        self.tensor(name)
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        let v: Vec<i64> = self.tensor(name).flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(|x| x as u32).collect()
    }

    pub fn ids2(&self, name: &str) -> Vec<Vec<u32>> {
        let v: Vec<Vec<i64>> = self.tensor(name).to_vec2().unwrap();
        v.into_iter()
            .map(|r| r.into_iter().map(|x| x as u32).collect())
            .collect()
    }

    pub fn f32s2(&self, name: &str) -> Vec<Vec<f32>> {
        self.tensor(name).to_dtype(DType::F32).unwrap().to_vec2().unwrap()
    }

    pub fn n_sequences(&self) -> usize {
        (0..).take_while(|i| self.has(&format!("input_ids.{i}"))).count()
    }

    /// MoE layers that have routing references.
    pub fn moe_layers(&self) -> Vec<usize> {
        let mut layers: Vec<usize> = self
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix("topk_idx.L")?.split('.').next()?.parse().ok())
            .collect();
        layers.sort();
        layers.dedup();
        layers
    }

    fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference has no tensor {name}"))
    }
}

/// Values as one flat f32 list: reference tensors, or r1's logits.
pub trait Flat {
    fn flat_values(&self) -> Vec<f32>;
}

impl Flat for Tensor {
    fn flat_values(&self) -> Vec<f32> {
        self.flatten_all().unwrap().to_vec1().unwrap()
    }
}

impl Flat for r1_core::Logits {
    fn flat_values(&self) -> Vec<f32> {
        self.as_slice().to_vec()
    }
}

pub fn flat<T: Flat>(t: &T) -> Vec<f32> {
    t.flat_values()
}

pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy continuation of `prompt` by `n` tokens through the cache.
pub fn greedy(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = model.new_cache();
    let mut logits = model.forward_last(prompt, &mut cache).unwrap().into_vec();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let next = argmax(&logits);
        out.push(next);
        if out.len() < n {
            logits = model.forward_last(&[next], &mut cache).unwrap().into_vec();
        }
    }
    out
}

/// The outcome of checking one folder: report lines and failures.
#[derive(Default)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub failures: Vec<String>,
}

impl Outcome {
    pub fn close(&mut self, what: &str, err: f64, tol: f64) {
        let ok = err <= tol;
        self.lines
            .push(format!("{:4} {what}: rel_l2 {err:.2e}", if ok { "ok" } else { "FAIL" }));
        if !ok {
            self.failures.push(format!("{what}: rel_l2 {err:.3e} > {tol:e}"));
        }
    }

    pub fn equal<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: &T, want: &T) {
        if got == want {
            self.lines.push(format!("ok   {what}: exact"));
        } else {
            self.lines.push(format!("FAIL {what}"));
            self.failures.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }
}

/// Writes `tensors` with `metadata` to a GGUF file in the temporary folder (candle's writer) and
/// returns its path; `tag` keeps concurrent tests apart. The caller removes it.
pub fn write_temp_gguf(
    tag: &str,
    metadata: &[(&str, &candle_core::quantized::gguf_file::Value)],
    tensors: &[(String, candle_core::quantized::QTensor)],
) -> PathBuf {
    let path = std::env::temp_dir().join(format!("r1-test-{}-{tag}.gguf", std::process::id()));
    let refs: Vec<_> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut file = std::fs::File::create(&path).unwrap();
    candle_core::quantized::gguf_file::write(&mut file, metadata, &refs).unwrap();
    path
}

/// Loads `dir` with the given weights file in place of `model.safetensors` (a temporary folder
/// holding the config and a link to the weights).
pub fn load_with_weights(dir: &Path, weights: &str, options: &LoadOptions) -> Model {
    let tmp = std::env::temp_dir().join(format!(
        "r1-test-{}-{}-{}",
        std::process::id(),
        dir.file_name().unwrap().to_string_lossy(),
        weights
    ));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(dir.join("config.json"), tmp.join("config.json")).unwrap();
    let link = tmp.join("model.safetensors");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(dir.join(weights), &link).unwrap();
    let model = Model::load(&tmp, options).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let _ = std::fs::remove_dir_all(&tmp);
    model
}

/// Every check of the issue against one reference folder, float32 weights and compute.
pub fn check_folder(dir: &Path) -> Outcome {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let reference = Reference::load(dir);
    let model = Model::load(dir, &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    check_model(&name, &model, &reference)
}

/// Every check of [`check_folder`] for a loaded model (a checkpoint folder or a GGUF file).
pub fn check_model(name: &str, model: &Model, reference: &Reference) -> Outcome {
    const TOL: f64 = 1e-4;
    let mut o = Outcome::default();
    for i in 0..reference.n_sequences() {
        let ids = reference.ids(&format!("input_ids.{i}"));
        let t = ids.len();
        // One full pass, with routing.
        let mut cache = model.new_cache();
        let mut routing = Vec::new();
        let full = model.forward_traced(&ids, &mut cache, &mut routing).unwrap();
        o.close(
            &format!("{name} logits.{i} (full)"),
            rel_l2(&flat(&full), &reference.f32s(&format!("logits.{i}"))),
            TOL,
        );
        for layer in reference.moe_layers() {
            let decided = routing
                .iter()
                .find(|r| r.layer == layer)
                .expect("routing of a MoE layer");
            let want = reference.ids2(&format!("topk_idx.L{layer}.{i}"));
            let want_w = reference.f32s2(&format!("topk_weight.L{layer}.{i}"));
            let mut got = Vec::new();
            let (mut got_w, mut ref_w) = (Vec::new(), Vec::new());
            for (tok, r) in decided.tokens.iter().enumerate() {
                // Reference ids are sorted ascending; align our weights to that order.
                let mut pairs: Vec<(u32, f32)> = r
                    .experts
                    .iter()
                    .map(|&e| e as u32)
                    .zip(r.weights.iter().copied())
                    .collect();
                pairs.sort_by_key(|p| p.0);
                got.push(pairs.iter().map(|p| p.0).collect::<Vec<_>>());
                got_w.extend(pairs.iter().map(|p| p.1));
                ref_w.extend(&want_w[tok]);
            }
            o.equal(&format!("{name} topk_idx.L{layer}.{i}"), &got, &want);
            if got == want {
                o.close(&format!("{name} topk_weight.L{layer}.{i}"), rel_l2(&got_w, &ref_w), TOL);
            }
            let logits: Vec<f32> = decided.router_logits.concat();
            o.close(
                &format!("{name} router_logits.L{layer}.{i}"),
                rel_l2(&logits, &reference.f32s(&format!("router_logits.L{layer}.{i}"))),
                TOL,
            );
        }
        // Prefill T-1 tokens, then one decode step (the absorbed MLA form).
        let mut cache = model.new_cache();
        let prefill = model.forward(&ids[..t - 1], &mut cache).unwrap();
        o.close(
            &format!("{name} prefill_logits.{i}"),
            rel_l2(&flat(&prefill), &reference.f32s(&format!("prefill_logits.{i}"))),
            TOL,
        );
        let decode = model.forward(&ids[t - 1..], &mut cache).unwrap();
        o.close(
            &format!("{name} decode_logits.{i}"),
            rel_l2(&flat(&decode), &reference.f32s(&format!("decode_logits.{i}"))),
            TOL,
        );
        // Token by token from an empty cache equals the full pass.
        let mut cache = model.new_cache();
        let rows: Vec<f32> = ids
            .iter()
            .flat_map(|&id| flat(&model.forward(&[id], &mut cache).unwrap()))
            .collect();
        o.close(
            &format!("{name} logits.{i} (incremental)"),
            rel_l2(&rows, &reference.f32s(&format!("logits.{i}"))),
            TOL,
        );
        // Greedy continuation.
        let want = reference.ids(&format!("generated.{i}"));
        o.equal(
            &format!("{name} generated.{i}"),
            &greedy(model, &ids, want.len()),
            &want,
        );
    }
    o
}

/// The bf16-weight references: `model.bf16.safetensors` upcast to f32, and the f32 file stored
/// as bf16 (`--dtype bf16`), both against `bf16w_logits`.
pub fn check_bf16_weights(dir: &Path) -> Outcome {
    const TOL: f64 = 1e-4;
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let mut o = Outcome::default();
    let reference = Reference::load(dir);
    let bf16_file = load_with_weights(dir, "model.bf16.safetensors", &LoadOptions::default());
    let stored_bf16 = Model::load(dir, &LoadOptions::default().with_dtype(r1_core::DType::BF16)).unwrap();
    for i in 0..reference.n_sequences() {
        let ids = reference.ids(&format!("input_ids.{i}"));
        let want = reference.f32s(&format!("bf16w_logits.{i}"));
        for (how, model) in [("bf16 file", &bf16_file), ("f32 file stored bf16", &stored_bf16)] {
            let got = flat(&model.forward(&ids, &mut model.new_cache()).unwrap());
            o.close(&format!("{name} bf16w_logits.{i} ({how})"), rel_l2(&got, &want), TOL);
        }
        let gen = reference.ids(&format!("bf16w_generated.{i}"));
        o.equal(
            &format!("{name} bf16w_generated.{i}"),
            &greedy(&bf16_file, &ids, gen.len()),
            &gen,
        );
    }
    o
}

/// Prints the outcome and panics with every failure.
pub fn report(o: Outcome) {
    for l in &o.lines {
        println!("{l}");
    }
    assert!(
        o.failures.is_empty(),
        "{} check(s) failed:\n{}",
        o.failures.len(),
        o.failures.join("\n")
    );
}

/// `reference.json` of a folder. Python's json writes `Infinity` for some margins, which is not
/// JSON; those become null.
pub fn reference_json(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    let text = text
        .replace("-Infinity", "null")
        .replace("Infinity", "null")
        .replace("NaN", "null");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Every reference folder: the project's fixtures, then `../shared/oracle`'s when present.
pub fn all_reference_folders() -> Vec<PathBuf> {
    let mut v = reference_folders(&fixtures_dir());
    if let Some(shared) = shared_oracle_dir() {
        v.extend(reference_folders(&shared));
    } else {
        eprintln!("NOTE: ../shared/oracle is absent; checking the project's own fixtures only");
    }
    v
}

/// Ids from a JSON list.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Reports test data that is missing: a loud SKIPPED line for a user without it, a failure where
/// the data is required (`.ci/run` sets `R1_REQUIRE_TEST_DATA=1`), so CI never passes by skipping.
pub fn missing_data(what: &str) {
    if std::env::var_os("R1_REQUIRE_TEST_DATA").is_some() {
        panic!("{what} is missing, and R1_REQUIRE_TEST_DATA is set");
    }
    eprintln!("\n*** SKIPPED: {what} is missing ***\n");
}

/// Where `scripts/fetch-models.sh` keeps the real models.
pub fn models_dir() -> PathBuf {
    std::env::var_os("R1_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cache/r1/models"))
}

/// An example binary of this package, built by `cargo test` beside the test's own binary.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join("examples").join(name);
    assert!(path.is_file(), "{} is not built", path.display());
    path
}

/// A scratch copy of a fixture's config and weights, for breaking.
pub fn scratch(fixture: &str, tag: &str) -> PathBuf {
    let src = fixtures_dir().join(fixture);
    let dir = std::env::temp_dir().join(format!("r1-errors-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir
}

/// Rewrites a scratch folder's `config.json` through `edit`.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

/// The error of loading `dir`, which must fail.
pub fn load_err(dir: &Path) -> r1_core::Error {
    match Model::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded but should not have", dir.display()),
        Err(e) => e,
    }
}
