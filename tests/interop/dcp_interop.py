#!/usr/bin/env python3
"""torch.distributed.checkpoint (DCP) directories, both directions, checked by torch 2.x.

Run with the venv's python (torch 2.x):
    dcp_interop.py --ckpt build/ckpt --workdir DIR [--mpi-saved DIR ...]

Checks:
  1. dcp.save with 1, 2 and 4 gloo processes on loopback (DTensor row- and
     column-sharded, uneven splits, replicated tensors, ints/floats/strings, nested
     dicts, lists of tensors, bfloat16/int64/bool, 0-d tensors): `ckpt convert DIR
     out.pt` equals torch's own consolidation (format_utils.dcp_to_torch_save) and
     the tensors the ranks started from, bit for bit; `ckpt ls --json --digest DIR`
     gives the digests of the full tensors; `ckpt convert DIR out.safetensors`.
     Chunks saved as strided views (transposed, offset, permuted, empty) too.
  2. `ckpt convert model.pt DIR --to dcp` is read by dcp.load (no process group)
     bit-exactly, and by 2 gloo ranks loading DTensor shards (resharding in torch).
  3. Damaged directories: a truncated data file, chunks that do not tile, a data
     file name that leaves the directory, a chunk record of the wrong shape: exit 2
     with an error naming the file, the item and the offset.
  --mpi-saved DIR: a directory saved by ckpt's MPI ranks (tests/mpi) is read by
     dcp.load with 2 gloo ranks, DTensor row shards (the other interop direction).
  --save-only DIR: dcp.save with --worlds ranks for ckpt's MPI ranks to load (tests/mpi).
"""
import argparse
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

FAILURES = []


def check(cond, what):
    if not cond:
        FAILURES.append(what)
        print("FAIL:", what, flush=True)


def run(ckpt, *args, expect=0):
    p = subprocess.run([ckpt, *args], capture_output=True, text=True, timeout=600)
    if p.returncode != expect:
        check(False, f"ckpt {' '.join(args)} exited {p.returncode} (expected {expect}): {p.stderr.strip()}")
    return p


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bits(t):
    t = t.detach().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def same(a, b):
    """Deep equality, tensors bit for bit (dtype and shape included)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and bits(a) == bits(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a.keys()) == list(b.keys()) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def full_state():
    """The unsharded state every test starts from (deterministic)."""
    g = torch.Generator().manual_seed(1234)
    return {
        "row": torch.randn(10, 7, generator=g),                      # Shard(0): 10 rows over 4 ranks is uneven
        "col": torch.randn(5, 9, generator=g).to(torch.bfloat16),     # Shard(1)
        "rep": torch.arange(6, dtype=torch.int64),                    # replicated
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "step": 1200,
        "lr": 0.125,
        "name": "run-7",
        "opt": {"betas": (0.9, 0.999), "state": {"exp_avg": torch.randn(4, 3, generator=g)}},
        "layers": [torch.ones(2, 2), torch.zeros(3)],
        "tags": ["a", "b"],
    }


def _save_worker(rank, world, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh
    mesh = init_device_mesh("cpu", (world,))
    sd = full_state()
    sd["row"] = distribute_tensor(sd["row"], mesh, [Shard(0)])
    sd["col"] = distribute_tensor(sd["col"], mesh, [Shard(1)])
    sd["opt"]["state"]["exp_avg"] = distribute_tensor(sd["opt"]["state"]["exp_avg"], mesh, [Shard(0)])
    dcp.save(sd, checkpoint_id=out)
    dist.destroy_process_group()


def _load_worker(rank, world, path, port, result_dir, names):
    """Loads DTensor row shards of `names` (plus everything else whole) and checks them."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh
    mesh = init_device_mesh("cpu", (world,))
    expected = torch.load(os.path.join(result_dir, "expected.pt"), weights_only=True)
    sd = {}
    for k, v in expected.items():
        if isinstance(v, torch.Tensor):
            z = torch.zeros_like(v)
            sd[k] = distribute_tensor(z, mesh, [Shard(0)]) if k in names and v.dim() > 0 else z
        else:
            sd[k] = v
    dcp.load(sd, checkpoint_id=path)
    ok = True
    for k, v in expected.items():
        got = sd[k]
        if hasattr(got, "full_tensor"):
            got = got.full_tensor()
        if isinstance(v, torch.Tensor) and not same(got, v):
            ok = False
            print(f"rank {rank}: {k} differs", flush=True)
    with open(os.path.join(result_dir, f"ok{rank}"), "w") as f:
        f.write("1" if ok else "0")
    dist.destroy_process_group()


def spawn(fn, world, *args):
    """Runs fn on `world` gloo processes. The rendezvous port is picked free just before,
    so another job on the machine can take it in between: one retry on a fresh port."""
    for attempt in (1, 2):
        port = free_port()
        try:
            mp.spawn(fn, args=(world, *args[:1], port, *args[1:]), nprocs=world, join=True)
            return
        except mp.ProcessExitedException as e:
            if attempt == 2:
                raise
            print(f"note: {world} gloo processes failed ({e}); retrying on another port", flush=True)


