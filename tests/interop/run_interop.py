#!/usr/bin/env python3
"""Interop test: the `ckpt` CLI against files real PyTorch wrote, and against hostile files.

    run_interop.py --ckpt PATH_TO_CKPT --python PYTHON --workdir DIR [-v]

1. Runs tests/interop/gen_fixtures.py with PYTHON (torch 1.13: /usr/bin/python3;
   torch 2.x: the venv python) into DIR/fixtures. For every fixture, `ckpt ls --json
   --digest` must print what torch.load saw (format; path, dtype, shape and sha256 of
   every tensor, in order) and `ckpt verify` must exit 0.
2. Negative cases, each of which must end in an error, never in a crash (a signal or
   a sanitizer report): truncated copies of fixtures (at record boundaries and in the
   middle of payloads), random and structured junk, randomly mutated fixtures, tensors
   whose metadata lies (sizes, strides, offsets, missing records), deep nesting.
   `ckpt verify` must reject bit-flipped records.
3. Malicious pickles (os.system, eval, exec, subprocess.Popen, getattr chains, INST
   and OBJ opcodes, STACK_GLOBAL, inside otherwise valid torch zips): `ckpt ls` must
   exit non-zero with `ckpt: error:` naming the global, and nothing may be executed
   (each payload would create a canary file).

This script needs only the Python standard library itself; PYTHON needs torch.
Prints one line per check and ends with `N passed, N failed`; exits 0 only if none failed.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "UndefinedBehaviorSanitizer", "ThreadSanitizer", "MemorySanitizer")
COMPARED_KEYS = ("path", "dtype", "shape", "sha256")


class Runner:
    def __init__(self, ckpt, workdir, verbose, timeout_scale=1.0):
        self.ckpt = ckpt
        self.timeout_scale = timeout_scale
        self.workdir = workdir
        self.verbose = verbose
        self.passed = 0
        self.skipped = 0
        self.failed = []
        self.notes = []
        self.crash_dir = os.path.join(workdir, "crashes")

    # -- bookkeeping ---------------------------------------------------------
    def ok(self, name, detail=""):
        self.passed += 1
        print(f"PASS {name}" + (f"  ({detail})" if detail and self.verbose else ""), flush=True)

    def skip(self, name, why):
        self.skipped += 1
        print(f"SKIP {name}: {why}", flush=True)

    def fail(self, name, why):
        self.failed.append(name)
        why = why.rstrip()
        print(f"FAIL {name}: " + why.replace("\n", "\n    "), flush=True)

    def check(self, name, problems, detail=""):
        if problems:
            self.fail(name, problems if isinstance(problems, str) else "\n".join(problems))
        else:
            self.ok(name, detail)

    def keep(self, path, tag):
        """Keep an input that broke ckpt, for reproduction."""
        os.makedirs(self.crash_dir, exist_ok=True)
        dst = os.path.join(self.crash_dir, tag)
        shutil.copyfile(path, dst)
        return dst

    # -- running ckpt --------------------------------------------------------
    def run(self, args, timeout=60, cwd=None):
        """Returns (returncode, stdout, stderr, elapsed); returncode None = timed out."""
        t0 = time.monotonic()
        timeout *= self.timeout_scale
        try:
            p = subprocess.run([self.ckpt] + args, capture_output=True, timeout=timeout,
                               cwd=cwd or self.workdir, stdin=subprocess.DEVNULL)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = None, e.stdout or b"", (e.stderr or b"") + f"\n(timed out after {timeout:.0f} s)".encode()
        return (rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), time.monotonic() - t0)


def crash_problem(rc, err, timeout=None):
    """A reason when the process crashed, hung or a sanitizer spoke; else None."""
    if rc is None:
        return f"did not finish in time (hang?): {tail(err, 2)}"
    if rc < 0:
        return f"killed by signal {-rc} (crash)\n{tail(err)}"
    if rc >= 128 and rc - 128 in (4, 6, 7, 8, 11):
        return f"exit {rc}: looks like a signal (crash)\n{tail(err)}"
    if any(m in err for m in SANITIZER_MARKS):
        return f"sanitizer report (exit {rc}):\n{tail(err, 40)}"
    return None


def tail(text, n=12):
    lines = text.rstrip().splitlines()
    return "\n".join(lines[-n:]) if lines else "(no output)"


def error_problems(rc, err, timeout=None):
    """For inputs that must be refused: exit non-zero, `ckpt: error:` on stderr, no crash."""
    crash = crash_problem(rc, err, timeout)
    if crash:
        return [crash]
    problems = []
    if rc == 0:
        problems.append("exit 0 (expected an error)")
    if not err.startswith("ckpt: error:"):
        problems.append(f"stderr does not start with 'ckpt: error:' (exit {rc}): {tail(err, 3)!r}")
    return problems


# ---------------------------------------------------------------------------
# 1. fixtures written by real torch


def compare(expected, actual):
    """Differences between the expected JSON and `ckpt ls --json --digest`, as lines."""
    diffs = []
    if actual.get("format") != expected["format"]:
        diffs.append(f"format: expected {expected['format']!r}, got {actual.get('format')!r}")
    exp_t, act_t = expected["tensors"], actual.get("tensors")
    if not isinstance(act_t, list):
        return diffs + [f"'tensors' is not a list: {act_t!r:.200}"]
    if len(exp_t) != len(act_t):
        diffs.append(f"tensor count: expected {len(exp_t)}, got {len(act_t)}")
        exp_paths, act_paths = [t["path"] for t in exp_t], [t.get("path") for t in act_t]
        missing = [p for p in exp_paths if p not in act_paths]
        extra = [p for p in act_paths if p not in exp_paths]
        if missing:
            diffs.append(f"  missing paths: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if extra:
            diffs.append(f"  unexpected paths: {extra[:10]}{' ...' if len(extra) > 10 else ''}")
    for i, (e, a) in enumerate(zip(exp_t, act_t)):
        for k in COMPARED_KEYS:
            if a.get(k) != e[k]:
                diffs.append(f"tensors[{i}] ({e['path']!r}) {k}: expected {e[k]!r}, got {a.get(k)!r}")
        if len(diffs) > 25:
            diffs.append("... (more differences not shown)")
            break
    # Storage sharing, when the CLI reports a storage identity per tensor.
    if all(isinstance(a, dict) and "storage" in a for a in act_t) and act_t and len(exp_t) == len(act_t):
        groups = {}
        for a in act_t:
            groups.setdefault(json.dumps(a["storage"], sort_keys=True), []).append(a["path"])
        got = sorted(sorted(g) for g in groups.values() if len(g) > 1)
        want = sorted(sorted(g) for g in expected.get("shared_groups", []))
        if got != want:
            diffs.append(f"shared storages: expected {want}, got {got}")
    return diffs


def test_fixtures(r, python, fixdir):
    gen = os.path.join(HERE, "gen_fixtures.py")
    shutil.rmtree(fixdir, ignore_errors=True)
    t0 = time.monotonic()
    try:
        p = subprocess.run([python, gen, fixdir], capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    except OSError as e:
        r.fail("gen_fixtures", f"cannot run {python}: {e}\nrun: bash scripts/setup")
        return []
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    if p.returncode != 0:
        r.fail("gen_fixtures", f"{python} gen_fixtures.py failed (exit {p.returncode}):\n{tail(out, 30)}\n"
               "(is torch installed for this interpreter? run: bash scripts/setup)")
        return []
    print(out.strip(), f"[{time.monotonic() - t0:.1f} s]", flush=True)
    with open(os.path.join(fixdir, "fixtures.json"), encoding="utf-8") as f:
        names = json.load(f)["fixtures"]

    for name in names:
        path = os.path.join(fixdir, name + ".pt")
        with open(os.path.join(fixdir, name + ".expected.json"), encoding="utf-8") as f:
            expected = json.load(f)
        rc, out, err, dt = r.run(["ls", "--json", "--digest", path])
        problems = []
        crash = crash_problem(rc, err, 60)
        if crash:
            problems.append(crash)
            r.keep(path, f"ls_{os.path.basename(fixdir)}_{name}.pt")
        elif rc != 0:
            problems.append(f"exit {rc}: {tail(err, 5)}")
        else:
            try:
                actual = json.loads(out)
            except ValueError as e:
                problems.append(f"stdout is not JSON ({e}): {out[:300]!r}")
            else:
                problems += compare(expected, actual)
        note = "" if expected.get("torch_weights_only", True) else \
            f"; torch itself needs weights_only=False here: {expected.get('torch_weights_only_error', '')}"
        if problems and note:
            problems.append(note.lstrip("; "))
        r.check(f"ls {name}", problems, f"{len(expected['tensors'])} tensors, {dt * 1000:.0f} ms")

        rc, out, err, dt = r.run(["verify", path])
        problems = [crash_problem(rc, err, 60)] if crash_problem(rc, err, 60) else []
        if not problems and rc != 0:
            problems.append(f"exit {rc}: {tail(err, 5)}")
        r.check(f"verify {name}", problems)
    return names


# ---------------------------------------------------------------------------
# zip helpers


def local_records(path):
    """[(name, header_offset, data_offset, compressed_size)] of a zip file, plus the
    central directory's offset and the end-of-central-directory record's offset."""
    with open(path, "rb") as f:
        data = f.read()
    recs = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            h = info.header_offset
            n, m = struct.unpack_from("<HH", data, h + 26)
            recs.append((info.filename, h, h + 30 + n + m, info.compress_size))
    eocd = data.rfind(b"PK\x05\x06")
    cd = struct.unpack_from("<I", data, eocd + 16)[0]
    z64 = data.rfind(b"PK\x06\x06", 0, eocd)
    if cd == 0xFFFFFFFF and z64 >= 0:
        cd = struct.unpack_from("<Q", data, z64 + 48)[0]
    return data, recs, cd, eocd


def write_zip(path, records, prefix="archive"):
    """A torch-style zip: stored (uncompressed) records under '<prefix>/'."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, payload in records:
            info = zipfile.ZipInfo(f"{prefix}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, payload)


# ---------------------------------------------------------------------------
# hand-written pickles


def g(module, name):  # GLOBAL
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text):  # BINUNICODE
    b = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def i(v):  # BININT1 / BININT / LONG1
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if -2 ** 31 <= v < 2 ** 31:
        return b"J" + struct.pack("<i", v)
    enc = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(enc)]) + enc


