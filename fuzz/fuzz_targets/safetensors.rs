//! The safetensors reader and the shard index. The first byte picks the case: a single
//! `model.safetensors` of the rest, or a `model.safetensors.index.json` of the rest beside two
//! valid shards and a link that leads out of the folder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

/// A folder of this process, with the two shards and the link in place.
fn folder() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r1-fuzz-st-{}", std::process::id()));
    if !dir.join("s2.safetensors").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let shard = |name: &str| {
            let header = format!(r#"{{"{name}":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}}"#);
            let mut v = (header.len() as u64).to_le_bytes().to_vec();
            v.extend(header.as_bytes());
            v.extend([0u8; 8]);
            v
        };
        std::fs::write(dir.join("s1.safetensors"), shard("a")).unwrap();
        std::fs::write(dir.join("s2.safetensors"), shard("b")).unwrap();
        let _ = std::os::unix::fs::symlink("/etc/hostname", dir.join("out.safetensors"));
    }
    dir
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = folder();
    let (file, other) = match mode % 2 {
        0 => ("model.safetensors", "model.safetensors.index.json"),
        _ => ("model.safetensors.index.json", "model.safetensors"),
    };
    let _ = std::fs::remove_file(dir.join(other));
    std::fs::write(dir.join(file), rest).unwrap();
    if let Ok(store) = r1_core::internals::SafetensorsStore::open(&dir) {
        for name in ["a", "b", "x"] {
            let _ = store.get(name).map(|t| t.map(|t| t.bytes.len()));
        }
    }
});
