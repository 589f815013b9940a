//! The reasoning features against independent computations: self-consistency samples against
//! standalone generations with their seeds, and distilled log-probabilities against the
//! log-softmax of transformers' reference logits.

mod common;

use common::{fixtures_dir, Reference};
use r1_core::{DistillRecord, DistillWriter, Engine, GenerateParams, LoadOptions, Message, Prompt, SamplingParams};
use std::path::PathBuf;

fn engine(fixture: &str) -> Engine {
    Engine::load(fixtures_dir().join(fixture), &LoadOptions::default()).unwrap()
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("r1-reasoning-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn each_self_consistency_sample_is_the_standalone_generation_with_its_seed() {
    for fixture in ["qwen2_tiny", "deepseek_v3_tiny"] {
        let engine = engine(fixture);
        let prompt = Prompt::Chat(vec![Message::user("What is 2 + 2?")]);
        let params = GenerateParams::default()
            .with_max_tokens(16)
            .with_sampling(SamplingParams::deepseek_r1().with_temperature(1.0).with_seed(100));
        let c = engine.self_consistency(&prompt, &params, 4).unwrap();
        assert_eq!(c.samples.len(), 4);
        let mut distinct = std::collections::HashSet::new();
        for (i, s) in c.samples.iter().enumerate() {
            assert_eq!(s.seed, 100 + i as u64);
            let alone = params.clone().with_sampling(params.sampling.clone().with_seed(s.seed));
            let mut g = engine.generate(&prompt, &alone).unwrap();
            g.by_ref().try_for_each(|e| e.map(drop)).unwrap();
            assert_eq!(s.generated_ids, g.generated_ids(), "{fixture} sample {i}");
            assert_eq!(s.trace, *g.trace().unwrap(), "{fixture} sample {i}");
            // The prompt was prefilled once: each sample ran only its last token.
            assert_eq!(s.usage.cached_prompt_tokens, c.prompt_ids.len() - 1);
            distinct.insert(s.generated_ids.clone());
        }
        assert!(distinct.len() > 1, "{fixture}: four seeds gave one sequence");
        // The vote counts each sample's normalised final answer once.
        let answers: Vec<&str> = c.samples.iter().filter_map(|s| s.final_answer.as_deref()).collect();
        assert_eq!(c.vote.counts.iter().map(|(_, n)| n).sum::<usize>(), answers.len());
        for (a, n) in &c.vote.counts {
            assert_eq!(answers.iter().filter(|&&b| b == a).count(), *n);
        }
        let best = c.vote.counts.iter().map(|(_, n)| *n).max();
        let winner = c
            .vote
            .counts
            .iter()
            .find(|(_, n)| Some(*n) == best)
            .map(|(a, _)| a.clone());
        assert_eq!(c.vote.answer, winner);
    }
}

#[test]
fn self_consistency_checks_its_arguments() {
    let engine = engine("qwen2_tiny");
    let prompt = Prompt::Raw("Hello".into());
    for n in [0, r1_core::MAX_SAMPLES + 1] {
        let e = engine
            .self_consistency(&prompt, &GenerateParams::greedy(2), n)
            .unwrap_err();
        assert_eq!(e.code(), r1_core::ErrorCode::InvalidArgument, "{e}");
    }
    // Greedy samples all agree, so the vote is unanimous.
    let c = engine.self_consistency(&prompt, &GenerateParams::greedy(4), 3).unwrap();
    assert!(c.samples.windows(2).all(|w| w[0].generated_ids == w[1].generated_ids));
    if let Some(a) = &c.vote.answer {
        assert_eq!(c.vote.counts, vec![(a.clone(), 3)]);
    }
}

/// The `k` best (id, log-probability) of a row of logits, computed in f64 here.
fn top_log_softmax(logits: &[f32], k: usize) -> Vec<(u32, f64)> {
    let max = logits.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let log_z = max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    let mut all: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, x as f64 - log_z))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

