"""A multi-turn chat with r1py: each line on stdin is a user message; the reasoning streams
dim (on a terminal) under [reasoning], then the answer. /reset starts over, /exit quits.

    pip install ./r1-py
    python examples/python/chat.py MODEL [--greedy] [--max-tokens N]
"""

import argparse
import sys

import r1py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--max-tokens", type=int, default=1024)
    args = ap.parse_args()
    dim, reset = ("\x1b[2m", "\x1b[0m") if sys.stdout.isatty() else ("", "")
    with r1py.Model(args.model) as model, model.session() as session:
        chat = []
        for line in sys.stdin:
            line = line.rstrip("\n")
            if line == "/exit":
                break
            if line == "/reset":
                chat = []
                session.reset()
                print("[conversation reset]")
                continue
            chat.append({"role": "user", "content": line})
            stream = session.chat(chat, stream=True, greedy=args.greedy, max_tokens=args.max_tokens)
            channel = None
            for chunk in stream:
                if chunk.text and chunk.channel != channel:
                    print(f"{dim}[reasoning]" if chunk.channel == "reasoning" else f"{reset}\n[answer]")
                    channel = chunk.channel
                print(chunk.text, end="", flush=True)
            c = stream.completion
            print(f"{reset}\n[{c.usage['prompt_tokens']} prompt tokens, {c.usage['cached_prompt_tokens']} cached; "
                  f"{c.usage['decode_tokens_per_s']:.1f} tok/s; {c.finish_reason}]\n")
            chat.append({"role": "assistant", "content": c.answer})
    return 0


if __name__ == "__main__":
    sys.exit(main())
