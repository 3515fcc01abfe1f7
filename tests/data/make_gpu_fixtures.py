"""Writes checkpoints saved from a real GPU, for the C++ unit tests (frameworks_test.cpp).

Needs a CUDA machine with torch 2.x and PyTorch Lightning (2.x); the outputs are committed
to tests/data/valid/torch2_gpu/, since CI has no GPU:

    python3 tests/data/make_gpu_fixtures.py OUT_DIR

- cuda_training.pt: a training checkpoint of a model trained on cuda:0 for three AdamW steps
  ({"model", "optimizer", "epoch", "extra"}); extra holds a bfloat16 and an int8 tensor on
  the GPU, a non-contiguous float16 view of a GPU tensor, and a CPU tensor. torch keeps AdamW's
  `step` counters on the CPU and its moments on the GPU, so the file mixes both devices.
- lightning_gpu.ckpt: what pytorch_lightning's Trainer writes through ModelCheckpoint after two
  epochs on one GPU (save_hyperparameters, Adam, StepLR, a monitored val_loss).

Each gets NAME.expected.json: every tensor's path in the tree (dict keys and list indices
joined by '/'), device as saved, dtype, shape and the sha256 of its row-major bytes (read
with map_location='cpu'), plus the torch and Lightning versions and the globals
torch.load(weights_only=True) refuses.
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile

import torch

DEV = "cuda:0"
OUT = "."


def digest(t):
    t = t.detach().contiguous()
    if t.numel() == 0:
        return hashlib.sha256(b"").hexdigest()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def tensors(tree, prefix=""):
    """[(path, tensor)] in the order the tree holds them; paths as ckpt::lookup takes them."""
    if isinstance(tree, torch.Tensor):
        return [(prefix, tree)]
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    out = []
    for k, v in items:
        out += tensors(v, f"{prefix}/{k}" if prefix else str(k))
    return out


def expected(path, extra):
    on_gpu = torch.load(path, weights_only=False)  # devices as saved
    on_cpu = torch.load(path, weights_only=False, map_location="cpu")
    devices = {p: str(t.device) for p, t in tensors(on_gpu)}
    listing = [{"path": p, "device": devices[p], "dtype": str(t.dtype).replace("torch.", ""),
                "shape": list(t.shape), "sha256": digest(t)} for p, t in tensors(on_cpu)]
    unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    doc = {"torch": torch.__version__, "device_name": torch.cuda.get_device_name(0),
           "keys": list(on_cpu), "tensors": listing, "unsafe_globals": unsafe}
    doc.update(extra)
    name = os.path.splitext(os.path.basename(path))[0]
    with open(os.path.join(OUT, name + ".expected.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(name, len(listing), "tensors,", sum(d["device"] != "cpu" for d in listing), "on the GPU; unsafe:", unsafe)


# ------------------------------------------------------------------ plain torch training checkpoint
def training_model():
    """The model and optimizer of cuda_training.pt (also what tests/interop/gpu_roundtrip.py resumes)."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)).to(DEV)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def train_step(model, opt):
    loss = model(torch.randn(5, 8, device=DEV)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def write_training():
    model, opt = training_model()
    for _ in range(3):
        train_step(model, opt)
    extra = {
        "bf16": model[0].weight.detach().to(torch.bfloat16),
        "half_view": model[2].weight.detach().half()[1:3, ::2],  # non-contiguous view of a GPU storage
        "int8": torch.randint(-5, 5, (7,), dtype=torch.int8, device=DEV),
        "cpu": torch.arange(6),
    }
    path = os.path.join(OUT, "cuda_training.pt")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "extra": extra}, path)
    expected(path, {"epoch": 3})

# ------------------------------------------------------------------ Lightning on the GPU
def lightning_module():
    """(pytorch_lightning, the LightningModule class of lightning_gpu.ckpt, its data)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self, hidden=8, lr=0.01, note="gpu fixture"):
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, 4, generator=g), torch.randn(64, 1, generator=g))
    return pl, Tiny, DataLoader(data, batch_size=16), DataLoader(data, batch_size=32)


def trainer(pl, max_epochs, callbacks, root):
    return pl.Trainer(accelerator="gpu", devices=1, max_epochs=max_epochs, callbacks=callbacks, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root)


def write_lightning():
    pl, Tiny, train, val = lightning_module()
    tmp = tempfile.mkdtemp()
    best = pl.callbacks.ModelCheckpoint(dirpath=tmp, monitor="val_loss", mode="min", save_top_k=1, filename="best")
    trainer(pl, 2, [best], tmp).fit(Tiny(), train, val)
    path = os.path.join(OUT, "lightning_gpu.ckpt")
    shutil.copy(best.best_model_path, path)
    ck = torch.load(path, weights_only=False, map_location="cpu")
    expected(path, {
        "lightning": pl.__version__,
        "epoch": ck["epoch"], "global_step": ck["global_step"],
        "best_model_score": float(best.best_model_score),
        "hyper_parameters": {k: v for k, v in ck["hyper_parameters"].items()},
    })


if __name__ == "__main__":
    OUT = sys.argv[1] if len(sys.argv) > 1 else "."
    os.makedirs(OUT, exist_ok=True)
    assert torch.cuda.is_available(), "make_gpu_fixtures.py needs a CUDA device"
    torch.manual_seed(0)
    write_training()
    write_lightning()
