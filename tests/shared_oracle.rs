//! Every folder of `../shared/oracle` (tiny checkpoints with transformers' reference outputs),
//! when that folder is beside the repository, as it is in CI.

mod common;
use common::*;

#[test]
fn shared_oracle_folders_match_transformers() {
    let Some(dir) = shared_oracle_dir() else {
        missing_data("../shared/oracle (only the project's own fixtures were checked)");
        return;
    };
    let folders = reference_folders(&dir);
    assert!(!folders.is_empty(), "{} holds no reference folder", dir.display());
    let mut all = Outcome::default();
    for folder in folders {
        let mut o = check_folder(&folder);
        if folder.join("model.bf16.safetensors").is_file() {
            let b = check_bf16_weights(&folder);
            o.lines.extend(b.lines);
            o.failures.extend(b.failures);
        }
        all.lines.extend(o.lines);
        all.failures.extend(o.failures);
    }
    report(all);
}

/// `../shared/oracle-gguf`: the same models converted by llama.cpp's converter (F32). The GGUF
/// reader must reproduce transformers' references like the safetensors path does.
#[test]
fn shared_oracle_gguf_files_match_transformers() {
    let Some(oracle) = shared_oracle_dir() else {
        missing_data("../shared/oracle");
        return;
    };
    let gguf_dir = oracle.parent().unwrap().join("oracle-gguf");
    let mut files: Vec<_> = std::fs::read_dir(&gguf_dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "gguf"));
    files.sort();
    assert!(!files.is_empty(), "{} holds no GGUF file", gguf_dir.display());
    let mut all = Outcome::default();
    for file in files {
        let stem = file.file_name().unwrap().to_string_lossy().to_string();
        let name = stem.split('.').next().unwrap().to_string();
        let reference = Reference::load(&oracle.join(&name));
        let model = r1_core::Model::load(&file, &Default::default()).unwrap_or_else(|e| panic!("{stem}: {e}"));
        let o = check_model(&stem, &model, &reference);
        all.lines.extend(o.lines);
        all.failures.extend(o.failures);
    }
    report(all);
}
