"""r1's reasoning features from Python, on one question: a step verifier that rejects reasoning
steps containing a phrase, self-consistency (N samples and a vote on their final answers), and
the samples written to a distillation dataset (.jsonl or .safetensors).

    pip install ./r1-py
    python examples/python/reasoning.py MODEL "QUESTION" --reject "PHRASE" --samples 5 --out data.jsonl
"""

import argparse

import r1py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("question")
    ap.add_argument("--reject", default="I think", help="steps containing this phrase are sampled again")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--out", default="reasoning.jsonl")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    chat = [{"role": "user", "content": args.question}]
    with r1py.Model(args.model) as model:
        # 1. A verifier: any callable (step, reasoning so far) -> True / False / "stop".
        c = model.chat(chat, max_tokens=args.max_tokens, seed=args.seed,
                       verifier=lambda step, reasoning: args.reject not in step, max_step_retries=4)
        print(f"[verified] {len(c.verified_steps)} steps, {c.usage['rejected_steps']} rejected")
        for i, s in enumerate(c.verified_steps):
            print(f"  step {i} ({s['tries']} tries): {s['text'][:60]!r}")
        print(f"[answer] {c.answer.strip()[:200]}")
        # 2. Self-consistency.
        votes = model.self_consistency(chat, args.samples, max_tokens=args.max_tokens, seed=100, top_logprobs=5)
        for s in votes.samples:
            print(f"[sample seed {s.seed}] {s.voted_answer!r}")
        print(f"[vote] {votes.answer!r} {votes.counts}")
        # 3. The samples, with their top-5 log-probabilities, into a dataset.
        with r1py.DistillWriter(args.out, 5) as dataset:
            dataset.write(votes)
            print(f"[dataset] {len(dataset)} generations in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
