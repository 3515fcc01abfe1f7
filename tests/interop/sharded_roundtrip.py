#!/usr/bin/env python3
"""safetensors sets and `ckpt convert` options checked by the real torch 2.x and safetensors.

Run with the venv's python (torch 2.x + safetensors):
    sharded_roundtrip.py --ckpt build/ckpt --workdir DIR

Checks, each against what Python itself computes:
  1. `convert --max-shard-size` writes a Hugging Face sharded set: shard names
     model-0000i-of-0000N.safetensors, an index that is exactly
     json.dumps(index, indent=2, sort_keys=True) + "\\n", total_size, greedy packing,
     shards loadable by safetensors.torch.load_file with every tensor bit-exact;
     tied weights stored once with a note.
  2. A set written by Python (transformers' layout) is read by `ckpt ls` through its
     index and through its directory, bit-exactly, and converts to a .pt that
     torch.load(weights_only=True) reads.
  3. torch-format shards (pytorch_model-*.bin + index) load with torch.load.
  4. --rename strips DDP's 'module.' (state-dict _metadata too), --only/--exclude
     filter, --dtype casts exactly as tensor.to(dtype) does (NaN, inf, subnormals,
     ties to even).
  5. A whole training checkpoint converted to .safetensors is an ordinary safetensors
     file (every tensor by path) and converts back to a .pt equal to the original.
"""
import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import OrderedDict

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what)


