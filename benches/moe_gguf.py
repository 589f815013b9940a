#!/usr/bin/env python3
"""Random-weight benchmark models, written straight to GGUF (f16) with llama.cpp's `gguf` package.

    python3 benches/moe_gguf.py --tokenizer SmolLM2-135M-Instruct.Q4_1.gguf --out DIR

writes two files into DIR, to be quantized with `llama-quantize ... Q4_K_M` (benches/make_moe.sh
does both steps):

- `deepseek-moe.f16.gguf`: llama.cpp's `deepseek2` layout with DeepSeek-V3/R1's MLA dimensions
  (kv_lora_rank 512, qk_nope 128, qk_rope 64, v_head 128, q_lora_rank 384; 8 heads, so 576 cached
  values per token and layer), hidden 1024, 12 layers (the first dense with FFN 2816), 64 routed
  experts of 512 with 6 active and 2 shared, softmax greedy routing, context 8192: 1.30 B
  parameters, 0.24 B active per token.
- `dense-twin.f16.gguf`: a `llama` model with the MoE's active parameters: the same width, depth
  and vocabulary, 8 heads of 128 (GQA with 8 key/value heads), and FFN 4096 = (2 shared + 6
  routed) x 512 in every layer, so its decode time is what the MoE's should come near.

The weights are Gaussian (std 0.02, norms 1): speed does not depend on their values, and the
routing then spreads tokens over the experts as a trained router does on average. The tokenizer
(vocabulary, merges, special tokens, chat template) is copied from the given GGUF, so both models
take real prompts. Needs numpy and the `gguf` package (PYTHONPATH=<llama.cpp>/gguf-py); no torch.
"""

import argparse
import os

import numpy as np

import gguf

HIDDEN = 1024
LAYERS = 12
CONTEXT = 8192
EPS = 1e-6
# MLA, as in DeepSeek-V3/R1.
HEADS = 8
Q_LORA = 384
KV_LORA = 512
QK_NOPE = 128
QK_ROPE = 64
V_HEAD = 128
# DeepSeekMoE.
DENSE_FFN = 2816
EXPERTS = 64
EXPERT_FFN = 512
ACTIVE = 6
SHARED = 2


