"""Files ckpt re-saved from GPU checkpoints, read back by torch on a real GPU.

    python3 tests/interop/gpu_roundtrip.py FIXTURES_DIR RESAVED_DIR

FIXTURES_DIR holds what tests/data/make_gpu_fixtures.py wrote (cuda_training.pt,
lightning_gpu.ckpt); RESAVED_DIR the same files after `ckpt convert IN OUT.pt`, named
cuda_training.ckpt.pt and lightning_gpu.ckpt.pt. Needs a CUDA device, torch 2.x and
pytorch_lightning, so CI (no GPU) does not run it; docs/formats/torch_zip.md gives the last run.

Checks, with torch.load(weights_only=True) and no map_location (tensors go back to the
device they were saved from):
1. the trees are equal: same keys and values; every tensor on the same device, with the same
   dtype, shape, strides, storage offset and bytes, and views that share a storage in
   torch's file share it in ckpt's;
2. training resumes the same: the model and AdamW state of cuda_training, loaded from either
   file, take two more steps on the GPU to bit-identical weights;
3. Lightning resumes the same: Trainer.fit(ckpt_path=...) from either .ckpt runs a third
   epoch on the GPU to bit-identical weights.
"""
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
import make_gpu_fixtures as fx  # noqa: E402

failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def same_bytes(a, b):
    a, b = a.detach().contiguous().cpu(), b.detach().contiguous().cpu()
    return a.numel() == b.numel() and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def compare(a, b, path, storages):
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor):
            return f"{path}: tensor vs {type(b).__name__}"
        for attr in ("device", "dtype", "shape", "requires_grad"):
            if getattr(a, attr) != getattr(b, attr):
                return f"{path}: {attr} {getattr(a, attr)} vs {getattr(b, attr)}"
        if a.stride() != b.stride() or a.storage_offset() != b.storage_offset():
            return f"{path}: stride/offset {a.stride()}+{a.storage_offset()} vs {b.stride()}+{b.storage_offset()}"
        if not same_bytes(a, b):
            return f"{path}: bytes differ"
        key = (a.untyped_storage().data_ptr(), a.device)
        ptr = (b.untyped_storage().data_ptr(), b.device)
        if storages.setdefault(key, ptr) != ptr:
            return f"{path}: storage sharing differs"
        return None
    if isinstance(a, dict):
        if not isinstance(b, dict) or list(a) != list(b):
            return f"{path}: keys {list(a)} vs {list(b) if isinstance(b, dict) else type(b).__name__}"
        for k in a:
            err = compare(a[k], b[k], f"{path}/{k}", storages)
            if err:
                return err
        return None
    if isinstance(a, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return f"{path}: {type(a).__name__}[{len(a)}] vs {type(b).__name__}"
        for i, (x, y) in enumerate(zip(a, b)):
            err = compare(x, y, f"{path}/{i}", storages)
            if err:
                return err
        return None
    return None if a == b and type(a) is type(b) else f"{path}: {a!r} vs {b!r}"


def weights(module):
    return [p.detach().clone() for p in module.state_dict().values()]


def resume_training(ck):
    model, opt = fx.training_model()
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    torch.manual_seed(7)
    for _ in range(2):
        fx.train_step(model, opt)
    return weights(model)


def resume_lightning(path):
    pl, Tiny, train, val = fx.lightning_module()
    module = Tiny()
    fx.trainer(pl, 3, [], tempfile.mkdtemp()).fit(module, train, val, ckpt_path=path)
    return weights(module)


def main():
    fixtures, resaved = sys.argv[1], sys.argv[2]
    assert torch.cuda.is_available(), "gpu_roundtrip.py needs a CUDA device"
    loaded = {}
    for name in ("cuda_training.pt", "lightning_gpu.ckpt"):
        theirs = torch.load(os.path.join(fixtures, name), weights_only=True)
        ours_path = os.path.join(resaved, os.path.splitext(name)[0] + ".ckpt.pt")
        ours = torch.load(ours_path, weights_only=True)
        err = compare(theirs, ours, name, {})
        n_gpu = sum(1 for _ in fx.tensors(ours) if _[1].is_cuda)
        check(err is None, f"{name}: ckpt's copy loads in torch as the original ({n_gpu} tensors on "
                           f"{torch.cuda.get_device_name(0)}){': ' + err if err else ''}")
        loaded[name] = (theirs, ours, ours_path)
    theirs, ours, _ = loaded["cuda_training.pt"]
    a, b = resume_training(theirs), resume_training(ours)
    check(all(same_bytes(x, y) for x, y in zip(a, b)), "AdamW resumes on the GPU to bit-identical weights")
    a = resume_lightning(os.path.join(fixtures, "lightning_gpu.ckpt"))
    b = resume_lightning(loaded["lightning_gpu.ckpt"][2])
    check(all(same_bytes(x, y) for x, y in zip(a, b)), "Lightning resumes on the GPU to bit-identical weights")
    print(f"torch {torch.__version__}: {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