/// Reads a JSONL dataset back: each line's `top_ids` and `top_logprobs`.
fn read_jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn distilled_log_probabilities_are_the_log_softmax_of_transformers_logits() {
    const K: usize = 5;
    for fixture in ["llama_tiny", "qwen2_tiny", "deepseek_v3_tiny"] {
        let dir = fixtures_dir().join(fixture);
        let reference = Reference::load(&dir);
        let engine = engine(fixture);
        let out = scratch(&format!("lp-{fixture}"));
        let mut jsonl = DistillWriter::create(out.join("d.jsonl"), K).unwrap();
        let mut st = DistillWriter::create(out.join("d.safetensors"), K).unwrap();
        let n = reference.n_sequences();
        for i in 0..n {
            let prompt = Prompt::Tokens(reference.ids(&format!("input_ids.{i}")));
            let mut g = engine
                .generate(&prompt, &GenerateParams::greedy(24).with_top_logprobs(K))
                .unwrap();
            g.by_ref().try_for_each(|e| e.map(drop)).unwrap();
            let record = DistillRecord::from_generation(&format!("sequence {i}"), &g).unwrap();
            jsonl.write(&record).unwrap();
            st.write(&record).unwrap();
        }
        jsonl.finish().unwrap();
        st.finish().unwrap();
        let lines = read_jsonl(&out.join("d.jsonl"));
        let shard = std::fs::read(out.join("d.safetensors")).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&shard).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&shard).unwrap();
        let meta = meta.metadata().clone().unwrap();
        assert_eq!(lines.len(), n);
        let mut worst = 0f64;
        for (i, line) in lines.iter().enumerate() {
            let want_ids = reference.ids(&format!("generated.{i}"));
            let logits = reference.f32s2(&format!("gen_logits.{i}"));
            let generated = common::json_ids(&line["generated_ids"]);
            assert!(
                !generated.is_empty() && want_ids.starts_with(&generated),
                "{fixture} {i}"
            );
            let st_ids: Vec<i32> = bytes_as(tensors.tensor(&format!("top_ids.{i}")).unwrap().data());
            let st_lp: Vec<f32> = bytes_as(tensors.tensor(&format!("top_logprobs.{i}")).unwrap().data());
            let st_gen: Vec<i32> = bytes_as(tensors.tensor(&format!("generated_ids.{i}")).unwrap().data());
            assert_eq!(st_gen.iter().map(|&x| x as u32).collect::<Vec<_>>(), generated);
            assert_eq!(meta[&format!("prompt.{i}")], format!("sequence {i}"));
            assert_eq!(meta[&format!("reasoning.{i}")], line["reasoning"].as_str().unwrap());
            for (t, row) in logits.iter().enumerate().take(generated.len()) {
                let want = top_log_softmax(row, K);
                let ids = common::json_ids(&line["top_ids"][t]);
                let lps: Vec<f64> = line["top_logprobs"][t]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                for j in 0..K {
                    assert_eq!(ids[j], want[j].0, "{fixture} seq {i} token {t} rank {j}");
                    assert_eq!(st_ids[t * K + j] as u32, want[j].0);
                    assert_eq!(st_lp[t * K + j], lps[j] as f32, "JSONL and safetensors agree");
                    worst = worst.max((lps[j] - want[j].1).abs());
                }
            }
        }
        assert!(worst <= 1e-4, "{fixture}: log-probabilities off by {worst:e}");
        eprintln!("{fixture}: top-{K} log-probabilities within {worst:.1e} of transformers'");
        let _ = std::fs::remove_dir_all(&out);
    }
}

fn bytes_as<T: FromLe>(bytes: &[u8]) -> Vec<T> {
    bytes.chunks_exact(4).map(T::from_le).collect()
}

trait FromLe {
    fn from_le(b: &[u8]) -> Self;
}

impl FromLe for i32 {
    fn from_le(b: &[u8]) -> Self {
        i32::from_le_bytes(b.try_into().unwrap())
    }
}

impl FromLe for f32 {
    fn from_le(b: &[u8]) -> Self {
        f32::from_le_bytes(b.try_into().unwrap())
    }
}

/// Records of short greedy generations of `prompts` (chats), with their prompt texts.
fn records(engine: &Engine, prompts: &[&str], k: usize) -> Vec<DistillRecord> {
    prompts
        .iter()
        .map(|p| {
            let prompt = Prompt::Chat(vec![Message::user(p)]);
            let text = engine.prompt_text(&prompt).unwrap().unwrap();
            let mut g = engine
                .generate(&prompt, &GenerateParams::greedy(4).with_top_logprobs(k))
                .unwrap();
            g.by_ref().try_for_each(|e| e.map(drop)).unwrap();
            DistillRecord::from_generation(&text, &g).unwrap()
        })
        .collect()
}

