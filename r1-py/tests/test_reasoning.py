"""The reasoning features from Python: step verifiers (a callable; rollback equals a fresh
generation from the kept tokens), self-consistency (sample i equals a standalone chat seeded
seed + i) and distillation datasets (log-probabilities against the log-softmax of transformers'
reference logits, read back from both formats)."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import r1py

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
THINK = [{"role": "user", "content": "Think it through."}]


@pytest.fixture(scope="module")
def model():
    with r1py.Model(FIXTURES / "deepseek_v3_tiny") as m:
        yield m


def test_a_verifier_rejecting_a_pattern_leaves_no_standing_step_with_it(model):
    seen = []

    def no_e(step, reasoning):
        seen.append(step)
        assert reasoning.endswith(step) or step in reasoning
        return "e" not in step

    c = model.chat(THINK, temperature=1.0, seed=3, max_tokens=60, verifier=no_e, max_step_retries=30,
                   step_separators=[" "])
    assert c.usage["rejected_steps"] > 0 and seen
    steps = c.verified_steps
    assert steps and sum(s["tries"] - 1 for s in steps) == c.usage["rejected_steps"]
    for s in steps:
        if len(s["verdicts"]) == s["tries"] and not s["retries_exhausted"]:
            assert "e" not in s["text"] and s["verdicts"][-1] == "accept"
    # A stream shows only what stands.
    stream = model.chat(THINK, temperature=1.0, seed=3, max_tokens=60, verifier=no_e, max_step_retries=30,
                        step_separators=[" "], stream=True)
    text = "".join(chunk.text for chunk in stream)
    assert stream.completion.token_ids == c.token_ids
    assert text == c.reasoning + c.answer or c.reasoning in text


def test_a_rejected_step_is_sampled_again_from_its_first_token(model):
    state = {"accepted": 0, "rejected": False}

    def reject_second_once(step, reasoning):
        if state["accepted"] == 1 and not state["rejected"]:
            state["rejected"] = True
            return "reject"
        state["accepted"] += 1
        return "accept"

    c = model.chat(THINK, temperature=1.0, seed=1, max_tokens=40, verifier=reject_second_once,
                   step_separators=[" "])
    step = c.verified_steps[1]
    assert step["tries"] == 2 and step["verdicts"] == ["reject", "accept"]
    assert c.usage["rejected_steps"] == 1
    # Before the rolled-back step, the tokens are those of the same run without a verifier;
    # after it, the retry's (seed + 1) differ from them. (Token-for-token equality with a fresh
    # prefill of the kept tokens is tested in Rust, tests/reasoning.rs.)
    plain = model.chat(THINK, temperature=1.0, seed=1, max_tokens=40)
    k = step["first_token"]
    assert c.token_ids[:k] == plain.token_ids[:k]
    assert c.token_ids[k:] != plain.token_ids[k:]


def test_a_verifier_can_stop_the_reasoning_and_its_errors_are_raised(model):
    c = model.chat(THINK, temperature=1.0, seed=5, max_tokens=40, verifier=lambda s, r: "stop",
                   step_separators=[" "])
    assert len(c.verified_steps) == 1 and c.verified_steps[0]["verdicts"] == ["stop"]
    assert not c.trace.truncated

    def broken(step, reasoning):
        raise ValueError("verifier broke")

    with pytest.raises(ValueError, match="verifier broke"):
        model.chat(THINK, temperature=1.0, seed=5, max_tokens=40, verifier=broken, step_separators=[" "])
    with pytest.raises(TypeError, match="a verifier returns"):
        model.chat(THINK, temperature=1.0, seed=5, max_tokens=40, verifier=lambda s, r: 3, step_separators=[" "])
    assert model.chat(THINK, greedy=True, max_tokens=4).token_ids  # the model still works


def test_self_consistency_samples_equal_standalone_chats(model):
    q = [{"role": "user", "content": "What is 2 + 2?"}]
    c = model.self_consistency(q, 3, temperature=1.0, seed=7, max_tokens=10)
    assert len(c.samples) == 3
    for i, s in enumerate(c.samples):
        assert s.seed == 7 + i
        alone = model.chat(q, temperature=1.0, seed=7 + i, max_tokens=10)
        assert s.token_ids == alone.token_ids
        assert s.reasoning == alone.reasoning and s.answer == alone.answer
    voted = [s.voted_answer for s in c.samples if s.voted_answer is not None]
    assert sum(c.counts.values()) == len(voted)
    assert all(c.counts[a] == voted.count(a) for a in c.counts)
    if voted:
        assert c.counts[c.answer] == max(c.counts.values())
    with pytest.raises(r1py.InvalidArgument):
        model.self_consistency(q, 0)


def test_distilled_log_probabilities_follow_transformers_and_the_dataset_resumes(model, tmp_path):
    ref = json.loads((FIXTURES / "deepseek_v3_tiny" / "reference.json").read_text())
    case = next(c for c in ref["tokenizer"]["chat"] if c["add_generation_prompt"])
    k = 4
    jsonl, st = tmp_path / "d.jsonl", tmp_path / "d.safetensors"
    # A greedy chat with log-probabilities: its best token at each step is transformers' greedy
    # token, the k values sorted and a part of a distribution.
    c = model.chat(case["messages"], greedy=True, max_tokens=len(case["greedy_ids"]), top_logprobs=k)
    votes = model.self_consistency(case["messages"], 2, temperature=1.0, seed=1, max_tokens=6, top_logprobs=k)
    for path in (jsonl, st):
        with r1py.DistillWriter(path, k) as w:
            w.write(c)
            w.write(votes)
            assert len(w) == 3
    with r1py.DistillWriter(jsonl, k) as w:
        assert len(w) == 3 and model.apply_chat_template(case["messages"]) in w and "other" not in w
    lines = [json.loads(l) for l in jsonl.read_text().splitlines()]
    assert [l["generated_ids"] for l in lines] == [c.token_ids] + [s.token_ids for s in votes.samples]
    assert lines[0]["prompt_ids"] == case["ids"]
    assert [row[0] for row in lines[0]["top_ids"]] == case["greedy_ids"][: len(c.token_ids)]
    for row in lines[0]["top_logprobs"]:
        assert row == sorted(row, reverse=True) and np.exp(row).sum() <= 1 + 1e-5
    # The safetensors shard holds the same numbers.
    data = st.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    assert header["__metadata__"]["prompt.0"] == lines[0]["prompt"]
    info = header["top_logprobs.1"]
    a, b = info["data_offsets"]
    lp = np.frombuffer(data[8 + n + a : 8 + n + b], dtype=np.float32).reshape(info["shape"])
    assert np.array_equal(lp, np.asarray(lines[1]["top_logprobs"], np.float32))
    with r1py.DistillWriter(tmp_path / "e.jsonl", k) as w:
        with pytest.raises(r1py.InvalidArgument):
            w.write(model.chat(case["messages"], greedy=True, max_tokens=2))  # no top_logprobs
    with pytest.raises(r1py.InvalidArgument):
        r1py.DistillWriter(tmp_path / "x.txt", k)


def test_the_reasoning_example_runs(tmp_path):
    import subprocess
    import sys

    example = FIXTURES.parents[1] / "examples" / "python" / "reasoning.py"
    out_file = tmp_path / "votes.safetensors"
    out = subprocess.run(
        [sys.executable, str(example), str(FIXTURES / "deepseek_v3_tiny"), "What is 2 + 2?", "--reject", "e",
         "--samples", "3", "--max-tokens", "12", "--out", str(out_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for needle in ("[verified]", "[sample seed 102]", "[vote]", "[dataset] 3 generations"):
        assert needle in out.stdout, out.stdout
    assert out_file.is_file()


def test_chat_batch_equals_each_chat_alone(model):
    convs = [[{"role": "user", "content": q}] for q in ("Hi", "What is 2 + 2?", "A longer question, asked at length.")]
    batch = model.chat_batch(convs, temperature=1.0, seed=4, max_tokens=12, top_logprobs=2)
    assert len(batch) == 3
    for conv, c in zip(convs, batch):
        alone = model.chat(conv, temperature=1.0, seed=4, max_tokens=12, top_logprobs=2)
        assert c.token_ids == alone.token_ids and c.answer == alone.answer and c.reasoning == alone.reasoning
        assert c.finish_reason == alone.finish_reason
        assert [e["token"] for e in c.logprobs] == c.token_ids
    texts = model.complete_batch(["Once upon", "1 2 3"], greedy=True, max_tokens=5)
    assert [t.token_ids for t in texts] == [model.complete(p, greedy=True, max_tokens=5).token_ids for p in ("Once upon", "1 2 3")]
    with pytest.raises(TypeError):
        model.complete_batch("not a list")


def test_chat_batch_shares_a_common_system_prompt(model):
    system = {"role": "system", "content": "You are a careful assistant who counts things, one by one, out loud."}
    convs = [[system, {"role": "user", "content": q}] for q in ("Count to 3", "Count to 5", "Why?")]
    shared = len(model.tokenize(model.apply_chat_template([system], add_generation_prompt=False), add_special=False))
    assert shared >= 16, "the system prompt must be long enough to be shared"
    batch = model.chat_batch(convs, greedy=True, max_tokens=8)
    for conv, c in zip(convs, batch):
        alone = model.chat(conv, greedy=True, max_tokens=8)
        assert c.token_ids == alone.token_ids
        assert alone.usage["cached_prompt_tokens"] == 0
        # At least the system prompt's tokens came from the shared prefix.
        assert shared - 2 <= c.usage["cached_prompt_tokens"] < c.usage["prompt_tokens"], c.usage
