"""The r1py wheel on r1's fixture models: numbers against transformers' references, the API's
shapes, streaming, sessions, interruption, threads, and each documented exception."""

import _thread
import ctypes
import gc
import json
import pickle
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import r1py

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
NAMES = sorted(p.name for p in FIXTURES.iterdir() if (p / "reference.safetensors").is_file())


def read_safetensors(path):
    """A safetensors file as {name: numpy array} (the format is a JSON header and raw bytes)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    dtypes = {"F32": np.float32, "I64": np.int64, "F16": np.float16, "BF16": None, "I32": np.int32}
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or dtypes.get(info["dtype"]) is None:
            continue
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[8 + n + start : 8 + n + end], dtype=dtypes[info["dtype"]])
        out[name] = arr.reshape(info["shape"])
    return out


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@pytest.fixture(scope="module")
def model():
    with r1py.Model(FIXTURES / "deepseek_v3_tiny") as m:
        yield m


USER = [{"role": "user", "content": "Hello, who are you?"}]


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_transformers(name):
    ref = read_safetensors(FIXTURES / name / "reference.safetensors")
    with r1py.Model(FIXTURES / name) as m:
        i = 0
        while f"input_ids.{i}" in ref:
            ids = [int(x) for x in ref[f"input_ids.{i}"].reshape(-1)]
            got = m.logits(ids)
            assert got.dtype == np.float32 and got.shape == (len(ids), m.vocab_size)
            want = ref[f"logits.{i}"].reshape(got.shape)
            assert rel_l2(got, want) <= 1e-4, (name, i)
            i += 1
        assert i > 0


@pytest.mark.parametrize("name", NAMES)
def test_greedy_chat_equals_transformers(name):
    ref = json.loads((FIXTURES / name / "reference.json").read_text())
    with r1py.Model(FIXTURES / name) as m:
        cases = [c for c in ref["tokenizer"]["chat"] if c["add_generation_prompt"]]
        assert cases
        for case in cases:
            assert m.tokenize(m.apply_chat_template(case["messages"]), add_special=False) == case["ids"]
            c = m.chat(case["messages"], greedy=True, max_tokens=len(case["greedy_ids"]))
            assert c.token_ids == case["greedy_ids"]
            assert c.prompt_ids == case["ids"]


def test_streaming_concatenates_to_the_completion(model):
    whole = model.chat(USER, greedy=True, max_tokens=20, max_reasoning_tokens=5)
    stream = model.chat(USER, greedy=True, max_tokens=20, max_reasoning_tokens=5, stream=True)
    chunks = list(stream)
    assert all(isinstance(c, r1py.Chunk) and c.channel in ("reasoning", "answer") for c in chunks)
    reasoning = "".join(c.text for c in chunks if c.channel == "reasoning")
    answer = "".join(c.text for c in chunks if c.channel == "answer")
    assert (reasoning, answer) == (whole.reasoning, whole.answer)
    assert [c.token_id for c in chunks if c.token_id is not None] == whole.token_ids
    assert stream.completion.token_ids == whole.token_ids
    assert whole.answer, "the thinking budget leaves an answer"
    assert whole.finish_reason in ("end_token", "max_tokens")


def test_openai_shapes(model):
    c = model.chat(USER, greedy=True, max_tokens=12, max_reasoning_tokens=3)
    o = c.to_openai()
    assert o["object"] == "chat.completion"
    msg = o["choices"][0]["message"]
    assert msg["role"] == "assistant" and msg["content"] == c.answer and msg["reasoning_content"] == c.reasoning
    assert o["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
    u = o["usage"]
    assert u["completion_tokens"] == len(c.token_ids)
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert u["completion_tokens_details"]["reasoning_tokens"] == c.usage["reasoning_tokens"]
    chunks = list(model.chat(USER, greedy=True, max_tokens=12, max_reasoning_tokens=3, stream=True).iter_openai())
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    deltas = [ch["choices"][0]["delta"] for ch in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == c.reasoning
    assert "".join(d.get("content", "") for d in deltas) == c.answer


def test_completion_fields_and_logprobs(model):
    c = model.complete("Once upon a time", greedy=True, max_tokens=4, top_logprobs=3)
    assert set(c.usage) == {
        "prompt_tokens",
        "cached_prompt_tokens",
        "reasoning_tokens",
        "answer_tokens",
        "rejected_steps",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
    }
    assert len(c.logprobs) == len(c.token_ids) == 4
    for lp, tok in zip(c.logprobs, c.token_ids):
        assert lp["token"] == tok and lp["top"][0][0] == tok and len(lp["top"]) == 3
    assert model.complete("Once upon a time", greedy=True, max_tokens=2).logprobs is None
    assert isinstance(c.steps, list) and isinstance(c.tool_calls, list)


def test_session_reuses_its_cache(model):
    with model.session() as s:
        first = s.chat(USER, greedy=True, max_tokens=8, max_reasoning_tokens=2)
        assert first.usage["cached_prompt_tokens"] == 0
        convo = USER + [{"role": "assistant", "content": first.answer}, {"role": "user", "content": "And then?"}]
        second = s.chat(convo, greedy=True, max_tokens=8, max_reasoning_tokens=2)
        assert second.usage["cached_prompt_tokens"] > 0
        assert second.token_ids == model.chat(convo, greedy=True, max_tokens=8, max_reasoning_tokens=2).token_ids
        s.reset()
        assert s.cached_tokens == 0


def test_interrupt_main_raises_keyboard_interrupt_promptly_and_the_model_still_works(model):
    fired = []

    def interrupt():
        fired.append(time.perf_counter())
        _thread.interrupt_main()

    timer = threading.Timer(0.1, interrupt)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        # One call that runs for seconds (the fixture decodes a few hundred tokens a second, and
        # the prompt fills most of its 256 positions): the signal must stop it from inside.
        model.complete("a " * 40, max_tokens=210, seed=1, min_p=0.0, temperature=1.0)
        time.sleep(5)  # not reached when the generation itself raised
    raised = time.perf_counter()
    timer.join()
    assert fired, "the timer fired"
    assert raised - fired[0] < 0.1, f"KeyboardInterrupt {1000 * (raised - fired[0]):.1f} ms after the signal"
    assert len(model.complete("Still there?", greedy=True, max_tokens=3).token_ids) == 3


def test_stream_cancel_from_another_thread(model):
    stream = model.complete("Count to a thousand:", max_tokens=200, seed=1, stream=True)
    next(stream)
    threading.Thread(target=stream.cancel).start()
    rest = list(stream)
    assert stream.completion.finish_reason == "cancelled"
    assert len(stream.completion.token_ids) < 200
    assert rest is not None


def test_threads_share_one_model(model):
    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(8)]
    serial = [model.chat(p, greedy=True, max_tokens=12).token_ids for p in prompts]
    results = [None] * 8

    def work(i):
        results[i] = model.chat(prompts[i], greedy=True, max_tokens=12).token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == serial


def test_bad_inputs_raise_the_documented_exceptions(model, tmp_path):
    with pytest.raises(r1py.ModelNotFound) as e:
        r1py.Model(tmp_path / "missing")
    assert isinstance(e.value, FileNotFoundError) and e.value.code == "io" and "missing" in str(e.value)
    truncated = tmp_path / "model.gguf"
    truncated.write_bytes((FIXTURES / "gguf" / "qwen2_tiny.f32.gguf").read_bytes()[:100])
    with pytest.raises(r1py.FormatError) as e:
        r1py.Model(truncated)
    assert isinstance(e.value, ValueError) and isinstance(e.value, r1py.R1Error)
    with pytest.raises(TypeError):
        r1py.Model(42)
    with pytest.raises(TypeError):
        model.chat(USER, max_tokens="many")
    with pytest.raises(TypeError):
        model.chat(USER, no_such_option=1)
    with pytest.raises(r1py.InvalidArgument) as e:
        model.chat(USER, temperature=-1.0)
    assert isinstance(e.value, ValueError) and "temperature" in str(e.value)
    with pytest.raises(r1py.InvalidArgument):
        model.chat("not a list of messages")
    with pytest.raises(r1py.InvalidArgument):
        model.chat([{"role": "user"}])
    with pytest.raises(r1py.InvalidArgument):
        model.detokenize([10**6])
    with pytest.raises(r1py.InvalidArgument):
        model.chat(USER, top_logprobs=21)
    with pytest.raises(r1py.ContextFull):
        model.complete("a " * (2 * model.context_length), max_tokens=1)
    with pytest.raises(r1py.InvalidArgument):
        r1py.Model(FIXTURES / "qwen2_tiny", dtype="f8")


def test_cache_precision_is_a_load_option():
    # A checkpoint kept in f32 caches in f32 by default, matching transformers; an f16 cache
    # rounds the keys and values the later tokens attend to, so its logits move, a little.
    ref = read_safetensors(FIXTURES / "qwen2_tiny" / "reference.safetensors")
    ids = [int(x) for x in ref["input_ids.0"].reshape(-1)]
    want = ref["logits.0"].reshape(len(ids), -1)
    with r1py.Model(FIXTURES / "qwen2_tiny", cache="f32") as m:
        exact = m.logits(ids)
    with r1py.Model(FIXTURES / "qwen2_tiny", cache="F16") as m:
        half = m.logits(ids)
    assert len(ids) > 1
    assert rel_l2(exact, want) <= 1e-4
    assert 0 < rel_l2(half, want) <= 1e-2
    with pytest.raises(r1py.InvalidArgument) as e:
        r1py.Model(FIXTURES / "qwen2_tiny", cache="f8")
    assert "f8" in str(e.value)


def test_close_then_use_raises():
    m = r1py.Model(FIXTURES / "qwen2_tiny")
    s = m.session()
    m.close()
    with pytest.raises(r1py.R1Error):
        m.tokenize("hi")
    with pytest.raises(r1py.R1Error):
        m.chat(USER)
    assert "closed" in repr(m)
    # The session keeps its own reference until it is closed.
    assert s.chat(USER, greedy=True, max_tokens=2).token_ids
    s.close()
    with pytest.raises(r1py.R1Error):
        s.chat(USER)


def test_pickling_a_model_says_to_load_it_per_worker(model):
    with pytest.raises(TypeError, match="r1py.ModelSpec"):
        pickle.dumps(model)


def test_parse_trace():
    t = r1py.parse_trace("Add them.\n\nWait, 2+2=4.</think>So \\boxed{4}.", starts_in_reasoning=True)
    assert t.reasoning == "Add them.\n\nWait, 2+2=4."
    assert t.answer == "So \\boxed{4}."
    assert t.final_answer == "4" and len(t.steps) == 2 and not t.truncated
    calls = r1py.parse_trace(
        "</think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
        '```json\n{"city": "Paris"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        starts_in_reasoning=True,
    ).tool_calls
    assert calls == [{"name": "get_weather", "arguments": {"city": "Paris"}}]


def test_model_facts_and_reprs(model):
    assert model.architecture == "deepseek_v3"
    assert model.vocab_size == 512 and model.context_length == 256
    assert "deepseek_v3" in repr(model)
    assert model.detokenize(model.tokenize("Hello world", add_special=False)) == "Hello world"
    assert r1py.presets["greedy"] == {"greedy": True}
    assert r1py.Model.__doc__ and r1py.Completion.__doc__ and r1py.Stream.__doc__


def test_the_chat_example_runs_a_two_turn_conversation():
    import subprocess
    import sys

    example = FIXTURES.parents[1] / "examples" / "python" / "chat.py"
    out = subprocess.run(
        [sys.executable, str(example), str(FIXTURES / "deepseek_v3_tiny"), "--greedy", "--max-tokens", "6"],
        input="Hello\nAnd then?\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    usage = [line for line in out.stdout.splitlines() if line.startswith("[") and "prompt tokens" in line]
    assert len(usage) == 2 and "[reasoning]" in out.stdout
    assert " 0 cached" not in usage[1]


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_and_rss():
    """glibc's bytes in use (what the extension allocates goes through malloc) and the resident set."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _Mallinfo2
    m = libc.mallinfo2()
    resident = int(Path("/proc/self/statm").read_text().split()[1]) * 4096
    return m.uordblks + m.hblkhd, resident


def _slope(ys):
    n = len(ys)
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))


def test_a_thousand_generations_keep_memory_flat(model):
    def once(i):
        with model.session() as s:
            s.chat([{"role": "user", "content": f"question {i % 100}"}], max_tokens=6, seed=7)
    for i in range(1000):  # warm-up: the allocator's arenas, the pool, the tokenizer's word cache
        once(i)
    gc.collect()
    samples = []
    for i in range(1000):
        once(i)
        if i % 50 == 49:
            gc.collect()
            samples.append(_heap_and_rss())
    heap = _slope([h for h, _ in samples]) / 50
    rss = _slope([r for _, r in samples]) / 50
    print(f"heap {heap:.0f} B/gen, rss {rss:.0f} B/gen ({samples[0][1] / 1e6:.1f} -> {samples[-1][1] / 1e6:.1f} MB)")
    # glibc's count moves by a few kilobytes with the threads' caches of freed chunks; a leak
    # of one 64-byte allocation a generation reads about 80.
    assert heap < 48, f"the heap grows {heap:.0f} bytes a generation"
    assert rss < 1024, f"the resident set grows {rss:.0f} bytes a generation"
