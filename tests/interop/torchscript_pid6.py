#!/usr/bin/env python3
"""Interop test: a TorchScript archive with early 6-field storage persistent ids
(('storage', type, key, location, numel, None), torch ~1.2) made afresh by
tests/data/make_torchscript_pid6.py, which checks that torch 1.13's torch.jit.load
reads it; then `ckpt ls --json --digest` must list what torch.jit.load's state_dict()
holds (path, dtype, shape, sha256, in order) and `ckpt verify` must accept it.

    /usr/bin/python3 torchscript_pid6.py --ckpt PATH_TO_CKPT --workdir DIR
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
import make_torchscript_pid6 as gen  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    path = os.path.join(a.workdir, "pid6.pt")
    want = gen.listing(gen.make(path))
    out = subprocess.run([a.ckpt, "ls", "--json", "--digest", path], capture_output=True, text=True)
    if out.returncode != 0:
        print(f"FAIL ckpt ls exited {out.returncode}: {out.stderr.strip()}")
        return 1
    got = [{k: t[k] for k in ("path", "dtype", "shape", "sha256")} for t in json.loads(out.stdout)["tensors"]]
    if got != want:
        print("FAIL ckpt ls differs from torch.jit.load:\n ckpt:  " + json.dumps(got) + "\n torch: " + json.dumps(want))
        return 1
    print(f"ok   ckpt ls lists the {len(got)} tensors torch.jit.load gives, bytes equal")
    v = subprocess.run([a.ckpt, "verify", path], capture_output=True, text=True)
    if v.returncode != 0:
        print(f"FAIL ckpt verify exited {v.returncode}: {v.stderr.strip()}")
        return 1
    print("ok   ckpt verify accepts it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
