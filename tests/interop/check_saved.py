"""torch checks on files ckpt wrote (tests/unit/save_test.cpp runs this).

    python check_saved.py FILE
        Loads FILE with torch.load and compares it with FILE.json, the sidecar
        save_test.cpp wrote beside it (format below). Exits non-zero, naming the
        path of the first difference, when they disagree.
    python check_saved.py --write-reference DIR
        torch.saves the reference objects of the byte-identity test into DIR
        (REFERENCES below); save_test.cpp loads each with ckpt, saves it again
        and compares the bytes with torch's.
    python check_saved.py FILE --torch113
        (legacy, for tests/unit/writer_test.cpp: checks the fixed sample() tree)

Sidecar: {"weights_only": bool, "mmap": bool, "value": NODE}. FILE is loaded
with torch.load(weights_only=...), and once more with mmap=True when "mmap" is
set (torch 2.1+). NODE is one of
    {"none": null} {"bool": b} {"int": "decimal"} {"float": "16 hex digits, the IEEE bits"}
    {"str": s} {"bytes": "hex"} {"bytearray": "hex"} {"complex": [bits, bits]}
    {"list": [NODE...]} {"tuple": [NODE...]} {"set": [NODE...]}
    {"dict": [[KEY, NODE]...]} {"odict": [[KEY, NODE]...], "metadata": NODE (optional)}
    {"dtype": "float32"} {"device": "cuda:1"} {"size": [int...]}
    {"tensor": {"dtype", "shape", "stride", "offset", "requires_grad", "parameter",
                "sha256" (of the elements in row-major order), "storage" (group id),
                "storage_nbytes"}}
    {"storage": {"dtype", "sha256" (of all its bytes), "nbytes", "storage" (group id)}}
Tensors and storages with the same group id must share one storage after loading
(equal data_ptr of the untyped storage); different groups must not.
"""
import collections
import hashlib
import json
import math
import os
import struct
import sys
import warnings

warnings.simplefilter("ignore")  # TypedStorage deprecation, ComplexHalf experimental

import torch  # noqa: E402

MAJOR = int(torch.__version__.split(".")[0])


# ---------------------------------------------------------------------------
# references for the byte-identity test

def references():
    torch.manual_seed(0)
    refs = {}
    refs["linear_bn"] = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).state_dict()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3))
            self.blocks = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2))
                                                for _ in range(6)])
            self.head = torch.nn.Linear(2, 2)

    refs["net"] = Net().state_dict()
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    refs["train"] = {"epoch": 1, "model": model.state_dict(), "optimizer": opt.state_dict()}
    return refs


def write_references(out):
    os.makedirs(out, exist_ok=True)
    for name, obj in references().items():
        torch.save(obj, os.path.join(out, name + ".pt"))
    print("wrote", ", ".join(sorted(references())), "to", out, "with torch", torch.__version__)


# ---------------------------------------------------------------------------
# comparing a loaded object with a sidecar node

class Mismatch(Exception):
    pass


def fail(path, msg):
    raise Mismatch("%s: %s" % (path or "<root>", msg))


def float_of(bits):
    return struct.unpack(">d", bytes.fromhex(bits))[0]


def bits_of(x):
    return struct.pack(">d", x).hex()


def python_value(node):
    """The Python object a key node stands for."""
    (kind, v), = ((k, v) for k, v in node.items() if k != "metadata")
    if kind == "none":
        return None
    if kind == "bool":
        return v
    if kind == "int":
        return int(v)
    if kind == "float":
        return float_of(v)
    if kind == "str":
        return v
    if kind == "bytes":
        return bytes.fromhex(v)
    if kind == "tuple":
        return tuple(python_value(x) for x in v)
    if kind == "complex":
        return complex(float_of(v[0]), float_of(v[1]))
    if kind == "dtype":
        return getattr(torch, v)
    raise ValueError("unsupported key node %r" % node)


def storage_ptr(t):
    return t.untyped_storage().data_ptr() if hasattr(t, "untyped_storage") else t.storage().data_ptr()


def tensor_bytes(t):
    t = t.detach().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return bytes(t.view(torch.uint8).tolist())


