#!/usr/bin/env python3
"""Differential test: what torch.load does with a file vs what ckpt says.

Generates seeded, mutated checkpoint files (zip structure, record names,
magic numbers, polyglots, tar variants, pickle protocols; issue #18), runs
each through `torch.load(f, weights_only=False)` of every given Python (torch
1.13 and 2.x) in a child process whose working directory is a fresh temp dir
per file (payloads only `touch` a canary there), and through `ckpt scan` and
`ckpt ls --json`. It fails on any file where

  * torch executed the payload (the canary exists) and `ckpt scan` exits 0, or
  * torch loaded a dict of tensors and `ckpt ls` lists other names/shapes, or
  * ckpt printed bytes that are not UTF-8 (what a file holds must reach the
    terminal escaped).

Also checks issue #19 item 6: quantized checkpoints saved by the real torch
(torch.save of a quantized model's state dict, torch.jit.save of a quantized
scripted model) scan without errors.

  torch_diff.py --ckpt build/tools/ckpt/ckpt --python /usr/bin/python3 \
      --python ~/.cache/ckpt/venv/bin/python --variants 6 --seed 1
  torch_diff.py ... --seconds 3600 --state campaign.json   # long campaign
  torch_diff.py ... --cpu-seconds 3600 --state campaign.json   # 1 CPU-hour

The campaign mode generates rounds (seed, seed+1, ...) until the time is
spent (wall time with --seconds; CPU time of the driver and every child,
torch and ckpt, with --cpu-seconds, summed over resumed runs), records the
next seed and the CPU time spent in --state after each round so a rerun resumes
where the last one stopped, and keeps every failing file under --workdir.
No third-party module is needed by the driver; the children need torch.
"""
import argparse
import io
import json
import os
import pickle
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib

CANARY = "canary"
MAGIC = 0x1950A86A20F9469CFC6C


class Evil:
    """Pickles as os.system("touch canary") (posix.system on Linux)."""

    def __init__(self, cmd="touch " + CANARY):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def evil_pickle(proto=2):
    return pickle.dumps(Evil(), protocol=proto)


# ---------------------------------------------------------------- torch files
# Made by a child torch once per run (torch.save of small dicts), then mutated
# here with plain Python.

MAKE_BASE = r"""
import io, sys, json, torch
out = sys.argv[1]
def save(obj, name):
    torch.save(obj, out + '/' + name)
save({'a': torch.arange(6, dtype=torch.float32).reshape(2, 3)}, 'benign_a.pt')
save({'b': torch.ones(4, dtype=torch.int64), 'c': torch.zeros(1, 5)}, 'benign_b.pt')
# issue #19 item 6: quantized checkpoints
import torch.nn as nn
class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.quantization.QuantStub()
        self.fc = nn.Linear(4, 3)
        self.dequant = torch.quantization.DeQuantStub()
    def forward(self, x):
        return self.dequant(self.fc(self.quant(x)))
m = M().eval()
# The first weight row quantizes to int8 -128, 2, 0, 0: bytes 80 02 00 00,
# which start like a protocol 2 pickle (what made ckpt scan report 'error').
with torch.no_grad():
    m.fc.weight[0] = torch.tensor([-1.0, 2 / 127.5, 0.0, 0.0])
m.qconfig = torch.quantization.get_default_qconfig('fbgemm')
torch.quantization.prepare(m, inplace=True)
m(torch.randn(8, 4))
torch.quantization.convert(m, inplace=True)
save(m.state_dict(), 'quantized_state_dict.pt')
torch.jit.save(torch.jit.script(m), out + '/quantized_scripted.pt')
save({'q': torch.quantize_per_tensor(torch.tensor([-12.8, 0.2, 0.0, 0.0]), 0.1, 0, torch.qint8)},
     'quantized_tensor.pt')
"""

