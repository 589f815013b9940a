//! The API shaped for embedding, on the tiny fixture models: sessions reuse their cache and equal
//! fresh runs, forks diverge without touching their parent, chunked prefill equals one pass,
//! log-probabilities equal the log-softmax of transformers' logits, the thinking budget closes
//! the reasoning with the tokenizer's own `</think>`, loads stop from their progress callback,
//! and files are recognised by content.

mod common;
use common::*;
use r1_core::{
    Channel, Engine, ErrorCode, Event, FinishReason, GenerateParams, LoadOptions, Message, Model, Prompt,
    SamplingParams,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn engine(name: &str) -> Engine {
    Engine::load(fixtures_dir().join(name), &Default::default()).unwrap()
}

/// Greedy, with a thinking budget of two tokens so that every reply has an answer (the random
/// fixtures rarely close their reasoning on their own) and the next turn's template shows it.
fn budgeted() -> GenerateParams {
    GenerateParams::greedy(10).with_max_reasoning_tokens(2)
}

/// A one-shot generation to the end: generated ids, answer, usage.
fn one_shot(e: &Engine, messages: &[Message], params: &GenerateParams) -> (Vec<u32>, String) {
    let mut g = e.generate(&Prompt::Chat(messages.to_vec()), params).unwrap();
    g.by_ref().for_each(|ev| drop(ev.unwrap()));
    (g.generated_ids().to_vec(), g.trace().unwrap().answer.clone())
}

#[test]
fn three_turn_session_equals_fresh_runs_and_reuses_the_cache() {
    for name in ["deepseek_v3_tiny", "qwen2_tiny", "llama_tiny"] {
        let e = engine(name);
        let mut session = e.session();
        let mut chat = vec![Message::system("Be brief.")];
        for (turn, question) in ["What is 2+2?", "And 3+3?", "Thanks!"].iter().enumerate() {
            chat.push(Message::user(question));
            let mut g = session.chat(&chat, &budgeted()).unwrap();
            let events: Vec<Event> = g.by_ref().map(|ev| ev.unwrap()).collect();
            let usage = events.last().unwrap().finish.clone().unwrap().usage;
            let ids = g.generated_ids().to_vec();
            let answer = g.trace().unwrap().answer.clone();
            drop(g);
            let (fresh_ids, fresh_answer) = one_shot(&e, &chat, &budgeted());
            assert_eq!(ids, fresh_ids, "{name} turn {turn}: session vs fresh run");
            assert_eq!(answer, fresh_answer);
            assert!(usage.reasoning_budget_hit, "{name} turn {turn}");
            if turn == 0 {
                assert_eq!(usage.cached_prompt_tokens, 0);
            } else {
                assert!(
                    usage.cached_prompt_tokens > 0 && usage.cached_prompt_tokens < usage.prompt_tokens,
                    "{name} turn {turn}: {usage:?}"
                );
            }
            assert!(
                !answer.is_empty(),
                "{name} turn {turn}: the budget leaves room for an answer"
            );
            chat.push(Message::assistant(&answer));
        }
        // The session kept the last turn's results, and reset forgets everything.
        assert!(!session.last_generated_ids().is_empty());
        assert!(session.last_trace().is_some());
        session.reset().unwrap();
        assert!(session.cached_ids().unwrap().is_empty());
    }
}

#[test]
fn a_busy_session_refuses_a_second_generation() {
    let e = engine("qwen2_tiny");
    let mut s = e.session();
    let chat = [Message::user("hi")];
    let g = s.chat(&chat, &GenerateParams::greedy(3)).unwrap();
    let err = s.chat(&chat, &GenerateParams::greedy(3)).err().unwrap();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.to_string().contains("busy"), "{err}");
    assert!(s.fork().is_err() && s.cached_ids().is_err());
    // The generation, moved to another thread and dropped there, gives the cache back.
    std::thread::spawn(move || drop(g)).join().unwrap();
    assert!(s.chat(&chat, &GenerateParams::greedy(3)).is_ok());
}