def run(ckpt, *args, expect=0):
    p = subprocess.run([ckpt, *args], capture_output=True, text=True, timeout=300)
    if p.returncode != expect:
        FAILURES.append(f"ckpt {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
        print("FAIL:", FAILURES[-1])
    return p


def digest(t):
    t = t.contiguous()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()


def bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and digest(a) == digest(b)


def make_state_dict():
    g = torch.Generator().manual_seed(7)
    sd = OrderedDict()
    for i in range(12):
        sd[f"layers.{i}.weight"] = torch.randn(16, 24, generator=g)
        sd[f"layers.{i}.bias"] = torch.randn(16, generator=g).to(torch.bfloat16)
    sd["emb.weight"] = torch.randn(40, 8, generator=g).half()
    sd["head.weight"] = sd["emb.weight"]  # tied
    sd["counts"] = torch.arange(100, dtype=torch.int64)
    sd["mask"] = torch.rand(33, generator=g) > 0.5
    sd["empty"] = torch.zeros(0, 4)
    sd["scalar"] = torch.tensor(3.5, dtype=torch.float64)
    sd["big"] = torch.randn(64, 64, generator=g)  # 16 KiB: larger than a shard
    return sd


def python_shard(sd, max_size):
    """transformers/huggingface_hub's greedy split (written here from its documented behaviour)."""
    shards, cur, cur_size, seen = [], OrderedDict(), 0, set()
    for k, t in sd.items():
        ptr = t.untyped_storage().data_ptr()
        size = 0 if ptr in seen and t.numel() else t.numel() * t.element_size()
        seen.add(ptr)
        if size > max_size:
            shards.append(OrderedDict([(k, t)]))
            continue
        if cur_size + size > max_size and cur:
            shards.append(cur)
            cur, cur_size = OrderedDict(), 0
        cur[k] = t
        cur_size += size
    if cur:
        shards.append(cur)
    return shards


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    ckpt = a.ckpt
    w = a.workdir
    shutil.rmtree(w, ignore_errors=True)
    os.makedirs(w)
    sd = make_state_dict()
    src = os.path.join(w, "model.pt")
    torch.save(sd, src)

    # 1. ckpt writes a sharded set
    out = os.path.join(w, "st_set")
    p = run(ckpt, "convert", src, out, "--max-shard-size", "4KB")
    check("'head.weight' is the same tensor as 'emb.weight'" in p.stderr, "tied-weight note: " + p.stderr)
    index_path = os.path.join(out, "model.safetensors.index.json")
    check(os.path.exists(index_path), "index written")
    if os.path.exists(index_path):
        text = open(index_path).read()
        index = json.loads(text)
        check(text == json.dumps(index, indent=2, sort_keys=True) + "\n", "index text is json.dumps(indent=2, sort_keys=True)")
        wm = index["weight_map"]
        expected_names = [k for k in sd if k != "head.weight"]
        check(sorted(wm) == sorted(expected_names), f"weight_map names {sorted(wm)}")
        files = sorted(set(wm.values()))
        n = len(files)
        check(all(re.fullmatch(r"model-\d{5}-of-%05d\.safetensors" % n, f) for f in files), f"shard names {files}")
        dedup = OrderedDict((k, t) for k, t in sd.items() if k != "head.weight")
        expect_shards = python_shard(dedup, 4000)
        check(n == len(expect_shards), f"{n} shards, python's split gives {len(expect_shards)}")
        for i, shard in enumerate(expect_shards):
            fname = "model-%05d-of-%05d.safetensors" % (i + 1, n)
            for k in shard:
                check(wm.get(k) == fname, f"{k} in {wm.get(k)}, expected {fname}")
        total = sum(t.numel() * t.element_size() for t in dedup.values())
        check(index["metadata"]["total_size"] == total, f"total_size {index['metadata']['total_size']} != {total}")
        loaded = {}
        for f in files:  # transformers' loading logic: every shard through load_file
            with safe_open(os.path.join(out, f), framework="pt") as so:
                check(so.metadata() == {"format": "pt"}, f"{f} metadata {so.metadata()}")
            loaded.update(load_file(os.path.join(out, f)))
        for k in expected_names:
            check(k in loaded and bits_equal(loaded[k], sd[k]), f"sharded tensor {k}")

    # 2. a set Python writes, read by ckpt
    pyset = os.path.join(w, "py_set")
    os.makedirs(pyset)
    shards = python_shard(OrderedDict((k, t) for k, t in sd.items() if k != "head.weight"), 3000)
    wm = {}
    for i, shard in enumerate(shards):
        fname = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        save_file({k: t.contiguous() for k, t in shard.items()}, os.path.join(pyset, fname), metadata={"format": "pt"})
        wm.update({k: fname for k in shard})
    with open(os.path.join(pyset, "model.safetensors.index.json"), "w") as f:
        f.write(json.dumps({"metadata": {"total_size": 1}, "weight_map": wm}, indent=2, sort_keys=True) + "\n")
    for target in (os.path.join(pyset, "model.safetensors.index.json"), pyset):
        p = run(ckpt, "ls", target, "--json", "--digest")
        if p.returncode == 0:
            listing = {e["path"]: e for e in json.loads(p.stdout)["tensors"]}
            check(sorted(listing) == sorted(wm), f"ls {target}: names")
            for k in wm:
                e = listing.get(k)
                check(e is not None and e["sha256"] == digest(sd[k]) and e["shape"] == list(sd[k].shape),
                      f"ls {target}: {k}")
    back = os.path.join(w, "from_set.pt")
    run(ckpt, "convert", pyset, back)
    if os.path.exists(back):
        got = torch.load(back, weights_only=True)
        check(list(got) == sorted(wm), "convert set -> .pt keeps the index's (sorted) order")
        for k in wm:
            check(bits_equal(got[k], sd[k]), f"set -> .pt: {k}")

    # a hostile index: a shard outside the folder is refused
    bad = os.path.join(w, "bad_set")
    os.makedirs(bad)
    with open(os.path.join(bad, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": {"x": "../model.pt"}}, f)
    p = run(ckpt, "ls", bad, expect=2)
    check("not a plain file name" in p.stderr, "index escaping its folder: " + p.stderr)

    # 3. torch-format shards
    binset = os.path.join(w, "bin_set")
    run(ckpt, "convert", src, binset, "--to", "torch", "--max-shard-size", "4KB")
    bindex = os.path.join(binset, "pytorch_model.bin.index.json")
    check(os.path.exists(bindex), "pytorch_model.bin.index.json written")
    if os.path.exists(bindex):
        wm = json.load(open(bindex))["weight_map"]
        merged = {}
        for f in sorted(set(wm.values())):
            merged.update(torch.load(os.path.join(binset, f), weights_only=True))
        check(sorted(merged) == sorted(sd), "torch shards hold every name (ties kept in torch format)")
        for k in sd:
            check(k in merged and bits_equal(merged[k], sd[k]), f"torch shard tensor {k}")

    # 4. rename / only / exclude / dtype
    ddp = OrderedDict(("module." + k, t) for k, t in sd.items())
    ddp._metadata = OrderedDict([("module", {"version": 1}), ("module.layers.0", {"version": 2})])
    ddp_path = os.path.join(w, "ddp.pt")
    torch.save(ddp, ddp_path)
    renamed = os.path.join(w, "renamed.pt")
    run(ckpt, "convert", ddp_path, renamed, "--rename", r"^module\.=")
    if os.path.exists(renamed):
        got = torch.load(renamed, weights_only=True)
        check(list(got) == list(sd), f"renamed keys {list(got)[:3]}")
        check(dict(getattr(got, "_metadata", {})) == {"": {"version": 1}, "layers.0": {"version": 2}},
              f"renamed _metadata {getattr(got, '_metadata', None)}")
    filtered = os.path.join(w, "filtered.safetensors")
    run(ckpt, "convert", src, filtered, "--only", r"^layers\.1[01]?\.", "--exclude", r"bias$")
    if os.path.exists(filtered):
        got = load_file(filtered)
        check(sorted(got) == ["layers.1.weight", "layers.10.weight", "layers.11.weight"], f"filtered {sorted(got)}")
    p = run(ckpt, "convert", src, os.path.join(w, "x.pt"), "--rename", r"^layers\.\d+\.=", expect=2)
    check("maps two tensors" in p.stderr, "rename collision error: " + p.stderr)

    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e-40, -1e-45, 65519.0, 65520.0, 6e-8,
                            3e-8, 2.9802322387695312e-08, 1.0009765625, 1.00048828125, 1.00146484375,
                            3.4028234663852886e38, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-9], dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    cast_src = OrderedDict(special=special, rnd=torch.randn(5000, generator=g) * 1000,
                           tiny=torch.randn(2000, generator=g) * 1e-6, dbl=torch.randn(300, generator=g, dtype=torch.float64),
                           ints=torch.arange(10))
    cast_path = os.path.join(w, "cast_src.pt")
    torch.save(cast_src, cast_path)
    for dt in ("bfloat16", "float16", "float32", "float64"):
        outp = os.path.join(w, f"cast_{dt}.pt")
        run(ckpt, "convert", cast_path, outp, "--dtype", dt)
        if os.path.exists(outp):
            got = torch.load(outp, weights_only=True)
            for k, t in cast_src.items():
                want = t.to(getattr(torch, dt)) if t.is_floating_point() else t
                ok = got[k].dtype == want.dtype and torch.equal(torch.isnan(got[k]), torch.isnan(want)) and \
                    bits_equal(torch.nan_to_num(got[k]), torch.nan_to_num(want))
                check(ok, f"--dtype {dt}: {k}")

    # safetensors metadata is carried to safetensors output
    meta_src = os.path.join(w, "meta_src.safetensors")
    save_file({"x": torch.ones(3)}, meta_src, metadata={"format": "pt", "author": "someone", "license": "mit"})
    meta_out = os.path.join(w, "meta_out.safetensors")
    run(ckpt, "convert", meta_src, meta_out, "--dtype", "float16")
    if os.path.exists(meta_out):
        with safe_open(meta_out, framework="pt") as so:
            check(so.metadata() == {"format": "pt", "author": "someone", "license": "mit"}, f"metadata {so.metadata()}")

    # 5. training checkpoint without pickle
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    ck = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "best": 0.25,
          "name": "run-7", "history": [1.0, 0.5, float("inf")], "pair": (1, "a"), "flags": {"amp": False, "note": None},
          "big": 2**70}
    ck_path = os.path.join(w, "train.pt")
    torch.save(ck, ck_path)
    st = os.path.join(w, "train.safetensors")
    run(ckpt, "convert", ck_path, st)
    if os.path.exists(st):
        plain = load_file(st)
        check("model/0.weight" in plain and "optimizer/state/0/exp_avg" in plain, f"tensors by path {sorted(plain)[:4]}")
        with safe_open(st, framework="pt") as so:
            meta = so.metadata()
        check("ckpt.tree" in meta and meta.get("format") == "pt", f"tree metadata keys {sorted(meta)}")
        back = os.path.join(w, "train_back.pt")
        run(ckpt, "convert", st, back)
        if os.path.exists(back):
            got = torch.load(back, weights_only=True)
            check(same(got, ck), "training checkpoint round trip through safetensors")

    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        return 1
    print("sharded_roundtrip: all checks passed")
    return 0


def same(a, b):
    if isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and bits_equal(a, b)
    if isinstance(b, float) and math.isnan(b):
        return isinstance(a, float) and math.isnan(a)
    if isinstance(b, dict):
        return isinstance(a, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in b)
    if isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


if __name__ == "__main__":
    sys.exit(main())
