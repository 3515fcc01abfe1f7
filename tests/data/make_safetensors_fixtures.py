"""Writes the small safetensors files that the C++ unit tests read and must
reproduce byte for byte.

Run with the venv that has torch 2.x and safetensors:
    ~/.cache/ckpt/venv/bin/python tests/data/make_safetensors_fixtures.py
Outputs go to tests/data/valid/safetensors/ and are committed: for each
<name>.safetensors (written by safetensors.torch.save_file) a
<name>.expected.json with
  - "inputs": the tensors given to save_file, in insertion order, as recipes
    the C++ test rebuilds (dtype, shape, byte pattern seed, optional view);
  - "metadata": the metadata given, as [key, value] pairs in the order the
    file holds them, or null;
  - "tensors": what safetensors.torch.load_file returns, in its order: name,
    torch dtype, shape, safetensors code, sha256 of the row-major bytes and
    the header's data_offsets (empty tensors sharing an offset come back in
    a random order);
  - "byte_identical": whether ckpt's writer must reproduce the file exactly.

Tensor bytes are a pattern the C++ side recomputes: byte i of a tensor with
seed s is (s * 131 + i * 29) & 0xff (& 1 for bool).

Python's metadata order is that of a Rust HashMap seeded at random per
process, so for several metadata keys this script saves until the file holds
them in sorted order (the order ckpt writes a std::map in).
"""
import hashlib
import json
import os
import struct
import tempfile

import torch
from safetensors.torch import load_file, save_file

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "valid", "safetensors")
os.makedirs(out, exist_ok=True)


def pattern(nbytes, seed, is_bool):
    b = bytes(((seed * 131 + i * 29) & 0xFF) for i in range(nbytes))
    return bytes(x & 1 for x in b) if is_bool else b


def itemsize(dtype):
    return torch.empty((), dtype=dtype).element_size() if dtype != torch.float4_e2m1fn_x2 else 1


def build(spec):
    dtype = getattr(torch, spec["dtype"])
    base_shape = spec.get("base_shape", spec["shape"])
    numel = 1
    for d in base_shape:
        numel *= d
    nbytes = numel * itemsize(dtype)
    if nbytes == 0:
        t = torch.empty(base_shape, dtype=dtype)
    else:
        raw = pattern(nbytes, spec["seed"], dtype == torch.bool)
        t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(base_shape)
    view = spec.get("view")
    if view == "transpose":
        t = t.t()
    elif view == "expand":
        t = t.expand(*spec["shape"])
    assert list(t.shape) == spec["shape"], (spec, t.shape)
    return t


def tensor_bytes(t):
    t = t.contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def header_of(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n])


def make(name, specs, metadata=None, byte_identical=True):
    tensors = {s["name"]: build(s) for s in specs}
    # save_file refuses non-contiguous tensors; ckpt writes their row-major bytes.
    to_save = {k: v.contiguous() for k, v in tensors.items()}
    path = os.path.join(out, name + ".safetensors")
    for attempt in range(1000):
        save_file(to_save, path, metadata=metadata)
        md = header_of(path).get("__metadata__")
        if md is None or list(md.keys()) == sorted(md.keys()):
            break
    else:
        raise RuntimeError("metadata never came out sorted")
    loaded = load_file(path)
    header = header_of(path)
    listing = []
    for k, v in loaded.items():
        ref = tensors[k]
        assert v.dtype == ref.dtype and v.shape == ref.shape, k
        assert tensor_bytes(v) == tensor_bytes(ref), k
        listing.append(
            {
                "name": k,
                "dtype": str(v.dtype).removeprefix("torch."),
                "shape": list(v.shape),
                "code": header[k]["dtype"],
                "sha256": hashlib.sha256(tensor_bytes(v)).hexdigest(),
                "data_offsets": header[k]["data_offsets"],
            }
        )
    # load_file returns tensors in data order (empty tensors at the same
    # offset in a random order: the Rust side collects them from a HashMap)
    offsets = [t["data_offsets"] for t in listing]
    assert offsets == sorted(offsets), name
    md = header.get("__metadata__")
    expected = {
        "file": name + ".safetensors",
        "byte_identical": byte_identical,
        "metadata": None if md is None else [[k, v] for k, v in md.items()],
        "inputs": specs,
        "tensors": listing,
    }
    with open(os.path.join(out, name + ".expected.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")


def spec(name, dtype, shape, seed, **kw):
    return dict(name=name, dtype=dtype, shape=shape, seed=seed, **kw)


ALL_DTYPES = [
    "bool", "float4_e2m1fn_x2", "uint8", "int8", "float8_e5m2", "float8_e4m3fn", "float8_e8m0fnu",
    "float8_e4m3fnuz", "float8_e5m2fnuz", "int16", "uint16", "float16", "bfloat16", "int32", "uint32",
    "float32", "complex64", "float64", "int64", "uint64",
]
# Names in reverse alphabetical order of the dtype sort so that neither the
# insertion order nor the name order gives the file order.
make(
    "all_dtypes",
    [spec(f"{chr(ord('a') + i)}.{d}", d, [2, 2] if d == "float4_e2m1fn_x2" else [2, 3], i + 1)
     for i, d in enumerate(ALL_DTYPES)],
)

make(
    "edge_shapes",
    [
        spec("scalar", "float32", [], 1),
        spec("scalar_i64", "int64", [], 2),
        spec("scalar_bool", "bool", [], 3),
        spec("empty", "float32", [0], 4),
        spec("empty_2d", "float16", [2, 0, 3], 5),
        spec("empty_bool", "bool", [0], 6),
        spec("one", "float32", [1], 7),
        spec("cube", "float64", [4, 5, 6], 8),
        spec("odd_u8", "uint8", [7], 9),
        spec("odd_i16", "int16", [3], 10),
        spec("f4_wide", "float4_e2m1fn_x2", [3, 4], 11),
        spec("f4_empty", "float4_e2m1fn_x2", [0, 2], 12),
    ],
)

make(
    "names",
    [spec(n, "float32", [1], i + 1) for i, n in enumerate(
        ["b", "a", "B", "_x", "aa", "a.b", "é", "a\u0001", 'quote"slash\\', "tab\t/", "日本語", "", "z" * 300,
         "\u2028sep", "\x7fdel"])],
)

make("metadata_one", [spec("w", "float32", [2, 2], 1), spec("b", "bfloat16", [2], 2)], {"format": "pt"})

make(
    "metadata_many",
    [spec("w", "float32", [2, 2], 1)],
    {"format": "pt", "note": 'line1\nline2 "q" é ✓ \\ /', "a": "", "z\u0001": "ctl\t", "é": "日本"},
)

make("metadata_empty_dict", [spec("w", "float32", [2], 1)], {}, byte_identical=False)

make("no_tensors", [])

make("no_tensors_metadata", [], {"format": "pt"})

make(
    "views",
    [
        spec("transposed", "float32", [4, 3], 1, base_shape=[3, 4], view="transpose"),
        spec("expanded", "int16", [3, 4], 2, base_shape=[1, 4], view="expand"),
        spec("plain", "float32", [3], 3),
    ],
)

print("wrote", out)
