//! Streaming generation on the tiny fixture models: greedy chat equals transformers' greedy
//! tokens; stops, limits, cancellation, threads and channels behave as documented.

mod common;
use common::*;
use r1_core::{CancelHandle, Channel, Engine, Event, FinishReason, GenerateParams, Message, Prompt, SamplingParams};
use std::sync::Arc;

fn engine(name: &str) -> Engine {
    Engine::load(fixtures_dir().join(name), &Default::default()).unwrap()
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams::greedy(max_tokens)
}

/// Runs a generation to the end: its events and generated ids.
fn run(engine: &Engine, prompt: &Prompt, params: &GenerateParams) -> (Vec<Event>, Vec<u32>) {
    let mut g = engine.generate(prompt, params).unwrap();
    let events: Vec<Event> = g.by_ref().map(|e| e.unwrap()).collect();
    let ids = g.generated_ids().to_vec();
    (events, ids)
}

fn text(events: &[Event]) -> String {
    events.iter().map(|e| e.text.as_str()).collect()
}

fn finish(events: &[Event]) -> r1_core::Finish {
    let last = events.last().unwrap();
    assert!(
        events[..events.len() - 1].iter().all(|e| e.finish.is_none()),
        "only the last event finishes"
    );
    last.finish.clone().expect("last event carries the finish")
}

#[test]
fn greedy_chat_equals_transformers() {
    let mut o = Outcome::default();
    for dir in reference_folders(&fixtures_dir()) {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let e = Engine::load(&dir, &Default::default()).unwrap();
        let r = reference_json(&dir);
        for (j, case) in r["tokenizer"]["chat"].as_array().unwrap().iter().enumerate() {
            if !case["add_generation_prompt"].as_bool().unwrap() {
                continue;
            }
            let msgs: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let want = json_ids(&case["greedy_ids"]);
            let (events, ids) = run(&e, &Prompt::Chat(msgs), &greedy(24));
            o.equal(&format!("{name} chat {j} greedy"), &ids, &want);
            let f = finish(&events);
            let reason = if want.last() == Some(&1) {
                FinishReason::EndToken
            } else {
                FinishReason::MaxTokens
            };
            o.equal(&format!("{name} chat {j} finish"), &f.reason, &reason);
            o.equal(
                &format!("{name} chat {j} usage"),
                &(f.usage.reasoning_tokens + f.usage.answer_tokens),
                &ids.len(),
            );
            // The R1 generation prompt ends with <think>: the output starts in the reasoning.
            o.equal(
                &format!("{name} chat {j} channel"),
                &events[0].channel,
                &Channel::Reasoning,
            );
            let decoded = e.tokenizer().decode(&ids, false).unwrap();
            o.equal(
                &format!("{name} chat {j} text"),
                &text(&events),
                &decoded.replace("<｜end▁of▁sentence｜>", ""),
            );
        }
    }
    report(o);
}

#[test]
fn threads_share_one_engine_and_match_serial_runs() {
    let e = Arc::new(engine("deepseek_v3_tiny"));
    // Eight threads on two cores: more than the pool, so steps interleave.
    let prompts: Vec<Prompt> = [
        "one",
        "two two",
        "three three three",
        "four",
        "five",
        "six six",
        "seven",
        "eight",
    ]
    .iter()
    .map(|t| Prompt::Chat(vec![Message::user(t)]))
    .collect();
    let params = GenerateParams::default()
        .with_max_tokens(16)
        .with_sampling(SamplingParams::deepseek_r1().with_seed(3));
    let serial: Vec<Vec<u32>> = prompts.iter().map(|p| run(&e, p, &params).1).collect();
    let handles: Vec<_> = prompts
        .iter()
        .cloned()
        .map(|p| {
            let (e, params) = (Arc::clone(&e), params.clone());
            std::thread::spawn(move || run(&e, &p, &params).1)
        })
        .collect();
    let parallel: Vec<Vec<u32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(parallel, serial);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let e = engine("qwen2_tiny");
    let p = Prompt::Chat(vec![Message::user("Hello")]);
    let params = |seed| {
        GenerateParams::default()
            .with_max_tokens(20)
            .with_sampling(SamplingParams::default().with_seed(seed))
    };
    let a = run(&e, &p, &params(11)).1;
    assert_eq!(a, run(&e, &p, &params(11)).1);
    assert_ne!(a, run(&e, &p, &params(12)).1);
}

