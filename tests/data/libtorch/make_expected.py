"""Writes <name>.expected.json beside the files make_libtorch_fixtures wrote, from what the
Python side of the same torch version reads in them (torch.jit.load / torch.load).

    python make_expected.py DIR
"""
import hashlib
import json
import os
import sys

import torch


def digest(t):
    t = t.detach().contiguous()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()


def listing(sd):
    return [{"path": k, "dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape), "sha256": digest(v)}
            for k, v in sd.items()]


d = sys.argv[1]
for name in ("module", "tensor", "tensors", "optimizer"):
    m = torch.jit.load(os.path.join(d, name + ".pt"))
    exp = {"tensors": listing(m.state_dict())}
    if name == "optimizer":  # Adam's per-parameter state lives in attributes of submodules
        exp["state_tensors"] = sorted(
            n for mod_name, mod in m.named_modules() for n in ("exp_avg", "exp_avg_sq") if hasattr(mod, n))
    json.dump(exp, open(os.path.join(d, name + ".expected.json"), "w"), indent=1)
sd = torch.load(os.path.join(d, "pickle.pt"), weights_only=False)
json.dump({"tensors": listing(sd)}, open(os.path.join(d, "pickle.expected.json"), "w"), indent=1)
print("wrote expectations in", d, "with torch", torch.__version__)
