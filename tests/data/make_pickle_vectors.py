#!/usr/bin/env python3
"""Writes tests/unit/unpickler_vectors.inc: pickles made by CPython and by
torch (1.13 and 2.x), embedded as C++ strings for tests/unit/unpickler_test.cpp.

Run with any Python 3 that has torch; it runs itself again under the other
interpreter for the other torch version:

    /usr/bin/python3 tests/data/make_pickle_vectors.py

The unit tests need neither Python nor torch: the output is checked in.
"""
import collections
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "unit", "unpickler_vectors.inc")
PYTHONS = {
    "torch113": "/usr/bin/python3",
    "torch2": os.path.expanduser(os.environ.get("CKPT_VENV", "~/.cache/ckpt/venv") + "/bin/python"),
}


def nested():
    """Everything a weights-only load accepts at every protocol (no b'' and no
    frozenset: below protocol 3/4 they pickle as builtins.bytes / frozenset)."""
    shared = [1, 2]
    return {
        "ints": [0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1,
                 2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 2**100, -(2**70), 10**40],
        "floats": [1.5, -0.0, 1e300, float("inf"), float("-inf"), 2.5e-310],
        "strs": ["", "ascii", "\u00e9", "\u65e5\u672c\u8a9e", "\U0001F600", "line\nbreak\\back\r\x00\x1a"],
        "bytes": [b"\x00\xff", b"abc\n"],
        "misc": (None, True, False),
        "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)],
        "keys": {1: "one", (2, "two"): 2, -3: None, "k": 1.0},
        "set": {3, 4},
        "bytearray": bytearray(b"\x01\x02"),
        "complex": complex(1.5, -2),
        "shared": [shared, shared],
    }


def plain_vectors():
    v = {}
    for p in range(6):
        v[f"kNestedP{p}"] = (f"pickle.dumps(nested(), protocol={p}) (CPython 3.11)", pickle.dumps(nested(), protocol=p))
    v["kFrozensetP4"] = ("pickle.dumps([frozenset({5}), b''], 4)", pickle.dumps([frozenset({5}), b""], 4))
    v["kEmptyBytesP2"] = ("pickle.dumps(b'', 2): REDUCE of builtins.bytes", pickle.dumps(b"", 2))
    v["kFrozensetP2"] = ("pickle.dumps(frozenset({5}), 2): REDUCE of builtins.frozenset", pickle.dumps(frozenset({5}), 2))
    od = collections.OrderedDict([("w", 1), ("b", 2)])
    od._metadata = collections.OrderedDict([("", {"version": 1})])
    for p in (0, 2, 4):
        v[f"kOrderedDictMetaP{p}"] = (f"OrderedDict w/ _metadata, protocol {p}", pickle.dumps(od, protocol=p))
    # Things weights-only refuses; made by CPython's own pickler.
    import os as _os
    import subprocess as _sp

    class Sys:
        def __reduce__(self):
            return (_os.system, ("touch /tmp/pwned",))

    class Popen:
        def __reduce__(self):
            return (_sp.Popen, (["touch", "/tmp/pwned"],))

    class Eval:
        def __reduce__(self):
            return (eval, ("__import__('os').system('touch /tmp/pwned')",))

    for p in (0, 2, 4):
        v[f"kPosixSystemP{p}"] = (f"__reduce__ -> (os.system, ...) at protocol {p} (os.system lives in posix)",
                                  pickle.dumps(Sys(), protocol=p))
    v["kPopenP2"] = ("__reduce__ -> (subprocess.Popen, ([...],))", pickle.dumps(Popen(), protocol=2))
    v["kEvalP2"] = ("__reduce__ -> (builtins.eval, ('...',))", pickle.dumps(Eval(), protocol=2))
    v["kEvalP0"] = ("__reduce__ -> (builtins.eval, ('...',)), protocol 0", pickle.dumps(Eval(), protocol=0))
    return v


def data_pkl(obj, **kw):
    import torch
    b = io.BytesIO()
    torch.save(obj, b, **kw)
    z = zipfile.ZipFile(io.BytesIO(b.getvalue()))
    return z.read([n for n in z.namelist() if n.endswith("/data.pkl")][0])