# Loads every file named on stdin, one temp dir each; prints one JSON line each.
LOADER = r"""
import io, json, os, sys, tempfile, warnings
warnings.filterwarnings('ignore')
import torch

def load(path, from_memory):
    d = tempfile.mkdtemp(prefix='ckpt_diff_')
    os.chdir(d)
    r = {'ok': False, 'tensors': None, 'error': None}
    try:
        # A path takes torch's real-file route (tar reader first); a BytesIO
        # skips the tar reader (_should_read_directly is false).
        src = io.BytesIO(open(path, 'rb').read()) if from_memory else path
        v = torch.load(src, map_location='cpu', weights_only=False)
        r['ok'] = True
        if isinstance(v, dict) and v and all(isinstance(x, torch.Tensor) for x in v.values()) \
                and all(isinstance(k, str) for k in v):
            r['tensors'] = {k: list(x.shape) for k, x in v.items()}
    except BaseException as e:  # noqa: BLE001 - anything torch raises
        r['error'] = type(e).__name__ + ': ' + str(e)[:200]
    r['executed'] = os.path.exists(os.path.join(d, 'canary'))
    os.chdir('/')
    for f in os.listdir(d):
        os.unlink(os.path.join(d, f))
    os.rmdir(d)
    return r

for line in sys.stdin:
    path = line.strip()
    if not path:
        continue
    r = load(path, False)
    m = load(path, True)
    r['path'] = path
    r['executed_from_memory'] = m['executed']
    r['executed'] = r['executed'] or m['executed']
    print(json.dumps(r), flush=True)
"""


def zip_entries(path):
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


# ---------------------------------------------------------------- a small zip writer

def local_header(name, data):
    n = name.encode()
    crc = zlib.crc32(data) & 0xFFFFFFFF
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, len(data), len(data), len(n), 0) + n


def central_header(name, data, offset):
    n = name.encode()
    crc = zlib.crc32(data) & 0xFFFFFFFF
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, crc, len(data), len(data),
                       len(n), 0, 0, 0, 0, 0, offset) + n


def end_record(count, cd_size, cd_offset, comment=b""):
    return struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, cd_size, cd_offset, len(comment)) + comment


def write_zip(entries, comment=b""):
    out = bytearray()
    cd = bytearray()
    for name, data in entries:
        off = len(out)
        out += local_header(name, data) + data
        cd += central_header(name, data, off)
    cd_off = len(out)
    return bytes(out + cd + end_record(len(entries), len(cd), cd_off, comment))


def rename(entries, old_tail, new_tail):
    return [((n[: -len(old_tail)] + new_tail) if n.endswith(old_tail) else n, d) for n, d in entries]


def replace(entries, tail, data):
    return [(n, data if n.endswith(tail) else d) for n, d in entries]


def random_case(rng, s):
    while True:
        t = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in s)
        if t != s:
            return t


# ---------------------------------------------------------------- the classes (issue #18)

def gen_zip_case(rng, base):
    """(a) data.pkl found case-insensitively by torch's reader."""
    ents = base["benign_a.pt"]
    evil = evil_pickle(rng.choice([2, 3, 4]))
    variant = rng.randrange(3)
    name = random_case(rng, "data.pkl")
    if variant == 0:  # only an upper-case record
        return write_zip(rename(replace(ents, "/data.pkl", evil), "/data.pkl", "/" + name))
    # both: the evil one before or after the real one
    evil_ent = [(ents[0][0].split("/")[0] + "/" + name, evil)]
    if variant == 1:
        return write_zip(ents[:1] + evil_ent + ents[1:])
    return write_zip(ents + evil_ent)


def two_archives(shown, hidden):
    """The records of two archives one after the other, then their two central
    directories; `hidden` takes `shown`'s top folder name. Returns the bytes so
    far, the two directories and their offsets."""
    prefix = shown[0][0].split("/")[0]
    hidden = [(prefix + "/" + n.split("/", 1)[1], d) for n, d in hidden]
    out = bytearray()
    cds = []
    for ents in (shown, hidden):
        cd = bytearray()
        for name, data in ents:
            off = len(out)
            out += local_header(name, data) + data
            cd += central_header(name, data, off)
        cds.append(cd)
    offs = []
    for cd in cds:
        offs.append(len(out))
        out += cd
    return out, cds, offs


def gen_zip_eocd(rng, base):
    """(b) a second end record inside the real one's comment."""
    shown = base["benign_a.pt"]
    hidden = base["benign_b.pt"]
    if rng.random() < 0.7:
        hidden = replace(hidden, "/data.pkl", evil_pickle(rng.choice([2, 4])))
    out, cds, offs = two_archives(shown, hidden)
    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 8)))
    inner = end_record(len(hidden), len(cds[1]), offs[1])
    comment = junk + inner + (b"" if rng.random() < 0.5 else b"\0" * rng.randrange(1, 4))
    out += end_record(len(shown), len(cds[0]), offs[0], comment)
    return bytes(out)


