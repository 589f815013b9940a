//! The C API from C and C++: builds `tests/c/test_api.c`, `examples/c/chat.c` and
//! `examples/cpp/chat.cpp` with the system compilers against `include/r1.h` and the libr1 this
//! test was built with, then runs them on a fixture model against transformers' references.
//!
//! `scripts/c-memcheck.sh` runs the same programs under valgrind and AddressSanitizer through
//! three variables: `R1_C_LIB_DIR` (a libr1 built for valgrind, without AVX-512),
//! `R1_C_CFLAGS` (extra compiler flags, e.g. `-fsanitize=address`) and `R1_C_WRAPPER` (a command
//! the programs run under, e.g. `valgrind --error-exitcode=1 ...`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// target/<profile>, where libr1.so and libr1.a are (or `R1_C_LIB_DIR`).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = match std::env::var_os("R1_C_LIB_DIR") {
        Some(d) => PathBuf::from(d),
        None => exe.parent().unwrap().parent().unwrap().to_path_buf(),
    };
    assert!(
        dir.join("libr1.so").is_file(),
        "no libr1.so in {}: `cargo build --release -p r1-ffi` first (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// A command for `exe`, under `R1_C_WRAPPER` when set. cargo's LD_LIBRARY_PATH (which names
/// target/<profile>) would take precedence over the binary's rpath, so it is replaced.
fn run(exe: &Path) -> Command {
    let wrapper = std::env::var("R1_C_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut c = match words.next() {
        Some(first) => {
            let mut c = Command::new(first);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    c.env("LD_LIBRARY_PATH", lib_dir());
    c
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r1-c-api-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `source` with `compiler` and strict warnings; returns the binary.
fn compile(compiler: &str, std: &str, source: &str, out: &Path) -> PathBuf {
    let lib = lib_dir();
    let status = Command::new(compiler)
        .args([std, "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-g"])
        .args(std::env::var("R1_C_CFLAGS").unwrap_or_default().split_whitespace())
        .arg(repo().join(source))
        .arg("-I")
        .arg(repo().join("include"))
        .arg("-L")
        .arg(&lib)
        .args(["-lr1", "-lpthread", "-lm"])
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("{compiler}: {e}"));
    assert!(status.success(), "{compiler} {source} failed");
    out.to_path_buf()
}

/// The arguments of test_api for one fixture: its reference logits as raw f32, its first
/// sequence, and its first chat case's user message and greedy ids.
fn test_api_args(fixture: &str, dir: &Path) -> Vec<String> {
    let fx = repo().join("tests/fixtures").join(fixture);
    let bytes = std::fs::read(fx.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let logits = st.tensor("logits.0").unwrap();
    assert_eq!(logits.dtype(), safetensors::Dtype::F32);
    let logits_file = dir.join("logits.f32");
    std::fs::write(&logits_file, logits.data()).unwrap();
    let ids = st.tensor("input_ids.0").unwrap();
    let ids: Vec<String> = ids
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()).to_string())
        .collect();
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("reference.json")).unwrap()).unwrap();
    let case = &reference["tokenizer"]["chat"][0];
    let messages = case["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "the first chat case is one user message");
    let greedy: Vec<String> = case["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    // A GGUF cut after its first 100 bytes: the magic is there, the rest is not.
    let truncated = dir.join("truncated.gguf");
    let gguf = std::fs::read(repo().join("tests/fixtures/gguf/qwen2_tiny.f32.gguf")).unwrap();
    std::fs::write(&truncated, &gguf[..100]).unwrap();
    vec![
        fx.display().to_string(),
        truncated.display().to_string(),
        logits_file.display().to_string(),
        ids.join(","),
        messages[0]["content"].as_str().unwrap().to_string(),
        greedy.join(","),
    ]
}

#[test]
fn c_test_program_walks_every_error_path_and_matches_transformers() {
    let dir = scratch("test_api");
    let exe = compile("cc", "-std=c99", "tests/c/test_api.c", &dir.join("test_api"));
    for fixture in ["qwen2_tiny", "deepseek_v3_tiny"] {
        let out = run(&exe).args(test_api_args(fixture, &dir)).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{fixture}:\n{stdout}\n{stderr}");
        assert!(stdout.contains(" 0 failures"), "{stdout}");
        eprintln!("{fixture}: {stdout}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn c_reasoning_features_verify_vote_and_write_datasets() {
    let dir = scratch("reasoning");
    let exe = compile(
        "cc",
        "-std=c99",
        "tests/c/test_reasoning.c",
        &dir.join("test_reasoning"),
    );
    let fixture = repo().join("tests/fixtures/deepseek_v3_tiny");
    let out = run(&exe)
        .args([fixture.to_str().unwrap(), dir.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(" 0 failures"), "{stdout}");
    // The dataset the C program wrote, read back here: four records of three log-probabilities.
    let text = std::fs::read_to_string(dir.join("d.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    for l in &lines {
        let t = l["generated_ids"].as_array().unwrap().len();
        assert_eq!(l["top_ids"].as_array().unwrap().len(), t);
        assert!(l["top_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.as_array().unwrap().len() == 3));
    }
    eprintln!("{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn c_reasoning_example_verifies_votes_and_writes_a_dataset() {
    let dir = scratch("reasoning_example");
    let exe = compile("cc", "-std=c99", "examples/c/reasoning.c", &dir.join("reasoning"));
    let fixture = repo().join("tests/fixtures/deepseek_v3_tiny");
    let data = dir.join("votes.jsonl");
    let out = run(&exe)
        .args([
            fixture.to_str().unwrap(),
            "What is 2 + 2?",
            "e",
            "3",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "[verified]",
        "[sample 0]",
        "[sample 2]",
        "[vote]",
        "[dataset] 3 generations",
    ] {
        assert!(stdout.contains(needle), "{needle}: {stdout}");
    }
    assert_eq!(std::fs::read_to_string(&data).unwrap().lines().count(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn c_and_cpp_chat_examples_stream_a_chat() {
    let dir = scratch("chat");
    let model = repo().join("tests/fixtures/deepseek_v3_tiny");
    for (compiler, std, source) in [
        ("cc", "-std=c99", "examples/c/chat.c"),
        ("c++", "-std=c++17", "examples/cpp/chat.cpp"),
    ] {
        let name = Path::new(source).file_stem().unwrap().to_string_lossy().to_string();
        let exe = compile(compiler, std, source, &dir.join(format!("{name}-{compiler}")));
        let out = run(&exe)
            .args(["--greedy", "--max-tokens", "12"])
            .arg(&model)
            .args(["Hello!", "And now?"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{source}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.matches("[usage]").count(), 2, "{source}: {stdout}");
        assert!(stdout.contains("[reasoning]"), "{source}: {stdout}");
        // The second turn reuses the first's cache.
        let second = stdout.split("[usage]").nth(2).unwrap();
        assert!(!second.contains("(0 cached)"), "{source}: {stdout}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_header_compiles_as_strict_c99_and_cpp() {
    let dir = scratch("header");
    let src = dir.join("include_only.c");
    std::fs::write(
        &src,
        "#include \"r1.h\"\nint main(void) { return r1_version()[0] == 0; }\n",
    )
    .unwrap();
    for (compiler, std) in [("cc", "-std=c99"), ("c++", "-std=c++11")] {
        let status = Command::new(compiler)
            .args([std, "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-fsyntax-only"])
            .args(if compiler == "c++" { vec!["-x", "c++"] } else { vec![] })
            .arg(&src)
            .arg("-I")
            .arg(repo().join("include"))
            .status()
            .unwrap();
        assert!(status.success(), "{compiler} {std}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_example_in_docs_c_api_md_compiles_and_runs() {
    let doc = std::fs::read_to_string(repo().join("docs/c-api.md")).unwrap();
    let start = doc.find("```c\n").expect("a C block") + 5;
    let code = &doc[start..start + doc[start..].find("```").unwrap()];
    let dir = scratch("doc");
    let src = dir.join("doc_example.c");
    std::fs::write(&src, code).unwrap();
    let lib = lib_dir();
    let exe = dir.join("doc_example");
    let status = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Wpedantic", "-Werror"])
        .arg(&src)
        .arg("-I")
        .arg(repo().join("include"))
        .arg("-L")
        .arg(&lib)
        .arg("-lr1")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap();
    assert!(status.success());
    let out = run(&exe)
        .arg(repo().join("tests/fixtures/llama_tiny"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("answer tokens"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn leak_loop_keeps_the_heap_flat_over_a_thousand_generations() {
    // Not a `c_` test: scripts/c-memcheck.sh runs those under valgrind, where 1,000
    // generations would take minutes; valgrind's leak check is test_api.c's.
    let dir = scratch("leak_loop");
    let exe = compile("cc", "-std=c99", "tests/c/leak_loop.c", &dir.join("leak_loop"));
    let out = run(&exe)
        .arg(repo().join("tests/fixtures/deepseek_v3_tiny"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
