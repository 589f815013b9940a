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