#[test]
fn stop_sequence_spanning_tokens_is_not_emitted() {
    let e = engine("llama_tiny");
    let p = Prompt::Raw("The capital of France".into());
    let (_, ids) = run(&e, &p, &greedy(24).with_starts_in_reasoning(false));
    // A stop string made of the end of token 3's text and the start of token 4's.
    let tok = e.tokenizer();
    let before = tok.decode(&ids[..3], false).unwrap();
    let through4 = tok.decode(&ids[..5], false).unwrap();
    let split = before.len() - before.chars().last().unwrap().len_utf8();
    let end = before.len() + through4[before.len()..].chars().next().unwrap().len_utf8();
    let stop = through4[split..end].to_string();
    let expected = match through4.find(&stop) {
        Some(i) => through4[..i].to_string(),
        None => unreachable!(),
    };
    let params = greedy(24).with_stop(vec![stop.clone()]).with_starts_in_reasoning(false);
    let (events, _) = run(&e, &p, &params);
    assert_eq!(finish(&events).reason, FinishReason::StopSequence, "stop {stop:?}");
    assert_eq!(text(&events), expected);
}

#[test]
fn limits_end_tokens_and_cancellation() {
    let e = engine("deepseek_v2_greedy");
    let p = Prompt::Chat(vec![Message::user("Count")]);
    // max_tokens
    let (events, ids) = run(&e, &p, &greedy(5));
    assert_eq!((finish(&events).reason, ids.len()), (FinishReason::MaxTokens, 5));
    // An extra end token: generation stops on it, and its text is not emitted.
    let stop_at = ids[2];
    let first = ids.iter().position(|&t| t == stop_at).unwrap();
    let (events, got) = run(&e, &p, &greedy(5).with_stop_token_ids(vec![stop_at]));
    assert_eq!(finish(&events).reason, FinishReason::EndToken);
    assert_eq!(got, ids[..=first]);
    // Cancellation from another thread.
    let cancel = CancelHandle::new();
    let mut g = e.generate(&p, &greedy(1000).with_cancel(cancel.clone())).unwrap();
    let first_event = g.next().unwrap().unwrap();
    assert!(first_event.finish.is_none());
    std::thread::spawn(move || cancel.cancel()).join().unwrap();
    let rest: Vec<Event> = g.by_ref().map(|x| x.unwrap()).collect();
    assert_eq!(finish(&rest).reason, FinishReason::Cancelled);
    assert!(g.generated_ids().len() < 5);
}

#[test]
fn context_full_and_too_long_prompts() {
    let e = engine("qwen2_tiny");
    let max = e.model().context_length();
    let (events, ids) = run(&e, &Prompt::Tokens(vec![7; max - 3]), &greedy(100));
    assert_eq!(finish(&events).reason, FinishReason::ContextFull);
    assert_eq!(
        ids.len(),
        4,
        "positions max-3..max hold the prompt tail and 3 tokens; a 4th is sampled, not run"
    );
    let err = e.generate(&Prompt::Tokens(vec![7; max]), &greedy(1)).err().unwrap();
    assert!(err.to_string().contains("context"), "{err}");
    assert_eq!(err.code(), r1_core::ErrorCode::ContextFull);
    assert!(e.generate(&Prompt::Tokens(vec![]), &greedy(1)).is_err());
}

#[test]
fn channels_switch_at_think_close() {
    let e = engine("deepseek_v3_tiny");
    // Bias `</think>` (id 5) to always win: the first one closes the reasoning, later ones are
    // answer text.
    let sampling = SamplingParams::greedy().with_logit_bias(vec![(5, 1000.0)]);
    let p = Prompt::Chat(vec![Message::user("hi")]);
    let mut g = e
        .generate(
            &p,
            &GenerateParams::default().with_max_tokens(4).with_sampling(sampling),
        )
        .unwrap();
    let events: Vec<Event> = g.by_ref().map(|x| x.unwrap()).collect();
    let f = finish(&events);
    assert_eq!((f.usage.reasoning_tokens, f.usage.answer_tokens), (1, 3));
    let answer: String = events
        .iter()
        .filter(|e| e.channel == Channel::Answer)
        .map(|e| e.text.as_str())
        .collect();
    assert_eq!(answer, "</think></think></think>");
    let trace = g.trace().unwrap();
    assert_eq!((trace.reasoning.as_str(), trace.truncated), ("", false));
}
