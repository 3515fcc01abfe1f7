#!/usr/bin/env python3
"""Writes examples/tiny_mlp.pt: the state dict of a tiny MLP, as torch.save writes it.

    /usr/bin/python3 examples/make_example.py     # PyTorch 1.13 (Debian python3-torch)

Works with any PyTorch from 1.13 on. The committed file was written by PyTorch 1.13;
`bash scripts/demo` lists it with `ckpt ls`.
"""
import os

import torch

torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(4, 8),
    torch.nn.ReLU(),
    torch.nn.Linear(8, 8),
    torch.nn.ReLU(),
    torch.nn.Linear(8, 3),
)
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_mlp.pt")
torch.save(model.state_dict(), path)

# Read it back the safe way, as ckpt does.
sd = torch.load(path, weights_only=True)
for name, t in sd.items():
    print(f"{name:10} {str(t.dtype).replace('torch.', ''):8} {list(t.shape)}")
print(f"wrote {path} ({os.path.getsize(path)} bytes) with torch {torch.__version__}")
