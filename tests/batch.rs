//! Several sequences in one forward pass (`Model::forward_batch`): ragged prompts prefilled
//! together, decoded together, one joining mid-way with its prefill packed beside the others'
//! decode tokens. Each sequence's logits equal its solo run's, and its greedy tokens are
//! transformers' reference tokens.

mod common;

use common::{argmax, fixtures_dir, Reference};
use r1_core::{LoadOptions, Model};

#[test]
fn a_batch_gives_each_sequence_its_solo_logits_and_transformers_tokens() {
    for fixture in ["llama_tiny", "qwen2_tiny", "deepseek_v3_tiny", "deepseek_v2_greedy"] {
        let dir = fixtures_dir().join(fixture);
        let reference = Reference::load(&dir);
        let model = Model::load(&dir, &LoadOptions::default()).unwrap();
        let prompts: Vec<Vec<u32>> = (0..reference.n_sequences())
            .map(|i| reference.ids(&format!("input_ids.{i}")))
            .collect();
        let wanted: Vec<Vec<u32>> = (0..prompts.len())
            .map(|i| reference.ids(&format!("generated.{i}")))
            .collect();
        // A third sequence, sequence 0's prompt again, joins at step 5.
        let (join_at, steps) = (5, 12);
        let mut seqs: Vec<Vec<u32>> = vec![prompts[0].clone(), prompts[1].clone(), prompts[0].clone()];
        let mut caches: Vec<_> = (0..3).map(|_| model.new_cache()).collect();
        let mut pending: Vec<Vec<u32>> = seqs.clone(); // what each sequence runs next
        let mut worst = 0f32;
        for step in 0..steps {
            let active: Vec<usize> = (0..3).filter(|&s| s < 2 || step >= join_at).collect();
            let inputs: Vec<&[u32]> = active.iter().map(|&s| pending[s].as_slice()).collect();
            let mut cache_refs: Vec<&mut r1_core::Cache> = caches
                .iter_mut()
                .enumerate()
                .filter(|(s, _)| active.contains(s))
                .map(|(_, c)| c)
                .collect();
            let logits = model.forward_batch(&inputs, &mut cache_refs).unwrap();
            assert_eq!(logits.rows(), active.len());
            for (row, &s) in active.iter().enumerate() {
                // The solo run: the same tokens through a fresh cache, one sequence alone.
                let solo = model.logits(&seqs[s]).unwrap();
                let got = logits.row(row).unwrap();
                let scale = solo.last().iter().fold(1f32, |m, x| m.max(x.abs()));
                let diff = got
                    .iter()
                    .zip(solo.last())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                worst = worst.max(diff / scale);
                let next = argmax(got);
                seqs[s].push(next);
                pending[s] = vec![next];
            }
        }
        assert!(
            worst <= 1e-5,
            "{fixture}: batch logits off their solo runs by {worst:e} (relative)"
        );
        for (s, want) in wanted.iter().enumerate() {
            let got = &seqs[s][prompts[s].len()..];
            assert_eq!(got, &want[..steps], "{fixture} sequence {s}: greedy tokens");
        }
        let joined = &seqs[2][prompts[0].len()..];
        assert_eq!(
            joined,
            &wanted[0][..steps - join_at],
            "{fixture}: the sequence that joined"
        );
        eprintln!("{fixture}: 3 sequences, one joining at step {join_at}: logits within {worst:.1e} of solo runs");
    }
}

#[test]
fn a_bad_batch_is_an_error_and_leaves_the_caches_as_they_were() {
    let model = Model::load(fixtures_dir().join("qwen2_tiny"), &LoadOptions::default()).unwrap();
    let (mut a, mut b) = (model.new_cache(), model.new_cache());
    model.forward_batch(&[&[5, 6], &[7]], &mut [&mut a, &mut b]).unwrap();
    assert_eq!((a.len(), b.len()), (2, 1));
    // A token outside the vocabulary in the second sequence: neither cache moves.
    let e = model
        .forward_batch(&[&[8], &[100_000]], &mut [&mut a, &mut b])
        .unwrap_err();
    assert_eq!(e.code(), r1_core::ErrorCode::InvalidArgument, "{e}");
    assert_eq!((a.len(), b.len()), (2, 1));
    assert!(
        model.forward_batch(&[&[8]], &mut [&mut a, &mut b]).is_err(),
        "two caches for one sequence"
    );
    assert!(model.forward_batch(&[], &mut []).is_err());
    assert!(model.forward_batch(&[&[]], &mut [&mut a]).is_err());
}