def tup(*items):  # MARK ... TUPLE
    return b"(" + b"".join(items) + b"t"


def dict_(*pairs):  # EMPTY_DICT MARK k v ... SETITEMS
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def call(fn, *args):  # fn(*args) via REDUCE
    return fn + tup(*args) + b"R"


PROTO2 = b"\x80\x02"
STOP = b"."


def tensor(key, numel, offset, size, stride, storage="FloatStorage"):
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())"""
    pid = tup(s("storage"), g("torch", storage), s(key), s("cpu"), i(numel)) + b"Q"  # BINPERSID
    return call(g("torch._utils", "_rebuild_tensor_v2"), pid, i(offset), tup(*map(i, size)),
                tup(*map(i, stride)), b"\x89", call(g("collections", "OrderedDict")))


def torch_zip(path, pickle_bytes, data=None, prefix="archive"):
    records = [("data.pkl", pickle_bytes), ("byteorder", b"little")]
    records += [(f"data/{k}", v) for k, v in (data or {}).items()]
    records.append(("version", b"3\n"))
    write_zip(path, records, prefix)


FLOATS = struct.pack("<4f", 1.0, -2.0, 3.5, 0.25)


def test_handmade(r, d):
    """Controls: hand-written torch zips that are valid, so that the negative cases
    below fail for the reason they are about, not for the zip writer."""
    path = os.path.join(d, "handmade_valid.pt")
    torch_zip(path, PROTO2 + dict_((s("w"), tensor("0", 4, 0, (2, 2), (2, 1))),
                                   (s("wt"), tensor("0", 4, 0, (2, 2), (1, 2)))) + STOP, {"0": FLOATS})
    rc, out, err, _ = r.run(["ls", "--json", "--digest", path])
    problems = [crash_problem(rc, err)] if crash_problem(rc, err) else []
    if not problems and rc != 0:
        problems.append(f"exit {rc}: {tail(err, 5)}")
    if not problems:
        wt = struct.pack("<4f", 1.0, 3.5, -2.0, 0.25)
        want = [{"path": "w", "dtype": "float32", "shape": [2, 2], "sha256": hashlib.sha256(FLOATS).hexdigest()},
                {"path": "wt", "dtype": "float32", "shape": [2, 2], "sha256": hashlib.sha256(wt).hexdigest()}]
        try:
            problems += compare({"format": "torch_zip", "tensors": want}, json.loads(out))
        except ValueError as e:
            problems.append(f"stdout is not JSON ({e})")
    r.check("handmade valid torch zip (control)", problems)
    rc, out, err, _ = r.run(["verify", path])
    r.check("handmade valid torch zip: verify (control)",
            crash_problem(rc, err) or ([] if rc == 0 else [f"exit {rc}: {tail(err, 5)}"]))
    return rc == 0


# ---------------------------------------------------------------------------
# 2. damaged and hostile files


def test_truncation(r, fixdir, names, d):
    for name in names:
        src = os.path.join(fixdir, name + ".pt")
        data, recs, cd, eocd = local_records(src)
        cuts = {0, 1, 4, 29, len(data) - 1, len(data) - 21, len(data) - 22, cd, cd + 1, (cd + eocd) // 2, eocd,
                eocd + 10}
        for rname, h, dstart, size in recs:
            if rname.endswith(("data.pkl", "/0", "/1", "/2", "version", "byteorder")):
                cuts.update({h, h + 15, dstart, dstart + size // 2, dstart + size - 1 if size else dstart})
        cuts = sorted(c for c in cuts if 0 <= c < len(data))
        failures = []
        for cut in cuts:
            path = os.path.join(d, f"trunc_{name}_{cut}.pt")
            with open(path, "wb") as f:
                f.write(data[:cut])
            for cmd in (["ls", "--json", "--digest", path], ["verify", path]):
                rc, out, err, _ = r.run(cmd)
                problems = error_problems(rc, err, 60)
                if problems:
                    kept = r.keep(path, os.path.basename(path))
                    failures.append(f"{cmd[0]} truncated at {cut}/{len(data)}: {'; '.join(problems)} [{kept}]")
            os.unlink(path)
        r.check(f"truncated {name} ({len(cuts)} cut points, ls + verify)", failures)


def test_junk(r, d):
    rng = random.Random(1234)
    cases = []
    for n in (0, 1, 3, 21, 22, 64, 1000, 65536):
        cases.append((f"random_{n}", bytes(rng.getrandbits(8) for _ in range(n))))
    rnd = bytes(rng.getrandbits(8) for _ in range(4096))
    cases += [
        ("zip_local_magic", b"PK\x03\x04" + rnd[:200]),
        ("zip_eocd_only", b"PK\x05\x06" + b"\0" * 18),
        ("zip_eocd_lies", rnd[:300] + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFF0,
                                                                   0x7FFFFFFF, 0)),
        ("zip64_eocd_lies", rnd[:300] + b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, 2 ** 62,
                                                                   2 ** 62, 2 ** 63, 2 ** 60) +
         b"PK\x06\x07" + struct.pack("<IQI", 0, 300, 1) + b"PK\x05\x06" + struct.pack(
             "<HHHHIIH", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)),
        ("pickle_magic", b"\x80\x02" + rnd[:500]),
        ("legacy_magic", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19." + rnd[:500]),
        ("safetensors_like", struct.pack("<Q", 50) + b'{"a": {"dtype": "F32", "shape": [2**40], "data_offsets"'),
        ("safetensors_huge_header", struct.pack("<Q", 2 ** 63) + b"{}"),
        ("tar_like", b"x" * 257 + b"ustar\x0000" + rnd[:1000]),
        ("text", b"hello, this is not a checkpoint\n"),
    ]
    failures = []
    for name, payload in cases:
        path = os.path.join(d, f"junk_{name}.bin")
        with open(path, "wb") as f:
            f.write(payload)
        rc, out, err, _ = r.run(["ls", path])
        problems = error_problems(rc, err, 60)
        if problems:
            failures.append(f"{name}: {'; '.join(problems)} [{r.keep(path, os.path.basename(path))}]")
    r.check(f"junk files ({len(cases)} cases)", failures)
    rc, out, err, _ = r.run(["ls", os.path.join(d, "does_not_exist.pt")])
    r.check("missing file", error_problems(rc, err, 60))


def test_mutations(r, fixdir, names, d, count):
    """Random corruption of real files: any exit code is fine, a crash or a hang is not."""
    rng = random.Random(42)
    for name in names:
        src = os.path.join(fixdir, name + ".pt")
        data, recs, cd, eocd = local_records(src)
        # Concentrate on metadata: local headers, data.pkl, the central directory.
        hot = [(h, dstart) for rname, h, dstart, size in recs]
        pkl = [(dstart, dstart + size) for rname, h, dstart, size in recs if rname.endswith("data.pkl")]
        hot += pkl + [(cd, len(data))]
        failures = []
        for k in range(count):
            buf = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                lo, hi = rng.choice(hot) if rng.random() < 0.85 else (0, len(data))
                pos = rng.randrange(lo, max(hi, lo + 1))
                if pos >= len(buf):
                    continue
                kind = rng.random()
                if kind < 0.6:
                    buf[pos] ^= 1 << rng.randrange(8)
                elif kind < 0.9:
                    word = rng.choice([b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00",
                                       b"\x00\x00\x00\x80", b"\xfe\xff\xff\xff"])
                    buf[pos:pos + 4] = word
                else:
                    buf[pos] = rng.randrange(256)
            path = os.path.join(d, f"mut_{name}_{k}.pt")
            with open(path, "wb") as f:
                f.write(buf)
            for cmd in (["ls", "--json", "--digest", path], ["verify", path]):
                rc, out, err, _ = r.run(cmd, timeout=30)
                crash = crash_problem(rc, err, 30)
                if not crash and rc != 0 and not err.startswith("ckpt: error:"):
                    crash = f"exit {rc} without 'ckpt: error:' on stderr: {tail(err, 3)!r}"
                if crash:
                    failures.append(f"{cmd[0]} mutant {k}: {crash} [{r.keep(path, os.path.basename(path))}]")
            os.unlink(path)
        r.check(f"mutated {name} ({count} mutants, ls + verify: no crash, errors well-formed)", failures)


def test_bitflips(r, fixdir, name, d):
    """`ckpt verify` must notice any flipped bit in a record (CRC-32)."""
    src = os.path.join(fixdir, name + ".pt")
    data, recs, cd, eocd = local_records(src)
    targets = [rec for rec in recs if rec[3] > 0 and rec[0].split("/", 1)[-1] in ("data.pkl", "data/0", "version")]
    for rname, h, dstart, size in targets:
        buf = bytearray(data)
        buf[dstart + size // 2] ^= 0x10
        path = os.path.join(d, f"flip_{name}_{rname.replace('/', '_')}.pt")
        with open(path, "wb") as f:
            f.write(buf)
        rc, out, err, _ = r.run(["verify", path])
        problems = error_problems(rc, err, 60)
        if not problems and rc != 1:
            problems.append(f"exit {rc} (docs/cli.md: verify exits 1 when it finds damage)")
        r.check(f"verify rejects a bit flip in {name}:{rname}", problems)
        # ls may or may not notice (it need not check CRCs); it must not crash.
        rc, out, err, _ = r.run(["ls", "--json", "--digest", path])
        crash = crash_problem(rc, err, 60)
        r.check(f"ls survives a bit flip in {name}:{rname}", [crash] if crash else [])


def test_lying_metadata(r, d):
    """Valid zips whose pickle describes tensors the data cannot back."""
    big = 2 ** 62
    cases = [
        ("huge_sizes", tensor("0", 4, 0, (big, big), (1, 1)), {"0": FLOATS}),
        ("size_overflow_numel", tensor("0", 4, 0, (2 ** 32, 2 ** 32, 2 ** 32), (0, 0, 0)), {"0": FLOATS}),
        ("negative_size", tensor("0", 4, 0, (-1,), (1,)), {"0": FLOATS}),
        ("negative_stride", tensor("0", 4, 3, (2,), (-1,)), {"0": FLOATS}),
        ("offset_past_end", tensor("0", 4, 100, (2,), (1,)), {"0": FLOATS}),
        ("negative_offset", tensor("0", 4, -1, (2,), (1,)), {"0": FLOATS}),
        ("stride_past_end", tensor("0", 4, 0, (2,), (big,)), {"0": FLOATS}),
        ("view_past_end", tensor("0", 4, 0, (2, 3), (3, 1)), {"0": FLOATS}),
        ("numel_larger_than_record", tensor("0", 1000, 0, (1000,), (1,)), {"0": FLOATS}),
        ("numel_huge", tensor("0", big, 0, (4,), (1,)), {"0": FLOATS}),
        ("missing_record", tensor("7", 4, 0, (4,), (1,)), {"0": FLOATS}),
        ("unknown_storage_type", tensor("0", 4, 0, (4,), (1,), storage="NotAStorage"), {"0": FLOATS}),
    ]
    # Odd but not wrong: torch 2.x loads these (65 dims; one record read as float32 and
    # as float64), so ckpt may accept or refuse them, but must not crash.
    odd = [
        ("many_dims", tensor("0", 4, 0, (1,) * 65, (1,) * 65), {"0": FLOATS}),
        ("same_key_two_dtypes", dict_((s("a"), tensor("0", 4, 0, (4,), (1,))),
                                      (s("b"), tensor("0", 2, 0, (2,), (1,), storage="DoubleStorage"))),
         {"0": FLOATS}),
    ]
    failures, tolerated = [], []
    for (name, obj, data), must_fail in [(c, True) for c in cases] + [(c, False) for c in odd]:
        path = os.path.join(d, f"lying_{name}.pt")
        torch_zip(path, PROTO2 + (obj if obj.startswith(b"}") else dict_((s("t"), obj))) + STOP, data)
        rc, out, err, _ = r.run(["ls", "--json", "--digest", path])
        if must_fail:
            problems = error_problems(rc, err, 60)
        else:
            problems = [crash_problem(rc, err, 60)] if crash_problem(rc, err, 60) else []
            if not problems and rc != 0 and not err.startswith("ckpt: error:"):
                problems.append(f"exit {rc} without 'ckpt: error:' on stderr")
            tolerated.append(f"{name}: exit {rc}")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)} [{r.keep(path, os.path.basename(path))}]")
    r.check(f"lying tensor metadata ({len(cases)} refused with an error, {len(odd)} odd ones without a crash)",
            failures, ", ".join(tolerated))

    # Deep nesting must be refused, not overflow the stack.
    for name, pkl in [
        ("deep_lists", PROTO2 + b"]" * 200000 + b"a" * 199999 + STOP),
        ("deep_tuples", PROTO2 + b"(" * 200000 + b")" + b"t" * 200000 + STOP),
        ("deep_dicts", PROTO2 + (b"}" + s("k")) * 100000 + b"}" + b"s" * 100000 + STOP),
    ]:
        path = os.path.join(d, f"{name}.pt")
        torch_zip(path, pkl)
        rc, out, err, _ = r.run(["ls", path])
        problems = error_problems(rc, err, 60)
        if problems:
            r.keep(path, os.path.basename(path))
        r.check(f"{name} refused without a crash", problems)

    # A DAG whose walk is exponential: 40 levels of [x, x] over one tensor would list
    # 2**40 paths. ckpt must stop with an error (or finish) in bounded time.
    if r.timeout_scale > 1:
        r.skip("dag_bomb", "a timing check: runs in the unscaled (release) build only")
        return
    pkl = PROTO2 + tensor("0", 4, 0, (4,), (1,)) + b"q\x00"
    for lvl in range(40):  # stack top T = memo[lvl]; T = (T, memo[lvl]); memo[lvl + 1] = T
        pkl += b"h" + bytes([lvl]) + b"\x86q" + bytes([lvl + 1])
    pkl += STOP
    path = os.path.join(d, "dag_bomb.pt")
    torch_zip(path, pkl, {"0": FLOATS})
    rc, out, err, dt = r.run(["ls", path], timeout=30)
    problems = [crash_problem(rc, err, 30)] if crash_problem(rc, err, 30) else []
    if not problems and rc != 0 and not err.startswith("ckpt: error:"):
        problems.append(f"exit {rc} without 'ckpt: error:' on stderr")
    if problems:
        r.keep(path, os.path.basename(path))
    r.check("dag_bomb (2**40 paths to one tensor) ends in bounded time", problems,
            f"exit {rc} in {dt:.1f} s")


# ---------------------------------------------------------------------------
# 3. malicious pickles


def malicious_cases(canary_dir):
    """[(name, (module, global) to be named in the error, pickle bytes, data records, canary path)].
    Each pickle, loaded by Python's pickle module, would create its canary file
    (except torch_module_class, which needs no payload to be refused)."""
    cases = []

    def add(name, expect_global, build, data=None):
        canary = os.path.join(canary_dir, name)
        cases.append((name, expect_global, build(canary), data, canary))

    touch = lambda c: f"touch {c}"  # noqa: E731
    add("os_system", ("os", "system"), lambda c: PROTO2 + call(g("os", "system"), s(touch(c))) + STOP)
    add("posix_system", ("posix", "system"), lambda c: PROTO2 + call(g("posix", "system"), s(touch(c))) + STOP)
    add("eval", ("builtins", "eval"),
        lambda c: PROTO2 + call(g("builtins", "eval"), s(f"__import__('os').system({touch(c)!r})")) + STOP)
    add("exec", ("builtins", "exec"),
        lambda c: PROTO2 + call(g("builtins", "exec"), s(f"import os; os.system({touch(c)!r})")) + STOP)
    add("py2_builtin_eval", ("builtin", "eval"),  # __builtin__ (Python 2 name, mapped to builtins)
        lambda c: PROTO2 + call(g("__builtin__", "eval"), s(f"__import__('os').system({touch(c)!r})")) + STOP)
    add("subprocess_popen", ("subprocess", "Popen"),
        lambda c: PROTO2 + call(g("subprocess", "Popen"), b"]" + b"(" + s("touch") + s(c) + b"e") + STOP)
    add("getattr_chain", ("builtins", "getattr"),
        lambda c: PROTO2 + call(call(g("builtins", "getattr"), call(g("builtins", "__import__"), s("os")),
                                     s("system")), s(touch(c))) + STOP)
    add("import_builtin", ("builtins", "__import__"),
        lambda c: PROTO2 + call(g("builtins", "__import__"), s("os")) + STOP)
    add("inst_opcode", ("os", "system"),  # protocol 0: MARK args INST module name
        lambda c: b"(S'" + touch(c).encode() + b"'\nios\nsystem\n.")
    add("obj_opcode", ("os", "system"),  # MARK class args OBJ
        lambda c: PROTO2 + b"(" + g("os", "system") + s(touch(c)) + b"o" + STOP)
    add("stack_global", ("os", "system"),  # protocol 4: FRAME, SHORT_BINUNICODE, STACK_GLOBAL
        lambda c: (lambda body: b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body)(
            b"\x8c\x02os\x8c\x06system\x93" + s(touch(c)) + b"\x85R" + STOP))
    add("newobj", ("subprocess", "Popen"),  # NEWOBJ: cls.__new__(cls, *args), then BUILD
        lambda c: PROTO2 + g("subprocess", "Popen") + tup(b"]" + b"(" + s("touch") + s(c) + b"e") + b"\x81"
        + dict_((s("args"), s(c))) + b"b" + STOP)
    add("evil_next_to_tensor", ("posix", "system"),  # a real state dict with one poisoned entry
        lambda c: PROTO2 + dict_((s("w"), tensor("0", 4, 0, (4,), (1,))),
                                 (s("evil"), call(g("posix", "system"), s(touch(c))))) + STOP, {"0": FLOATS})
    add("evil_inside_ordereddict", ("os", "system"),
        lambda c: PROTO2 + call(g("collections", "OrderedDict"),
                                b"]" + b"(" + tup(s("w"), call(g("os", "system"), s(touch(c)))) + b"e") + STOP)
    add("evil_storage_type", ("os", "system"),  # the global sits in the persistent id, never called
        lambda c: PROTO2 + dict_((s("w"), call(g("torch._utils", "_rebuild_tensor_v2"),
                                               tup(s("storage"), g("os", "system"), s("0"), s("cpu"), i(4)) + b"Q",
                                               i(0), tup(i(4)), tup(i(1)), b"\x89",
                                               call(g("collections", "OrderedDict"))))) + STOP, {"0": FLOATS})
    add("evil_build", ("os", "system"),  # BUILD (setstate) on an allowed object with a malicious state
        lambda c: PROTO2 + call(g("collections", "OrderedDict")) + call(g("os", "system"), s(touch(c))) + b"b" + STOP)
    add("torch_module_class", ("torch.nn.modules.linear", "Linear"),  # allowed only with weights_only=False
        lambda c: PROTO2 + g("torch.nn.modules.linear", "Linear") + b")\x81" + STOP)

    return cases


def test_malicious(r, d):
    canary_dir = os.path.join(d, "canaries")
    shutil.rmtree(canary_dir, ignore_errors=True)
    os.makedirs(canary_dir)
    for name, (mod, glob), pkl, data, canary in malicious_cases(canary_dir):
        path = os.path.join(d, f"evil_{name}.pt")
        torch_zip(path, pkl, data)
        problems = []
        rc, out, err, _ = r.run(["ls", path], cwd=canary_dir)
        problems += error_problems(rc, err, 60)
        if rc not in (0, None) and rc > 0 and not (mod in err and glob in err):
            problems.append(f"stderr does not name the global {mod}.{glob}: {tail(err, 3)!r}")
        # Other commands must not execute anything either.
        for cmd in (["ls", "--json", "--digest", path], ["ls", "--objects", path], ["verify", path]):
            rc2, _, err2, _ = r.run(cmd, cwd=canary_dir)
            crash = crash_problem(rc2, err2, 60)
            if crash:
                problems.append(f"`ckpt {' '.join(cmd[:-1])}`: {crash}")
        if os.path.exists(canary):
            problems.append(f"CODE WAS EXECUTED: {canary} exists")
        if problems:
            r.keep(path, os.path.basename(path))
        r.check(f"malicious pickle {name} refused ({mod}.{glob})", problems)
    leftovers = os.listdir(canary_dir)
    r.check("no canary files at all", [f"canaries created: {leftovers}"] if leftovers else [])


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="the ckpt executable")
    ap.add_argument("--python", required=True, help="a Python interpreter with torch")
    ap.add_argument("--workdir", required=True, help="scratch directory (recreated)")
    ap.add_argument("--mutations", type=int, default=int(os.environ.get("CKPT_INTEROP_MUTATIONS", "150")),
                    help="random mutants per fuzzed fixture (default 150)")
    ap.add_argument("--timeout-scale", type=float, default=float(os.environ.get("CKPT_INTEROP_TIMEOUT_SCALE", "1")),
                    help="multiply every time limit (sanitizer builds are slower)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()

    ckpt = os.path.abspath(a.ckpt)
    if not os.access(ckpt, os.X_OK):
        print(f"FAIL setup: ckpt executable not found: {ckpt} (build it first)")
        print("0 passed, 1 failed")
        return 1
    if not (os.path.isfile(a.python) or shutil.which(a.python)) or not os.access(
            shutil.which(a.python) or a.python, os.X_OK):
        print(f"FAIL setup: Python interpreter not found: {a.python}\nrun: bash scripts/setup")
        print("0 passed, 1 failed")
        return 1
    workdir = os.path.abspath(a.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    neg = os.path.join(workdir, "negative")
    os.makedirs(neg)
    r = Runner(ckpt, workdir, a.verbose, a.timeout_scale)
    t0 = time.monotonic()

    fixdir = os.path.join(workdir, "fixtures")
    names = test_fixtures(r, a.python, fixdir)
    test_handmade(r, neg)
    if names:
        multi = [n for n in ("module_state_dict", "views", "training_checkpoint") if n in names]
        test_truncation(r, fixdir, multi, neg)
        test_bitflips(r, fixdir, "module_state_dict", neg)
        test_mutations(r, fixdir, [n for n in ("module_state_dict", "training_checkpoint") if n in names], neg,
                       a.mutations)
    test_junk(r, neg)
    test_lying_metadata(r, neg)
    test_malicious(r, neg)

    print(f"\ninterop ({a.python}) finished in {time.monotonic() - t0:.1f} s; workdir {workdir}")
    if r.failed:
        print(f"failed checks ({len(r.failed)}):")
        for n in r.failed:
            print(f"  {n}")
        if os.path.isdir(r.crash_dir):
            print(f"inputs that broke ckpt are kept in {r.crash_dir}")
    print(f"{r.passed} passed, {len(r.failed)} failed" + (f", {r.skipped} skipped" if r.skipped else ""))
    return 0 if not r.failed else 1


if __name__ == "__main__":
    sys.exit(main())
