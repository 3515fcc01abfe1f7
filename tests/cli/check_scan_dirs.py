#!/usr/bin/python3
"""`ckpt scan` on directories as users have them (issue #18).

Builds a Hugging Face cache the way huggingface_hub lays it out
(models--org--name/{blobs,refs,snapshots/<rev>/} with relative symlinks from
the snapshot into blobs/) holding a torch zip checkpoint, a malicious bare
pickle and a config.json, plus a link cycle and a dangling link, and checks:
  - scanning the snapshot (only links) scans every checkpoint, exit 1;
  - scanning the whole cache scans each real file once, under its snapshot
    name, and the summary counts 2 files;
  - a directory with no checkpoint exits 2 with a message.
Usage: check_scan_dirs.py --ckpt build/ckpt
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CLEAN = os.path.join(HERE, "..", "data", "valid", "torch2", "net_state_dict.pt")
EVIL = b"\x80\x02cos\nsystem\n(S'true'\ntR."


def run(ckpt, *args):
    p = subprocess.run([ckpt, "scan", *args], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="ckpt_hfcache_")
    failures = []

    def expect(cond, what):
        print(("ok   " if cond else "FAIL ") + what)
        if not cond:
            failures.append(what)

    try:
        repo = os.path.join(root, "hub", "models--org--net")
        snap = os.path.join(repo, "snapshots", "0123abcd")
        for d in ("blobs", "refs", os.path.join("snapshots", "0123abcd", "sub")):
            os.makedirs(os.path.join(repo, d))
        with open(os.path.join(repo, "refs", "main"), "w") as f:
            f.write("0123abcd")
        shutil.copyfile(CLEAN, os.path.join(repo, "blobs", "aaaa"))
        with open(os.path.join(repo, "blobs", "bbbb"), "wb") as f:
            f.write(EVIL)
        with open(os.path.join(repo, "blobs", "cccc"), "w") as f:
            f.write('{"model_type": "net"}')
        os.symlink("../../blobs/aaaa", os.path.join(snap, "pytorch_model.bin"))
        os.symlink("../../../blobs/bbbb", os.path.join(snap, "sub", "optimizer.pt"))
        os.symlink("../../blobs/cccc", os.path.join(snap, "config.json"))
        os.symlink("../..", os.path.join(snap, "loop"))
        os.symlink("gone", os.path.join(snap, "dangling"))

        code, out, err = run(a.ckpt, snap)
        expect(code == 1, "snapshot of links: exit 1 (got %d)" % code)
        expect(snap + "/pytorch_model.bin: safe" in out, "snapshot: pytorch_model.bin scanned, safe")
        expect(snap + "/sub/optimizer.pt: dangerous" in out, "snapshot: sub/optimizer.pt scanned, dangerous")
        expect("2 files: 1 safe, 0 unsafe-but-known, 1 dangerous, 0 error" in out, "snapshot: summary counts 2 files")

        code, out, err = run(a.ckpt, os.path.join(root, "hub"))
        expect(code == 1, "whole cache: exit 1 (got %d)" % code)
        expect("2 files:" in out and "/blobs/" not in out, "whole cache: each real file once, under its snapshot name")

        empty = os.path.join(root, "docs")
        os.makedirs(empty)
        with open(os.path.join(empty, "README.md"), "w") as f:
            f.write("# nothing here\n")
        code, out, err = run(a.ckpt, empty)
        expect(code == 2, "no checkpoint: exit 2 (got %d)" % code)
        expect("no checkpoint or pickle found" in out, "no checkpoint: message")
        if failures:
            print(out + err)
    finally:
        shutil.rmtree(root)
    print("%d failures" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