def flat_tensors(tree, prefix=""):
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flat_tensors(v, f"{prefix}{k}/"))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(flat_tensors(v, f"{prefix}{i}/"))
    elif isinstance(tree, torch.Tensor):
        out[prefix[:-1]] = tree
    return out


def check_python_saved(ckpt, work, world):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    d = os.path.join(work, f"py_w{world}")
    shutil.rmtree(d, ignore_errors=True)
    spawn(_save_worker, world, d)
    ref_path = os.path.join(work, f"py_w{world}_torch.pt")
    dcp_to_torch_save(d, ref_path)
    ref = torch.load(ref_path, weights_only=False)
    expected = full_state()
    check(same(ref["row"], expected["row"]) and same(ref["opt"]["state"]["exp_avg"], expected["opt"]["state"]["exp_avg"]),
          f"world {world}: torch's own consolidation differs from the saved state (test bug)")
    out = os.path.join(work, f"py_w{world}_ckpt.pt")
    run(ckpt, "convert", d, out)
    if os.path.exists(out):
        got = torch.load(out, weights_only=True)
        check(same(got, ref), f"world {world}: ckpt convert DIR out.pt differs from dcp_to_torch_save: "
                              f"{sorted(got.keys()) if isinstance(got, dict) else type(got)}")
        # tuples come back as tuples, lists as lists (bytes items decoded as the values they are)
        check(got.get("opt", {}).get("betas") == (0.9, 0.999), f"world {world}: opt.betas is {got.get('opt')}")
    p = run(ckpt, "ls", d, "--json", "--digest")
    if p.returncode == 0:
        listing = json.loads(p.stdout)
        digests = {t["path"]: t["sha256"] for t in listing["tensors"]}
        for path, t in flat_tensors(expected).items():
            check(digests.get(path) == hashlib.sha256(bits(t)).hexdigest(),
                  f"world {world}: ckpt ls --digest of {path}: {digests.get(path)}")
        check(listing.get("format") == "dcp", f"world {world}: format is {listing.get('format')}")
    st = os.path.join(work, f"py_w{world}.safetensors")
    run(ckpt, "convert", d, st)
    if os.path.exists(st):
        from safetensors.torch import load_file
        tensors = load_file(st)
        check(same(tensors.get("row"), expected["row"]) and same(tensors.get("col"), expected["col"]),
              f"world {world}: convert to safetensors: {sorted(tensors)}")
    return d


def check_views(ckpt, work):
    """Chunks saved as strided views (transposed, offset, permuted, empty): one process."""
    g = torch.Generator().manual_seed(3)
    sd = {"t": torch.randn(3, 4, generator=g).T, "v": torch.arange(20)[5:9], "e": torch.zeros(0, 3),
          "p": torch.randn(2, 3, 4, generator=g).permute(2, 0, 1)}
    d = os.path.join(work, "py_views")
    shutil.rmtree(d, ignore_errors=True)
    dcp.save(sd, checkpoint_id=d)
    out = os.path.join(work, "py_views.pt")
    run(ckpt, "convert", d, out)
    if os.path.exists(out):
        got = torch.load(out, weights_only=True)
        check(same(got, {k: v.contiguous() for k, v in sd.items()}), f"strided chunks: {list(got)}")


def check_ckpt_saved(ckpt, work):
    src = os.path.join(work, "model.pt")
    expected = {k: v for k, v in full_state().items() if isinstance(v, torch.Tensor)}
    expected["step"] = 1200
    expected["lr"] = 0.125
    expected["name"] = "run-7"
    torch.save(expected, src)
    d = os.path.join(work, "ckpt_dcp")
    shutil.rmtree(d, ignore_errors=True)
    run(ckpt, "convert", src, d, "--to", "dcp")
    check(os.path.exists(os.path.join(d, ".metadata")), "ckpt convert --to dcp wrote no .metadata")
    check(not [f for f in os.listdir(d) if f.endswith(".tmp") or f.startswith(".") and f != ".metadata"]
          if os.path.isdir(d) else False, f"temporary files left in {d}")
    # pickle.load and dcp's own loader accept the metadata
    with open(os.path.join(d, ".metadata"), "rb") as f:
        md = pickle.load(f)
    check(type(md).__name__ == "Metadata" and md.version == "1.0.0", f"metadata: {md!r:.200}")
    sd = {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else None) for k, v in expected.items()}
    dcp.load(sd, checkpoint_id=d)  # no process group: a single-process load
    check(same(sd, expected), f"dcp.load of ckpt's directory: {[k for k in expected if not same(sd.get(k), expected[k])]}")
    # 2 ranks, each asking for its own DTensor row shard
    torch.save(expected, os.path.join(work, "expected.pt"))
    check_torch_reads_sharded(d, work, ["row", "col", "rep"])
    # and back: ckpt reads its own output
    back = os.path.join(work, "ckpt_dcp_back.pt")
    run(ckpt, "convert", d, back)
    if os.path.exists(back):
        check(same(torch.load(back, weights_only=True), expected), "ckpt: convert --to dcp and back differs")
    # converting again into the same directory replaces the checkpoint: the new data file has a new
    # name (__0_1.distcp), the old one is removed, and dcp.load reads what .metadata names
    second = {k: (v + 1 if isinstance(v, torch.Tensor) and v.dtype != torch.bool else v) for k, v in expected.items()}
    second["step"] = 1300
    torch.save(second, src)
    run(ckpt, "convert", src, d, "--to", "dcp")
    files = sorted(os.listdir(d))
    check(files == [".metadata", "__0_1.distcp"], f"after converting over {d}: {files}")
    sd = {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else None) for k, v in second.items()}
    dcp.load(sd, checkpoint_id=d)
    check(same(sd, second), f"dcp.load after overwrite: {[k for k in second if not same(sd.get(k), second[k])]}")


