"""ckpt extract against NumPy and torch: every tensor ckpt writes as .npy must
load with numpy.load and equal torch.load's values (dtype, shape, elements).

    ~/.cache/ckpt/venv/bin/python tests/cli/check_extract.py --ckpt build/ckpt

Needs numpy and torch (the venv scripts/setup makes).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
V = os.path.join(ROOT, "tests", "data", "valid")
C = os.path.join(ROOT, "tests", "data", "cli")

NUMPY_DTYPES = {torch.bool, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16,
                torch.uint32, torch.uint64, torch.float16, torch.float32, torch.float64, torch.complex64,
                torch.complex128}
# dtypes NumPy lacks; ckpt converts them with --as
CONVERTED = {torch.bfloat16: "float32", torch.float8_e5m2: "float32", torch.float8_e4m3fn: "float32",
             torch.float8_e5m2fnuz: "float32", torch.float8_e4m3fnuz: "float32", torch.float8_e8m0fnu: "float32",
             torch.complex32: "complex64"}

failures = []
checks = [0]


def check(cond, what):
    checks[0] += 1
    if not cond:
        failures.append(what)
        print("FAIL", what)


def flat(obj, prefix=""):
    """(path, tensor) pairs in ckpt's path convention (dict keys, list indices, '/')."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from flat(v, f"{prefix}/{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from flat(v, f"{prefix}/{i}" if prefix else str(i))


def same(arr, t, what):
    ref = t.detach().contiguous().numpy() if t.dtype in NUMPY_DTYPES else None
    if ref is None:
        ref = t.detach().to(torch.complex64 if t.is_complex() else torch.float32).numpy()
    check(arr.dtype == ref.dtype, f"{what}: dtype {arr.dtype} != {ref.dtype}")
    check(arr.shape == ref.shape, f"{what}: shape {arr.shape} != {ref.shape}")
    if arr.dtype == ref.dtype and arr.shape == ref.shape:
        check(np.array_equal(arr, ref, equal_nan=arr.dtype.kind in "fc"), f"{what}: values differ\n{arr}\n{ref}")


def run(ckpt, *args):
    return subprocess.run([ckpt, *args], capture_output=True, text=True)


def main():
    warnings.filterwarnings("ignore", message="ComplexHalf support is experimental")
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ckpt = os.path.abspath(ap.parse_args().ckpt)
    files = [os.path.join(V, "torch2", f) for f in ("save_dtypes.pt", "views.pt", "checkpoint.pt")]
    files += [os.path.join(V, "torch113", "views_legacy.pt"), os.path.join(C, "stats.pt"),
              os.path.join(V, "safetensors", "all_dtypes.safetensors")]
    with tempfile.TemporaryDirectory(prefix="ckpt-extract-") as tmp:
        for f in files:
            if f.endswith(".safetensors"):
                import safetensors.torch
                ref = safetensors.torch.load_file(f)
            else:
                ref = torch.load(f, weights_only=True)
            for path, t in flat(ref):
                if t.dtype not in NUMPY_DTYPES and t.dtype not in CONVERTED:
                    continue  # bits*, float4: no numeric NumPy form (ckpt refuses; checked below)
                out = os.path.join(tmp, "one.npy")
                args = ["extract", f, path, "-o", out]
                if t.dtype in CONVERTED:
                    r = run(ckpt, *args)
                    check(r.returncode == 2 and "--as" in r.stderr, f"{f}:{path}: {t.dtype} not refused: {r.stderr}")
                    args += ["--as", CONVERTED[t.dtype]]
                r = run(ckpt, *args)
                if r.returncode != 0:
                    check(False, f"{f}:{path}: exit {r.returncode}: {r.stderr}")
                    continue
                same(np.load(out), t, f"{os.path.basename(f)}:{path}")
        # --all: one file per tensor, named by index.json, collision-safe
        d = os.path.join(tmp, "all")
        r = run(ckpt, "extract", os.path.join(V, "torch2", "checkpoint.pt"), "--all", d)
        check(r.returncode == 0, f"--all: exit {r.returncode}: {r.stderr}")
        index = json.load(open(os.path.join(d, "index.json")))
        ref = dict(flat(torch.load(os.path.join(V, "torch2", "checkpoint.pt"), weights_only=True)))
        check(sorted(index) == sorted(ref), f"--all: index names {sorted(index)} != {sorted(ref)}")
        check(len(set(index.values())) == len(index), "--all: two tensors share a file name")
        for path, name in index.items():
            same(np.load(os.path.join(d, name)), ref[path], f"--all {path}")
        # bits dtypes have no numeric form
        r = run(ckpt, "extract", os.path.join(V, "torch2", "save_dtypes.pt"), "bits8", "-o", os.path.join(tmp, "b.npy"))
        check(r.returncode == 2 and "no numeric meaning" in r.stderr, f"bits8 not refused: {r.stderr}")
        # names that collide after mapping get distinct files
        coll = {"a/b": torch.ones(1), "a.b": torch.zeros(1), "A.B": torch.full((1,), 2.0), "x y": torch.ones(2)}
        src = os.path.join(tmp, "coll.pt")
        torch.save(coll, src)
        d2 = os.path.join(tmp, "coll")
        r = run(ckpt, "extract", src, "--all", d2)
        check(r.returncode == 0, f"collisions: exit {r.returncode}: {r.stderr}")
        index = json.load(open(os.path.join(d2, "index.json")))
        check(len({v.lower() for v in index.values()}) == len(coll), f"collisions: {index}")
        for path, name in index.items():
            same(np.load(os.path.join(d2, name)), coll[path], f"collisions {path}")
    if failures:
        print(f"{len(failures)} failures")
        return 1
    print(f"all extracted tensors match torch's values ({checks[0]} checks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
