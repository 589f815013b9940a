#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora into fuzz/seeds/<target>/ from the test fixtures:
small valid inputs the fuzzer mutates from, and the crafted hostile cases of issue 12's table.
Standard library only; run from anywhere: python3 fuzz/make_seeds.py"""
import json
import re
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = ROOT / "fuzz" / "seeds"


def write(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# --- GGUF: the fixtures' headers with every tensor shrunk to one f32, then broken copies.

def read_gguf(path):
    b = path.read_bytes()
    pos = 0

    def take(n):
        nonlocal pos
        s = b[pos:pos + n]
        pos += n
        return s

    def u32():
        return struct.unpack("<I", take(4))[0]

    def u64():
        return struct.unpack("<Q", take(8))[0]

    def string():
        return take(u64())

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def value(ty):
        if ty == 8:
            string()
        elif ty == 9:
            item, n = u32(), u64()
            for _ in range(n):
                value(item)
        else:
            take(sizes[ty])

    assert take(4) == b"GGUF"
    version, n_tensors, n_kv = u32(), u64(), u64()
    kvs = []
    for _ in range(n_kv):
        start = pos
        key = string()
        ty = u32()
        value(ty)
        kvs.append((key, b[start:pos]))
    names = []
    for _ in range(n_tensors):
        name = string()
        dims = [u64() for _ in range(u32())]
        u32(), u64()
        names.append(name)
    return version, kvs, names


def enc_str(s):
    return struct.pack("<Q", len(s)) + s


def gguf(version, kvs, tensors, counts=None, align=32):
    """kvs: raw encoded key/values; tensors: (name, dims, type, offset)."""
    nt, nk = counts or (len(tensors), len(kvs))
    v = b"GGUF" + struct.pack("<IQQ", version, nt, nk) + b"".join(kvs)
    for name, dims, ty, off in tensors:
        v += enc_str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        v += struct.pack("<IQ", ty, off)
    v += b"\0" * (-len(v) % align)
    return v + b"\0" * (32 * max(len(tensors), 1))


def kv_u32(key, x):
    return enc_str(key) + struct.pack("<II", 4, x)


def gguf_seeds():
    for fixture in ["llama_tiny", "qwen2_tiny", "deepseek_v3_tiny", "deepseek_v2_greedy"]:
        version, kvs, names = read_gguf(FIX / "gguf" / f"{fixture}.f32.gguf")
        raw = [r for _, r in kvs]
        tensors = [(n, [8], 0, 32 * i) for i, n in enumerate(names)]
        write("gguf", f"{fixture}.gguf", gguf(version, raw, tensors))
        if fixture != "llama_tiny":
            continue
        # The crafted cases, one per check.
        write("gguf", "huge_tensor_count.gguf", gguf(version, raw, tensors, counts=(2**63, len(raw))))
        write("gguf", "huge_kv_count.gguf", gguf(version, raw, tensors, counts=(len(tensors), 2**40)))
        write("gguf", "alignment_zero.gguf", gguf(version, raw + [kv_u32(b"general.alignment", 0)], tensors))
        write("gguf", "alignment_48.gguf", gguf(version, raw + [kv_u32(b"general.alignment", 48)], tensors))
        write("gguf", "duplicate_key.gguf", gguf(version, raw + [raw[0]], tensors))
        write("gguf", "duplicate_tensor.gguf", gguf(version, raw, tensors + [(names[0], [8], 0, 32 * len(names))]))
        write("gguf", "overlap.gguf", gguf(version, raw, [(n, [8], 0, 0) for n in names]))
        write("gguf", "dim_zero.gguf", gguf(version, raw, [(names[0], [0, 5], 0, 0)]))
        write("gguf", "five_dims.gguf", gguf(version, raw, [(names[0], [1, 1, 1, 1, 1], 0, 0)]))
        write("gguf", "size_overflow.gguf", gguf(version, raw, [(names[0], [1152, 2**42 + 1, 2**20], 0, 0)]))
        write("gguf", "block_not_dividing.gguf", gguf(version, raw, [(names[0], [33, 2], 2, 0)]))
        write("gguf", "offset_past_end.gguf", gguf(version, raw, [(names[0], [8], 0, 2**62)]))
        big_string = enc_str(b"x") + struct.pack("<IQ", 8, 2**40)
        write("gguf", "huge_string.gguf", gguf(version, raw + [big_string], tensors))
        big_array = enc_str(b"x") + struct.pack("<IIQ", 9, 4, 2**40)
        write("gguf", "huge_array.gguf", gguf(version, raw + [big_array], tensors))
        write("gguf", "zero_heads.gguf", gguf(version, raw + [kv_u32(b"llama.attention.head_count", 0)], tensors))


# --- safetensors: first byte 0 = a model.safetensors, 1 = an index beside two shards.

def st(header, data):
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    one = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    write("safetensors", "one", b"\0" + st(one, b"\0" * 8))
    write("safetensors", "gap", b"\0" + st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                            "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12))
    write("safetensors", "wrong_size", b"\0" + st({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8))
    write("safetensors", "trailing", b"\0" + st(one, b"\0" * 12))
    write("safetensors", "header_past_end", b"\0" + struct.pack("<Q", 10**6) + b"{}")
    for name, wm in [("index", {"a": "s1.safetensors", "b": "s2.safetensors"}),
                     ("index_traversal", {"a": "../../etc/passwd"}),
                     ("index_absolute", {"a": "/etc/passwd"}),
                     ("index_link_out", {"a": "out.safetensors"}),
                     ("index_same_tensor_twice", {"a": "s1.safetensors", "c": "s1.safetensors"})]:
        write("safetensors", name, b"\1" + json.dumps({"weight_map": wm}).encode())


def text_seeds():
    for cfg in sorted(FIX.glob("*/config.json")):
        write("config_json", cfg.parent.name + ".json", cfg.read_bytes())
    write("config_json", "zero_heads.json", json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
                                                         "num_attention_heads": 0, "vocab_size": 8,
                                                         "num_hidden_layers": 1, "intermediate_size": 8}))
    source = (ROOT / "r1-core" / "src" / "chat_template.rs").read_text()
    r1 = re.search(r'DEEPSEEK_R1_TEMPLATE: &str = r#"(.*?)"#;', source, re.S).group(1)
    write("chat_template", "deepseek_r1.jinja", r1)
    for tc in sorted(FIX.glob("*/tokenizer_config.json")):
        t = json.loads(tc.read_text()).get("chat_template")
        if isinstance(t, str):
            write("chat_template", tc.parent.name + ".jinja", t)
    hostile = {
        "escape": "{{ self.__init__.__globals__ }}{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "include": "{% include '/etc/passwd' %}",
        "ranges": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "repeat": "{% for i in range(100) %}{% set s = 'x' * 10**8 %}{% endfor %}",
        "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        "nesting": "{% if true %}" * 200 + "x" + "{% endif %}" * 200,
        "messages": "{% for m in messages %}{{ m.role }}: {{ m.content | trim }}{% if m.tool_calls %}"
                    "{{ m.tool_calls | tojson }}{% endif %}\n{% endfor %}{{ tools | tojson }}",
    }
    for name, t in hostile.items():
        write("chat_template", name + ".jinja", t)
    traces = {
        "r1": "\x01Let me think.\n\nFirst, 7 * 6.\nWait, check: 42.\n</think>\n\nThe answer is \\boxed{42}.",
        "open": "\x00<think>\nreasoning\n</think>answer",
        "cut": "\x05 still thinking <thi",
        "tools": "\x00<think>x</think><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get"
                 "\n```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "nested": "\x03<think><think></think></think></think>",
    }
    for name, t in traces.items():
        write("trace_parser", name, t)
    for op in range(5):
        write("c_abi", f"op{op}", bytes([op, 0, 40]) + "Hello <think>wörld</think> 42".encode())
        write("c_abi", f"op{op}_null", bytes([op, 1, 0]) + b"\xff\xfe")


if __name__ == "__main__":
    gguf_seeds()
    safetensors_seeds()
    text_seeds()
    for d in sorted(OUT.iterdir()):
        print(d.name, len(list(d.iterdir())), "seeds")
