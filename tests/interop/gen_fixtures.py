#!/usr/bin/env python3
"""Writes torch.save checkpoints and what `ckpt ls --json --digest` must print for each.

    gen_fixtures.py OUTDIR

Runs with either PyTorch on the machine: torch 1.13 (Debian's python3-torch, through
/usr/bin/python3) or torch 2.x (the venv scripts/setup makes). For every fixture
OUTDIR/<name>.pt it writes OUTDIR/<name>.expected.json, computed from what
torch.load gives back for the saved file (weights_only=True where torch can; torch
1.13's weights-only unpickler refuses floats and bytes and torch 2.x's refuses pickle
protocols 4 and 5 (the FRAME opcode): those files are ours, so they are re-read with
weights_only=False, and "torch_weights_only" in the JSON says so):

    {"format": "torch_zip",
     "tensors": [{"path": ..., "dtype": ..., "shape": [...], "sha256": ...,
                  "requires_grad": ..., "is_parameter": ...}, ...],
     "shared_groups": [[path, path, ...], ...],   # paths whose tensors share one storage
     "torch_version": ..., "torch_weights_only": true|false, "archive_prefix": ...}

Tensors are listed in the order of a depth-first walk of the loaded object (dict
insertion order, list/tuple index order). A path joins the keys leading to the tensor
with '/': str keys as they are, int keys and indices in decimal, any other key as
Python's repr (a tuple key (2, 3) gives "(2, 3)"). sha256 is the hex digest of the
tensor's elements in row-major order, little-endian: the bytes of t.contiguous().
The interop test compares format, path, dtype, shape and sha256.
"""
import collections
import hashlib
import io
import json
import os
import sys
import warnings
import zipfile

warnings.simplefilter("ignore")  # ComplexHalf "experimental", TypedStorage deprecation, ...

try:
    import torch
except ImportError as e:  # pragma: no cover - reported by run_interop.py
    sys.exit(f"gen_fixtures.py: cannot import torch with {sys.executable} ({e}); run: bash scripts/setup")

TORCH_MAJOR, TORCH_MINOR = (int(x) for x in torch.__version__.split(".")[:2])


def has(name):
    return isinstance(getattr(torch, name, None), torch.dtype)


# ---------------------------------------------------------------------------
# data


def gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def raw(dtype, shape, g):
    """Random bit patterns of any dtype (NaNs and all: only the bytes matter)."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    n = 1
    for s in shape:
        n *= s
    b = torch.randint(0, 256, (max(n, 1) * itemsize,), dtype=torch.uint8, generator=g)
    return b.view(dtype)[:n].reshape(shape).clone()


def random_tensor(dtype_name, shape, seed):
    g = gen(seed)
    dt = getattr(torch, dtype_name)
    if dtype_name in ("float64", "float32", "float16", "bfloat16"):
        return (torch.randn(shape, generator=g) * 10).to(dt)
    if dtype_name in ("complex64", "complex128"):
        return torch.randn(shape, generator=g, dtype=dt)
    if dtype_name == "complex32":
        return torch.randn(shape, generator=g, dtype=torch.complex64).to(dt)
    if dtype_name == "bool":
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype_name in ("int8", "int16", "int32", "int64", "uint8"):
        info = torch.iinfo(dt)
        return torch.randint(info.min, info.max, shape, generator=g, dtype=dt)
    return raw(dt, shape, g)  # uint16/32/64, float8_*, float4, bits*


DTYPES_COMMON = ["float64", "float32", "float16", "bfloat16", "int8", "int16", "int32", "int64",
                 "uint8", "bool", "complex64", "complex128"]
DTYPES_NEW = ["uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
              "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "complex32",
              "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2"]


def dtypes():
    names = list(DTYPES_COMMON)
    if TORCH_MAJOR >= 2:  # torch 1.13 has complex32 but cannot save it
        names += [n for n in DTYPES_NEW if has(n)]
    return names


# ---------------------------------------------------------------------------
# fixtures


class SmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
            torch.nn.Conv2d(4, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1))
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class TiedLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(11, 6)
        self.norm = torch.nn.LayerNorm(6)
        self.lm_head = torch.nn.Linear(6, 11, bias=False)
        self.lm_head.weight = self.embed.weight  # tied: one storage, two names


def trained_cnn():
    torch.manual_seed(7)
    net = SmallCNN()
    adam = torch.optim.Adam(net.parameters(), lr=1e-3)
    sgd_net = SmallCNN()
    sgd = torch.optim.SGD(sgd_net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(2, 3, 6, 6, generator=gen(11))
    for _ in range(2):  # two steps: Adam has step / exp_avg / exp_avg_sq, SGD momentum_buffer
        for model, opt in ((net, adam), (sgd_net, sgd)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    return net, adam, sgd


def fixtures():
    """(name, object, torch.save keyword arguments, saved through a buffer?)"""
    out = []

    def add(name, obj, buffer=False, **kw):
        out.append((name, obj, kw, buffer))

    # one tensor per dtype, each in its own file, then all in one file
    everything = collections.OrderedDict()
    for i, n in enumerate(dtypes()):
        t = random_tensor(n, (3, 5), 100 + i)
        add(f"dtype_{n}", {"t": t})
        everything[n] = t
    add("dtypes_all", everything)

    # shapes: 0-dim, empty, high-rank, larger
    add("shapes", collections.OrderedDict([
        ("scalar_f32", torch.tensor(3.5)),
        ("scalar_f64", torch.tensor(-0.0, dtype=torch.float64)),
        ("scalar_i64", torch.tensor(-123456789012, dtype=torch.int64)),
        ("scalar_bool", torch.tensor(True)),
        ("scalar_bf16", torch.tensor(1.5, dtype=torch.bfloat16)),
        ("empty_1d", torch.zeros(0)),
        ("empty_3d", torch.zeros(3, 0, 2, dtype=torch.float64)),
        ("empty_i16", torch.zeros(0, 3, dtype=torch.int16)),
        ("empty_bool", torch.zeros(0, dtype=torch.bool)),
        ("rank5", random_tensor("float32", (2, 1, 3, 1, 2), 1)),
        ("ones_dims", torch.ones(1, 1, 1)),
        ("larger", random_tensor("float32", (256, 257), 2)),  # 263 KB: several digest blocks
    ]))

    # non-contiguous views, storage offsets, shared storages
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    base3 = random_tensor("int32", (2, 3, 4), 3)
    add("views", collections.OrderedDict([
        ("base", base),
        ("transposed", base.t()),                      # strides (1, 6)
        ("offset", base.view(-1)[3:]),                 # storage offset 3
        ("stepped", base[:, ::2]),                     # strides (6, 2)
        ("row", base[2]),                              # offset 12
        ("column", base[:, 1]),                        # stride 6, offset 1
        ("diagonal", base.diagonal()),                 # stride 7
        ("overlapping", base.as_strided((3, 3), (1, 1), 2)),  # windows overlap in memory
        ("narrowed", base.narrow(1, 2, 3)),
        ("base3", base3),
        ("permuted", base3.permute(2, 0, 1)),
        ("expanded", torch.arange(3, dtype=torch.int16).reshape(3, 1).expand(3, 4)),  # stride 0
        ("channels_last", random_tensor("float32", (2, 3, 2, 2), 4).to(memory_format=torch.channels_last)),
        ("bool_stepped", random_tensor("bool", (5, 4), 5)[::2, 1:]),
        ("f16_transposed", random_tensor("float16", (3, 5), 6).t()),
    ]))

    w = random_tensor("float32", (4, 3), 8)
    add("tied", collections.OrderedDict([
        ("a", w),
        ("b", w),                  # the same tensor object again
        ("c", w.view(-1)),         # a view of it
        ("d", random_tensor("float32", (2,), 9)),
        ("e", w[1:]),              # a view with an offset
    ]))

    net, adam, sgd = trained_cnn()
    add("module_state_dict", net.state_dict())  # OrderedDict with _metadata, num_batches_tracked
    torch.manual_seed(8)
    add("module_tied", TiedLM().state_dict())

    nested_t = random_tensor("float32", (2, 2), 12)
    add("training_checkpoint", {
        "model": net.state_dict(),
        "optimizer": adam.state_dict(),
        "sgd": sgd.state_dict(),
        "epoch": 7,
        "step": 123456789012,
        "best_val": 0.125,
        "names": ["alpha", "beta", "ünïcødé"],
        "flags": (True, False),
        "nothing": None,
        "lr_history": [0.1, 0.05, 0.025],
        "nested": {
            1: random_tensor("int32", (3,), 13),
            -1: random_tensor("int64", (2,), 14),
            (2, 3): nested_t,
            "deep": {"deeper": [nested_t, {"x": random_tensor("float64", (1,), 15)}], "empty": {}},
        },
        "tensor_list": [random_tensor("float16", (2,), 16), (random_tensor("uint8", (3,), 17),)],
    })

    add("parameters", collections.OrderedDict([
        ("p", torch.nn.Parameter(random_tensor("float32", (3,), 20))),
        ("frozen", torch.nn.Parameter(random_tensor("float32", (2, 2), 21), requires_grad=False)),
        ("leaf_requires_grad", random_tensor("float64", (2,), 22).requires_grad_()),
        ("plain", random_tensor("float32", (2,), 23)),
    ]))

    add("buffer_saved", net.state_dict(), buffer=True)              # archive prefix 'archive'
    add("prefix.with.dots", {"w": random_tensor("float32", (2, 3), 24)})
    small = {"model": net.state_dict(), "epoch": 3, "names": ["a", "b"], "lr": 0.5}
    add("protocol4", small, pickle_protocol=4)
    add("protocol5", small, pickle_protocol=5)
    add("many_tensors", collections.OrderedDict(
        (f"layer{i}.weight", random_tensor(["float32", "int64", "bfloat16"][i % 3], (i % 5 + 1,), 1000 + i))
        for i in range(300)))
    add("unicode_keys", collections.OrderedDict([
        ("blöck.wéight", random_tensor("float32", (2,), 30)),
        ("日本語", random_tensor("int8", (3,), 31)),
        ("emoji🙂", random_tensor("bool", (2,), 32)),
        ("key with spaces", random_tensor("float16", (1,), 33)),
    ]))
    add("list_root", [random_tensor("float32", (2,), 40), random_tensor("int64", (1,), 41),
                      (random_tensor("float64", (2,), 42), random_tensor("bool", (3,), 43))])
    add("tensor_root", random_tensor("float32", (3, 2), 44))

    # Non-tensor values between tensors: only those this torch's weights_only load accepts.
    candidates = [("size", torch.Size([2, 3])), ("dtype", torch.float16), ("device", torch.device("cpu")),
                  ("set", {1, 2}), ("complex", 1 + 2j), ("bytearray", bytearray(b"ab")), ("bytes", b"\x00\xff"),
                  ("bigint", 2 ** 100), ("negbig", -2 ** 70), ("nan", float("nan")), ("long_str", "x" * 300),
                  ("od", collections.OrderedDict(a=1))]
    misc = collections.OrderedDict()
    for k, (name, value) in enumerate(candidates):
        buf = io.BytesIO()
        torch.save({name: value}, buf)
        buf.seek(0)
        try:
            torch.load(buf, weights_only=True)
        except Exception:
            continue
        misc[f"t{k}"] = random_tensor("float32", (k + 1,), 50 + k)
        misc[name] = value
    misc["last"] = random_tensor("int64", (2,), 49)
    add("misc_values", misc)
    add("no_tensors", {"epoch": 1, "names": ["x"]})
    return out


# ---------------------------------------------------------------------------
# expected output


def tensor_bytes(t):
    """The bytes of t.contiguous(): row-major, little-endian (this machine), for every dtype."""
    c = t.detach().contiguous()
    if c.numel() == 0:
        return b""
    u8 = c.reshape(-1).view(torch.uint8)
    try:
        return u8.numpy().tobytes()
    except Exception:  # no numpy: slower, same bytes
        return bytes(u8.tolist())


def walk(obj, path, acc):
    """Depth-first, in the object's own order: the order `ckpt ls` lists."""
    if isinstance(obj, torch.Tensor):
        acc.append((path, obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            part = k if isinstance(k, str) else str(k) if isinstance(k, int) and not isinstance(k, bool) else repr(k)
            walk(v, part if not path else path + "/" + part, acc)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            walk(v, str(i) if not path else path + "/" + str(i), acc)


def storage_ptr(t):
    if hasattr(t, "untyped_storage"):
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()
    s = t.storage()
    return s.data_ptr(), s.nbytes()


def load(path):
    try:
        return torch.load(path, weights_only=True), True, ""
    except Exception as e:  # the file is ours: see the module docstring
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unpickler error" in ln or "Unsupported" in ln), lines[0] if lines else "")
        if "Unpickler error" in why:
            why = why[why.index("Unpickler error") - len("Weights"):].lstrip()
        return torch.load(path, weights_only=False), False, why[:300]


def expected_for(path):
    loaded, weights_only, why = load(path)
    acc = []
    walk(loaded, "", acc)
    groups = collections.OrderedDict()
    for p, t in acc:
        ptr, nbytes = storage_ptr(t)
        key = (ptr, nbytes) if nbytes > 0 else ("empty", p)
        groups.setdefault(key, []).append(p)
    with zipfile.ZipFile(path) as z:
        prefix = z.namelist()[0].split("/")[0]
    exp = {
        "format": "torch_zip",
        "tensors": [
            {"path": p, "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
             "sha256": hashlib.sha256(tensor_bytes(t)).hexdigest(),
             "requires_grad": bool(t.requires_grad), "is_parameter": isinstance(t, torch.nn.Parameter)}
            for p, t in acc
        ],
        "shared_groups": [g for g in groups.values() if len(g) > 1],
        "torch_version": torch.__version__,
        "torch_weights_only": weights_only,
        "archive_prefix": prefix,
    }
    if not weights_only:
        exp["torch_weights_only_error"] = why
    return exp


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: gen_fixtures.py OUTDIR")
    outdir = argv[1]
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    names = []
    for name, obj, kw, buffer in fixtures():
        path = os.path.join(outdir, name + ".pt")
        if buffer:
            buf = io.BytesIO()
            torch.save(obj, buf, **kw)
            with open(path, "wb") as f:
                f.write(buf.getvalue())
        else:
            torch.save(obj, path, **kw)
        exp = expected_for(path)
        with open(os.path.join(outdir, name + ".expected.json"), "w", encoding="utf-8") as f:
            json.dump(exp, f, indent=1, ensure_ascii=False)
            f.write("\n")
        names.append(name)
    with open(os.path.join(outdir, "fixtures.json"), "w", encoding="utf-8") as f:
        json.dump({"torch_version": torch.__version__, "python": sys.executable, "fixtures": names}, f, indent=1)
    print(f"gen_fixtures: torch {torch.__version__}: wrote {len(names)} fixtures to {outdir}")


if __name__ == "__main__":
    main(sys.argv)
