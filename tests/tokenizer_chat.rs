//! Tokenizer, chat template and streaming detokenization against transformers' recorded outputs.

mod common;
use common::*;
use r1_core::Message;
use r1_core::{Detokenizer, Tokenizer};

fn messages(v: &serde_json::Value) -> Vec<Message> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn encode_and_chat_match_transformers() {
    let mut o = Outcome::default();
    for dir in all_reference_folders() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let tok = Tokenizer::from_dir(&dir, &[]).unwrap();
        let r = reference_json(&dir);
        let t = &r["tokenizer"];
        for case in t["encode"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            o.equal(
                &format!("{name} encode {text:?} +special"),
                &tok.encode(text, true).unwrap(),
                &json_ids(&case["ids_add_special_tokens"]),
            );
            o.equal(
                &format!("{name} encode {text:?}"),
                &tok.encode(text, false).unwrap(),
                &json_ids(&case["ids_no_special_tokens"]),
            );
        }
        for (j, case) in t["chat"].as_array().unwrap().iter().enumerate() {
            let msgs = messages(&case["messages"]);
            let add = case["add_generation_prompt"].as_bool().unwrap();
            let rendered = tok.chat_template().unwrap().render(&msgs, add, &[]).unwrap();
            o.equal(
                &format!("{name} chat {j} rendered"),
                &rendered,
                &case["rendered"].as_str().unwrap().to_string(),
            );
            o.equal(
                &format!("{name} chat {j} ids"),
                &tok.encode(&rendered, false).unwrap(),
                &json_ids(&case["ids"]),
            );
        }
    }
    report(o);
}

#[test]
fn decode_and_streaming_match_transformers() {
    let mut o = Outcome::default();
    for dir in reference_folders(&fixtures_dir()) {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let tok = Tokenizer::from_dir(&dir, &[]).unwrap();
        let r = reference_json(&dir);
        for case in r["tokenizer"]["decode_cases"].as_array().unwrap() {
            let ids = json_ids(&case["ids"]);
            let label = format!("{name} decode {}", case["name"].as_str().unwrap());
            let want = case["decoded"].as_str().unwrap().to_string();
            o.equal(&label, &tok.decode(&ids, false).unwrap(), &want);
            o.equal(
                &format!("{label} (skip special)"),
                &tok.decode(&ids, true).unwrap(),
                &case["decoded_skip_special_tokens"].as_str().unwrap().to_string(),
            );
            // Streaming: the deltas add up to the full decode, and none ends inside a character
            // (a &str cannot; a held-back byte would show as U+FFFD mid-stream).
            let mut d = Detokenizer::new();
            let mut streamed = String::new();
            for &id in &ids {
                let delta = d.push(&tok, id).unwrap();
                assert!(
                    !delta.ends_with('\u{FFFD}') || want.contains('\u{FFFD}'),
                    "{label}: delta {delta:?}"
                );
                streamed.push_str(&delta);
            }
            streamed.push_str(&d.finish(&tok).unwrap());
            o.equal(&format!("{label} (streamed)"), &streamed, &want);
        }
    }
    report(o);
}

#[test]
fn builtin_r1_template_is_used_without_one() {
    // A tokenizer folder whose config has no chat template gets DeepSeek-R1's format.
    let src = fixtures_dir().join("deepseek_v3_tiny");
    let dir = std::env::temp_dir().join(format!("r1-notemplate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let tok = Tokenizer::from_dir(&dir, &[]).unwrap();
    let text = tok
        .chat_template()
        .unwrap()
        .render(&[Message::user("hi")], true, &[])
        .unwrap();
    assert_eq!(text, "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>\n");
}