#[test]
fn a_fork_diverges_without_touching_its_parent() {
    let e = engine("deepseek_v3_tiny");
    let mut parent = e.session();
    let mut chat = vec![Message::user("Tell me a story.")];
    let (first, answer) = {
        let mut g = parent.chat(&chat, &budgeted()).unwrap();
        g.by_ref().for_each(|ev| drop(ev.unwrap()));
        (g.generated_ids().to_vec(), g.trace().unwrap().answer.clone())
    };
    assert_eq!(first, one_shot(&e, &chat, &budgeted()).0);
    chat.push(Message::assistant(&answer));
    let mut fork = parent.fork().unwrap();
    assert_eq!(fork.cached_ids().unwrap(), parent.cached_ids().unwrap());
    let mut branch_a = chat.clone();
    branch_a.push(Message::user("Make it longer."));
    let mut branch_b = chat.clone();
    branch_b.push(Message::user("Now in French, please."));
    // The fork runs first: the parent's cache must be untouched by it.
    let run = |s: &mut r1_core::Session, c: &[Message]| {
        let mut g = s.chat(c, &budgeted()).unwrap();
        g.by_ref().for_each(|ev| drop(ev.unwrap()));
        (g.generated_ids().to_vec(), g.usage().cached_prompt_tokens)
    };
    let (b_ids, b_cached) = run(&mut fork, &branch_b);
    let (a_ids, a_cached) = run(&mut parent, &branch_a);
    assert_eq!(b_ids, one_shot(&e, &branch_b, &budgeted()).0, "fork equals a fresh run");
    assert_eq!(
        a_ids,
        one_shot(&e, &branch_a, &budgeted()).0,
        "parent equals a fresh run"
    );
    assert!(a_cached > 0 && b_cached > 0);
}

#[test]
fn cache_clones_are_deep_copies() {
    // Fork a cache after a prefix, run different continuations on both: each equals a fresh
    // full run, so neither overwrote the other's rows.
    for dir in reference_folders(&fixtures_dir()) {
        let model = Model::load(&dir, &LoadOptions::default()).unwrap();
        let prefix = [3u32, 17, 42, 9, 100];
        let (a, b) = ([7u32, 8, 9], [200u32, 201]);
        let mut cache = model.new_cache();
        model.forward(&prefix, &mut cache).unwrap();
        let mut copy = cache.clone();
        let got_b = model.forward(&b, &mut copy).unwrap();
        let got_a = model.forward(&a, &mut cache).unwrap();
        let full = |tail: &[u32]| {
            let ids: Vec<u32> = prefix.iter().chain(tail).copied().collect();
            let l = model.logits(&ids).unwrap();
            l.as_slice()[prefix.len() * l.vocab()..].to_vec()
        };
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        assert!(rel_l2(got_a.as_slice(), &full(&a)) < 1e-5, "{name} original");
        assert!(rel_l2(got_b.as_slice(), &full(&b)) < 1e-5, "{name} copy");
    }
}

#[test]
fn the_default_prefill_chunk_is_the_models_own() {
    let mut seen = (false, false);
    for dir in reference_folders(&fixtures_dir()) {
        let model = Model::load(&dir, &LoadOptions::default()).unwrap();
        let moe = std::fs::read_to_string(dir.join("config.json"))
            .unwrap()
            .contains("n_routed_experts");
        // 0 asks for the model's own; MoE models take 1,024 tokens a pass, dense ones 512.
        let want = if moe { 1024 } else { r1_core::DEFAULT_PREFILL_CHUNK };
        assert_eq!(model.prefill_chunk(), want, "{}", dir.display());
        let set = Model::load(&dir, &LoadOptions::default().with_prefill_chunk(7)).unwrap();
        assert_eq!(set.prefill_chunk(), 7);
        if moe {
            seen.0 = true;
        } else {
            seen.1 = true;
        }
    }
    assert_eq!(seen, (true, true), "fixtures of both kinds");
}

#[test]
fn chunked_prefill_equals_one_pass_and_transformers() {
    let mut o = Outcome::default();
    for dir in reference_folders(&fixtures_dir()) {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let reference = Reference::load(&dir);
        let one_pass = Model::load(&dir, &LoadOptions::default().with_prefill_chunk(100_000)).unwrap();
        for chunk in [1, 3, 5] {
            let chunked = Model::load(&dir, &LoadOptions::default().with_prefill_chunk(chunk)).unwrap();
            for i in 0..reference.n_sequences() {
                let ids = reference.ids(&format!("input_ids.{i}"));
                let a = chunked.logits(&ids).unwrap();
                let b = one_pass.logits(&ids).unwrap();
                assert_eq!(a.shape(), (ids.len(), one_pass.vocab_size()));
                o.close(
                    &format!("{name} seq {i} chunk {chunk} vs one pass"),
                    rel_l2(a.as_slice(), b.as_slice()),
                    1e-5,
                );
                o.close(
                    &format!("{name} seq {i} chunk {chunk} vs transformers"),
                    rel_l2(a.as_slice(), &reference.f32s(&format!("logits.{i}"))),
                    1e-4,
                );
            }
        }
    }
    report(o);
}

/// Log-softmax of one row, in f64 (the independent side of the check).
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln() + max;
    row.iter().map(|&l| l as f64 - z).collect()
}

