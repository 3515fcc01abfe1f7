#!/usr/bin/env python3
"""Quantized, sparse and numpy values: what ckpt sees against what the real torch sees.

Run with either interpreter (torch 1.13: /usr/bin/python3; torch 2.x: the venv):
    tensor_kinds.py --ckpt build/ckpt --workdir DIR     # the interop test (ctest tensor_kinds_*)
    tensor_kinds.py --fixtures tests/data/valid/TAG     # (re)write the unit tests' fixtures

For each kind, saved by this torch in the zip format and in the legacy format
(_use_new_zipfile_serialization=False):
  - quantized tensors: per-tensor affine (qint8, quint8, qint32, a transposed view) and
    per-channel affine (quint8, float64 scales, int64 zero points);
  - sparse tensors: COO (coalesced and not), CSR, and on torch 2.x CSC;
  - numpy: float32/int32 arrays (C and Fortran order, big-endian), an empty array, the
    uint32 state array of np.random.get_state(), and numpy scalars of every kind.
Checks:
  1. `ckpt ls --json --digest` (with --numpy for numpy files) lists, in order, every tensor
     torch.load returns: quantized as its int_repr() with scheme/scale/zero point (per-channel:
     axis and the digests of scales and zero points), sparse as its parts (PATH/indices,
     PATH/values, PATH/crow_indices, ...), numpy arrays as tensors, bit for bit.
  2. Without --numpy, ckpt refuses the numpy file and names the option.
  3. torch 2.x nested tensors and meta tensors give a clear 'not supported' error naming
     the kind, the file, the record and the offset.
  4. `ckpt convert` writes a .pt that torch.load(weights_only=True) reads back equal to the
     original (numpy arrays come back as tensors, numpy scalars as Python numbers). torch
     1.13's weights-only loader cannot rebuild quantized tensors at all, so there the
     quantized copy is read with its full loader, and the numpy copy (a uint32 tensor,
     floats) is checked by torch 2.x only.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")
MAJOR = int(torch.__version__.split(".")[0])


def digest_bytes(b):
    return hashlib.sha256(b).hexdigest()


def digest(t):
    t = t.detach().contiguous().reshape(-1)
    if t.numel() == 0:
        return digest_bytes(b"")
    if t.is_quantized:
        t = t.int_repr()
    return digest_bytes(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())


def dtype_name(t):
    return str(t.dtype).replace("torch.", "")


def entry(path, t):
    e = {"path": path, "dtype": dtype_name(t), "shape": list(t.shape), "device": "cpu", "sha256": digest(t)}
    if t.is_quantized:
        if t.qscheme() == torch.per_tensor_affine:
            e["quantization"] = {"scheme": "per_tensor_affine", "scale": t.q_scale(), "zero_point": t.q_zero_point()}
        else:
            e["quantization"] = {"scheme": str(t.qscheme()).replace("torch.", ""), "axis": t.q_per_channel_axis(),
                                 "scales_sha256": digest(t.q_per_channel_scales()),
                                 "zero_points_sha256": digest(t.q_per_channel_zero_points())}
    return e


SPARSE_PARTS = {
    torch.sparse_coo: lambda t: [("indices", t._indices()), ("values", t._values())],
    torch.sparse_csr: lambda t: [("crow_indices", t.crow_indices()), ("col_indices", t.col_indices()),
                                 ("values", t.values())],
}
if hasattr(torch, "sparse_csc"):
    SPARSE_PARTS[torch.sparse_csc] = lambda t: [("ccol_indices", t.ccol_indices()), ("row_indices", t.row_indices()),
                                                ("values", t.values())]


NUMPY_NAMES = {"b1": "bool", "i1": "int8", "i2": "int16", "i4": "int32", "i8": "int64", "u1": "uint8",
               "u2": "uint16", "u4": "uint32", "u8": "uint64", "f2": "float16", "f4": "float32", "f8": "float64",
               "c8": "complex64", "c16": "complex128"}


def listing(obj, path="", out=None):
    """What `ckpt ls` lists, in its order, from what torch.load returned."""
    out = [] if out is None else out
    join = (lambda k: f"{path}/{k}" if path else str(k))
    if isinstance(obj, dict):
        for k, v in obj.items():
            listing(v, join(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            listing(v, join(i), out)
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj).astype(obj.dtype.newbyteorder("<"))
        out.append({"path": path, "dtype": NUMPY_NAMES[a.dtype.str[1:]], "shape": list(a.shape), "device": "cpu",
                    "sha256": digest_bytes(a.tobytes())})
    elif isinstance(obj, torch.Tensor):
        if obj.layout in SPARSE_PARTS:
            for name, part in SPARSE_PARTS[obj.layout](obj):
                out.append(entry(join(name), part))
        else:
            out.append(entry(path, obj))
    return out


def scalars(obj):
    """numpy scalars as ckpt gives them (Python numbers)."""
    out = {}
    for k, v in obj.items():
        if isinstance(v, np.generic):
            if isinstance(v, np.complexfloating):
                out[k] = [float(v.real), float(v.imag)]
            elif isinstance(v, np.bool_):
                out[k] = bool(v)
            elif isinstance(v, np.integer):
                out[k] = str(int(v))  # uint64 may pass int64
            else:
                out[k] = float(v)
    return out


def make_objects():
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    quant = {
        "q_int8": torch.quantize_per_tensor(x, 0.1, 3, torch.qint8),
        "q_uint8": torch.quantize_per_tensor(x, 0.05, 128, torch.quint8),
        "q_int32": torch.quantize_per_tensor(x, 0.001, -7, torch.qint32),
        "per_channel": torch.quantize_per_channel(x, torch.tensor([0.1, 0.2, 0.05, 0.3], dtype=torch.float64),
                                                  torch.tensor([0, 1, 5, 2]), 0, torch.quint8),
    }
    quant["q_int8_t"] = quant["q_int8"].t()
    dense = torch.randn(4, 6).relu()
    sparse = {
        "coo": dense.to_sparse(),
        "coo_uncoalesced": torch.sparse_coo_tensor(torch.tensor([[0, 1, 0], [2, 0, 2]]), torch.tensor([1.0, 2.0, 3.0]),
                                                   (3, 3)),
        "csr": dense.to_sparse_csr(),
    }
    if MAJOR >= 2:
        sparse["csc"] = dense.to_sparse_csc()
    rng = np.random.RandomState(0).get_state()
    npy = {
        "f32": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
        "fortran_i32": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
        "big_endian_f64": np.linspace(-1, 1, 5).astype(">f8"),
        "empty": np.zeros((0, 3), dtype=np.float64),
        "bools": np.array([True, False, True]),
        "rng_state": rng,
        "s_f64": np.float64(0.1), "s_f32": np.float32(1.25), "s_f16": np.float16(-2.5),
        "s_i64": np.int64(-7), "s_u8": np.uint8(200), "s_u64": np.uint64(2**63 + 5),
        "s_bool": np.bool_(True), "s_c64": np.complex64(1 + 2j),
    }
    return {"quantized": quant, "sparse": sparse, "numpy": npy}


def save_all(objs, d):
    os.makedirs(d, exist_ok=True)
    files = {}
    for kind, obj in objs.items():
        for fmt, kw in (("zip", {}), ("legacy", {"_use_new_zipfile_serialization": False})):
            path = os.path.join(d, f"{kind}_{fmt}.pt")
            torch.save(obj, path, **kw)
            files[(kind, fmt)] = path
    return files


def torch_load(path):
    if MAJOR >= 2:
        return torch.load(path, weights_only=False)
    return torch.load(path)


def expected_for(path, kind):
    obj = torch_load(path)
    exp = {"tensors": listing(obj)}
    if kind == "numpy":
        exp["scalars"] = scalars(obj)
    return exp


def same(a, b):
    if isinstance(a, np.ndarray):
        a = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"))
        return (isinstance(b, torch.Tensor) and list(b.shape) == list(a.shape) and
                str(b.dtype) == "torch." + NUMPY_NAMES[a.dtype.str[1:]] and
                b.contiguous().view(torch.uint8).numpy().tobytes() == a.tobytes())
    if isinstance(a, np.generic):
        a = a.item()
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.layout != b.layout or a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.is_quantized:
            return (a.qscheme() == b.qscheme() and torch.equal(a.int_repr(), b.int_repr())
                    and torch.equal(a.dequantize(), b.dequantize()))
        if a.layout != torch.strided:
            return torch.equal(a.to_dense(), b.to_dense())
        return torch.equal(a, b)
    return a == b or (a != a and b != b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt")
    ap.add_argument("--workdir")
    ap.add_argument("--fixtures")
    a = ap.parse_args()
    objs = make_objects()
    if a.fixtures:
        files = save_all(objs, a.fixtures)
        for (kind, fmt), path in files.items():
            with open(path[:-3] + ".expected.json", "w") as f:
                json.dump(expected_for(path, kind), f, indent=1)
                f.write("\n")
        print(f"wrote {len(files)} fixtures to {a.fixtures}")
        return 0

    files = save_all(objs, a.workdir)
    failures = []
    for (kind, fmt), path in files.items():
        name = f"{kind}/{fmt}"
        flags = ["--numpy"] if kind == "numpy" else []
        r = subprocess.run([a.ckpt, "ls", "--json", "--digest", *flags, path], capture_output=True, text=True)
        if r.returncode != 0:
            failures.append(f"{name}: ckpt ls failed: {r.stderr.strip()}")
            continue
        got = json.loads(r.stdout)["tensors"]
        want = expected_for(path, kind)["tensors"]
        if got != want:
            for g, w in zip(got, want):
                if g != w:
                    failures.append(f"{name}: ckpt {g} != torch {w}")
                    break
            else:
                failures.append(f"{name}: ckpt lists {len(got)} tensors, torch {len(want)}")
        if kind == "numpy":
            r = subprocess.run([a.ckpt, "ls", path], capture_output=True, text=True)
            if r.returncode == 0 or "--numpy" not in r.stderr:
                failures.append(f"{name}: without --numpy ckpt should refuse and name the option: {r.stderr.strip()}")
        out = os.path.join(a.workdir, f"{kind}_{fmt}.converted.pt")
        r = subprocess.run([a.ckpt, "convert", *flags, path, out], capture_output=True, text=True)
        if r.returncode != 0:
            failures.append(f"{name}: ckpt convert failed: {r.stderr.strip()}")
            continue
        if MAJOR < 2 and kind == "numpy":
            print(f"ok {name}: {len(want)} tensors listed bit-exactly, converted (torch 1.13 cannot read the copy: "
                  "it has no uint32 dtype, and its weights-only loader no floats; torch 2.x checks it)")
            continue
        # torch 1.13's own weights-only unpickler has no _rebuild_qtensor: it reads these with the full one.
        back = torch.load(out) if (MAJOR < 2 and kind == "quantized") else torch.load(out, weights_only=True)
        if not same(torch_load(path), back):
            failures.append(f"{name}: torch.load(weights_only=True) of ckpt's copy differs from the original")
        print(f"ok {name}: {len(want)} tensors listed bit-exactly, converted copy loads equal")
    if MAJOR >= 2:  # kinds ckpt does not model: a clear error naming the kind, the file, record and offset
        unsupported = {"nested tensors": {"nt": torch.nested.nested_tensor([torch.randn(2, 3), torch.randn(4, 3)])},
                       "meta tensors": {"m": torch.empty(3, 4, device="meta")}}
        for what, obj in unsupported.items():
            path = os.path.join(a.workdir, what.replace(" ", "_") + ".pt")
            torch.save(obj, path)
            r = subprocess.run([a.ckpt, "ls", path], capture_output=True, text=True)
            if r.returncode != 2 or what not in r.stderr or "not supported" not in r.stderr or "offset" not in r.stderr:
                failures.append(f"{what}: expected a clear 'not supported' error, got rc={r.returncode}: {r.stderr}")
            else:
                print(f"ok {what}: {r.stderr.strip()}")
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