class Checker:
    def __init__(self):
        self.groups = {}  # group id -> (data_ptr, nbytes, path)

    def group(self, gid, ptr, nbytes, path):
        gid = str(gid)
        if gid in self.groups:
            if self.groups[gid][0] != ptr:
                fail(path, "should share its storage with %s, but does not" % self.groups[gid][2])
            return
        for other, (p, n, where) in self.groups.items():
            if p == ptr and nbytes and n:
                fail(path, "shares its storage with %s, but should not" % where)
        self.groups[gid] = (ptr, nbytes, path)

    def check(self, x, node, path=""):
        kind = next(k for k in node if k != "metadata")
        v = node[kind]
        if kind == "none":
            if x is not None:
                fail(path, "expected None, found %r" % (x,))
        elif kind == "bool":
            if type(x) is not bool or x != v:
                fail(path, "expected %r, found %r" % (v, x))
        elif kind == "int":
            if type(x) is not int or x != int(v):
                fail(path, "expected int %s, found %r" % (v, x))
        elif kind == "float":
            if type(x) is not float or bits_of(x) != v:
                fail(path, "expected float %r (bits %s), found %r" % (float_of(v), v, x))
        elif kind == "str":
            if type(x) is not str or x != v:
                fail(path, "expected %r, found %r" % (v, x))
        elif kind in ("bytes", "bytearray"):
            want = bytes.fromhex(v)
            if type(x) is not (bytes if kind == "bytes" else bytearray) or bytes(x) != want:
                fail(path, "expected %s %r, found %r" % (kind, want, x))
        elif kind == "complex":
            if type(x) is not complex or (bits_of(x.real), bits_of(x.imag)) != tuple(v):
                fail(path, "expected %r, found %r" % (python_value(node), x))
        elif kind in ("list", "tuple"):
            if type(x) is not (list if kind == "list" else tuple) or len(x) != len(v):
                fail(path, "expected a %s of %d, found %r" % (kind, len(v), type(x)))
            for i, (a, b) in enumerate(zip(x, v)):
                self.check(a, b, "%s/%d" % (path, i))
        elif kind == "set":
            want = {python_value(n) for n in v}
            if type(x) is not set or x != want:
                fail(path, "expected %r, found %r" % (want, x))
        elif kind in ("dict", "odict"):
            want_type = collections.OrderedDict if kind == "odict" else dict
            if type(x) is not want_type:
                fail(path, "expected a %s, found %s" % (want_type.__name__, type(x).__name__))
            keys = [python_value(k) for k, _ in v]
            if list(x.keys()) != keys:
                fail(path, "keys %r, expected %r" % (list(x.keys()), keys))
            for (k, sub), key in zip(v, keys):
                self.check(x[key], sub, "%s/%s" % (path, key))
            if "metadata" in node:
                if not hasattr(x, "_metadata"):
                    fail(path, "has no _metadata")
                self.check(x._metadata, node["metadata"], path + "/_metadata")
        elif kind == "dtype":
            if x is not getattr(torch, v):
                fail(path, "expected torch.%s, found %r" % (v, x))
        elif kind == "device":
            if type(x) is not torch.device or x != torch.device(v):
                fail(path, "expected device %r, found %r" % (v, x))
        elif kind == "size":
            if type(x) is not torch.Size or list(x) != v:
                fail(path, "expected torch.Size(%r), found %r" % (v, x))
        elif kind == "tensor":
            self.check_tensor(x, v, path)
        elif kind == "storage":
            if type(x).__name__ != "TypedStorage":
                fail(path, "expected a storage, found %r" % type(x))
            if str(x.dtype) != "torch." + v["dtype"]:
                fail(path, "storage dtype %s, expected %s" % (x.dtype, v["dtype"]))
            untyped = x._untyped_storage if hasattr(x, "_untyped_storage") else x._storage
            raw = bytes(torch.empty(0, dtype=torch.uint8).set_(untyped).tolist())
            if len(raw) != v["nbytes"] or hashlib.sha256(raw).hexdigest() != v["sha256"]:
                fail(path, "storage bytes differ")
            self.group(v["storage"], x.data_ptr(), v["nbytes"], path)
        else:
            raise ValueError("unknown node kind %r at %s" % (kind, path))

    def check_tensor(self, x, v, path):
        if not isinstance(x, torch.Tensor):
            fail(path, "expected a tensor, found %r" % type(x))
        if v["parameter"] != isinstance(x, torch.nn.Parameter):
            fail(path, "Parameter: %r, expected %r" % (isinstance(x, torch.nn.Parameter), v["parameter"]))
        got = {"dtype": str(x.dtype)[len("torch."):], "shape": list(x.shape), "stride": list(x.stride()),
               "offset": x.storage_offset(), "requires_grad": x.requires_grad}
        for k, g in got.items():
            if g != v[k]:
                fail(path, "%s is %r, expected %r" % (k, g, v[k]))
        if hashlib.sha256(tensor_bytes(x)).hexdigest() != v["sha256"]:
            fail(path, "element bytes differ")
        st = x.untyped_storage() if hasattr(x, "untyped_storage") else x.storage()
        nbytes = st.nbytes() if hasattr(st, "nbytes") else st.size() * x.element_size()
        if nbytes != v["storage_nbytes"]:
            fail(path, "storage has %d bytes, expected %d" % (nbytes, v["storage_nbytes"]))
        self.group(v["storage"], storage_ptr(x), nbytes, path)


