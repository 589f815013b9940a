//! Every folder of `../shared/oracle` (tiny checkpoints with transformers' reference outputs),
//! when that folder is beside the repository, as it is in CI.

mod common;
use common::*;

#[test]
fn shared_oracle_folders_match_transformers() {
    let Some(dir) = shared_oracle_dir() else {
        eprintln!("SKIPPED: ../shared/oracle is not present; only the project's own fixtures were checked");
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
