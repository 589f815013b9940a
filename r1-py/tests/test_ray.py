"""r1py on Ray, on a local Ray cluster and a fixture model: every row answered exactly once and
equal to a direct call, a crashed actor replaced, a failing row failing the job, a node removed
mid-run, and the Serve endpoint (plain and streamed) equal to direct calls, surviving a killed
replica. Ray must be installed (``r1py[ray]``); these tests do not skip without it."""

import json
import os
import pickle
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import ray

import r1py
from r1py.ray import generate

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
MODEL = str(Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "qwen2_tiny")
GEN = dict(greedy=True, max_tokens=8)
PROMPTS = ["Hi", "What is 2 + 2?", "Count: 1 2 3", "Tell me more", "Why?"]
INIT = dict(address="local", num_cpus=2, object_store_memory=100 << 20, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="module")
def direct():
    """Each prompt's reply from r1py itself, without Ray."""
    with r1py.Model(MODEL) as m:
        return [m.chat(r1py.ray.messages_of(p), **GEN) for p in PROMPTS]


def rows_of(n, messages=False):
    """Rows with an id and a prompt: a string, or (``messages``) the same as a message list."""
    prompt = (lambda p: [{"role": "user", "content": p}]) if messages else (lambda p: p)
    return [{"id": i, "prompt": prompt(PROMPTS[i % len(PROMPTS)])} for i in range(n)]


def check_rows(rows, n, direct):
    assert len(rows) == n
    assert sorted(r["id"] for r in rows) == list(range(n)), "every row once"
    for r in rows:
        want = direct[r["id"] % len(PROMPTS)]
        out = r["output"]
        assert out["answer"] == want.answer and out["reasoning"] == want.reasoning, r["id"]
        assert out["finish_reason"] == want.finish_reason
        assert out["completion_tokens"] == len(want.token_ids)
        assert out["prompt_tokens"] == want.usage["prompt_tokens"]


def test_a_spec_checks_the_weights_and_travels():
    spec = r1py.ModelSpec.of(MODEL)
    assert len(spec.sha256) == 64
    assert pickle.loads(pickle.dumps(spec)) == spec
    with spec.load() as m:
        assert m.architecture == "qwen2"
    wrong = r1py.ModelSpec(MODEL, sha256="0" * 64)
    with pytest.raises(r1py.InvalidArgument, match="SHA-256"):
        wrong.load()
    with pytest.raises(r1py.ModelNotFound):
        r1py.ModelSpec.of("/no/such/model.gguf")
    with r1py.Model(MODEL) as m, pytest.raises(TypeError, match="ModelSpec"):
        pickle.dumps(m)


@pytest.fixture(scope="class")
def local_ray():
    ray.init(**INIT)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.mark.usefixtures("local_ray")
class TestOneNode:
    """Ray Data on a local one-node Ray."""

    def test_every_row_is_answered_once_as_a_direct_call(self, direct):
        spec = r1py.ModelSpec.of(MODEL)
        out = generate(ray.data.from_items(rows_of(13)), spec, num_actors=2, batch_size=4, **GEN)
        check_rows(out.take_all(), 13, direct)
        # A column of message lists is sent as it is.
        out = generate(ray.data.from_items(rows_of(6, messages=True)), spec, batch_size=4, **GEN)
        check_rows(out.take_all(), 6, direct)


    def test_rows_carry_top_logprobs_for_distillation(self):
        spec = r1py.ModelSpec.of(MODEL)
        out = generate(ray.data.from_items(rows_of(3)), spec, top_logprobs=3, **GEN).take_all()
        with r1py.Model(MODEL) as m:
            for r in out:
                want = m.chat(r1py.ray.messages_of(r["prompt"]), top_logprobs=3, **GEN).logprobs
                got = r["output"]["logprobs"]
                assert [e["token"] for e in got] == [e["token"] for e in want]
                for g, w in zip(got, want):
                    assert list(g["top_tokens"]) == [t for t, _ in w["top"]]
                    assert list(g["top_logprobs"]) == pytest.approx([p for _, p in w["top"]], abs=1e-5)

    def test_a_crashed_actor_is_replaced_and_no_row_is_lost(self, direct, tmp_path):
        import ray_faults
        from ray.data import ActorPoolStrategy

        ray.cloudpickle.register_pickle_by_value(ray_faults)
        spec = r1py.ModelSpec.of(MODEL)
        marker = str(tmp_path / "crashed")
        out = ray.data.from_items(rows_of(10)).map_batches(
            ray_faults.CrashingOnce,
            fn_constructor_kwargs=dict(spec=spec, marker=marker, **GEN),
            compute=ActorPoolStrategy(size=1),
            batch_size=3,
            batch_format="numpy",
            max_restarts=-1,
            max_task_retries=-1,
        )
        check_rows(out.take_all(), 10, direct)
        assert os.path.exists(marker), "the actor did crash"


    def test_an_exception_in_a_row_fails_the_job(self):
        spec = r1py.ModelSpec.of(MODEL)
        rows = rows_of(4) + [{"id": 4, "prompt": [{"content": "no role"}]}]
        with pytest.raises(Exception, match="role"):
            generate(ray.data.from_items(rows), spec, batch_size=2, **GEN).take_all()


