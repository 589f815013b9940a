#!/usr/bin/env python3
"""The bandwidth and compute floors beside measured speeds (issue 11's "every figure beside its
floor").

For a GGUF file this counts, from its tensor table:
- the weight bytes a decode step reads: every matrix except the token embedding table (one row of
  it is looked up; where there is no `output.weight` the table is also the LM head and is read
  whole), a Mixture-of-Experts layer's stacked experts only in the share a token chooses
  (`expert_used_count / expert_count`);
- the multiply-adds per token: the same matrices' weights (one multiply-add each);
- the KV cache bytes a decode step reads at a context of N tokens (`--cache-bytes-per-token`,
  which `Model::cache_bytes_per_token` gives; attention's own arithmetic is left out).

Given measured tokens/s it prints the bytes/s and multiply-adds/s they imply, as a share of the
machine's bandwidth and int8 peak (both measured on the machine, passed as arguments).

  PYTHONPATH=<llama.cpp>/gguf-py python benches/floors.py MODEL.gguf \
      --decode TOK_S [--context N --cache-bytes-per-token B] [--prefill TOK_S] \
      [--bandwidth GB_S] [--peak GMAC_S]
"""

import argparse

import gguf


def field(reader, suffix):
    for name, f in reader.fields.items():
        if name.endswith(suffix):
            return int(f.parts[f.data[0]][0])
    return None


def count(path):
    reader = gguf.GGUFReader(path)
    used, experts = field(reader, ".expert_used_count"), field(reader, ".expert_count")
    share = used / experts if used and experts else 1.0
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    read_bytes = macs = 0.0
    for t in reader.tensors:
        if len(t.shape) < 2:
            continue  # norms and biases: negligible
        part = share if "_exps." in t.name else 1.0
        if t.name == "token_embd.weight" and not tied:
            continue  # looked up, one row a token
        read_bytes += t.n_bytes * part
        macs += t.n_elements * part
    return read_bytes, macs


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("--decode", type=float, help="measured decode tokens/s")
    p.add_argument("--prefill", type=float, help="measured prefill tokens/s")
    p.add_argument("--context", type=int, default=0, help="tokens in the cache while decoding")
    p.add_argument("--cache-bytes-per-token", type=float, default=0.0)
    p.add_argument("--bandwidth", type=float, default=23.0, help="GB/s the machine reads")
    p.add_argument("--peak", type=float, default=600.0, help="int8 GMAC/s of all threads")
    a = p.parse_args()
    read_bytes, macs = count(a.model)
    step = read_bytes + a.context * a.cache_bytes_per_token
    print(f"weights read per decoded token: {read_bytes / 1e6:.1f} MB; cache at {a.context}: "
          f"{a.context * a.cache_bytes_per_token / 1e6:.1f} MB; multiply-adds per token: {macs / 1e6:.0f} M")
    print(f"decode floor at {a.bandwidth} GB/s: {a.bandwidth * 1e9 / step:.1f} tok/s")
    if a.decode:
        print(f"decode {a.decode} tok/s: {a.decode * step / 1e9:.1f} GB/s, "
              f"{100 * a.decode * step / (a.bandwidth * 1e9):.0f}% of the bandwidth")
    if a.prefill:
        print(f"prefill {a.prefill} tok/s: {a.prefill * macs / 1e9:.0f} GMAC/s, "
              f"{100 * a.prefill * macs / (a.peak * 1e9):.0f}% of the int8 peak")


if __name__ == "__main__":
    main()
