"""Checks that torch loads the file tests/unit/writer_test.cpp saved (sample()).

    python check_saved.py FILE [--torch113]

Loads with weights_only=True (and mmap=True on torch 2.x) and compares every
value with what sample() builds; exits non-zero with a message on mismatch.
"""
import sys

import torch

path = sys.argv[1]
old = "--torch113" in sys.argv


def fill(dtype, shape):
    n = 1
    for s in shape:
        n *= s
    esize = torch.empty(0, dtype=dtype).element_size()
    raw = bytes((i * 7 + 3) & 0xFF for i in range(n * esize))
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape) if n else torch.empty(shape, dtype=dtype)


def check(obj):
    base = fill(torch.float32, (4, 6))
    assert torch.equal(obj["base"], base)
    assert torch.equal(obj["transposed"], base.t())
    assert torch.equal(obj["offset"], base.reshape(-1)[7:12])
    sp = (lambda t: t.untyped_storage().data_ptr()) if hasattr(obj["base"], "untyped_storage") else (lambda t: t.storage().data_ptr())
    assert sp(obj["base"]) == sp(obj["transposed"]) == sp(obj["offset"]), "views must share one storage"
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
except Exception as e:  # torch 1.13's weights-only loader lacks BINFLOAT and more
    if not old:
        raise
    print("torch 1.13 weights_only refused (%s); checking with weights_only=False" % str(e).splitlines()[-1][:80])
    check(torch.load(path, weights_only=False))
if not old:
    check(torch.load(path, weights_only=True, mmap=True))
print("ok:", path, "torch", torch.__version__)
