#!/usr/bin/env python3
"""tests/data/dcp/ckpt_mpi3/ is what ckpt's MPI test writes with 3 ranks
(`mpirun -np 3 build/tests/mpi/dcp_mpi_test save tests/data/dcp/ckpt_mpi3`): a
fuzz seed of ckpt's own .metadata.

Writes tests/data/dcp/torch2_w2/ (torch.distributed.checkpoint, 2 gloo ranks on
loopback) and torch2_w2.pt (torch's own consolidation, format_utils.dcp_to_torch_save).

Run with torch 2.x: ~/.cache/ckpt/venv/bin/python tests/data/dcp/make_dcp_fixture.py
"""
import os
import shutil
import socket
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(rank, world, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh
    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(0)
    sd = {
        "row": distribute_tensor(torch.randn(5, 3, generator=g), mesh, [Shard(0)]),   # uneven: 3 + 2 rows
        "col": distribute_tensor(torch.randn(2, 4, generator=g).to(torch.bfloat16), mesh, [Shard(1)]),
        "rep": torch.arange(4, dtype=torch.int64),
        "step": 7,
        "lr": 0.5,
        "name": "hi",
        "nested": {"a": torch.ones(2, dtype=torch.float16), "b": [1, 2], "t": (1, "x")},
        "layers": [torch.zeros(2), torch.full((1,), 3.0)],
    }
    dcp.save(sd, checkpoint_id=out)
    dist.destroy_process_group()


def main():
    out = os.path.join(HERE, "torch2_w2")
    shutil.rmtree(out, ignore_errors=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, out, port), nprocs=2)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save(out, os.path.join(HERE, "torch2_w2.pt"))
    print("torch", torch.__version__, "->", out, file=sys.stderr)


if __name__ == "__main__":
    main()
