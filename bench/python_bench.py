#!/usr/bin/env python3
"""bench/python_bench.py — the ckpt Python package against torch.load, in one process.

    python bench/python_bench.py [--quick] [--data DIR] [--reps N] [--out FILE]

Needs torch, safetensors and the ckpt package (pip install ./python). Generates, once, in
DIR (default out/bench-python/data): *small*, 100,000 float32 tensors of 1.4-2.8 KiB
(5,000 with --quick), and *llm*, a decoder-only transformer's state dict of ~1 GiB (bfloat16
matrices, float32 norms; 32 MiB with --quick), each as a torch.save file and a safetensors
file. Then, in this one process, page cache warm, median of N repetitions (default 3, 2
with --quick) of:
  - ckpt.load(f) against torch.load(f, weights_only=True)
  - ckpt.load(f, mmap=True) against torch.load(f, weights_only=True, mmap=True)
  - ckpt.open(f) + keys() against safetensors' safe_open(...).keys() (the .safetensors)
    and torch.load(mmap=True) (the .pt: torch has no lazy open)
and prints a markdown table with the ratios (how many times faster ckpt is; >1 = faster).
A regression guard, not a timed test: it fails only if a program fails or results differ.
"""
import argparse
import collections
import gc
import os
import statistics
import sys
import time

import torch

import ckpt

MiB = 1 << 20


def gen_small(path, n):
    g = torch.Generator().manual_seed(1)
    sd = collections.OrderedDict()
    for i in range(n):
        sd[f"layers.{i}.weight"] = torch.randn(350 + (i * 37) % 351, generator=g)
    return sd


def gen_llm(path, mib):
    h = 2048 if mib >= 512 else 512
    f = int(h * 2.75)
    per_layer = (4 * h * h + 3 * h * f) * 2
    vocab = 8192 if mib >= 512 else 2048
    layers = max(1, int((mib * MiB - 2 * vocab * h * 2) // per_layer))
    g = torch.Generator().manual_seed(2)

    def m(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    sd = collections.OrderedDict()
    sd["embed_tokens.weight"] = m(vocab, h)
    for i in range(layers):
        p = f"layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[p + "self_attn." + n + ".weight"] = m(h, h)
        sd[p + "mlp.gate_proj.weight"] = m(f, h)
        sd[p + "mlp.up_proj.weight"] = m(f, h)
        sd[p + "mlp.down_proj.weight"] = m(h, f)
        sd[p + "input_layernorm.weight"] = torch.ones(h)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(h)
    sd["norm.weight"] = torch.ones(h)
    sd["lm_head.weight"] = m(vocab, h)
    return sd


def ensure(data, name, make, arg):
    from safetensors.torch import save_file

    pt = os.path.join(data, f"{name}_{arg}.pt")
    st = os.path.join(data, f"{name}_{arg}.safetensors")
    if not (os.path.exists(pt) and os.path.exists(st)):
        os.makedirs(data, exist_ok=True)
        print(f"generating {pt} ...", flush=True)
        sd = make(pt, arg)
        torch.save(sd, pt + ".tmp")
        os.replace(pt + ".tmp", pt)
        save_file(dict(sd), st + ".tmp")
        os.replace(st + ".tmp", st)
        del sd
    for p in (pt, st):  # warm the page cache
        with open(p, "rb") as fh:
            while fh.read(64 * MiB):
                pass
    return pt, st


def timed(fn, reps):
    out = []
    for _ in range(reps):
        gc.collect()
        t = time.perf_counter()
        r = fn()
        out.append(time.perf_counter() - t)
        del r
    return statistics.median(out), min(out), max(out)


def fmt(s):
    return f"{s * 1e3:.1f} ms" if s < 10 else f"{s:.2f} s"


def check_equal(a, b):
    assert list(a.keys()) == list(b.keys())
    for k in a:
        x, y = a[k], b[k]
        assert x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride(), k
        assert torch.equal(x, y), k


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data", default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--out", default=None, help="also write the table to this file")
    a = ap.parse_args()
    reps = a.reps or (2 if a.quick else 3)
    data = a.data or os.path.join("out", "bench-python", "data")
    sets = [("small", gen_small, 5000 if a.quick else 100000), ("llm", gen_llm, 32 if a.quick else 1024)]
    from safetensors import safe_open

    rows = []
    for name, make, arg in sets:
        pt, st = ensure(data, name, make, arg)
        n = len(ckpt.open(pt))
        size = os.path.getsize(pt) / MiB
        check_equal(ckpt.load(pt), torch.load(pt, weights_only=True))
        label = f"{name} ({n:,} tensors, {size:.0f} MiB)"
        t_torch = timed(lambda: torch.load(pt, weights_only=True), reps)
        t_ckpt = timed(lambda: ckpt.load(pt), reps)
        rows.append((label, "load .pt", "ckpt.load", t_ckpt, "torch.load(weights_only=True)", t_torch))
        t_torch_m = timed(lambda: torch.load(pt, weights_only=True, mmap=True), reps)
        t_ckpt_m = timed(lambda: ckpt.load(pt, mmap=True), reps)
        rows.append((label, "load .pt, mmap=True", "ckpt.load(mmap=True)", t_ckpt_m, "torch.load(mmap=True)", t_torch_m))
        t_ckpt_st = timed(lambda: ckpt.load(st), reps)
        from safetensors.torch import load_file

        t_st = timed(lambda: load_file(st), reps)
        rows.append((label, "load .safetensors", "ckpt.load", t_ckpt_st, "safetensors load_file", t_st))
        t_open = timed(lambda: ckpt.open(pt).keys(), reps)
        rows.append((label, "open .pt + keys()", "ckpt.open", t_open, "torch.load(mmap=True)", t_torch_m))

        def so():
            with safe_open(st, framework="pt") as f:
                return f.keys()

        rows.append((label, "open .safetensors + keys()", "ckpt.open", timed(lambda: ckpt.open(st).keys(), reps),
                     "safe_open", timed(so, reps)))
    lines = [
        f"torch {torch.__version__}, ckpt {ckpt.__version__}, Python {sys.version.split()[0]}; one process, "
        f"page cache warm, median of {reps} (min - max); ratio = peer / ckpt (>1: ckpt faster). "
        f"Load average (1 min): {os.getloadavg()[0]:.2f}.",
        "",
        "| data | scenario | ckpt | median (min - max) | peer | median (min - max) | ratio |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for label, sc, a_name, ta, b_name, tb in rows:
        lines.append(f"| {label} | {sc} | {a_name} | {fmt(ta[0])} ({fmt(ta[1])} - {fmt(ta[2])}) | {b_name} | "
                     f"{fmt(tb[0])} ({fmt(tb[1])} - {fmt(tb[2])}) | {tb[0] / ta[0]:.1f}x |")
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
