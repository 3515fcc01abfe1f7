"""Writes tests/data/valid/torch113/scripted_pid6.pt: a TorchScript archive whose
storage persistent ids have six fields, as early TorchScript (torch ~1.2) wrote them:

    ('storage', torch.FloatStorage, key, location, numel, None)

Torch 1.2 cannot run here, so the archive is made from one that torch 1.13 writes
(five fields) by rewriting its data.pkl and constants.pkl: a NONE opcode goes in
before the TUPLE that closes each persistent id (the MARK ... TUPLE BINPERSID
sequence of torch's C++ pickler), nothing else changes. Every other record is
copied as is, in order, 64-byte aligned by torch's own zip writer.

The oracle: torch 1.13's torch.jit.load must read the rewritten file and give the
same state dict, constants and forward() result as the original; the script
fails otherwise. It also writes scripted_pid6.expected.json (the state dict, in
the schema of make_torch_fixtures.py) for tests/unit/load_test.cpp.

Run with Debian's torch 1.13:
    /usr/bin/python3 tests/data/make_torchscript_pid6.py
"""
import hashlib
import io
import json
import os
import pickletools
import sys
import tempfile
import zipfile

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "valid", "torch113")
NAME = "scripted_pid6"


class Inner(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))

    def forward(self, x):
        return self.fc(x)


class Outer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.register_buffer("scale", torch.tensor([0.5, 2.0], dtype=torch.float64))
        self.w16 = torch.nn.Parameter(torch.arange(4, dtype=torch.float16))

    def forward(self, x):
        return self.inner(x) * self.scale.float()


def add_none_to_persistent_ids(pkl: bytes) -> tuple[bytes, int]:
    """Returns the pickle with every `... TUPLE BINPERSID` made `... NONE TUPLE BINPERSID`."""
    ops = list(pickletools.genops(pkl))
    inserts = []
    for i, (op, _, pos) in enumerate(ops):
        if op.name != "BINPERSID":
            continue
        prev_op, _, prev_pos = ops[i - 1]
        if prev_op.name != "TUPLE" or prev_pos != pos - 1:
            raise SystemExit(f"persistent id at {pos} is not closed by TUPLE: {prev_op.name}")
        inserts.append(prev_pos)
    out = bytearray(pkl)
    for p in reversed(inserts):  # protocol 2: no frames, no absolute offsets to fix
        out[p:p] = b"N"
    return bytes(out), len(inserts)


class Anything:
    """Stands for every global of the pickle: takes any arguments and state."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def persistent_id_lengths(pkl: bytes) -> set:
    """The field counts of the persistent ids in `pkl`, read back with Python's unpickler."""
    lengths = set()

    class Reader(pickletools.pickle.Unpickler):
        def persistent_load(self, pid):
            lengths.add(len(pid))
            return None

        def find_class(self, module, name):
            return Anything

    Reader(io.BytesIO(pkl)).load()
    return lengths


def tensor_bytes(t):
    t = t.detach().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.to(torch.uint8).numpy().tobytes()


def make(target):
    """Writes the 6-field archive to `target`; checks it with torch.jit.load against
    the 5-field original; returns the state dict torch.jit.load gives."""
    torch.manual_seed(0)
    original = os.path.join(tempfile.mkdtemp(), os.path.basename(target))

    class Traced(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.outer = Outer()

        def forward(self, x):
            return self.outer(x) + torch.tensor([10.0, 20.0])

    # Traced, so that a tensor constant (the torch.tensor above) lands in constants.pkl.
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    traced = torch.jit.trace(Traced(), x)
    traced.save(original)

    src = zipfile.ZipFile(original)
    prefix = src.namelist()[0].split("/")[0]
    if os.path.exists(target):
        os.remove(target)
    writer = torch._C.PyTorchFileWriter(target)
    rewritten = 0
    for info in src.infolist():
        rel = info.filename[len(prefix) + 1:]
        data = src.read(info)
        if rel in ("data.pkl", "constants.pkl"):
            before = persistent_id_lengths(data)
            data, n = add_none_to_persistent_ids(data)
            after = persistent_id_lengths(data)
            if n == 0 or before != {5} or after != {6}:
                raise SystemExit(f"{rel}: persistent ids {before} -> {after} ({n} rewritten)")
            rewritten += n
            print(f"{rel}: {n} persistent ids now have 6 fields")
        writer.write_record(rel, data, len(data))
    writer.write_end_of_file()
    del writer

    # The oracle: torch 1.13 reads the 6-field archive as it reads the original.
    got = torch.jit.load(target)
    want = torch.jit.load(original)
    got_sd, want_sd = got.state_dict(), want.state_dict()
    if list(got_sd) != list(want_sd) or any(not torch.equal(got_sd[k], want_sd[k]) for k in want_sd):
        raise SystemExit("torch.jit.load gives a different state dict for the rewritten archive")
    if not torch.equal(got(x), want(x)):
        raise SystemExit("torch.jit.load gives a different forward() for the rewritten archive")
    print(f"torch {torch.__version__} torch.jit.load reads {target}: {len(got_sd)} tensors, "
          f"{rewritten} persistent ids with 6 fields, forward() identical")
    return got_sd


def listing(state_dict):
    """path, dtype, shape and sha256 of each tensor, as `ckpt ls --json --digest` and
    the .expected.json files give them."""
    return [
        {"path": k, "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
         "sha256": hashlib.sha256(tensor_bytes(t)).hexdigest()}
        for k, t in state_dict.items()
    ]


def main():
    sd = make(os.path.join(OUT, NAME + ".pt"))
    tensors = listing(sd)
    for entry, t in zip(tensors, sd.values()):
        entry.update(requires_grad=t.requires_grad, is_parameter=isinstance(t, torch.nn.Parameter))
    with open(os.path.join(OUT, NAME + ".expected.json"), "w") as f:
        json.dump({"tensors": tensors, "shared_groups": []}, f, indent=1)


if __name__ == "__main__":
    if not torch.__version__.startswith("1.13"):
        sys.exit(f"run with Debian's torch 1.13 (/usr/bin/python3), not torch {torch.__version__}")
    main()