def check_torch_reads_sharded(d, work, names, world=2):
    for r in range(world):
        p = os.path.join(work, f"ok{r}")
        if os.path.exists(p):
            os.remove(p)
    spawn(_load_worker, world, d, work, names)
    for r in range(world):
        p = os.path.join(work, f"ok{r}")
        check(os.path.exists(p) and open(p).read() == "1", f"torch rank {r} of {world} loading {d}: shards differ")


def damaged(ckpt, work, good):
    def copy(name):
        d = os.path.join(work, name)
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(good, d)
        return d

    def load_md(d):
        with open(os.path.join(d, ".metadata"), "rb") as f:
            return pickle.load(f)

    def dump_md(d, md):
        with open(os.path.join(d, ".metadata"), "wb") as f:
            pickle.dump(md, f)

    def expect_error(d, *needles):
        p = run(ckpt, "convert", d, os.path.join(d, "out.pt"), expect=2)
        for n in needles:
            check(n in p.stderr, f"{os.path.basename(d)}: error lacks {n!r}: {p.stderr.strip()}")
        check("Traceback" not in p.stderr and p.returncode == 2, f"{os.path.basename(d)}: {p.returncode}")
        p = run(ckpt, "verify", d, expect=1)  # damage, not a usage error
        check(needles[0] in p.stderr, f"{os.path.basename(d)}: ckpt verify: {p.stderr.strip()}")

    # 1. a data file cut short
    d = copy("bad_truncated")
    md = load_md(d)
    idx, info = next((k, v) for k, v in md.storage_data.items() if k.fqn == "row")
    path = os.path.join(d, info.relative_path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(info.offset + info.length // 2)
    expect_error(d, info.relative_path, "'row'", str(info.offset))

    # 2. chunks that do not tile the tensor
    d = copy("bad_tiling")
    md = load_md(d)
    row = md.state_dict_metadata["row"]
    c = row.chunks[0]
    row.chunks[0] = type(c)(offsets=c.offsets, sizes=torch.Size([c.sizes[0] - 1, *c.sizes[1:]]))
    dump_md(d, md)
    expect_error(d, ".metadata", "'row'", "cover")

    # 3. a record outside the directory
    d = copy("bad_path")
    md = load_md(d)
    k = next(iter(md.storage_data))
    md.storage_data[k].relative_path = "../escape.distcp"
    dump_md(d, md)
    expect_error(d, ".metadata", "not a plain file name")

    # 4. a chunk record that holds another shape
    d = copy("bad_shape")
    md = load_md(d)
    idx = next(k for k in md.storage_data if k.fqn == "row")
    other = next(k for k in md.storage_data if k.fqn == "rep")
    md.storage_data[idx] = md.storage_data[other]
    dump_md(d, md)
    expect_error(d, "'row'", "shape")
    del size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--worlds", default="1,2,4")
    ap.add_argument("--mpi-saved", default="", help="a directory ckpt's MPI test saved (tests/mpi)")
    ap.add_argument("--save-only", default="",
                    help="only dcp.save the test state into this directory with --worlds ranks, and write "
                         "WORKDIR/expected.pt (the unsharded state) for ckpt's MPI ranks to check against")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    if a.save_only:
        shutil.rmtree(a.save_only, ignore_errors=True)
        spawn(_save_worker, int(a.worlds), a.save_only)
        torch.save(full_state(), os.path.join(a.workdir, "expected.pt"))
    elif a.mpi_saved:
        expected = torch.load(os.path.join(a.mpi_saved, "..", "expected.pt"), weights_only=True)
        torch.save(expected, os.path.join(a.workdir, "expected.pt"))
        check_torch_reads_sharded(a.mpi_saved, a.workdir, [k for k, v in expected.items() if isinstance(v, torch.Tensor) and v.dim() > 0])
    else:
        last = None
        for w in [int(x) for x in a.worlds.split(",")]:
            last = check_python_saved(a.ckpt, a.workdir, w)
        check_views(a.ckpt, a.workdir)
        check_ckpt_saved(a.ckpt, a.workdir)
        if last:
            damaged(a.ckpt, a.workdir, last)
    if FAILURES:
        print(f"{len(FAILURES)} failure(s)")
        sys.exit(1)
    print("dcp interop: all checks passed")


if __name__ == "__main__":
    main()
