//! The examples' interfaces that other programs drive: `chat --json` turn by turn equals
//! `generate --greedy --chat FILE` on the same conversation, and `generate --top-logprobs K`
//! writes the logprobs into `--ids-out`.

mod common;
use common::{example_binary, fixtures_dir};
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r1-examples-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn chat_json_turns_equal_generate_on_the_same_conversation() {
    let model = fixtures_dir().join("deepseek_v3_tiny");
    let questions = ["What is 2+2?", "And 3+3?", "Thanks!"];
    let mut child = Command::new(example_binary("chat"))
        .args(["--model", model.to_str().unwrap(), "--json", "--greedy"])
        .args(["--max-tokens", "10", "--max-reasoning-tokens", "3", "--threads", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{}\n", questions.join("\n")).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let turns: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(turns.len(), 3);
    let dir = scratch("chat");
    let mut messages = vec![];
    for (k, (turn, q)) in turns.iter().zip(questions).enumerate() {
        for key in [
            "prompt_tokens",
            "cached_prompt_tokens",
            "generated_ids",
            "reasoning",
            "answer",
        ] {
            assert!(turn.get(key).is_some(), "turn {k} has no {key}");
        }
        if k > 0 {
            assert!(turn["cached_prompt_tokens"].as_u64().unwrap() > 0, "turn {k}");
        }
        messages.push(serde_json::json!({"role": "user", "content": q}));
        let chat_file = dir.join(format!("chat{k}.json"));
        std::fs::write(&chat_file, serde_json::to_string(&messages).unwrap()).unwrap();
        let ids_file = dir.join(format!("ids{k}.json"));
        let status = Command::new(example_binary("generate"))
            .args([
                "--model",
                model.to_str().unwrap(),
                "--greedy",
                "--chat",
                chat_file.to_str().unwrap(),
            ])
            .args(["--max-tokens", "10", "--max-reasoning-tokens", "3"])
            .args(["--ids-out", ids_file.to_str().unwrap()])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let ids: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ids_file).unwrap()).unwrap();
        assert_eq!(ids["generated_ids"], turn["generated_ids"], "turn {k}");
        assert_eq!(
            ids["prompt_ids"].as_array().unwrap().len() as u64,
            turn["prompt_tokens"].as_u64().unwrap()
        );
        messages.push(serde_json::json!({"role": "assistant", "content": turn["answer"]}));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generate_writes_top_logprobs() {
    let model = fixtures_dir().join("qwen2_tiny");
    let dir = scratch("logprobs");
    let ids_file = dir.join("ids.json");
    let status = Command::new(example_binary("generate"))
        .args([
            "--model",
            model.to_str().unwrap(),
            "--greedy",
            "--raw",
            "--prompt",
            "Hello there",
        ])
        .args([
            "--max-tokens",
            "5",
            "--top-logprobs",
            "3",
            "--ids-out",
            ids_file.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ids_file).unwrap()).unwrap();
    let generated = v["generated_ids"].as_array().unwrap();
    let logprobs = v["logprobs"].as_array().unwrap();
    let top = v["top_logprobs"].as_array().unwrap();
    assert_eq!((logprobs.len(), top.len()), (generated.len(), generated.len()));
    for ((id, lp), top) in generated.iter().zip(logprobs).zip(top) {
        let top = top.as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the best, with the same log-probability.
        assert_eq!(&top[0][0], id);
        assert!((top[0][1].as_f64().unwrap() - lp.as_f64().unwrap()).abs() < 1e-6);
        assert!(top[0][1].as_f64().unwrap() >= top[1][1].as_f64().unwrap());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
