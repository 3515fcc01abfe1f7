#!/usr/bin/python3
"""Memory budget of ckpt commands on small hostile inputs (issue #18).

Generates files of at most 1 MB that try to make a command allocate far more
than their size (list doubling through memo sharing, deep nesting, stride-0
views expanding one element to 2^29 and 2^50, long memo chains), runs
`ckpt ls`, `ls --digest`, `scan` and `verify` on each, and `ckpt::load` (through
tests/hostile/load_probe.cpp, --load-probe) and checks:
  - peak RSS <= 256 MiB + 4 x the file size (getrusage of the child);
  - no crash (signal), no hang (TIMEOUT_S);
  - an error message, when there is one, names the file.

Usage: check_budget.py --ckpt build/ckpt [--load-probe build/tests/ckpt_load_probe]
                       [--rss-base-mib 256] [--keep DIR]
Needs torch in /usr/bin/python3 (Debian's 1.13) for the stride-0 files; they
are skipped with a note when it is missing.
"""
import argparse
import io
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zipfile

TIMEOUT_S = 30


def torch_zip(pickle_bytes):
    """A torch zip checkpoint whose data.pkl is `pickle_bytes` (no storages)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        z.writestr("archive/version", b"3\n")
    return buf.getvalue()


def list_doubling(times):
    # v = 1; then `times` times: v = [v, v] (memo sharing: the tree has 2^times leaves).
    out = bytearray(b"\x80\x02K\x01")
    for _ in range(times):
        out += b"q\x00" b"0" b"(h\x00h\x00l"
    return bytes(out + b".")


def nested_dicts(levels):
    # {'a': {'a': {... {} ...}}}: every dict pushed first, then SETITEM folds them.
    return b"\x80\x02" + b"}X\x01\x00\x00\x00a" * levels + b"}" + b"s" * levels + b"."


def densest_nested_dicts(levels):
    # {1: {1: {... {} ...}}} at 4 bytes a level (EMPTY_DICT, BININT1, ..., SETITEM).
    return b"\x80\x02" + b"}K\x01" * levels + b"}" + b"s" * levels + b"."


def flat_int_list(n):
    # [1, 1, 1, ...]: 2 bytes an element (BININT1) between MARK and APPENDS.
    return b"\x80\x02](" + b"K\x01" * n + b"e."


def nested_lists(levels):
    # [[[... [] ...]]]: every list pushed first, then APPEND folds them (2 bytes a level).
    return b"\x80\x02" + b"]" * (levels + 1) + b"a" * levels + b"."


def flat_dict_list(n):
    # [{}, {}, ...]: one byte an empty dict, the densest container pickle.
    return b"\x80\x02](" + b"}" * n + b"e."


def memo_chain(n):
    # d_i = {'k': d_(i-1)}, each d_(i-1) read back from the memo (LONG_BINGET).
    out = bytearray(b"\x80\x02}r\x00\x00\x00\x00")
    for i in range(1, n):
        out += b"0}X\x01\x00\x00\x00kj" + struct.pack("<I", i - 1) + b"sr" + struct.pack("<I", i)
    return bytes(out + b".")


def stride0(path, numel):
    code = ("import torch,sys\n"
            "torch.save({'w': torch.ones(1).expand(%d)}, sys.argv[1])\n" % numel)
    r = subprocess.run(["/usr/bin/python3", "-c", code, path], capture_output=True)
    return r.returncode == 0


def run_measured(argv, timeout_s):
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = t0 + timeout_s
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            err = p.stderr.read().decode("utf-8", "replace")
            code = os.waitstatus_to_exitcode(status)
            return code, err, ru.ru_maxrss * 1024
        if time.monotonic() > deadline:
            p.kill()
            _, _, ru = os.wait4(p.pid, 0)
            return "timeout", p.stderr.read().decode("utf-8", "replace"), ru.ru_maxrss * 1024
        time.sleep(0.02)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--rss-base-mib", type=int, default=256)
    ap.add_argument("--keep", help="write the files here and keep them")
    ap.add_argument("--load-probe", help="ckpt_load_probe (tests/hostile/load_probe.cpp): also measure ckpt::load")
    ap.add_argument("--sanitized", action="store_true",
                    help="a sanitized (ASan+UBSan Debug) ckpt: skip the runs that take minutes there "
                         "(listing the list-doubling zip, digesting 2^29 stride-0 elements); the "
                         "release build measures them")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S,
                    help="seconds one command may run (default %(default)s; sanitized builds need more)")
    a = ap.parse_args()
    d = a.keep or tempfile.mkdtemp(prefix="ckpt_budget_")
    os.makedirs(d, exist_ok=True)
    files = {
        "list_doubling_64.pkl": list_doubling(64),
        "list_doubling_64.pt": torch_zip(list_doubling(64)),
        "nested_dicts_120k.pkl": nested_dicts(120000),
        "nested_dicts_120k.pt": torch_zip(nested_dicts(120000)),
        "memo_chain_50k.pkl": memo_chain(50000),
        "dense_dicts_262k.pkl": densest_nested_dicts(262000),
        "dense_dicts_262k.pt": torch_zip(densest_nested_dicts(262000)),
        "int_list_524k.pkl": flat_int_list(524000),
        "int_list_524k.pt": torch_zip(flat_int_list(524000)),
        "nested_lists_524k.pkl": nested_lists(524000),
        "nested_lists_524k.pt": torch_zip(nested_lists(524000)),
        "dict_list_1m.pkl": flat_dict_list(1040000),
        "dict_list_1m.pt": torch_zip(flat_dict_list(1040000)),
    }
    for name, data in files.items():
        assert len(data) <= 1 << 20, name
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    names = sorted(files)
    for name, numel in (("stride0_2e29.pt", 1 << 29), ("stride0_2e50.pt", 1 << 50)):
        if stride0(os.path.join(d, name), numel):
            names.append(name)
        else:
            print("note: %s skipped (no torch in /usr/bin/python3)" % name)

    failures = []
    for name in names:
        path = os.path.join(d, name)
        size = os.path.getsize(path)
        limit = (a.rss_base_mib << 20) + 4 * size
        runs = [("ls", [a.ckpt, "ls"]), ("ls --digest", [a.ckpt, "ls", "--digest"]), ("scan", [a.ckpt, "scan"]),
                ("verify", [a.ckpt, "verify"])]
        if a.load_probe:
            runs.append(("ckpt::load", [a.load_probe]))
        for label, extra in runs:
            if a.sanitized and ((name == "list_doubling_64.pt" and label.startswith("ls")) or
                                (name == "stride0_2e29.pt" and label == "ls --digest")):
                print("%-22s %-12s skipped under sanitizers (minutes there; the release build runs it)"
                      % (name, label))
                continue
            code, err, rss = run_measured(extra + [path], a.timeout)
            line = "%-22s %-12s exit %-7s peak %4d MiB (limit %d)" % (name, label, code, rss >> 20, limit >> 20)
            print(line)
            if code == "timeout":
                failures.append(line + ": still running after %d s" % a.timeout)
            elif code < 0:
                failures.append(line + ": killed by a signal")
            if rss > limit:
                failures.append(line + ": over the memory budget")
            if "error" in err and name not in err:
                failures.append(line + ": the error does not name the file: " + err.strip()[:200])
    for f in failures:
        print("FAIL " + f)
    print("%d files, %d failures" % (len(names), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
