"""Writes checkpoints of the kinds frameworks and old code leave behind, for the C++ unit tests.

Run with each interpreter (torch 1.13 from Debian, torch 2.x from the venv):
    /usr/bin/python3 tests/data/make_framework_fixtures.py
    ~/.cache/ckpt/venv/bin/python tests/data/make_framework_fixtures.py
Outputs go to tests/data/valid/torch113/ or torch2/ and are committed:

- full_model.pt: torch.save(model) of a whole nn.Module tree (standard layers, a custom
  class, a None bias, a non-persistent buffer, tied weights). Expected: model.state_dict().
- lightning.ckpt: the dict PyTorch Lightning's Trainer.save_checkpoint writes (epoch,
  global_step, pytorch-lightning_version, state_dict, loops, callbacks, optimizer_states,
  lr_schedulers, hparams_name, hyper_parameters as Lightning's AttributeDict holding an
  argparse.Namespace). Lightning itself is not installed here: its AttributeDict class is
  declared under the module name Lightning uses (pytorch_lightning.utilities.parsing), so the
  pickle names exactly the globals a real .ckpt names.
- cuda_locations.pt: a state dict as saved from two GPUs: torch's own writer, with the
  storage location tags it records made 'cuda:0' / 'cuda:1' (torch.serialization.location_tag
  patched, as no GPU is here). Expected: torch.load(map_location='cpu') plus the saved devices.
"""
import argparse
import collections
import hashlib
import json
import os
import sys
import types

import torch

torch.manual_seed(0)
major, minor = (int(x) for x in torch.__version__.split(".")[:2])
tag = f"torch{major}{minor}" if major == 1 else "torch2"
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "valid", tag)
os.makedirs(out, exist_ok=True)


def digest(t):
    t = t.detach().contiguous()
    if t.numel() == 0:
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def listing(sd):
    return [{"path": k, "dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape), "sha256": digest(v)}
            for k, v in sd.items()]


def write_expected(name, obj):
    with open(os.path.join(out, name + ".expected.json"), "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


# ------------------------------------------------------------------ full model
class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4, bias=False)  # bias registered as None
        self.norm = torch.nn.LayerNorm(4)
        self.register_buffer("scale", torch.tensor([2.0]))
        self.register_buffer("cache", torch.zeros(3), persistent=False)  # not in state_dict
        self.register_buffer("absent", None)  # None buffers are skipped


model = torch.nn.Sequential(collections.OrderedDict([
    ("embed", torch.nn.Embedding(10, 4)),
    ("block", Block()),
    ("bn", torch.nn.BatchNorm1d(4)),
    ("head", torch.nn.Linear(4, 10)),
]))
model.head.weight = model.embed.weight  # tied
torch.save(model, os.path.join(out, "full_model.pt"))
write_expected("full_model", {"tensors": listing(model.state_dict()),
                              "classes": sorted({f"{type(m).__module__}.{type(m).__qualname__}"
                                                 for m in model.modules()})})

# ------------------------------------------------------------------ Lightning
parsing = types.ModuleType("pytorch_lightning.utilities.parsing")


class AttributeDict(dict):
    """What Lightning keeps hyper-parameters in (a dict with attribute access)."""

    def __getattr__(self, key):
        return self[key]


AttributeDict.__module__ = "pytorch_lightning.utilities.parsing"
parsing.AttributeDict = AttributeDict
for name in ("pytorch_lightning", "pytorch_lightning.utilities"):
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules["pytorch_lightning.utilities.parsing"] = parsing

net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
opt = torch.optim.Adam(net.parameters(), lr=0.01)
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
net(torch.randn(4, 3)).sum().backward()
opt.step()
sched.step()
hparams = AttributeDict(lr=0.01, hidden=2, args=argparse.Namespace(batch_size=32, name="demo"))
lightning = {
    "epoch": 3,
    "global_step": 120,
    "pytorch-lightning_version": "2.4.0",
    "state_dict": collections.OrderedDict(("model." + k, v) for k, v in net.state_dict().items()),
    "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4, "completed": 3},
                                                                   "current": {"ready": 4, "completed": 3}}}},
    "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
        "monitor": "val_loss", "best_model_score": torch.tensor(0.25), "best_model_path": "/ckpts/epoch=2.ckpt",
        "best_k_models": {"/ckpts/epoch=2.ckpt": torch.tensor(0.25)}}},
    "optimizer_states": [opt.state_dict()],
    "lr_schedulers": [sched.state_dict()],
    "hparams_name": "kwargs",
    "hyper_parameters": hparams,
}
path = os.path.join(out, "lightning.ckpt")
torch.save(lightning, path)
loaded = torch.load(path, weights_only=False)
write_expected("lightning", {
    "keys": list(loaded),
    "state_dict": listing(loaded["state_dict"]),
    "epoch": loaded["epoch"], "global_step": loaded["global_step"],
    "best_model_score": loaded["callbacks"]["ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}"]["best_model_score"].item(),
    "optimizer_state_keys": sorted(str(k) for k in loaded["optimizer_states"][0]["state"]),
    "lr_schedulers_last_epoch": loaded["lr_schedulers"][0]["last_epoch"],
    "classes": ["argparse.Namespace", "pytorch_lightning.utilities.parsing.AttributeDict"],
})

# ------------------------------------------------------------------ CUDA locations
sd = collections.OrderedDict(
    [("a.weight", torch.randn(2, 3)), ("a.bias", torch.randn(2)), ("b.weight", torch.randn(3, 3).half())])
sd["b.bias"] = sd["a.weight"][0]  # a view: same storage, same device
plan = {"a.weight": "cuda:0", "a.bias": "cuda:1", "b.weight": "cuda:1", "b.bias": "cuda:0"}
by_ptr = {(v.untyped_storage() if hasattr(v, "untyped_storage") else v.storage()).data_ptr(): plan[k] for k, v in sd.items()}
original = torch.serialization.location_tag


def fake_location_tag(storage):
    ptr = storage.data_ptr()
    return by_ptr.get(ptr, original(storage))


torch.serialization.location_tag = fake_location_tag
try:
    path = os.path.join(out, "cuda_locations.pt")
    torch.save(sd, path)
finally:
    torch.serialization.location_tag = original
loaded = torch.load(path, map_location="cpu")
write_expected("cuda_locations", {"tensors": listing(loaded), "devices": plan})
print("wrote", out)