#[test]
fn a_distillation_dataset_resumes_where_it_stopped() {
    let engine = engine("qwen2_tiny");
    let rs = records(&engine, &["one", "two", "three"], 2);
    let dir = scratch("resume");
    // JSONL: two lines, then a line a crash cut short.
    let path = dir.join("d.jsonl");
    let mut w = DistillWriter::create(&path, 2).unwrap();
    w.write(&rs[0]).unwrap();
    w.write(&rs[1]).unwrap();
    w.finish().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut f, b"{\"prompt\": \"cut").unwrap();
    let mut w = DistillWriter::create(&path, 2).unwrap();
    assert_eq!(w.len(), 2);
    assert!(w.contains(&rs[0].prompt) && w.contains(&rs[1].prompt) && !w.contains(&rs[2].prompt));
    w.write(&rs[2]).unwrap();
    w.finish().unwrap();
    let lines = read_jsonl(&path);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["prompt"], rs[2].prompt.as_str());
    assert_eq!(common::json_ids(&lines[2]["generated_ids"]), rs[2].generated_ids);
    assert!(
        DistillWriter::create(&path, 3).is_err(),
        "another top-k than the dataset's"
    );
    // safetensors: shards of two generations; the third starts a second shard.
    let path = dir.join("d.safetensors");
    let mut w = DistillWriter::create(&path, 2).unwrap().with_shard_size(2);
    for r in &rs {
        w.write(r).unwrap();
    }
    w.finish().unwrap();
    let second = dir.join("d-00001.safetensors");
    assert!(path.is_file() && second.is_file());
    let bytes = std::fs::read(&second).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = tensors.tensor("top_ids.2").unwrap();
    assert_eq!(t.shape(), [rs[2].generated_ids.len(), 2]);
    let w = DistillWriter::create(&path, 2).unwrap();
    assert_eq!(w.len(), 3);
    assert!(rs.iter().all(|r| w.contains(&r.prompt)));
    assert!(DistillWriter::create(dir.join("d.txt"), 2).is_err());
    assert!(DistillWriter::create(dir.join("e.jsonl"), 0).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Steps cut at every space: random-weight models write few blank lines.
fn word_steps() -> r1_core::StepConfig {
    r1_core::StepConfig::with_markers(&[]).with_separators(&[" "])
}

/// Runs a generation to its end; the events' texts concatenated.
fn run(g: &mut r1_core::Generation) -> String {
    let mut text = String::new();
    for e in g.by_ref() {
        text.push_str(&e.unwrap().text);
    }
    text
}

#[test]
fn a_rollback_continues_as_a_fresh_generation_from_the_kept_tokens() {
    use r1_core::{StepVerifier, Verdict};
    for fixture in ["qwen2_tiny", "deepseek_v3_tiny"] {
        let engine = engine(fixture);
        let prompt = Prompt::Chat(vec![Message::user("Think it through.")]);
        // Reject the second step once; accept everything else.
        let state = std::sync::Arc::new(std::sync::Mutex::new((0usize, false)));
        let s = state.clone();
        let verifier = StepVerifier::new(move |_, _| {
            let mut s = s.lock().unwrap();
            if s.0 == 1 && !s.1 {
                s.1 = true;
                return Verdict::Reject;
            }
            s.0 += 1;
            Verdict::Accept
        })
        .with_steps(word_steps());
        let sampling = SamplingParams::deepseek_r1().with_temperature(1.0).with_seed(1);
        let params = GenerateParams::default()
            .with_max_tokens(40)
            .with_sampling(sampling.clone())
            .with_top_logprobs(3)
            .with_verifier(verifier);
        let mut g = engine.generate(&prompt, &params).unwrap();
        let streamed = run(&mut g);
        assert_eq!(streamed, g.text(), "{fixture}: the stream shows what stands");
        let steps = g.steps();
        assert!(
            steps.len() > 2,
            "{fixture}: {steps:?} {:?} {:?}",
            g.trace(),
            g.finish_reason()
        );
        assert_eq!((steps[1].tries, g.usage().rejected_steps), (2, 1), "{fixture}");
        assert_eq!(steps[1].verdicts, [Verdict::Reject, Verdict::Accept]);
        // A fresh generation from the kept tokens, seeded as the retry was (seed + 1).
        let k = steps[1].first_token;
        let kept: Vec<u32> = g.prompt_ids().iter().chain(&g.generated_ids()[..k]).copied().collect();
        let fresh_params = GenerateParams::default()
            .with_max_tokens(40 - k)
            .with_sampling(sampling.with_seed(2))
            .with_top_logprobs(3);
        let mut fresh = engine.generate(&Prompt::Tokens(kept), &fresh_params).unwrap();
        run(&mut fresh);
        assert_eq!(&g.generated_ids()[k..], fresh.generated_ids(), "{fixture}");
        for (a, b) in g.logprobs()[k..].iter().zip(fresh.logprobs()) {
            assert!(
                (a.logprob - b.logprob).abs() < 1e-4,
                "{fixture}: {} vs {}",
                a.logprob,
                b.logprob
            );
        }
    }
}

#[test]
fn a_verifier_that_rejects_a_pattern_leaves_no_accepted_step_matching_it() {
    use r1_core::{StepVerifier, Verdict};
    let engine = engine("deepseek_v3_tiny");
    let prompt = Prompt::Chat(vec![Message::user("Think it through.")]);
    let verifier = StepVerifier::new(|step, _| match step.contains('e') {
        true => Verdict::Reject,
        false => Verdict::Accept,
    })
    .with_max_retries(30)
    .with_steps(word_steps());
    let params = GenerateParams::default()
        .with_max_tokens(60)
        .with_sampling(SamplingParams::deepseek_r1().with_temperature(1.0).with_seed(3))
        .with_verifier(verifier);
    let mut g = engine.generate(&prompt, &params).unwrap();
    let streamed = run(&mut g);
    assert!(g.usage().rejected_steps > 0, "the pattern never came up");
    let checked: Vec<_> = g.steps().iter().filter(|s| !s.verdicts.is_empty()).collect();
    assert!(!checked.is_empty());
    for s in &checked {
        // A step the generation ended inside has no verdict on its last try.
        if s.verdicts.len() == s.tries {
            assert!(s.retries_exhausted || !s.text.contains('e'), "{s:?}");
        } else {
            assert_eq!(s.verdicts.len() + 1, s.tries, "{s:?}");
        }
    }
    assert_eq!(
        g.usage().rejected_steps,
        g.steps()
            .iter()
            .map(|s| s.verdicts.iter().filter(|v| **v == Verdict::Reject).count())
            .sum::<usize>()
    );
    // What was streamed is what stands: each accepted step, in order, in the reasoning.
    assert_eq!(streamed, g.text());
    let reasoning = &g.trace().unwrap().reasoning;
    let mut at = 0;
    for s in g.steps() {
        at += reasoning[at..]
            .find(s.text.as_str())
            .expect("the step is in the reasoning")
            + s.text.len();
    }
}

#[test]
fn stop_closes_the_reasoning_after_the_step() {
    use r1_core::{StepVerifier, Verdict};
    let engine = engine("qwen2_tiny");
    let prompt = Prompt::Chat(vec![Message::user("Think it through.")]);
    let verifier = StepVerifier::new(|_, _| Verdict::Stop).with_steps(word_steps());
    let params = GenerateParams::default()
        .with_max_tokens(40)
        .with_sampling(SamplingParams::deepseek_r1().with_temperature(1.0).with_seed(5))
        .with_verifier(verifier);
    let mut g = engine.generate(&prompt, &params).unwrap();
    run(&mut g);
    let steps = g.steps();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].verdicts, [Verdict::Stop]);
    let trace = g.trace().unwrap();
    assert!(!trace.truncated, "the reasoning was closed");
    // The token that ends the step may carry the next step's first letters: they stay.
    assert!(
        trace.reasoning.trim().starts_with(&steps[0].text),
        "{:?}",
        trace.reasoning
    );
    assert!(g.usage().answer_tokens > 0 || g.finish_reason() != Some(r1_core::FinishReason::MaxTokens));
}