def check_file(path):
    with open(path + ".json") as f:
        spec = json.load(f)
    loads = [dict(weights_only=spec["weights_only"])]
    if spec.get("mmap") and MAJOR >= 2:
        loads.append(dict(weights_only=spec["weights_only"], mmap=True))
    for kw in loads:
        obj = torch.load(path, **kw)
        try:
            Checker().check(obj, spec["value"])
        except Mismatch as e:
            sys.exit("check_saved.py: %s (torch %s, torch.load(%s)): %s" %
                     (path, torch.__version__, ", ".join("%s=%s" % i for i in kw.items()), e))
    print("ok:", path, "torch", torch.__version__, "loads:", loads)


# ---------------------------------------------------------------------------
# legacy: the fixed tree of tests/unit/writer_test.cpp sample()

def legacy_check(path, old):
    def fill(dtype, shape):
        n = math.prod(shape)
        esize = torch.empty(0, dtype=dtype).element_size()
        raw = bytes((i * 7 + 3) & 0xFF for i in range(n * esize))
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape) if n else torch.empty(shape, dtype=dtype)

    def check(obj):
        base = fill(torch.float32, (4, 6))
        assert torch.equal(obj["base"], base)
        assert torch.equal(obj["transposed"], base.t())
        assert torch.equal(obj["offset"], base.reshape(-1)[7:12])
        assert storage_ptr(obj["base"]) == storage_ptr(obj["transposed"]) == storage_ptr(obj["offset"])
        assert obj["scalar"].dim() == 0 and torch.equal(obj["scalar"], fill(torch.float64, ()))
        assert obj["empty"].shape == (0, 3) and obj["empty"].dtype == torch.int16
        if not old:
            assert torch.equal(obj["u16"], fill(torch.uint16, (3,)))
            assert torch.equal(obj["f8"].view(torch.uint8), fill(torch.float8_e4m3fn, (2, 2)).view(torch.uint8))
        p = obj["param"]
        assert isinstance(p, torch.nn.Parameter) and p.requires_grad and torch.equal(p.data, fill(torch.bfloat16, (2,)))
        assert obj["epoch"] == 7 and obj["big"] == 1 << 40 and obj["neg"] == -5 and obj["lr"] == 0.001
        assert obj["name"] == "run-\u00e9"
        assert obj["blob"] == b"\x00\xff\x80a" and obj["empty_blob"] == b""
        assert obj["flags"] == (True, False, None) and obj["list"] == [1, 2.5, "x"]
        assert obj["nested"] == {1: "one", (2, 3): "pair"}
        assert obj["dtype"] == torch.bfloat16 and obj["size"] == torch.Size([2, 3])
        assert obj["device"] == torch.device("cuda", 1)
        assert obj["set"] == {1} and obj["complex"] == complex(1, -2)

    try:
        check(torch.load(path, weights_only=True))
    except Exception:  # torch 1.13's weights-only loader lacks BINFLOAT and more
        if not old:
            raise
        check(torch.load(path, weights_only=False))
    if not old:
        check(torch.load(path, weights_only=True, mmap=True))
    print("ok:", path, "torch", torch.__version__)


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "--write-reference":
        write_references(args[1])
    elif len(args) == 1 and os.path.exists(args[0] + ".json"):
        check_file(args[0])
    elif len(args) == 1 or len(args) == 2 and args[1] == "--torch113":
        legacy_check(args[0], len(args) == 2)
    else:
        sys.exit(__doc__)
