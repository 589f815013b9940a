"""16 Python threads chatting on one r1py model at once, against the same 16 chats in turn: wall
time of each, and whether every threaded reply equals its serial one.

    python benches/python_threads.py MODEL [--threads 16] [--max-tokens 32]
"""

import argparse
import threading
import time

import r1py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    with r1py.Model(args.model) as m:
        chats = [[{"role": "user", "content": f"Count from {i} to {i + 5}."}] for i in range(args.threads)]
        gen = dict(greedy=True, max_tokens=args.max_tokens)
        m.chat(chats[0], **gen)  # warm-up
        t0 = time.perf_counter()
        serial = [m.chat(c, **gen) for c in chats]
        t_serial = time.perf_counter() - t0
        out = [None] * len(chats)

        def work(i):
            out[i] = m.chat(chats[i], **gen)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(chats))]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t_threads = time.perf_counter() - t0
        same = sum(a.token_ids == b.token_ids for a, b in zip(serial, out))
        tokens = sum(len(c.token_ids) for c in serial)
        print(f"{len(chats)} chats, {tokens} tokens: serial {t_serial:.2f} s, {len(chats)} threads {t_threads:.2f} s "
              f"({t_serial / t_threads:.2f}x); {same}/{len(chats)} threaded replies equal their serial ones")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