class Weights:
    """Draws each tensor from one seeded generator, in float16 (norms: ones, router: float32)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def matrix(self, *shape):
        x = self.rng.standard_normal(shape, dtype=np.float32)
        x *= 0.02
        return x.astype(np.float16)

    @staticmethod
    def ones(n):
        return np.ones(n, dtype=np.float32)


def copy_tokenizer(reader, writer):
    """Every `tokenizer.*` field of `reader`, with its type, into `writer`."""
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                values = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            else:
                values = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_key_value(field.name, values, kind, sub_type=sub)
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(field.name, bytes(field.parts[field.data[0]]).decode("utf-8"))
        else:
            value = field.parts[field.data[0]].tolist()[0]
            writer.add_key_value(field.name, value, kind)


def vocab_size(reader):
    tokens = reader.fields["tokenizer.ggml.tokens"]
    return len(tokens.data)


def common(writer, arch, vocab, ffn):
    writer.add_name(arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(HEADS)
    writer.add_layer_norm_rms_eps(EPS)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)


def embeddings(writer, w, vocab):
    writer.add_tensor("token_embd.weight", w.matrix(vocab, HIDDEN))
    writer.add_tensor("output_norm.weight", w.ones(HIDDEN))
    writer.add_tensor("output.weight", w.matrix(vocab, HIDDEN))


def ffn(writer, w, b, inter, suffix=""):
    writer.add_tensor(f"blk.{b}.ffn_gate{suffix}.weight", w.matrix(inter, HIDDEN))
    writer.add_tensor(f"blk.{b}.ffn_up{suffix}.weight", w.matrix(inter, HIDDEN))
    writer.add_tensor(f"blk.{b}.ffn_down{suffix}.weight", w.matrix(HIDDEN, inter))


def deepseek(reader, path):
    """The DeepSeek-shaped MoE (numpy shapes are GGUF's dimensions reversed)."""
    vocab = vocab_size(reader)
    writer = gguf.GGUFWriter(path, "deepseek2")
    common(writer, "DeepSeek-shaped MoE (random)", vocab, DENSE_FFN)
    writer.add_head_count_kv(1)  # MLA is written as MQA over the latent
    writer.add_key_length(KV_LORA + QK_ROPE)
    writer.add_value_length(KV_LORA)
    writer.add_key_length_mla(QK_NOPE + QK_ROPE)
    writer.add_value_length_mla(V_HEAD)
    writer.add_q_lora_rank(Q_LORA)
    writer.add_kv_lora_rank(KV_LORA)
    writer.add_rope_dimension_count(QK_ROPE)
    writer.add_leading_dense_block_count(1)
    writer.add_expert_count(EXPERTS)
    writer.add_expert_used_count(ACTIVE)
    writer.add_expert_shared_count(SHARED)
    writer.add_expert_feed_forward_length(EXPERT_FFN)
    writer.add_expert_weights_scale(1.0)
    writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SOFTMAX)
    writer.add_expert_group_count(1)
    writer.add_expert_group_used_count(1)
    copy_tokenizer(reader, writer)

    w = Weights(seed=1)
    embeddings(writer, w, vocab)
    for b in range(LAYERS):
        writer.add_tensor(f"blk.{b}.attn_norm.weight", w.ones(HIDDEN))
        writer.add_tensor(f"blk.{b}.attn_q_a.weight", w.matrix(Q_LORA, HIDDEN))
        writer.add_tensor(f"blk.{b}.attn_q_a_norm.weight", w.ones(Q_LORA))
        writer.add_tensor(f"blk.{b}.attn_q_b.weight", w.matrix(HEADS * (QK_NOPE + QK_ROPE), Q_LORA))
        writer.add_tensor(f"blk.{b}.attn_kv_a_mqa.weight", w.matrix(KV_LORA + QK_ROPE, HIDDEN))
        writer.add_tensor(f"blk.{b}.attn_kv_a_norm.weight", w.ones(KV_LORA))
        writer.add_tensor(f"blk.{b}.attn_k_b.weight", w.matrix(HEADS, KV_LORA, QK_NOPE))
        writer.add_tensor(f"blk.{b}.attn_v_b.weight", w.matrix(HEADS, V_HEAD, KV_LORA))
        writer.add_tensor(f"blk.{b}.attn_output.weight", w.matrix(HIDDEN, HEADS * V_HEAD))
        writer.add_tensor(f"blk.{b}.ffn_norm.weight", w.ones(HIDDEN))
        if b == 0:
            ffn(writer, w, b, DENSE_FFN)
            continue
        router = w.matrix(EXPERTS, HIDDEN).astype(np.float32)
        writer.add_tensor(f"blk.{b}.ffn_gate_inp.weight", router)
        writer.add_tensor(f"blk.{b}.ffn_gate_exps.weight", w.matrix(EXPERTS, EXPERT_FFN, HIDDEN))
        writer.add_tensor(f"blk.{b}.ffn_up_exps.weight", w.matrix(EXPERTS, EXPERT_FFN, HIDDEN))
        writer.add_tensor(f"blk.{b}.ffn_down_exps.weight", w.matrix(EXPERTS, HIDDEN, EXPERT_FFN))
        ffn(writer, w, b, SHARED * EXPERT_FFN, "_shexp")
    write(writer)


def dense_twin(reader, path):
    """A Llama with the MoE's active parameters per token."""
    vocab = vocab_size(reader)
    inter = (SHARED + ACTIVE) * EXPERT_FFN
    writer = gguf.GGUFWriter(path, "llama")
    common(writer, "Dense twin of the DeepSeek-shaped MoE (random)", vocab, inter)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    copy_tokenizer(reader, writer)

    w = Weights(seed=2)
    embeddings(writer, w, vocab)
    for b in range(LAYERS):
        writer.add_tensor(f"blk.{b}.attn_norm.weight", w.ones(HIDDEN))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{b}.{name}.weight", w.matrix(HIDDEN, HIDDEN))
        writer.add_tensor(f"blk.{b}.ffn_norm.weight", w.ones(HIDDEN))
        ffn(writer, w, b, inter)
    write(writer)


def write(writer):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="a GGUF whose tokenizer to copy")
    parser.add_argument("--out", required=True, help="folder for the two f16 files")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    reader = gguf.GGUFReader(args.tokenizer)
    deepseek(reader, os.path.join(args.out, "deepseek-moe.f16.gguf"))
    dense_twin(reader, os.path.join(args.out, "dense-twin.f16.gguf"))


if __name__ == "__main__":
    main()
