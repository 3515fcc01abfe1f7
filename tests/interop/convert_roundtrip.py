#!/usr/bin/env python3
"""Round trips through `ckpt convert`, checked by the real torch.

    convert_roundtrip.py --ckpt PATH_TO_CLI --python PYTHON --workdir DIR

1. PYTHON runs gen_fixtures.py into DIR/fixtures (torch.save files).
2. For every fixture a.pt: `ckpt convert a.pt b.pt`; torch loads b.pt with
   weights_only=True (2.x; also mmap=True) and the result must equal torch's load
   of a.pt: same structure, same tensor bytes, dtypes, shapes, strides, offsets,
   requires_grad, Parameter-ness, and the same storage sharing.
3. For state dicts saved by torch 2.x, b.pt's data.pkl must be byte-identical to
   a.pt's (ckpt pickles as torch does).
4. ckpt -> Python -> ckpt: torch re-saves b.pt as c.pt; `ckpt ls --json --digest`
   of c.pt and b.pt agree.
Prints "N passed, N failed" and exits non-zero on any failure.
"""
import argparse
import json
import os
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))

CHECK = r'''
import sys, warnings
warnings.simplefilter("ignore")
import torch

a_path, b_path, c_path = sys.argv[1:4]
new = int(torch.__version__.split(".")[0]) >= 2

def load(p, **kw):
    try:
        return torch.load(p, weights_only=True, **kw)
    except Exception:
        if new and p == b_path:
            raise  # ckpt's files must load weights-only on torch 2.x
        return torch.load(p, weights_only=False, **kw)

def sid(t):
    return t.untyped_storage().data_ptr() if hasattr(t, "untyped_storage") else t.storage().data_ptr()

def walk(x, path, out):
    if isinstance(x, torch.Tensor):
        out.append((path, x))
    elif isinstance(x, dict):
        for k, v in x.items():
            walk(v, path + [repr(k)], out)
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            walk(v, path + [str(i)], out)

def raw(t):
    t = t.detach().contiguous().reshape(-1)
    return bytes(t.view(torch.uint8).tolist()) if t.numel() else b""

def same(x, y, path="root"):
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor), path
        assert type(x) is type(y), (path, type(x), type(y))
        assert x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride(), path
        assert x.storage_offset() == y.storage_offset() and x.requires_grad == y.requires_grad, path
        assert raw(x) == raw(y), path + " bytes"
    elif isinstance(x, dict):
        assert isinstance(y, dict) and list(x.keys()) == list(y.keys()), (path, list(x.keys()), list(y.keys()))
        assert type(x) is type(y), (path, type(x), type(y))
        for k in x:
            same(x[k], y[k], path + "/" + repr(k))
        if hasattr(x, "_metadata"):
            assert getattr(y, "_metadata", None) == x._metadata, path + " _metadata"
    elif isinstance(x, (list, tuple)):
        assert type(x) is type(y) and len(x) == len(y), path
        for i, (p, q) in enumerate(zip(x, y)):
            same(p, q, path + "/" + str(i))
    elif isinstance(x, float) and x != x:
        assert y != y, path
    else:
        assert x == y and type(x) is type(y), (path, x, y)

a, b = load(a_path), load(b_path)
same(a, b)
ta, tb = [], []
walk(a, [], ta); walk(b, [], tb)
groups = lambda ts: sorted(sorted(str(p) for p, t in ts if sid(t) == s) for s in {sid(t) for _, t in ts})
assert groups(ta) == groups(tb), "storage sharing differs"
if new:
    same(a, load(b_path, mmap=True))
torch.save(b, c_path)
print("ok")
'''


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    fixtures = os.path.join(a.workdir, "fixtures")
    out = os.path.join(a.workdir, "converted")
    os.makedirs(out, exist_ok=True)
    r = run([a.python, os.path.join(HERE, "gen_fixtures.py"), fixtures])
    if r.returncode != 0:
        print(r.stdout, r.stderr)
        print("0 passed, 1 failed")
        return 1
    new = "torch 2" in r.stdout or "torch 2" in r.stderr
    passed = failed = 0
    for name in sorted(os.listdir(fixtures)):
        if not name.endswith(".pt"):
            continue
        src = os.path.join(fixtures, name)
        dst = os.path.join(out, name)
        again = os.path.join(out, name[:-3] + ".torch.pt")
        problems = []
        r = run([a.ckpt, "convert", src, dst])
        if r.returncode != 0:
            problems.append("convert failed: " + r.stderr.strip())
        else:
            r = run([a.python, "-c", CHECK, src, dst, again])
            if r.returncode != 0 or "ok" not in r.stdout:
                problems.append("torch check: " + (r.stderr.strip().splitlines() or ["?"])[-1])
            else:
                la = run([a.ckpt, "ls", "--json", "--digest", dst])
                lb = run([a.ckpt, "ls", "--json", "--digest", again])
                if la.returncode or lb.returncode:
                    problems.append("ckpt ls failed on a converted file")
                elif [(t["path"], t["dtype"], t["shape"], t["sha256"]) for t in json.loads(la.stdout)["tensors"]] != \
                        [(t["path"], t["dtype"], t["shape"], t["sha256"]) for t in json.loads(lb.stdout)["tensors"]]:
                    problems.append("ckpt -> torch -> ckpt changed the listing")
            expected = json.load(open(src[:-3] + ".expected.json"))
            if new and name.startswith("module_state_dict") and not problems:
                za, zb = zipfile.ZipFile(src), zipfile.ZipFile(dst)
                pa = [n for n in za.namelist() if n.endswith("/data.pkl")][0]
                pb = [n for n in zb.namelist() if n.endswith("/data.pkl")][0]
                if za.read(pa) != zb.read(pb):
                    problems.append("data.pkl differs from torch's for a state dict")
                else:
                    print("data.pkl identical to torch's:", name)
            del expected
        if problems:
            failed += 1
            print("FAIL", name, "; ".join(problems))
        else:
            passed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