#[test]
fn batched_generations_equal_their_solo_runs() {
    use r1_core::{BatchOptions, Engine, GenerateParams, Message, Prompt, SamplingParams};
    for fixture in ["qwen2_tiny", "deepseek_v3_tiny"] {
        let engine = Engine::load(fixtures_dir().join(fixture), &LoadOptions::default()).unwrap();
        let sampled = |seed, n| {
            GenerateParams::default()
                .with_max_tokens(n)
                .with_sampling(SamplingParams::deepseek_r1().with_temperature(1.0).with_seed(seed))
        };
        let chat = |text: &str| Prompt::Chat(vec![Message::user(text)]);
        let requests = vec![
            (chat("Hi"), GenerateParams::greedy(5)),
            (
                chat("A much longer question about the reasoning of models, asked at length."),
                sampled(7, 14),
            ),
            (Prompt::Raw("1 2 3".into()), sampled(9, 20).with_stop(vec!["e".into()])),
            (chat("Another one"), GenerateParams::greedy(9).with_top_logprobs(3)),
        ];
        // Two at a time, four tokens a pass: prompts run in chunks beside decode tokens, and
        // the later requests join as the first ones finish.
        let options = BatchOptions::default().with_max_batch(2).with_token_budget(4);
        let mut streamed = vec![String::new(); requests.len()];
        let batch = engine
            .generate_batch_with(&requests, &options, |i, e| streamed[i].push_str(&e.text))
            .unwrap();
        for (i, ((prompt, params), g)) in requests.iter().zip(&batch).enumerate() {
            let mut solo = engine.generate(prompt, params).unwrap();
            solo.by_ref().try_for_each(|e| e.map(drop)).unwrap();
            assert!(g.is_done() && g.error().is_none(), "{fixture} request {i}");
            assert_eq!(g.generated_ids(), solo.generated_ids(), "{fixture} request {i}");
            assert_eq!(g.finish_reason(), solo.finish_reason(), "{fixture} request {i}");
            assert_eq!(g.trace(), solo.trace(), "{fixture} request {i}");
            assert_eq!(streamed[i], solo.text(), "{fixture} request {i}: the stream");
            for (a, b) in g.logprobs().iter().zip(solo.logprobs()) {
                assert_eq!(
                    a.top.iter().map(|t| t.0).collect::<Vec<_>>(),
                    b.top.iter().map(|t| t.0).collect::<Vec<_>>()
                );
                assert!((a.logprob - b.logprob).abs() < 1e-5);
            }
        }
        assert!(engine
            .generate_batch_with(&requests, &BatchOptions::default().with_max_batch(0), |_, _| {})
            .is_err());
    }
}

#[test]
fn prompts_sharing_a_prefix_compute_it_once_and_equal_their_solo_runs() {
    use r1_core::{BatchOptions, Engine, GenerateParams, Prompt, MIN_SHARED_PREFIX};
    let ids = |from: u32, n: u32| (from..from + n).map(|t| 3 + (t * 7) % 90).collect::<Vec<u32>>();
    let cat = |parts: &[&[u32]]| parts.concat();
    let (system, shots) = (ids(0, 30), ids(100, 10));
    // Hand-counted shares: A and B share the system prompt (30); C and D share it and the
    // shots (40, nested on the 30); E shares nothing; F shares 10 tokens with A, too few.
    let prompts = [
        cat(&[&system, &ids(200, 3)]),
        cat(&[&system, &ids(300, 2)]),
        cat(&[&system, &shots, &ids(400, 1)]),
        cat(&[&system, &shots, &ids(500, 2)]),
        ids(600, 20),
        system[..10].to_vec(),
    ];
    let cached = [30, 30, 40, 40, 0, 0];
    const { assert!(MIN_SHARED_PREFIX > 10 && MIN_SHARED_PREFIX <= 30) };
    for fixture in ["llama_tiny", "deepseek_v3_tiny"] {
        let engine = Engine::load(fixtures_dir().join(fixture), &LoadOptions::default()).unwrap();
        let requests: Vec<_> = prompts
            .iter()
            .map(|p| {
                (
                    Prompt::Tokens(p.clone()),
                    GenerateParams::greedy(6).with_top_logprobs(4),
                )
            })
            .collect();
        for share in [true, false] {
            let options = BatchOptions::default().with_share_prefixes(share);
            let batch = engine.generate_batch_with(&requests, &options, |_, _| {}).unwrap();
            for (i, ((prompt, params), g)) in requests.iter().zip(&batch).enumerate() {
                let mut solo = engine.generate(prompt, params).unwrap();
                solo.by_ref().try_for_each(|e| e.map(drop)).unwrap();
                let want = if share { cached[i] } else { 0 };
                assert_eq!(g.usage().cached_prompt_tokens, want, "{fixture} request {i}");
                assert_eq!(g.generated_ids(), solo.generated_ids(), "{fixture} request {i}");
                for (a, b) in g.logprobs().iter().zip(solo.logprobs()) {
                    for (x, y) in a.top.iter().zip(&b.top) {
                        assert_eq!(x.0, y.0, "{fixture} request {i}");
                        assert!((x.1 - y.1).abs() < 1e-5, "{fixture} request {i}: {} vs {}", x.1, y.1);
                    }
                }
            }
        }
    }
}
