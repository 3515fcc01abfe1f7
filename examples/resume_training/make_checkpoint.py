#!/usr/bin/env python3
"""Writes checkpoint.pt: a model trained for a while in Python, the way PyTorch's
tutorial saves one (model_state_dict, optimizer_state_dict, epoch, loss).

    python3 examples/resume_training/make_checkpoint.py

The committed file was written by torch 1.13 (/usr/bin/python3); torch 2.x reads it too.
"""
import os

import torch

from model import loss_of, make_data, make_model, make_optimizer

EPOCHS = 100

model, (x, y) = make_model(), make_data()
opt = make_optimizer(model)
for epoch in range(EPOCHS):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "checkpoint.pt")
torch.save(
    {
        "epoch": EPOCHS,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "loss": loss_of(model, x, y),
    },
    path,
)
print(f"wrote {path} with torch {torch.__version__}: epoch {EPOCHS}, loss {loss_of(model, x, y):.5f}")
