"""r1py directly against r1py through Ray Data (r1py.ray.generate) on one machine: rows/s and
generated tokens/s of the same prompts, Ray's overhead, time to the first row, and peak memory
per actor. Every Ray row must equal its direct reply (greedy), or the script fails.

    python benches/ray_bench.py MODEL [--rows 32] [--max-tokens 32] [--batch-size 8]

Configurations: direct (one model, 2 threads, `chat_batch` over batches of --batch-size), Ray with
1 actor × 2 CPUs, Ray with 2 actors × 1 CPU. Ray's start is not counted; each Ray run counts from
the first pull of the output, so it includes the actors' model loads.
"""

import argparse
import os
import time

import ray

import r1py
from r1py.ray import Predictor, generate


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Measured(Predictor):
    """A Predictor that also writes its process id and peak memory into each row."""

    def __call__(self, batch):
        out = super().__call__(batch)
        n = len(out[self._output_col])
        out["pid"] = [os.getpid()] * n
        out["rss_mib"] = [peak_rss_mib()] * n
        return out


def prompts(n):
    return [f"Count from {i} to {i + 9}, one number a line." for i in range(n)]


def direct(path, rows, gen, batch_size):
    t0 = time.perf_counter()
    with r1py.Model(path, threads=2) as m:
        load = time.perf_counter() - t0
        ps = prompts(rows)
        replies = []
        t1 = time.perf_counter()
        for i in range(0, rows, batch_size):
            replies += m.chat_batch([[{"role": "user", "content": p}] for p in ps[i : i + batch_size]], **gen)
        run = time.perf_counter() - t1
    return replies, load, run


def through_ray(spec, rows, gen, batch_size, actors, cpus):
    ds = ray.data.from_items([{"id": i, "prompt": p} for i, p in enumerate(prompts(rows))])
    out = ds.map_batches(
        Measured,
        fn_constructor_kwargs=dict(spec=spec, **gen),
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        batch_size=batch_size,
        batch_format="numpy",
    )
    t0 = time.perf_counter()
    first = None
    got = []
    for row in out.iter_rows():
        if first is None:
            first = time.perf_counter() - t0
        got.append(row)
    return got, first, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    gen = dict(greedy=True, max_tokens=args.max_tokens)
    replies, load, run = direct(args.model, args.rows, gen, args.batch_size)
    tokens = sum(len(c.token_ids) for c in replies)
    print("| configuration | seconds | rows/s | tokens/s | first row s | peak RSS per actor MiB |")
    print("|---|---|---|---|---|---|")
    print(f"| direct, 2 threads (+{load:.2f} s load) | {run:.2f} | {args.rows / run:.2f} | {tokens / run:.1f} | | |")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    spec = r1py.ModelSpec.of(args.model)
    ok = True
    for actors, cpus in [(1, 2), (2, 1)]:
        rows, first, total = through_ray(spec, args.rows, gen, args.batch_size, actors, cpus)
        for r in rows:
            want = replies[r["id"]]
            ok &= r["output"]["answer"] == want.answer and r["output"]["reasoning"] == want.reasoning
        rss = {r["pid"]: r["rss_mib"] for r in rows}
        per_actor = "/".join(f"{v:.0f}" for v in sorted(rss.values()))
        print(
            f"| Ray, {actors} actor(s) × {cpus} CPU | {total:.2f} | {len(rows) / total:.2f} | "
            f"{tokens / total:.1f} | {first:.2f} | {per_actor} |"
        )
    ray.shutdown()
    print("every Ray row equals its direct reply" if ok else "MISMATCH between Ray rows and direct replies")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
