//! The examples' interfaces that other programs drive: `chat --json` turn by turn equals
//! `generate --greedy --chat FILE` on the same conversation, `generate --top-logprobs K`
//! writes the logprobs into `--ids-out`, `generate --samples N` the samples and the vote,
//! `generate --distill-out` and `distill` a dataset that resumes.

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

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn generate_samples_votes_and_writes_a_dataset() {
    let model = fixtures_dir().join("deepseek_v3_tiny");
    let dir = scratch("samples");
    let (ids_file, data) = (dir.join("ids.json"), dir.join("d.jsonl"));
    let _ = std::fs::remove_file(&data);
    let status = Command::new(example_binary("generate"))
        .args([
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "What is 2+2?",
            "--temperature",
            "1.0",
        ])
        .args([
            "--max-tokens",
            "8",
            "--seed",
            "5",
            "--samples",
            "3",
            "--top-logprobs",
            "2",
        ])
        .args([
            "--ids-out",
            ids_file.to_str().unwrap(),
            "--distill-out",
            data.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let v = read_json(&ids_file);
    let samples = v["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3);
    let mut votes = std::collections::HashMap::new();
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(s["seed"], 5 + i as u64);
        assert!(!s["generated_ids"].as_array().unwrap().is_empty());
        if let Some(a) = s["final_answer"].as_str() {
            *votes.entry(a.to_string()).or_insert(0u64) += 1;
        }
    }
    let counts = v["vote"]["counts"].as_object().unwrap();
    assert_eq!(counts.len(), votes.len());
    for (a, n) in counts {
        assert_eq!(n.as_u64(), votes.get(a).copied(), "{a}");
    }
    if let Some(a) = v["vote"]["answer"].as_str() {
        assert_eq!(counts[a].as_u64(), votes.values().max().copied());
    }
    // One dataset line per sample, the same generated ids.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (line, s) in lines.iter().zip(samples) {
        assert_eq!(line["generated_ids"], s["generated_ids"]);
        assert_eq!(
            line["top_ids"].as_array().unwrap().len(),
            s["generated_ids"].as_array().unwrap().len()
        );
        assert_eq!(line["prompt_ids"], v["prompt_ids"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn distill_writes_each_prompt_once_and_resumes() {
    let model = fixtures_dir().join("qwen2_tiny");
    let dir = scratch("distill");
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(
        &prompts,
        concat!(
            "{\"prompt\": \"What is 2+2?\"}\n",
            "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"}]}\n",
            "\n",
            "{\"prompt\": \"Name a colour.\"}\n",
        ),
    )
    .unwrap();
    let distill = |out: &std::path::Path| {
        let status = Command::new(example_binary("distill"))
            .args([
                "--model",
                model.to_str().unwrap(),
                "--prompts",
                prompts.to_str().unwrap(),
            ])
            .args([
                "--out",
                out.to_str().unwrap(),
                "--top-logprobs",
                "3",
                "--greedy",
                "--max-tokens",
                "6",
            ])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    };
    let jsonl = dir.join("d.jsonl");
    let _ = std::fs::remove_file(&jsonl);
    distill(&jsonl);
    let first = std::fs::read_to_string(&jsonl).unwrap();
    distill(&jsonl); // every prompt is already there: nothing is added
    assert_eq!(std::fs::read_to_string(&jsonl).unwrap(), first);
    let lines: Vec<serde_json::Value> = first.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[1]["prompt"].as_str().unwrap().contains("Be brief."));
    for key in [
        "prompt_ids",
        "generated_ids",
        "reasoning",
        "answer",
        "final_answer",
        "top_ids",
        "top_logprobs",
    ] {
        assert!(lines.iter().all(|l| l.get(key).is_some()), "{key}");
    }
    // The same greedy generations as safetensors.
    let st = dir.join("d.safetensors");
    let _ = std::fs::remove_file(&st);
    distill(&st);
    let bytes = std::fs::read(&st).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (i, line) in lines.iter().enumerate() {
        let t = tensors.tensor(&format!("generated_ids.{i}")).unwrap();
        let ids: Vec<u64> = t
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u64)
            .collect();
        let want: Vec<u64> = line["generated_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(ids, want);
        assert_eq!(
            tensors.tensor(&format!("top_logprobs.{i}")).unwrap().shape(),
            [want.len(), 3]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generate_rejects_steps_matching_a_regex() {
    let model = fixtures_dir().join("deepseek_v3_tiny");
    let dir = scratch("verify");
    let ids_file = dir.join("ids.json");
    let status = Command::new(example_binary("generate"))
        .args([
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "Think.",
            "--temperature",
            "1.0",
        ])
        .args(["--max-tokens", "48", "--seed", "3", "--reject-step-regex", "[aeiou]{2}"])
        .args(["--max-step-retries", "4", "--ids-out", ids_file.to_str().unwrap()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let v = read_json(&ids_file);
    let steps = v["steps"].as_array().unwrap();
    assert!(!steps.is_empty());
    let tries: u64 = steps.iter().map(|s| s["tries"].as_u64().unwrap() - 1).sum();
    assert_eq!(v["rejected_steps"].as_u64(), Some(tries));
    assert!(steps
        .iter()
        .all(|s| s["tries"].as_u64().unwrap() <= 5 && s["text"].is_string()));
    let bad = Command::new(example_binary("generate"))
        .args([
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "x",
            "--reject-step-regex",
            "(",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--reject-step-regex"));
    let _ = std::fs::remove_dir_all(&dir);
}