#[test]
fn top_logprobs_equal_log_softmax_of_transformers_logits() {
    let mut checked = 0;
    for dir in reference_folders(&fixtures_dir()) {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let e = Engine::load(&dir, &Default::default()).unwrap();
        let reference = Reference::load(&dir);
        for i in 0..reference.n_sequences() {
            let ids = reference.ids(&format!("input_ids.{i}"));
            let want_logits = reference.f32s(&format!("logits.{i}"));
            let vocab = want_logits.len() / ids.len();
            let want = log_softmax(&want_logits[(ids.len() - 1) * vocab..]);
            // Sampled, with penalties and a temperature: logprobs are those of the raw logits.
            let sampling = SamplingParams::deepseek_r1()
                .with_seed(5)
                .with_penalties(1.3, 0.5, 0.5)
                .with_temperature(1.7);
            let params = GenerateParams::default()
                .with_max_tokens(1)
                .with_sampling(sampling)
                .with_top_logprobs(20);
            let mut g = e.generate(&Prompt::Tokens(ids.clone()), &params).unwrap();
            let events: Vec<Event> = g.by_ref().map(|ev| ev.unwrap()).collect();
            let lp = events[0]
                .logprobs
                .clone()
                .expect("the first token event carries logprobs");
            assert_eq!(g.logprobs(), std::slice::from_ref(&lp));
            assert!(
                (lp.logprob as f64 - want[lp.token as usize]).abs() < 1e-4,
                "{name} seq {i}"
            );
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &b| want[b].total_cmp(&want[a]).then(a.cmp(&b)));
            assert_eq!(lp.top.len(), 20);
            for (rank, &(id, l)) in lp.top.iter().enumerate() {
                assert!(
                    (l as f64 - want[id as usize]).abs() < 1e-4,
                    "{name} seq {i} rank {rank}"
                );
                // Same ranking as the reference, up to near-ties.
                assert!(
                    (want[order[rank]] - want[id as usize]).abs() < 1e-4,
                    "{name} seq {i} rank {rank}: id {id} vs {}",
                    order[rank]
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 7, "only {checked} sequences checked");
    // More than 20 is refused, as OpenAI does.
    let e = engine("qwen2_tiny");
    let err = e
        .generate(
            &Prompt::Tokens(vec![1, 2]),
            &GenerateParams::greedy(1).with_top_logprobs(21),
        )
        .err()
        .unwrap();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
}

#[test]
fn thinking_budget_closes_the_reasoning_with_the_tokenizers_own_tokens() {
    let e = engine("deepseek_v3_tiny");
    let close = e.tokenizer().encode("</think>\n\n", false).unwrap();
    assert_eq!(close[0], e.tokenizer().token_to_id("</think>").unwrap());
    assert!(close.len() >= 2, "`</think>` then the blank line: {close:?}");
    let chat = Prompt::Chat(vec![Message::user("Think hard.")]);
    for budget in [0usize, 3] {
        let params = GenerateParams::greedy(budget + close.len() + 4).with_max_reasoning_tokens(budget);
        let mut g = e.generate(&chat, &params).unwrap();
        let events: Vec<Event> = g.by_ref().map(|ev| ev.unwrap()).collect();
        let ids = g.generated_ids().to_vec();
        assert_eq!(ids[budget..budget + close.len()], close[..], "budget {budget}");
        let f = events.last().unwrap().finish.clone().unwrap();
        assert!(f.usage.reasoning_budget_hit);
        // The forced `</think>` counts as reasoning; the blank line and the rest are answer.
        assert_eq!(f.usage.reasoning_tokens, budget + 1);
        assert_eq!(f.usage.answer_tokens, ids.len() - budget - 1);
        assert!(events
            .iter()
            .any(|ev| ev.channel == Channel::Answer && !ev.text.is_empty()));
        let trace = g.trace().unwrap();
        assert!(!trace.truncated);
        assert!(trace.answer.starts_with("\n\n"), "{:?}", trace.answer);
    }
    // No room left to close the reasoning: the budget is the finish reason.
    let mut g = e
        .generate(&chat, &GenerateParams::greedy(3).with_max_reasoning_tokens(2))
        .unwrap();
    let last = g.by_ref().map(|ev| ev.unwrap()).last().unwrap();
    assert_eq!(last.finish.unwrap().reason, FinishReason::ReasoningBudget);
}

#[test]
fn a_load_stopped_from_its_progress_callback_is_cancelled() {
    for path in [
        fixtures_dir().join("deepseek_v3_tiny"),
        fixtures_dir().join("gguf/llama_tiny.f32.gguf"),
    ] {
        let calls = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&calls);
        let options = LoadOptions::default().with_progress(move |_, _| seen.fetch_add(1, Ordering::Relaxed) < 2);
        let err = Model::load(&path, &options).expect_err("the load stops");
        assert_eq!(err.code(), ErrorCode::Cancelled, "{err}");
        assert!(err.to_string().contains("progress callback"), "{err}");
        assert_eq!(calls.load(Ordering::Relaxed), 3, "no call after the one that said stop");
        // A callback that lets it run sees the end.
        let last = Arc::new(AtomicU64::new(0));
        let l = Arc::clone(&last);
        let options = LoadOptions::default().with_progress(move |done, total| {
            assert!(done <= total);
            l.store(done * 1000 / total.max(1), Ordering::Relaxed);
            true
        });
        Model::load(&path, &options).unwrap();
        assert_eq!(last.load(Ordering::Relaxed), 1000);
    }
}

#[test]
fn files_are_recognised_by_content() {
    let tmp = std::env::temp_dir().join(format!("r1-content-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    // A GGUF file under a name that says nothing.
    let odd = tmp.join("weights.bin");
    std::fs::copy(fixtures_dir().join("gguf/llama_tiny.f32.gguf"), &odd).unwrap();
    let ids = [1u32, 5, 9];
    let a = Model::load(&odd, &LoadOptions::default())
        .unwrap()
        .logits(&ids)
        .unwrap();
    // A single .safetensors file next to its config.json loads as its folder.
    let dir = fixtures_dir().join("llama_tiny");
    let b = Model::load(dir.join("model.safetensors"), &LoadOptions::default())
        .unwrap()
        .logits(&ids)
        .unwrap();
    let c = Model::load(&dir, &LoadOptions::default())
        .unwrap()
        .logits(&ids)
        .unwrap();
    assert_eq!(b, c);
    assert!(rel_l2(a.as_slice(), c.as_slice()) < 1e-4);
    // Neither GGUF nor next to a config: a format error naming the file.
    let junk = tmp.join("junk.bin");
    std::fs::write(&junk, b"not a model").unwrap();
    let err = Model::load(&junk, &LoadOptions::default()).err().unwrap();
    assert_eq!(err.code(), ErrorCode::Format);
    assert!(err.to_string().contains("junk.bin"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn logits_copy_into_a_callers_buffer() {
    let model = Model::load(fixtures_dir().join("qwen2_tiny"), &LoadOptions::default()).unwrap();
    let l = model.logits(&[1, 2, 3]).unwrap();
    let mut buf = vec![0f32; 3 * model.vocab_size()];
    l.copy_to(&mut buf).unwrap();
    assert_eq!(buf, l.as_slice());
    assert_eq!(l.row(2).unwrap(), l.last());
    assert!(l.row(3).is_none());
    let err = l.copy_to(&mut buf[1..]).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
}

#[test]
fn error_codes_name_each_kind_of_failure() {
    let e = engine("qwen2_tiny");
    let missing = Model::load("/nonexistent/model", &LoadOptions::default())
        .err()
        .unwrap();
    assert_eq!(missing.code(), ErrorCode::Io);
    let bad_token = e.model().logits(&[100_000]).unwrap_err();
    assert_eq!(bad_token.code(), ErrorCode::InvalidArgument);
    assert!(bad_token.to_string().contains("100000"), "{bad_token}");
    let long = e
        .generate(&Prompt::Tokens(vec![1; 10_000]), &GenerateParams::greedy(1))
        .err()
        .unwrap();
    assert_eq!(long.code(), ErrorCode::ContextFull);
    let bad_tool = e
        .generate(
            &Prompt::ChatWithTools(vec![Message::user("x")], vec!["{not json".into()]),
            &GenerateParams::greedy(1),
        )
        .err()
        .unwrap();
    assert_eq!(bad_tool.code(), ErrorCode::InvalidArgument);
    assert!(bad_tool.to_string().contains("tool schema 0"), "{bad_tool}");
    let bad_temp = e
        .generate(
            &Prompt::Tokens(vec![1]),
            &GenerateParams::default().with_sampling(SamplingParams::default().with_temperature(-1.0)),
        )
        .err()
        .unwrap();
    assert_eq!(bad_temp.code(), ErrorCode::InvalidArgument);
}

#[test]
fn cancellation_is_checked_between_prefill_chunks() {
    let dir = fixtures_dir().join("llama_tiny");
    let e = Engine::load(&dir, &LoadOptions::default().with_prefill_chunk(4)).unwrap();
    let cancel = r1_core::CancelHandle::new();
    cancel.cancel();
    let mut g = e
        .generate(
            &Prompt::Tokens((1..100).collect()),
            &GenerateParams::greedy(5).with_cancel(cancel),
        )
        .unwrap();
    let last = g.by_ref().map(|ev| ev.unwrap()).last().unwrap();
    assert_eq!(last.finish.unwrap().reason, FinishReason::Cancelled);
    assert!(g.generated_ids().is_empty());
}
