"""Writes the torch.save files that ckpt's writer must reproduce byte for byte.

Run with each interpreter (torch 2.x from the venv, torch 1.13 from Debian):
    ~/.cache/ckpt/venv/bin/python tests/data/make_save_fixtures.py
    /usr/bin/python3 tests/data/make_save_fixtures.py
Outputs go to tests/data/valid/torch2/save_*.pt and tests/data/valid/torch113/save_*.pt
and are committed. Save.*IsTorchsBytes in tests/unit/save_test.cpp loads each
file with ckpt, saves it again and compares: the whole file for torch 2.x,
data.pkl for torch 1.13 (whose zip records differ from 2.x's).
"""
import collections
import os
import warnings

import torch

warnings.simplefilter("ignore")  # TypedStorage deprecation
major, minor = (int(x) for x in torch.__version__.split(".")[:2])
new = major >= 2
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "valid", "torch2" if new else f"torch{major}{minor}")
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)


def save(name, obj):
    torch.save(obj, os.path.join(out, name + ".pt"))


# The headline case: an nn.Sequential state dict. Its _metadata keys '0', '1'
# equal the storage keys but are different str objects, so torch writes them again.
save("save_linear_bn", torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).state_dict())
# Two-digit storage keys ('10', '11') beside the same _metadata keys.
save("save_seq12", torch.nn.Sequential(*[torch.nn.Linear(1, 1) for _ in range(12)]).state_dict())

model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
model(torch.randn(5, 3)).sum().backward()
opt.step()
save("save_train", {"epoch": 3, "model": model.state_dict(), "optimizer": opt.state_dict(), "lr": 1e-3,
                    "name": "run-1", "history": [0.5, 0.25], "step": 2**40})

names = ["float64", "float32", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool",
         "complex64", "complex128"]
if new:
    names += ["uint16", "uint32", "uint64", "float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz", "float8_e4m3fnuz",
              "float8_e8m0fnu", "float4_e2m1fn_x2", "complex32", "bits8", "bits16"]
dtypes = collections.OrderedDict()
for n in names:
    if not isinstance(getattr(torch, n, None), torch.dtype):
        continue
    dt = getattr(torch, n)
    size = torch.empty(0, dtype=dt).element_size()
    dtypes[n] = torch.arange(2 * size, dtype=torch.uint8).view(dt)
save("save_dtypes", dtypes)

base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
save("save_views", {"base": base, "t": base.t(), "offset": base.view(-1)[7:12], "step": base[:, ::2],
                    "scalar": torch.tensor(2.5, dtype=torch.float64)})
save("save_empty", {"empty": torch.zeros(0, 3, dtype=torch.int16), "x": torch.ones(2)})

save("save_params", {"p": torch.nn.Parameter(torch.ones(2)), "frozen": torch.nn.Parameter(torch.ones(2), requires_grad=False),
                     "grad": torch.ones(3, requires_grad=True), "plain": torch.zeros(1)})

save("save_values", collections.OrderedDict([
    ("ints", [0, 255, 256, 65536, -1, 2**31, -2**31 - 1, 2**63 - 1, 2**64, -2**100]),
    ("floats", [1.5, -0.0, float("inf"), 1e-300]),
    ("strs", ["", "h\u00e9llo", "\U0001F600", "x", "x"]),
    ("bytes", [b"\x00\xff\x80a", bytearray(b"xy"), bytearray()]),
    ("tuples", [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)]),
    ("dict", {1: "one", (2, 3): "pair", None: True}),
    ("set", {1, 2}), ("complex", complex(1.0, -2.0)),
    ("torch", [torch.float32, torch.bfloat16, torch.device("cuda", 1), torch.device("cpu"), torch.Size([2, 3])]),
    ("long", list(range(1500))),
]))

# torch's serialization id also counts a payload that starts with the zip data
# descriptor signature "PK\7\8".
save("save_pk_quirk", {"x": torch.tensor([0x50, 0x4B, 0x07, 0x08, 1, 2, 3, 4, 5], dtype=torch.uint8)})

save("save_storage", torch.arange(3, dtype=torch.float32).storage())
print("wrote", out)
