"""Writes the checkpoints the CLI tests use (tests/data/cli). Run with torch 2.x:

    ~/.cache/ckpt/venv/bin/python tests/cli/make_fixtures.py

The outputs are checked in; rerunning gives the same tensors (fixed values,
no randomness).
"""
import os

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "cli")


def main():
    os.makedirs(OUT, exist_ok=True)
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 8
    a = {
        "model": {
            "fc.weight": w.clone(),
            "fc.bias": torch.tensor([0.5, -1.0, 2.0]),
            "emb.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
            "counts": torch.tensor([1, 2, 3], dtype=torch.int64),
            "old": torch.zeros(2),
            "proj": torch.ones(2, 2),
            "nan": torch.tensor([float("nan"), 1.0]),
            "half": torch.tensor([1.0, 2.0], dtype=torch.float32),
        },
        "epoch": 3,
        "name": "run-a",
        "lr": 0.1,
    }
    b = {
        "model": {
            "fc.weight": w.clone(),
            "fc.bias": torch.tensor([0.5, -1.0, 2.0 + 1e-7]),  # within rtol 1e-5
            "emb.weight": torch.tensor([[1.0, 2.5], [3.0, 4.0]]),  # one element off
            "counts": torch.tensor([1, 2, 4], dtype=torch.int64),
            "proj": torch.ones(3, 2),  # shape change
            "nan": torch.tensor([-float("nan"), 1.0]),  # another NaN (sign bit): equal only with --equal-nan
            "half": torch.tensor([1.0, 2.0], dtype=torch.bfloat16),  # dtype change
            "new": torch.ones(1),
        },
        "epoch": 4,
        "name": "run-a",
        "lr": 0.1,
    }
    b["model"]["fc.weight"][0, 0] += 1e-3  # outside atol/rtol
    torch.save(a, os.path.join(OUT, "diff_a.pt"))
    torch.save(b, os.path.join(OUT, "diff_b.pt"))

    # stats: NaN, Inf, zeros, a non-contiguous view, every kind of dtype
    base = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    s = {
        "clean": torch.tensor([1.0, 2.0, 3.0, 4.0]),
        "diverged": torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 0.0, 0.0]),
        "zeros": torch.zeros(4),
        "transposed": base.t(),  # non-contiguous
        "ints": torch.tensor([-3, 0, 5], dtype=torch.int32),
        "flags": torch.tensor([True, False, True]),
        "bf16": torch.tensor([0.5, -1.5, 3.0], dtype=torch.bfloat16),
        "f8": torch.tensor([0.5, -1.5, 3.0]).to(torch.float8_e4m3fn),
        "cplx": torch.tensor([3 + 4j, 0j], dtype=torch.complex64),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5),
    }
    torch.save(s, os.path.join(OUT, "stats.pt"))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
