#!/usr/bin/env python3
"""Records llama.cpp's tokenization and greedy tokens for the real GGUF models, as the reference
that tests/real_models.rs compares r1 with. Its output, llama_cpp_reference.json, is committed.

Needs llama-cpp-python 0.3.36 and the models (scripts/fetch-models.sh). To use an already built
llama.cpp instead of compiling a second copy:

    bash ../shared/tools/build-llama-cpp.sh            # prints the folder of libllama.so
    CMAKE_ARGS="-DLLAMA_BUILD=OFF" pip install llama-cpp-python==0.3.36
    LLAMA_CPP_LIB_PATH=<that folder> python3 tests/reference/make_llama_cpp_reference.py

llama.cpp runs with a float32 KV cache and flash attention off, so that its attention is as exact
as r1's; the matmuls are its usual quantized ones.
"""

import json
import os
import sys

import numpy as np
from llama_cpp import Llama, llama_cpp

MODELS = os.environ.get("R1_MODELS", os.path.expanduser("~/.cache/r1/models"))
N_NEW = 32

FILES = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}

# Prompts for greedy generation, tokenized as llama.cpp does (BOS per the file's metadata,
# special tokens written in the text are parsed).
PROMPTS = {
    "smollm2": [
        "The capital of France is",
        "Question: What is 12 times 7?\nAnswer:",
        "<|im_start|>user\nName three colors.<|im_end|>\n<|im_start|>assistant\n",
        "Once upon a time, in a small village,",
        # Continuations with one obvious next token at every step (no near-ties), where the
        # full 32 tokens must agree.
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
        "A, B, C, D, E, F, G, H, I, J,",
        "January, February, March, April,",
        "2, 4, 6, 8, 10, 12,",
        "100, 99, 98, 97, 96,",
    ],
    "qwen2.5-coder-0.5b": [
        "def fibonacci(n):",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
        "The three primary colors are",
        "// A C function that reverses a string in place\nvoid reverse(char *s) {",
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,",
        "#include <stdio.h>\n\nint main(void) {\n",
        "2, 4, 6, 8, 10, 12,",
        "100, 99, 98, 97, 96,",
        "<|im_start|>user\nCount from 1 to 20, separated by commas.<|im_end|>\n<|im_start|>assistant\n",
    ],
}

# Texts whose tokenization must match (no generation).
TOKENIZE = [
    "Hello world",
    "  leading spaces, trailing   ",
    "Numbers: 1234567 3.14159 -42 1e10",
    "Unicode: héllo wörld — 你好世界 🙂👍 naïve café",
    "def f(x):\n\treturn x**2  # square\n\n\n",
    "It's we'll they've I'm you'd SHOUTING'S",
    "<think>\nreasoning\n</think>\n\nanswer",
    "<|im_start|>user\nhi<|im_end|>",
]


def main():
    out = {"llama_cpp_python": __import__("llama_cpp").__version__, "n_new": N_NEW, "models": {}}
    for name, file in FILES.items():
        path = os.path.join(MODELS, file)
        if not os.path.exists(path):
            sys.exit(f"missing {path}: run scripts/fetch-models.sh")
        llm = Llama(
            path,
            n_ctx=1024,
            n_threads=2,
            verbose=False,
            logits_all=True,
            flash_attn=False,
            type_k=llama_cpp.GGML_TYPE_F32,
            type_v=llama_cpp.GGML_TYPE_F32,
        )
        entry = {"file": file, "tokenize": [], "greedy": []}
        for text in TOKENIZE:
            ids = llm.tokenize(text.encode(), add_bos=True, special=True)
            entry["tokenize"].append({"text": text, "ids": ids})
        for prompt in PROMPTS[name]:
            ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
            llm.reset()
            llm.eval(ids)
            generated, margins = [], []
            for _ in range(N_NEW):
                logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
                top2 = np.sort(logits)[-2:]
                margins.append(float(top2[1] - top2[0]))
                tok = int(np.argmax(logits))
                generated.append(tok)
                llm.eval([tok])
            entry["greedy"].append(
                {
                    "prompt": prompt,
                    "prompt_ids": ids,
                    "generated_ids": generated,
                    "text": llm.detokenize(generated).decode("utf-8", "replace"),
                    "top1_top2_margins": [round(m, 4) for m in margins],
                }
            )
            print(name, repr(prompt[:40]), "->", repr(entry["greedy"][-1]["text"][:60]), "min margin", min(margins))
        out["models"][name] = entry
        del llm
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "llama_cpp_reference.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