def test_a_node_removed_mid_run_loses_no_row(direct):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 80 << 20})
    nodes = [cluster.add_node(num_cpus=1, object_store_memory=80 << 20) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        spec = r1py.ModelSpec.of(MODEL)
        out = generate(ray.data.from_items(rows_of(24)), spec, num_actors=2, batch_size=2, **GEN)
        # The driver attaches to one of the nodes (they share an address); another one goes.
        driver = ray.get_runtime_context().get_node_id()
        victim = next(n for n in nodes if n.node_id != driver)
        rows = []
        for row in out.iter_rows():
            rows.append(row)
            if len(rows) == 2:
                # One node goes; another comes (as an autoscaler would replace it).
                cluster.remove_node(victim)
                cluster.add_node(num_cpus=1, object_store_memory=80 << 20)
        check_rows(rows, 24, direct)
        # An actor of the pool was on the node when it went, and was restarted elsewhere.
        from ray.util.state import list_actors

        restarted = [a for a in list_actors(detail=True) if "MapWorker" in a.class_name and a.num_restarts > 0]
        assert restarted, "no actor of the pool was lost with the node"
    finally:
        ray.shutdown()
        cluster.shutdown()


def post(url, body, timeout=60):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def streamed(url, body):
    """The reasoning and the answer of an SSE reply, and whether it ended with [DONE]."""
    reasoning, answer, done = "", "", False
    for line in post(url, dict(body, stream=True)).splitlines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            continue
        delta = json.loads(line[6:])["choices"][0]["delta"]
        reasoning += delta.get("reasoning_content", "")
        answer += delta.get("content", "")
    return reasoning, answer, done


def test_serve_answers_as_direct_calls_and_survives_a_killed_replica(direct):
    from ray import serve

    from r1py.ray.serve import build_app

    ray.init(**INIT)
    port = 18231
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model": MODEL, "num_replicas": "2", "num_cpus": "1"}), name="r1", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        assert json.loads(urllib.request.urlopen(f"{base}/health", timeout=30).read())["status"] == "ok"
        models = json.loads(urllib.request.urlopen(f"{base}/v1/models", timeout=30).read())
        assert models["data"][0]["id"] == "qwen2_tiny"
        url = f"{base}/v1/chat/completions"

        def ask(i, results):
            messages = r1py.ray.messages_of(PROMPTS[i % len(PROMPTS)])
            body = {"messages": messages, "temperature": 0, "max_tokens": GEN["max_tokens"]}
            if i % 2:
                results[i] = streamed(url, body)
            else:
                msg = json.loads(post(url, body))["choices"][0]["message"]
                results[i] = (msg["reasoning_content"], msg["content"], True)

        def round_of(n):
            results = [None] * n
            threads = [threading.Thread(target=ask, args=(i, results)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for i, got in enumerate(results):
                want = direct[i % len(PROMPTS)]
                assert got == (want.reasoning, want.answer, True), f"request {i}"

        round_of(8)
        bad = urllib.request.Request(url, b'{"messages": 3}', {"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=30)
        assert e.value.code == 400
        # Kill one replica; Serve starts another, and requests keep succeeding.
        replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
        assert len(replicas) == 2
        ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            alive = [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
            status = serve.status().applications["r1"].status
            if len(alive) == 2 and replicas[0]["name"] not in [a["name"] for a in alive] and status == "RUNNING":
                break
            time.sleep(0.5)
        else:
            pytest.fail("the killed replica was not replaced")
        round_of(6)
    finally:
        serve.shutdown()
        ray.shutdown()