def torch_vectors(tag):
    import torch
    torch.manual_seed(0)
    v = {}
    lin = torch.nn.Linear(2, 2)
    v["kLinearSD"] = ("torch.nn.Linear(2, 2).state_dict()", data_pkl(lin.state_dict()))
    seq = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    v["kSequentialSD"] = ("Sequential(Linear(3, 2), BatchNorm1d(2)).state_dict()", data_pkl(seq.state_dict()))
    v["kParameter"] = ("torch.nn.Parameter(torch.ones(2, 3))", data_pkl(torch.nn.Parameter(torch.ones(2, 3))))
    base = torch.arange(12.0).reshape(3, 4)
    base.requires_grad_(True)
    v["kViews"] = ("{'t': base (requires_grad), 'v': base.t()[1:], 'i': int64 arange(5)}",
                   data_pkl({"t": base, "v": base.detach().t()[1:], "i": torch.arange(5)}))
    v["kLeaves"] = ("{'size': Size([2, 3]), 'dev': device('cuda', 0), 'cpu': device('cpu'), 'dt': bfloat16, 'b': b'xy'}",
                    data_pkl({"size": torch.Size([2, 3]), "dev": torch.device("cuda", 0), "cpu": torch.device("cpu"),
                              "dt": torch.bfloat16, "b": b"xy"}))
    t = torch.zeros(2)
    t.foo = 1
    v["kTensorWithAttr"] = ("a tensor with t.foo = 1: _rebuild_from_type_v2", data_pkl(t))
    v["kSparse"] = ("a sparse COO tensor", data_pkl(torch.zeros(2, 2).to_sparse()))
    v["kQuantized"] = ("a quantized tensor",
                       data_pkl(torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.quint8)))
    if tag == "torch2":
        p = torch.nn.Parameter(torch.ones(2))
        p.foo = 1
        v["kParameterWithState"] = ("a Parameter with p.foo = 1: _rebuild_parameter_with_state", data_pkl(p))
        v["kFloat8"] = ("torch.ones(3, dtype=float8_e4m3fn): _rebuild_tensor_v3",
                        data_pkl(torch.ones(3, dtype=torch.float8_e4m3fn)))
        v["kUint16View"] = ("torch.arange(6, dtype=uint16).reshape(2, 3)[:, 1:]: v3 with offset",
                            data_pkl(torch.arange(6, dtype=torch.int32).to(torch.uint16).reshape(2, 3)[:, 1:]))
        v["kUntypedStorage"] = ("torch.zeros(3).untyped_storage()", data_pkl(torch.zeros(3).untyped_storage()))
    return {f"{k}_{tag}": (f"{d} (torch {torch.__version__})", b) for k, (d, b) in v.items()}


def cxx_string(b):
    out, line = [], ""
    for c in b:
        ch = chr(c)
        if 0x20 <= c < 0x7F and ch not in '\\"?':
            line += ch
        else:
            line += "\\%03o" % c
        if len(line) >= 96:
            out.append(line)
            line = ""
    if line or not out:
        out.append(line)
    return "\n    ".join(f'"{l}"' for l in out)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--torch-json":
        tag = sys.argv[2]
        print(json.dumps({k: (d, b.hex()) for k, (d, b) in torch_vectors(tag).items()}))
        return
    vectors = plain_vectors()
    for tag, py in PYTHONS.items():
        res = subprocess.run([py, os.path.abspath(__file__), "--torch-json", tag], check=True, capture_output=True,
                             text=True)
        for k, (d, h) in json.loads(res.stdout).items():
            vectors[k] = (d, bytes.fromhex(h))
    with open(OUT, "w") as f:
        f.write("// Generated by tests/data/make_pickle_vectors.py; do not edit.\n")
        f.write("// Pickles written by CPython %d.%d and by torch.save (data.pkl of the zip).\n\n"
                % sys.version_info[:2])
        for k, (d, b) in vectors.items():
            f.write(f"// {d}\n")
            f.write(f"const std::string {k}(\n    {cxx_string(b)},\n    {len(b)});\n\n")
    print(f"wrote {len(vectors)} vectors to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
