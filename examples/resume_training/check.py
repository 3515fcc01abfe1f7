#!/usr/bin/env python3
"""Python picks up where train.cpp stopped.

    python check.py checkpoint.pt resumed.pt

Loads the C++-written checkpoint (torch.load(weights_only=True) with torch 2.x),
restores model and Adam exactly as a Python script would, checks that C++ really
trained (the loss went down, the epoch and Adam's step went up) and trains a few
more epochs in Python. Exit status 0 when all holds.
"""
import sys

import torch

from model import loss_of, make_data, make_model, make_optimizer

# torch 1.13's weights-only unpickler cannot read Python floats (no BINFLOAT opcode).
WEIGHTS_ONLY = int(torch.__version__.split(".")[0]) >= 2

start = torch.load(sys.argv[1], weights_only=WEIGHTS_ONLY)
resumed = torch.load(sys.argv[2], weights_only=WEIGHTS_ONLY)
model, (x, y) = make_model(), make_data()
model.load_state_dict(resumed["model_state_dict"])  # strict: every key, every shape
opt = make_optimizer(model)
opt.load_state_dict(resumed["optimizer_state_dict"])

loss = loss_of(model, x, y)
step = float(opt.state_dict()["state"][0]["step"])
print(f"torch {torch.__version__}: C++ checkpoint at epoch {resumed['epoch']}, Adam step {step:.0f}, "
      f"loss {loss:.5f} (Python left it at epoch {start['epoch']}, loss {start['loss']:.5f})")
ok = (resumed["epoch"] > start["epoch"] and step == resumed["epoch"] and loss < start["loss"]
      and abs(loss - resumed["loss"]) < 1e-6)
for _ in range(50):
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
print(f"Python trained 50 more epochs: loss {loss_of(model, x, y):.5f}")
print("resume_training: ok" if ok else "resume_training: FAILED")
sys.exit(0 if ok else 1)