def gen_zip64_locator(rng, base):
    """ZIP64: the end record's 32-bit fields name one directory, a ZIP64
    locator + record right before it another (miniz takes the ZIP64 values
    when the record's signature is right, ignores them otherwise)."""
    shown = base["benign_a.pt"]
    hidden = replace(base["benign_b.pt"], "/data.pkl", evil_pickle(rng.choice([2, 4]))) \
        if rng.random() < 0.6 else base["benign_b.pt"]
    out, cds, offs = two_archives(shown, hidden)
    e64_off = len(out)
    sig = 0x06064B50 if rng.random() < 0.7 else 0x06064B51
    out += struct.pack("<IQHHIIQQQQ", sig, 44, 45, 45, 0, 0, len(hidden), len(hidden), len(cds[1]), offs[1])
    out += struct.pack("<IIQI", 0x07064B50, 0, e64_off, 1)
    out += end_record(len(shown), len(cds[0]), offs[0])
    return bytes(out)


def gen_safetensors_polyglot(rng, base):
    """(c) a safetensors file whose first bytes are a pickle torch.load runs.

    Bytes 0..7 (the header length) are 'N', 'G' (BINFLOAT eats bytes 2..9,
    including '{"'), 0, 0, ...; the pickle then lives inside the first tensor
    name, in JSON-string-safe bytes: 'q' (BINPUT) swallows the UTF-8 lead
    byte before each protocol 2+ opcode. A dotted STACK_GLOBAL name needs
    PROTO 4, whose argument byte 0x04 is a control character JSON forbids in
    strings: the strict variant is valid JSON and fails in Python's
    find_class (nothing runs); the lax one runs os.system in torch.load."""
    mod = "multiprocessing.popen_spawn_posix"  # 33 characters, has .os
    attr = "os.path.os.path.os.path.os.system"
    cmd = ("touch " + CANARY).ljust(rng.randrange(32, 60))
    lax = rng.random() < 0.5
    p = b"q\xc2\x80\x04" if lax else b""  # PROTO 4
    p += b"q\xc2\x8c" + bytes([len(mod)]) + mod.encode()
    p += b"q\xc2\x8c" + bytes([len(attr)]) + attr.encode()
    p += b"q\xd3\x93"  # STACK_GLOBAL
    p += b"U" + bytes([len(cmd)]) + cmd.encode()
    p += b"q\xc2\x85" + b"R."  # TUPLE1, REDUCE, STOP
    header_len = 0x4700 + ord("N")
    hdr = b'{"' + p + b'":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    hdr += b" " * (header_len - len(hdr))
    head = struct.pack("<Q", header_len)
    assert head[:2] == b"NG"
    return head + hdr + struct.pack("<f", 1.5)


def tar_header(name, size, ustar, rng):
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"%011o\0" % rng.randrange(1 << 30)
    h[156:157] = b"0"
    if ustar:
        h[257:263] = b"ustar\0"
        h[263:265] = b"00"
    h[148:156] = b" " * 8
    chk = sum(h)
    h[148:156] = b"%06o\0 " % chk
    return bytes(h)


def gen_tar(rng, base):
    """(d) a (V7) tar whose first member's name is a tiny pickle."""
    tiny = rng.choice([b"N.", b"K\x01.", b").", b"]." , b"\x80\x02N.",
                       b"cposix\nsystem\n(S'touch " + CANARY.encode() + b"'\ntR."])
    proto = rng.choice([2, 4])
    members = [(tiny, b"x" * rng.randrange(0, 700)),
               (b"storages", pickle.dumps(0, protocol=2) + pickle.dumps([], protocol=2)),
               (b"tensors", pickle.dumps(0, protocol=2)),
               (b"pickle", evil_pickle(proto))]
    ustar = rng.random() < 0.3
    out = bytearray()
    for name, data in members:
        out += tar_header(name, len(data), ustar, rng) + data + b"\0" * (-len(data) % 512)
    out += b"\0" * 1024
    return bytes(out)


