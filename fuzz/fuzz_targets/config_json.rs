//! `config.json` normalization and validation on arbitrary JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = r1_core::internals::ModelConfig::from_json(&value, std::path::Path::new("config.json"));
    }
});
