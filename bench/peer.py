"""The Python peers bench/run compares ckpt with, one measurement per process.

    python peer.py OP REPS [--cold] ARGS...

Run with the venv's Python (torch 2.x, safetensors). Prints the same JSON line
as ckpt_bench; bench/driver.py takes the peak RSS from wait4(). Times exclude
the interpreter's start and `import torch` (which favours the peers).

Operations:
  torch_load FILE             torch.load(weights_only=True): owned tensors
  torch_load_mmap FILE        torch.load(weights_only=True, mmap=True), every byte read
  torch_open FILE             torch.load(weights_only=True, mmap=True), names and shapes only
  st_load FILE                safetensors.torch.load_file (its default backend maps the file
                              copy-on-write: no byte is read until used)
  st_load_pread FILE          load_file(backend="pread"): the bytes read into memory (0.8+)
  st_open FILE                safe_open: names and shapes only (header)
  st_lazy FILE                safe_open + get_tensor of every name, every byte read
  torch_save FILE OUT         torch.load FILE once, then torch.save(OUT) per rep; "times" up to
                              its return, "times_fsync" up to the end of an os.fsync of OUT
  st_save FILE OUT            the same with safetensors save_file
  convert FILE OUT            torch.load(weights_only=True) + safetensors save_file
  generate KIND OUT_PT OUT_ST ARG...   write a data set (see generate())
  batch JSON                  every argv list [OP, REPS, ARGS...] in the JSON file, one output line
                              each ("ERROR message" for a failure), in this one process
"""

