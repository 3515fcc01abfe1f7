"""Writes the small torch checkpoints that the C++ unit tests read.

Run with each interpreter (torch 1.13 from Debian, torch 2.x from the venv):
    /usr/bin/python3 tests/data/make_torch_fixtures.py
    ~/.cache/ckpt/venv/bin/python tests/data/make_torch_fixtures.py
Outputs go to tests/data/valid/torch<major><minor>/ and are committed.
"""
import collections
import hashlib
import io
import json
import os
import sys

import torch

torch.manual_seed(0)
major, minor = (int(x) for x in torch.__version__.split(".")[:2])
tag = f"torch{major}{minor}" if major == 1 else "torch2"
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "valid", tag)
os.makedirs(out, exist_ok=True)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.bn = torch.nn.BatchNorm2d(2)
        self.fc = torch.nn.Linear(4, 3)
        self.head = torch.nn.Linear(4, 3)
        self.head.weight = self.fc.weight  # tied weights: one storage


net = Net()
# state dict with _metadata, tied weights, 0-dim int64 (num_batches_tracked)
torch.save(net.state_dict(), os.path.join(out, "net_state_dict.pt"))

base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
views = collections.OrderedDict()
views["base"] = base
views["transposed"] = base.t()          # non-contiguous, shares storage
views["offset"] = base.view(-1)[5:11]   # storage offset 5
views["stepped"] = base[:, ::2]         # strides (6, 2)
views["scalar"] = torch.tensor(3.5, dtype=torch.float64)
views["empty"] = torch.zeros(0, 3, dtype=torch.int16)
views["half"] = torch.tensor([1.0, -2.5, 65504.0], dtype=torch.float16)
views["bf16"] = torch.tensor([1.0, -2.5, 3.0e38], dtype=torch.bfloat16)
views["bool"] = torch.tensor([True, False, True])
views["c64"] = torch.tensor([1 + 2j, -3.5j], dtype=torch.complex64)
views["param"] = torch.nn.Parameter(torch.ones(2))
torch.save(views, os.path.join(out, "views.pt"))

checkpoint = {
    "model": net.state_dict(),
    "epoch": 7,
    "step": 123456789012,
    "best_val": 0.125,
    "names": ["a", "b"],
    "flags": (True, False, None),
    "nested": {1: torch.ones(2, dtype=torch.int32), 2: [torch.zeros(1)]},
    "blob": b"\x00\xffbytes",
}
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
sum((p * p).sum() for p in net.parameters()).backward()
opt.step()
checkpoint["optimizer"] = opt.state_dict()  # step, exp_avg, exp_avg_sq per param
buf = io.BytesIO()
torch.save(checkpoint, buf)  # buffer save: archive prefix 'archive'
with open(os.path.join(out, "checkpoint.pt"), "wb") as f:
    f.write(buf.getvalue())

# The pre-1.6 format, as torch still writes it on request.
torch.save(net.state_dict(), os.path.join(out, "net_state_dict_legacy.pt"), _use_new_zipfile_serialization=False)
torch.save(views, os.path.join(out, "views_legacy.pt"), _use_new_zipfile_serialization=False)
torch.save(checkpoint, os.path.join(out, "checkpoint_legacy.pt"), _use_new_zipfile_serialization=False)


class Scripted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.bn = torch.nn.BatchNorm2d(2)
        self.seq = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2, bias=False))
        self.register_buffer("buf", torch.ones(2))
        self.scale = 2.0

    def forward(self, x):
        return self.seq(x) * self.scale + self.buf.sum()


# TorchScript: ckpt reads the state dict scripted.state_dict() gives.
torch.jit.script(Scripted()).save(os.path.join(out, "scripted.pt"))


def save_tar(obj, path):
    """The PyTorch 0.1.x tar layout (torch/serialization.py of that era): members
    sys_info, pickle, tensors, storages; tensors and storages keyed by id()."""
    import pickle
    import struct
    import tarfile

    tensors, storages = {}, {}

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, torch.Tensor):
                tensors[id(o)] = o
                return str(id(o))
            return None

    def member(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    main = io.BytesIO()
    P(main, protocol=2).dump(obj)
    tens = io.BytesIO()
    pickle.dump(len(tensors), tens, protocol=2)
    for key, t in tensors.items():
        st = t.storage()
        sid = st.data_ptr()
        storages.setdefault(sid, st)
        pickle.dump((key, sid, torch.Tensor), tens, protocol=2)
        tens.write(struct.pack("<i", t.dim()) + b"\0" * 4)
        tens.write(struct.pack(f"<{t.dim()}q", *t.shape))
        tens.write(struct.pack(f"<{t.dim()}q", *t.stride()))
        tens.write(struct.pack("<q", t.storage_offset()))
    stor = io.BytesIO()
    pickle.dump(len(storages), stor, protocol=2)
    for key, st in storages.items():
        cls = {torch.float32: torch.FloatStorage, torch.int64: torch.LongStorage}[st.dtype]
        pickle.dump((key, "cpu", cls), stor, protocol=2)
        raw = bytes(st.untyped()) if hasattr(st, "untyped") else bytes(st._untyped_storage)
        stor.write(struct.pack("<q", st.size()) + raw)
    pickle.dump([], stor, protocol=2)
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        member(tar, "sys_info", pickle.dumps({"protocol_version": 1000, "little_endian": True}, protocol=2))
        member(tar, "pickle", main.getvalue())
        member(tar, "tensors", tens.getvalue())
        member(tar, "storages", stor.getvalue())


if major == 1:  # one tar fixture is enough; torch 1.13 loads it
    save_tar({"w": base, "wt": base.t(), "b": torch.arange(3, dtype=torch.int64), "n": 3}, os.path.join(out, "old_tar.pt"))


def tensor_bytes(t):
    t = t.detach().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.to(torch.uint8).numpy().tobytes()


def walk(obj, path, acc):
    """Depth-first, in the object's own order: the order `ckpt ls` lists."""
    if isinstance(obj, torch.Tensor):
        acc.append((path, obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            part = k if isinstance(k, str) else str(k) if isinstance(k, int) else repr(k)
            walk(v, part if not path else path + "/" + part, acc)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            walk(v, str(i) if not path else path + "/" + str(i), acc)


def storage_id(t):
    return t.untyped_storage().data_ptr() if hasattr(t, "untyped_storage") else t.storage().data_ptr()


for name in sorted(os.listdir(out)):
    if not name.endswith(".pt"):
        continue
    try:
        loaded = torch.load(os.path.join(out, name), weights_only="tar" not in name)
    except Exception:  # torch 1.13's weights-only unpickler lacks BINFLOAT; the file is ours
        loaded = torch.load(os.path.join(out, name), weights_only=False)
    if isinstance(loaded, torch.jit.ScriptModule):
        loaded = loaded.state_dict()
    acc = []
    walk(loaded, "", acc)
    groups = {}
    for p, t in acc:
        groups.setdefault(storage_id(t), []).append(p)
    expected = {
        "tensors": [
            {"path": p, "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
             "sha256": hashlib.sha256(tensor_bytes(t)).hexdigest(),
             "requires_grad": t.requires_grad, "is_parameter": isinstance(t, torch.nn.Parameter)}
            for p, t in acc
        ],
        "shared_groups": [g for g in groups.values() if len(g) > 1],
    }
    with open(os.path.join(out, name[:-3] + ".expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
print("wrote", out, sorted(os.listdir(out)))