def gen_legacy_protocol(rng, base):
    """(e) legacy stream whose magic number is pickled under another protocol."""
    pm = rng.choice([0, 1, 3, 4, 5])
    pr = rng.choice([0, 1, 2, 3, 4, 5])
    sys_info = dict(protocol_version=1001, little_endian=True, type_sizes=dict(short=2, int=4, long=4))
    out = pickle.dumps(MAGIC, protocol=pm) + pickle.dumps(1001, protocol=pr) + pickle.dumps(sys_info, protocol=pr)
    out += evil_pickle(rng.choice([2, 4])) + pickle.dumps([], protocol=2)
    return out


def gen_zip_mutation(rng, base):
    """Random structural mutations of a benign or evil torch zip (no payload
    guarantee): flipped bytes in headers, renamed records, truncation."""
    ents = list(base[rng.choice(["benign_a.pt", "benign_b.pt"])])
    if rng.random() < 0.5:
        ents = replace(ents, "/data.pkl", evil_pickle(rng.choice([0, 2, 4])))
    data = bytearray(write_zip(ents))
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(3)
        if op == 0 and len(data) > 30:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op == 1:
            pos = data.find(b"data.pkl")
            if pos >= 0:
                data[pos:pos + 8] = random_case(rng, "data.pkl").encode()
        else:
            cut = rng.randrange(len(data) // 2, len(data))
            data = data[:cut] + data[len(data) - 22:] if rng.random() < 0.3 else data
    return bytes(data)


CLASSES = {
    "zip_case": gen_zip_case,
    "zip_eocd": gen_zip_eocd,
    "zip64_locator": gen_zip64_locator,
    "safetensors_polyglot": gen_safetensors_polyglot,
    "tar_v7": gen_tar,
    "legacy_protocol": gen_legacy_protocol,
    "zip_mutation": gen_zip_mutation,
}


# ---------------------------------------------------------------- running

def run_torch(python, paths, timeout):
    if not paths:
        return {}
    p = subprocess.run([python, "-c", LOADER], input="\n".join(paths) + "\n", capture_output=True, text=True, errors="backslashreplace",
                       timeout=timeout, cwd=tempfile.gettempdir())
    out = {}
    for line in p.stdout.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        out[r["path"]] = r
    if len(out) < len(paths):
        sys.stderr.write(p.stderr[-2000:])
    return out


def run_ckpt(ckpt, path):
    """(scan exit code, scan output, ls's {name: shape} or None, problems): problems lists
    output that is not UTF-8 (ckpt escapes what a file holds before printing it)."""
    problems = []

    def run(argv):
        p = subprocess.run(argv, capture_output=True, timeout=120)
        for stream, data in (("stdout", p.stdout), ("stderr", p.stderr)):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append("`%s` wrote bytes that are not UTF-8 to %s (%s): %r" %
                                (" ".join(argv[1:-1]), stream, e.reason, data[max(0, e.start - 40):e.end + 40]))
        return p.returncode, p.stdout.decode("utf-8", "backslashreplace"), p.stderr.decode("utf-8", "backslashreplace")

    rc, scan_out, scan_err = run([ckpt, "scan", path])
    ls_rc, ls_out, _ = run([ckpt, "ls", "--json", path])
    tensors = None
    if ls_rc == 0:
        try:
            doc = json.loads(ls_out)
            items = doc.get("tensors", doc) if isinstance(doc, dict) else doc
            tensors = {t["path"]: list(t["shape"]) for t in items}
        except (ValueError, KeyError, TypeError):
            tensors = "unparsed"
    return rc, scan_out + scan_err, tensors, problems


def make_base(python, workdir):
    d = os.path.join(workdir, "base")
    os.makedirs(d, exist_ok=True)
    script = os.path.join(workdir, "make_base.py")  # torch.jit.script needs a source file
    with open(script, "w") as f:
        f.write(MAKE_BASE)
    p = subprocess.run([python, script, d], capture_output=True, text=True, errors="backslashreplace", timeout=600)
    if p.returncode != 0:
        raise RuntimeError("making the base files failed:\n" + p.stderr[-3000:])
    return d


def one_round(args, base, basedir, seed, outdir):
    rng = random.Random(seed)
    files = []
    for cls, gen in CLASSES.items():
        for i in range(args.variants):
            data = gen(rng, base)
            path = os.path.join(outdir, "%s_%d_%d.bin" % (cls, seed, i))
            with open(path, "wb") as f:
                f.write(data)
            files.append((cls, path))
    failures = []
    results = {py: run_torch(py, [p for _, p in files], args.timeout) for py in args.python}
    executed_any = 0
    for cls, path in files:
        rc, scan_out, ls, problems = run_ckpt(args.ckpt, path)
        failures += ["%s [%s]: %s" % (path, cls, p) for p in problems]
        for py in args.python:
            r = results[py].get(path)
            if r is None:
                failures.append("%s: %s: torch child gave no result" % (path, py))
                continue
            if r["executed"]:
                executed_any += 1
                if rc == 0:
                    failures.append("%s [%s]: torch (%s) executed the payload but ckpt scan exits 0:\n%s" %
                                    (path, cls, py, scan_out))
            elif r["tensors"] is not None and ls is not None and ls != r["tensors"]:
                failures.append("%s [%s]: torch (%s) loads %s but ckpt ls lists %s" % (path, cls, py, r["tensors"], ls))
            elif r["tensors"] is None and isinstance(ls, dict) and ls and not r["ok"] and cls.startswith("zip"):
                # torch refused a torch zip that ckpt lists: not a safety issue
                # by itself, but worth reporting in verbose runs.
                if args.verbose:
                    print("note: %s: torch (%s) refuses (%s), ckpt lists %s" % (path, py, r["error"], ls))
    return files, failures, executed_any


def check_quantized(args, basedir):
    failures = []
    for name in ("quantized_state_dict.pt", "quantized_scripted.pt", "quantized_tensor.pt"):
        path = os.path.join(basedir, name)
        s = subprocess.run([args.ckpt, "scan", path], capture_output=True, text=True, errors="backslashreplace", timeout=120)
        if s.returncode != 0 or "error" in s.stdout.split("\n", 1)[0].lower():
            failures.append("%s: ckpt scan exits %d on a valid quantized checkpoint:\n%s" % (path, s.returncode, s.stdout + s.stderr))
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--python", action="append", required=True, help="a Python with torch (repeat)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--variants", type=int, default=4, help="files per class per round")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=0, help="campaign: rounds until this many seconds pass")
    ap.add_argument("--cpu-seconds", type=float, default=0,
                    help="campaign: rounds until the driver and its children used this much CPU time")
    ap.add_argument("--state", default=None, help="campaign: JSON file holding the next seed (resumable)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    args.ckpt = os.path.abspath(args.ckpt)
    workdir = args.workdir or tempfile.mkdtemp(prefix="ckpt_torch_diff_")
    os.makedirs(workdir, exist_ok=True)
    basedir = make_base(args.python[-1], workdir)
    base = {n: zip_entries(os.path.join(basedir, n)) for n in ("benign_a.pt", "benign_b.pt")}
    failures = check_quantized(args, basedir)
    seed = args.seed
    cpu_before = 0.0
    files_before = failures_before = 0
    if args.state and os.path.exists(args.state):
        with open(args.state) as f:
            st = json.load(f)
        seed = st["next_seed"]
        cpu_before = st.get("cpu_seconds", 0.0)
        files_before = st.get("files", 0)
        failures_before = st.get("failures", 0)

    def cpu_used():
        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cpu_before + me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    start = time.time()
    total = executed = rounds = 0
    while True:
        outdir = os.path.join(workdir, "round_%d" % seed)
        os.makedirs(outdir, exist_ok=True)
        files, fails, ex = one_round(args, base, basedir, seed, outdir)
        total += len(files)
        executed += ex
        rounds += 1
        failures += fails
        if not fails:
            shutil.rmtree(outdir)
        seed += 1
        if args.state:
            with open(args.state, "w") as f:
                json.dump({"next_seed": seed, "files": files_before + total,
                           "failures": failures_before + len(failures),
                           "cpu_seconds": round(cpu_used(), 1)}, f)
        if args.cpu_seconds > 0:
            if cpu_used() >= args.cpu_seconds:
                break
        elif args.seconds <= 0 or time.time() - start >= args.seconds:
            break
    print("%d rounds, %d files, %d torch executions of a payload, %d failures (seeds %d..%d, %.0f s wall, "
          "%.0f s CPU in total)" % (rounds, total, executed, len(failures), seed - rounds, seed - 1,
                                    time.time() - start, cpu_used()))
    for f in failures:
        print("FAIL:", f)
    if executed == 0:
        print("FAIL: no payload ever ran in torch; the generator is broken")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