import json
import os
import sys
import time

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def touch(tensors):
    """Reads every byte of every tensor (a sum over 64-bit words, as ckpt_bench does)."""
    s = 0
    for t in tensors:
        b = t.reshape(-1).view(torch.uint8)
        if b.numel() % 8 == 0:
            s += int(b.view(torch.int64).sum())
        else:
            s += int(b.sum())
    return s


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def generate(kind, out_pt, out_st, args):
    """Writes a data set as a torch.save file and a safetensors file.

    llm MIB: a decoder-only transformer's state dict scaled to about MIB MiB: embedding and
      output head, then layers of attention (q, k, v, o), MLP (gate, up, down) and two norms;
      matrices in bfloat16, norms and biases in float32 (about 300 tensors for 1 GiB).
    small N MIB: N small tensors, about MIB MiB in all (float32, sizes varying 1..2x).
    """
    g = torch.Generator().manual_seed(0)
    sd = {}
    if kind == "llm":
        target = int(args[0]) << 20
        layers = 24
        # per layer: 4 h*h + 3 h*(4h)... sized so that the whole is ~target bytes in bf16
        # bytes ~= 2 * (layers * (4 + 3 * 8/3) * h^2 + 2 * vocab * h), vocab = 8 h
        h = int((target / (2 * (layers * 12 + 16))) ** 0.5) // 64 * 64 or 64
        vocab, inter = 8 * h, h * 8 // 3 // 64 * 64 or 64
        sd["model.embed_tokens.weight"] = torch.randn(vocab, h, generator=g).bfloat16()
        for i in range(layers):
            p = f"model.layers.{i}."
            for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
                sd[p + f"self_attn.{n}.weight"] = torch.randn(h, h, generator=g).bfloat16()
            sd[p + "self_attn.q_proj.bias"] = torch.randn(h, generator=g)
            sd[p + "self_attn.k_proj.bias"] = torch.randn(h, generator=g)
            sd[p + "self_attn.v_proj.bias"] = torch.randn(h, generator=g)
            sd[p + "mlp.gate_proj.weight"] = torch.randn(inter, h, generator=g).bfloat16()
            sd[p + "mlp.up_proj.weight"] = torch.randn(inter, h, generator=g).bfloat16()
            sd[p + "mlp.down_proj.weight"] = torch.randn(h, inter, generator=g).bfloat16()
            sd[p + "input_layernorm.weight"] = torch.ones(h)
            sd[p + "post_attention_layernorm.weight"] = torch.ones(h)
        sd["model.norm.weight"] = torch.ones(h)
        sd["lm_head.weight"] = torch.randn(vocab, h, generator=g).bfloat16()
    elif kind == "small":
        n, total = int(args[0]), int(args[1]) << 20
        base = max(1, total // n // 4 * 2 // 3)  # float32 elements; sizes run base..2*base
        for i in range(n):
            sd[f"blocks.{i // 100}.param_{i % 100}"] = torch.randn(base + (i * 7919) % (base + 1), generator=g)
    elif kind == "tiny":  # issue #20's scenario: 100,000 tensors of 16 float32
        for i in range(int(args[0])):
            sd[f"layer{i}.weight"] = torch.randn(16, generator=g)
    elif kind == "big":
        mib = int(args[0])
        chunk = 256  # MiB a tensor
        for i in range((mib + chunk - 1) // chunk):
            sd[f"shard.{i}.weight"] = torch.empty(min(chunk, mib - i * chunk) << 18).uniform_(generator=g)
    else:
        raise SystemExit(f"unknown data set kind {kind}")
    torch.save(sd, out_pt)
    if out_st != "-":
        save_file(sd, out_st, metadata={"format": "pt"})
    return {"tensors": len(sd), "bytes": nbytes(sd.values())}


def main(argv):
    op, reps = argv[1], int(argv[2])
    args = argv[3:]
    cold = bool(args) and args[0] == "--cold"
    if cold:
        args = args[1:]
    if op == "batch":
        with open(args[0]) as f:
            jobs = json.load(f)
        for job in jobs:
            try:
                rc = main(["peer.py"] + job)
                if rc:
                    print(f"ERROR {job[0]}: exit status {rc}")
            except Exception as e:  # noqa: BLE001 - reported to the driver, which fails the run
                print(f"ERROR {job[0]}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            sys.stdout.flush()
        return 0
    if op == "generate":
        info = generate(args[0], args[1], args[2], args[3:])
        print(json.dumps(info))
        return 0
    path = args[0]
    out = {"times": [], "bytes": 0, "tensors": 0, "check": 0, "rss_before_kb": status_kb("VmRSS")}
    src = None
    if op in ("torch_save", "st_save"):
        src = torch.load(path, weights_only=True)
        out["bytes"], out["tensors"] = nbytes(src.values()), len(src)
    for rep in range(reps):
        if cold:
            evict(path)
        t0 = time.perf_counter()
        saved = None
        if op == "torch_load":
            res = torch.load(path, weights_only=True)
            out["check"] = len(res)
        elif op in ("torch_load_mmap", "torch_open"):
            res = torch.load(path, weights_only=True, mmap=True)
            if op == "torch_load_mmap":
                out["check"] = touch(res.values())
            else:
                out["check"] = sum(len(t.shape) + t.numel() * t.element_size() for t in res.values())
        elif op == "st_load":
            res = load_file(path)
            out["check"] = len(res)
        elif op == "st_load_pread":
            res = load_file(path, backend="pread")
            out["check"] = len(res)
        elif op == "st_open":
            with safe_open(path, framework="pt") as f:
                res = {k: f.get_slice(k).get_shape() for k in f.keys()}
            out["check"] = sum(len(s) for s in res.values())
        elif op == "st_lazy":
            with safe_open(path, framework="pt") as f:
                res = {k: f.get_tensor(k) for k in f.keys()}
            out["check"] = touch(res.values())
        elif op in ("torch_save", "st_save"):
            if op == "torch_save":
                torch.save(src, args[1])
            else:
                save_file(src, args[1])
            saved = time.perf_counter()
            fsync_file(args[1])
            out.setdefault("times_fsync", []).append(time.perf_counter() - t0)
            res = None
        elif op == "convert":
            res = torch.load(path, weights_only=True)
            save_file(res, args[1])
        else:
            print(f"peer.py: unknown operation {op}", file=sys.stderr)
            return 2
        out["times"].append((saved or time.perf_counter()) - t0)
        if rep + 1 == reps:
            out["rss_anon_kb"], out["rss_file_kb"] = status_kb("RssAnon"), status_kb("RssFile")
            if isinstance(res, dict) and op != "st_open":
                out["tensors"] = len(res)
                if op != "torch_open":
                    out["bytes"] = nbytes(res.values())
        del res
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
