"""bench/run's driver: generates the data, runs every measurement in its own
process, and writes bench.json and bench.md (see docs/benchmarks.md).

    python driver.py --build DIR --peer-bin FILE --out DIR [--quick] [--data DIR]

Runs under the venv's Python but imports neither torch nor safetensors itself:
the peers run in bench/peer.py processes, ckpt in ckpt_bench processes (one
measurement each, so ru_maxrss from wait4() is that loader's peak RSS). In
--quick mode the Python peers of a data set share one process (their RSS is
then not reported) to keep the run short.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
MiB = 1 << 20


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.ckpt_bench = os.path.join(args.build, "bench", "ckpt_bench")
        tb = os.path.join(args.build, "bench", "torch_bench")  # built by the full bench/run only
        self.torch_bench = tb if os.path.exists(tb) and not args.quick else None
        self.cli = os.path.join(args.build, "ckpt")
        self.peer_bin = args.peer_bin
        self.results = {}  # id -> result dict
        self.errors = []  # (id, message) of programs that failed unexpectedly
        self.order = []

    # ---- running one measurement ---------------------------------------------------
    def spawn(self, argv):
        """Runs argv; returns (rc, stdout, stderr, ru_maxrss_kb, wall_s)."""
        with tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err)
            out = p.stdout.read()
            _, status, ru = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
            p.returncode = os.waitstatus_to_exitcode(status)
            p.stdout.close()
            err.seek(0)
            return p.returncode, out.decode(), err.read().decode(errors="replace"), ru.ru_maxrss, wall

    def record(self, rid, meta, res):
        res.update(meta)
        t = sorted(res["times"])
        res["median_s"] = statistics.median(t)
        res["min_s"], res["max_s"] = t[0], t[-1]
        if res.get("bytes"):
            res["gb_per_s"] = res["bytes"] / res["median_s"] / 1e9
        self.results[rid] = res
        self.order.append(rid)
        rss = res.get("peak_rss_kb")
        print(f"  {rid:<34} median {fmt_s(res['median_s']):>9} ({fmt_s(t[0])}-{fmt_s(t[-1])})"
              + (f"  {res['gb_per_s']:.2f} GB/s" if "gb_per_s" in res and res.get("scenario") != "open" else "")
              + (f"  peak RSS {rss / 1024:.0f} MiB" if rss else ""), flush=True)

    def measure(self, rid, argv, meta, expect_fail=False, fresh=False, before=None):
        """Runs argv (whose REPS is argv[2]) once; fresh: REPS processes of one rep each, so that
        every rep is a first load in a new process (the allocator's memory not yet faulted in).
        before: called before each process (dropping the page cache for cold runs)."""
        warm(meta.get("file"))
        at = 3 if argv[0] == PY else 2  # where REPS is: ckpt_bench OP REPS, python peer.py OP REPS

        def spawn(a):
            if before:
                before()
            return self.spawn(a)

        if fresh and not self.quick and int(argv[at]) > 1:
            runs = [spawn(argv[:at] + ["1"] + argv[at + 1:]) for _ in range(int(argv[at]))]
            bad = [x for x in runs if x[0] != 0]
            rc, out, err, maxrss, _ = bad[0] if bad else runs[-1]
            if not bad:
                res = [json.loads(x[1].strip().splitlines()[-1]) for x in runs]
                out = json.dumps(dict(res[-1], times=[t for x in res for t in x["times"]],
                                      times_fsync=[t for x in res for t in x.get("times_fsync", [])]))
                maxrss = max(x[3] for x in runs)
            meta = dict(meta, fresh_process_per_rep=True)
        else:
            rc, out, err, maxrss, _ = spawn(argv)
        if rc != 0:
            msg = (err.strip().splitlines() or ["exit status %d" % rc])[-1]
            if expect_fail:
                self.results[rid] = dict(meta, failed=msg)
                self.order.append(rid)
                print(f"  {rid:<34} cannot read the file: {msg[:100]}", flush=True)
            else:
                self.errors.append((rid, msg))
                print(f"  {rid:<34} ERROR: {msg}", file=sys.stderr, flush=True)
            return
        res = json.loads(out.strip().splitlines()[-1])
        res["peak_rss_kb"] = maxrss
        self.record(rid, meta, res)
        if res.get("times_fsync"):  # the peer's save, timed again up to its fsync
            self.record(rid + "+fsync", dict(meta, fsync=True),
                        dict(res, times=res["times_fsync"], peak_rss_kb=maxrss))

    def measure_cli(self, rid, argv, reps, meta):
        """The ckpt CLI, timed from outside (process start included)."""
        warm(meta.get("file"))
        times, peak = [], 0
        for _ in range(reps):
            rc, _, err, maxrss, wall = self.spawn(argv)
            if rc != 0:
                self.errors.append((rid, (err.strip().splitlines() or ["exit %d" % rc])[-1]))
                print(f"  {rid:<34} ERROR: {self.errors[-1][1]}", file=sys.stderr, flush=True)
                return
            times.append(wall)
            peak = max(peak, maxrss)
        self.record(rid, meta, {"times": times, "bytes": meta.get("bytes", 0), "peak_rss_kb": peak})

    def measure_batch(self, items):
        """--quick: several peer.py measurements in one Python process (no RSS per loader)."""
        for _, _, meta in items:
            warm(meta.get("file"))
        rc, out, err, _, _ = self.spawn_batch(items)
        lines = out.strip().splitlines()
        for (rid, argv, meta), line in zip(items, lines + [None] * len(items)):
            if line is None or line.startswith("ERROR"):
                msg = line[6:] if line else (err.strip().splitlines() or ["exit %d" % rc])[-1]
                self.errors.append((rid, msg))
                print(f"  {rid:<34} ERROR: {msg}", file=sys.stderr, flush=True)
                continue
            res = json.loads(line)
            self.record(rid, meta, res)
            if res.get("times_fsync"):
                self.record(rid + "+fsync", dict(meta, fsync=True), dict(res, times=res["times_fsync"]))

    def spawn_batch(self, items):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump([argv for _, argv, _ in items], f)
        try:
            return self.spawn([PY, os.path.join(HERE, "peer.py"), "batch", "0", f.name])
        finally:
            os.unlink(f.name)


def warm(path):
    """Reads a file once so that its pages are in the page cache (the warm state)."""
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            while f.read(16 * MiB):
                pass


def fmt_s(s):
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001 - the description is best effort
        return ""


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


def can_drop_caches():
    """Whether /proc/sys/vm/drop_caches opens for writing (nothing is written: no cache is dropped)."""
    try:
        with open("/proc/sys/vm/drop_caches", "w"):
            return True
    except OSError:
        return False


def machine(data_dir, build):
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("grep MemTotal /proc/meminfo | awk '{print $2}'")
    fs = sh(f"df -T {data_dir} | tail -1 | awk '{{print $1\" \"$2}}'")
    rota = sh(f"lsblk -no ROTA $(df {data_dir} | tail -1 | awk '{{print $1}}') 2>/dev/null | head -1")
    cxx = sh(f"grep -m1 CMAKE_CXX_COMPILER: {build}/CMakeCache.txt | cut -d= -f2")
    versions = sh(f"{PY} -c 'import torch, safetensors; print(torch.__version__, safetensors.__version__)'")
    tv, sv = (versions.split() + ["?", "?"])[:2]
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem or 0) / MiB, 1),
        "kernel": platform.release(),
        "disk": fs + ("" if rota == "" else (" (rotational)" if rota == "1" else " (non-rotational)")),
        "compiler": sh(f"{cxx or 'c++'} --version | head -1"),
        "torch": tv,
        "safetensors": sv,
        "python": platform.python_version(),
        "drop_caches": can_drop_caches(),
    }


def dataset_specs(quick, data_dir):
    if quick:
        specs = [("llm", ["llm", "32"]), ("small", ["small", "5000", "10"])]
    else:
        specs = [("llm", ["llm", "1024"]), ("small", ["small", "100000", "200"]), ("tiny", ["tiny", "100000"])]
        free = shutil.disk_usage(data_dir).free
        if free > 16 * (1 << 30):
            specs.append(("zip64", ["big", "4608"]))
        else:
            print(f"bench: {free >> 30} GiB free in {data_dir}; the >4 GiB ZIP64 data set needs 16: skipped")
    return specs


def generate(b, data_dir, specs):
    """Writes each data set once (kept between runs; the spec is the cache key)."""
    sets = {}
    for name, spec in specs:
        pt = os.path.join(data_dir, f"{name}.pt")
        st = os.path.join(data_dir, f"{name}.safetensors") if name not in ("zip64", "tiny") else None
        stamp = os.path.join(data_dir, f"{name}.json")
        info = None
        if os.path.exists(stamp) and os.path.exists(pt) and (st is None or os.path.exists(st)):
            with open(stamp) as f:
                info = json.load(f)
            if info.get("spec") != spec:
                info = None
        if info is None:
            print(f"bench: generating {name} ({' '.join(spec)}) in {data_dir}", flush=True)
            t0 = time.time()
            rc, out, err, _, _ = b.spawn([PY, os.path.join(HERE, "peer.py"), "generate", "0", spec[0], pt,
                                          st or "-"] + spec[1:])
            if rc != 0:
                raise SystemExit(f"bench: generating {name} failed: {err.strip()[-2000:]}")
            info = dict(json.loads(out.strip().splitlines()[-1]), spec=spec)
            with open(stamp, "w") as f:
                json.dump(info, f)
            print(f"bench: {name}: {info['tensors']} tensors, {info['bytes'] / MiB:.0f} MiB ({time.time() - t0:.0f} s)")
        info["pt"], info["st"] = pt, st
        info["pt_size"] = os.path.getsize(pt)
        sets[name] = info
    return sets


def run_all(b, sets, out_dir):
    quick = b.quick
    reps = 2 if quick else 5
    scratch = os.path.join(out_dir, "scratch")
    os.makedirs(scratch, exist_ok=True)
    cb = b.ckpt_bench
    peer = [PY, os.path.join(HERE, "peer.py")]
    for name, d in sets.items():
        pt, st = d["pt"], d["st"]
        big = name == "zip64"
        # tiny (issue #20's 100,000 tensors of 16 float32): the rows its targets name only
        lean = name == "tiny"
        r = 2 if big else reps
        open_reps = 3 if quick else 15 if name == "llm" else r  # opens of 100,000 tensors take seconds in torch
        print(f"\n== {name}: {d['tensors']} tensors, {d['bytes'] / MiB:.0f} MiB of tensor data, "
              f"{d['pt_size'] / MiB:.0f} MiB .pt", flush=True)
        m = dict(dataset=name, bytes=d["bytes"], tensors=d["tensors"])
        py = []  # (id, argv after "peer.py", meta)

        # load and mmap: a new process for every rep (each a first load, as at a restart)
        def ck(rid, argv, scen, fmt, file, **kw):
            fresh = kw.pop("fresh", scen in ("load", "mmap"))
            b.measure(f"{name}/{rid}", [cb, argv[0], str(kw.pop("reps", r))] + argv[1:],
                      dict(m, scenario=scen, program=kw.pop("program", f"ckpt ({fmt})"), file=file, **kw),
                      fresh=fresh)

        def pe(rid, op, nreps, args, scen, program, file, **kw):
            py.append((f"{name}/{rid}", [op, str(nreps)] + args,
                       dict(m, scenario=scen, program=program, file=file, **kw)))

        # open / list
        ck("open/ckpt.pt", ["open", pt], "open", "torch zip", pt, reps=open_reps)
        pe("open/torch.load(mmap)", "torch_open", open_reps, [pt], "open",
           "torch.load(mmap=True), no byte read", pt)
        if st:
            ck("open/ckpt.st", ["open", st], "open", "safetensors", st, reps=open_reps)
            pe("open/safe_open", "st_open", open_reps, [st], "open", "safetensors safe_open", st)
        # full load (copy)
        ck("load/ckpt.pt", ["load", pt], "load", "torch zip", pt)
        if not lean:
            ck("load/ckpt.pt.small_pages", ["load_small_pages", pt], "load", "torch zip", pt,
               program="ckpt (torch zip), huge pages off")
            ck("load/ckpt.pt.into", ["load_into", pt], "load into existing buffers", "torch zip", pt,
               program="ckpt Reader::read_into (torch zip)")
        if b.torch_bench and name == "llm":
            b.measure(f"{name}/load/ckpt.torch.into", [b.torch_bench, "module_into", str(r), pt],
                      dict(m, scenario="load into existing buffers",
                           program="ckpt::torch::load_state_dict into an existing torch::nn::Module", file=pt),
                      fresh=True)
        pe("load/torch.load", "torch_load", r, [pt], "load", "torch.load(weights_only=True)", pt)
        if not lean:
            b.measure(f"{name}/load/libtorch.pickle_load", [b.peer_bin, "pickle_load", str(r), pt],
                      dict(m, scenario="load", program="LibTorch torch::pickle_load", file=pt), fresh=True)
        if not big and not lean:
            b.measure(f"{name}/load/libtorch.jit_load", [b.peer_bin, "jit_load", "1", pt],
                      dict(m, scenario="load", program="LibTorch torch::jit::load", file=pt), expect_fail=True)
        if st:
            ck("load/ckpt.st", ["load", st], "load", "safetensors", st)
            pe("load/load_file", "st_load", r, [st], "load",
               "safetensors load_file (default backend: a lazy mapping, no byte read)", st)
            pe("load/load_file(pread)", "st_load_pread", r, [st], "load",
               "safetensors load_file(backend='pread')", st)
        if not lean:
            # lazy mapped load, every byte read
            ck("mmap/ckpt.pt", ["mmap", pt], "mmap", "torch zip", pt)
            pe("mmap/torch.load(mmap)", "torch_load_mmap", r, [pt], "mmap", "torch.load(mmap=True)", pt)
        if st:
            ck("mmap/ckpt.st", ["mmap", st], "mmap", "safetensors", st)
            pe("mmap/safe_open", "st_lazy", r, [st], "mmap", "safetensors safe_open + get_tensor", st)
        # limits for this file
        ck("limit/read", ["read", pt], "limit", "", pt, program="read() of the .pt (page cache), reused buffer")
        ck("limit/read_fresh", ["read_fresh", pt], "limit", "", pt,
           program="read() of the .pt into new memory (page faults)", fresh=True)
        if not lean:
            ck("limit/read_fresh_huge", ["read_fresh", pt, "huge"], "limit", "", pt,
               program="read() of the .pt into new memory, MADV_HUGEPAGE", fresh=True)
        if lean:
            o_pt = os.path.join(scratch, "out.pt")
            ck("save/ckpt.pt", ["save", pt, o_pt, "nofsync"], "save", "torch zip", pt, program="ckpt save (torch zip)")
            ck("save/ckpt.pt+fsync", ["save", pt, o_pt], "save", "torch zip", pt,
               program="ckpt save (torch zip)", fsync=True)
            pe("save/torch.save", "torch_save", r, [pt, o_pt], "save", "torch.save", pt)
        elif not big:
            sz = str(max(1, d["pt_size"] // MiB))
            ck("limit/memcpy", ["memcpy", sz], "limit", "", None, program="memcpy (same size)")
            out = os.path.join(scratch, "write.bin")
            ck("limit/write", ["write", out, sz], "limit", "", None, program="write() to the same disk")
            ck("limit/write+fsync", ["write", out, sz, "fsync"], "limit", "", None,
               program="write() + fsync to the same disk", fsync=True)
            os.unlink(out)
            # save
            o_pt, o_st = os.path.join(scratch, "out.pt"), os.path.join(scratch, "out.safetensors")
            ck("save/ckpt.pt", ["save", pt, o_pt, "nofsync"], "save", "torch zip", pt, program="ckpt save (torch zip)")
            ck("save/ckpt.pt+fsync", ["save", pt, o_pt], "save", "torch zip", pt,
               program="ckpt save (torch zip)", fsync=True)
            ck("save/ckpt.st+fsync", ["save_st", pt, o_st], "save", "safetensors", pt,
               program="ckpt save_safetensors", fsync=True)
            pe("save/torch.save", "torch_save", r, [pt, o_pt], "save", "torch.save", pt)
            pe("save/save_file", "st_save", r, [pt, o_st], "save", "safetensors save_file", pt)
            # convert pt -> safetensors
            o_cv = os.path.join(scratch, "convert.safetensors")
            b.measure_cli(f"{name}/convert/ckpt", [b.cli, "convert", pt, o_cv], r,
                          dict(m, scenario="convert", program="ckpt convert (CLI, process start included)", file=pt))
            pe("convert/torch+safetensors", "convert", r, [pt, o_cv], "convert",
               "torch.load + save_file", pt)
        if quick:
            b.measure_batch(py)
        else:
            for rid, argv, meta in py:
                b.measure(rid, peer + argv, meta, fresh=meta["scenario"] in ("load", "mmap"))
        # cold page cache: drop_caches before each rep where it can be written, else
        # posix_fadvise(DONTNEED) on the file (the programs' --cold)
        if not quick and name == "llm":
            dc = can_drop_caches()
            print("  -- cold page cache (%s before each rep)" % ("sync; echo 1 > /proc/sys/vm/drop_caches"
                                                             if dc else "posix_fadvise DONTNEED"), flush=True)
            cold = [] if dc else ["--cold"]
            for rid, argv, prog in [
                ("cold/ckpt.pt", [cb, "load", str(r)] + cold + [pt], "ckpt (torch zip)"),
                ("cold/torch.load", peer + ["torch_load", str(r)] + cold + [pt], "torch.load(weights_only=True)"),
                ("cold/ckpt.st", [cb, "load", str(r)] + cold + [st], "ckpt (safetensors)"),
                ("cold/load_file(pread)", peer + ["st_load_pread", str(r)] + cold + [st],
                 "safetensors load_file(backend='pread')"),
                ("cold/read", [cb, "read_fresh", str(r)] + cold + [pt], "read() of the .pt into new memory"),
            ]:
                b.measure(f"{name}/{rid}", argv, dict(m, scenario="load, cold cache", program=prog, file=None),
                          fresh=True, before=drop_caches if dc else None)
        for f in os.listdir(scratch):
            os.unlink(os.path.join(scratch, f))
    # the CRC-32 implementations (ckpt uses ISA-L)
    print("\n== CRC-32", flush=True)
    mib = "64" if quick else "512"
    for lib in ("isal", "libdeflate"):
        b.measure(f"crc32/{lib}", [cb, "crc32_" + lib, str(reps), mib],
                  dict(dataset="-", scenario="limit", program=f"CRC-32 ({'ISA-L, used by ckpt' if lib == 'isal' else 'libdeflate'})",
                       file=None))


# Comparisons: (id, other id, what, target). "speedup": other median / ckpt median;
# "of limit": limit median / ckpt median (the fraction of the limit's bandwidth).
# Targets are issue #20's (llm = the LLM-shaped file; small and tiny = 100,000 small
# tensors: tiny is the issue's own scenario, 16 float32 each; small, 1.4-2.8 KiB each).
def comparisons(results):
    rows = []
    for name in ("llm", "small", "tiny", "zip64"):
        llm, small = name == "llm", name in ("small", "tiny")

        def add(a, o, kind, target=None):
            a, o = f"{name}/{a}", f"{name}/{o}"
            if a in results and o in results:
                rows.append((a, o, kind, target))
        add("open/ckpt.pt", "open/torch.load(mmap)", "speedup")
        add("open/ckpt.st", "open/safe_open", "speedup")
        add("load/ckpt.pt", "load/torch.load", "speedup", 15.0 if small else 2.5 if llm else None)
        add("load/ckpt.pt", "load/libtorch.pickle_load", "speedup")
        add("load/ckpt.st", "load/load_file(pread)", "speedup")
        add("load/ckpt.st", "load/load_file", "speedup")
        add("load/ckpt.pt", "limit/read", "of limit", 0.6 if llm else None)
        add("load/ckpt.st", "limit/read", "of limit", 0.6 if llm else None)
        add("load/ckpt.pt.into", "limit/read", "of limit", 0.7 if llm else None)
        add("load/ckpt.torch.into", "limit/read", "of limit", 0.7 if llm else None)
        add("load/ckpt.pt", "limit/read_fresh", "of limit")
        add("load/ckpt.pt", "limit/read_fresh_huge", "of limit")
        add("mmap/ckpt.pt", "mmap/torch.load(mmap)", "speedup")
        add("mmap/ckpt.st", "mmap/safe_open", "speedup")
        add("save/ckpt.pt", "save/torch.save", "speedup", 5.0 if small else 1.5 if llm else None)
        add("save/ckpt.pt+fsync", "save/torch.save+fsync", "speedup", 5.0 if small else 1.5 if llm else None)
        add("save/ckpt.st+fsync", "save/save_file+fsync", "speedup")
        add("save/ckpt.pt", "limit/write", "of limit")
        add("save/ckpt.pt+fsync", "limit/write+fsync", "of limit")
        add("convert/ckpt", "convert/torch+safetensors", "speedup")
        add("cold/ckpt.pt", "cold/torch.load", "speedup", 1.0)
        add("cold/ckpt.st", "cold/load_file(pread)", "speedup")
        add("cold/ckpt.pt", "cold/read", "of limit", 0.8)
    out = []
    for a, o, kind, target in rows:
        ratio = results[o]["median_s"] / results[a]["median_s"]
        out.append({"ckpt": a, "other": o, "kind": kind, "ratio": ratio, "target": target,
                    "met": None if target is None else ratio >= target})
    return out


def checks(results):
    """Absolute targets: open time, peak RSS, CRC throughput."""
    out = []
    r = results.get("llm/open/ckpt.pt")
    if r:
        out.append(("open of the llm .pt (%d tensors)" % r["tensors"], fmt_s(r["median_s"]), "< 5 ms",
                    r["median_s"] < 5e-3 if r["bytes"] >= 512 * MiB else None))
    for key in ("llm/load/ckpt.pt", "llm/load/ckpt.st"):
        r = results.get(key)
        if r and r.get("peak_rss_kb"):
            extra = r["peak_rss_kb"] - r["rss_before_kb"]
            out.append((f"peak RSS of {key} over its start, / tensor bytes", f"{extra * 1024 / r['bytes']:.2f}x",
                        "<= 1.1x", extra * 1024 <= 1.1 * r["bytes"]))
    # issue #20: 100,000 small tensors open in <= 150 ms, load in <= 300 ms, peak RSS
    # <= 1.5x the tensor bytes + 64 MiB (only judged at full size, not in --quick)
    for name in ("tiny", "small"):
        full_small = (results.get(f"{name}/load/ckpt.pt") or {}).get("tensors", 0) >= 100000
        for key, limit in ((f"{name}/open/ckpt.pt", 0.150), (f"{name}/load/ckpt.pt", 0.300)):
            r = results.get(key)
            if r:
                out.append((f"{key} ({r['tensors']} tensors)", fmt_s(r["median_s"]), f"<= {limit * 1e3:.0f} ms",
                            r["median_s"] <= limit if full_small else None))
        r = results.get(f"{name}/load/ckpt.pt")
        if r and r.get("peak_rss_kb"):
            extra = r["peak_rss_kb"] - r["rss_before_kb"]
            out.append((f"peak RSS of {name}/load/ckpt.pt over its start, / tensor bytes",
                        f"{extra * 1024 / r['bytes']:.2f}x ({extra / 1024:.0f} MiB)", "<= 1.5x + 64 MiB",
                        extra * 1024 <= 1.5 * r["bytes"] + 64 * MiB))
    for key in ("llm/mmap/ckpt.pt", "llm/mmap/ckpt.st"):
        r = results.get(key)
        if r and r.get("rss_anon_kb"):
            out.append((f"anonymous memory held by {key}", f"{r['rss_anon_kb'] / 1024:.1f} MiB",
                        "small constant", r["rss_anon_kb"] * 1024 < 0.05 * r["bytes"] + 64 * MiB))
    r = results.get("crc32/isal")
    if r:
        out.append(("CRC-32 (ISA-L)", f"{r['gb_per_s']:.1f} GB/s", ">= 5 GB/s", r["gb_per_s"] >= 5))
    return [dict(zip(("what", "value", "target", "met"), c)) for c in out]


def markdown(b, mach, cmd, load, cmp, chk):
    res = b.results
    L = [f"Command: `{cmd}`", "",
         "Machine: {cpu}, {cores} cores, {ram_gib} GiB RAM, Linux {kernel}; data on {disk}; {compiler}; "
         "torch {torch}, safetensors {safetensors} (Python {python}).".format(**mach),
         f"Load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f}. "
         "Page cache warm (each file read once before its measurement) unless the scenario says cold"
         + (("; cold = `sync; echo 1 > /proc/sys/vm/drop_caches` before each repetition"
             if mach["drop_caches"] else
             "; cold = `posix_fadvise(POSIX_FADV_DONTNEED)` on the file before each repetition "
             "(`/proc/sys/vm/drop_caches` is not writable here)")
            + " (a VM host may still cache the file)" if any("cold" in k for k in res) else "") + ". "
         + ("Quick mode: the repetitions of a program run in one process, and the Python peers of a "
            "data set share one (no peak RSS for them)." if b.quick else
            "Load and mmap rows: a new process for every repetition (each is a first load, as at a "
            "restart, with the allocator's memory not yet faulted in); other rows: the repetitions in "
            "one process. Peak RSS: ru_maxrss of the process (Python peers include the interpreter "
            "and torch, ~300-400 MiB; the LibTorch peer its libraries)."),
         "", "| data | scenario | program | median | min – max | GB/s | peak RSS |",
         "|---|---|---|---:|---:|---:|---:|"]
    for rid in b.order:
        r = res[rid]
        if "failed" in r:
            L.append(f"| {r['dataset']} | {r['scenario']} | {r['program']} | cannot read the file | | | |")
            continue
        prog = r["program"] + (" + fsync" if r.get("fsync") and "fsync" not in r["program"] else "")
        rss = f"{r['peak_rss_kb'] / 1024:.0f} MiB" if r.get("peak_rss_kb") else "–"
        gb = f"{r['gb_per_s']:.2f}" if "gb_per_s" in r and r["scenario"] != "open" else ""
        L.append(f"| {r['dataset']} | {r['scenario']} | {prog} | {fmt_s(r['median_s'])} | "
                 f"{fmt_s(r['min_s'])} – {fmt_s(r['max_s'])} | {gb} | {rss} |")
    L += ["", "Ratios (medians). *speedup*: the other's time / ckpt's time (> 1: ckpt is faster); "
          "*of limit*: the limit's time / ckpt's time (the fraction of the limit's bandwidth ckpt reaches).", "",
          "| ckpt | compared with | kind | ratio | target |", "|---|---|---|---:|---|"]
    for c in cmp:
        tgt = "" if c["target"] is None else f">= {c['target']}x " + ("met" if c["met"] else "**missed**")
        L.append(f"| {c['ckpt']} | {c['other'].split('/', 1)[1]} | {c['kind']} | {c['ratio']:.2f}x | {tgt} |")
    L += ["", "| check | value | target |", "|---|---:|---|"]
    for c in chk:
        st = "" if c["met"] is None else (" met" if c["met"] else " **missed**")
        L.append(f"| {c['what']} | {c['value']} | {c['target']}{st} |")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--peer-bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--command", default="bash bench/run")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    data_dir = args.data or os.path.join(args.out, "data")
    os.makedirs(data_dir, exist_ok=True)
    b = Bench(args)
    mach = machine(data_dir, args.build)
    print("machine: " + json.dumps(mach), flush=True)
    load0 = os.getloadavg()[0]
    sets = generate(b, data_dir, dataset_specs(args.quick, data_dir))
    run_all(b, sets, args.out)
    load1 = os.getloadavg()[0]
    cmp, chk = comparisons(b.results), checks(b.results)
    md = markdown(b, mach, args.command, (load0, load1), cmp, chk)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump({"command": args.command, "quick": args.quick, "machine": mach, "loadavg": [load0, load1],
                   "data": {k: {x: v[x] for x in ("tensors", "bytes", "pt_size", "spec")} for k, v in sets.items()},
                   "results": {k: b.results[k] for k in b.order}, "ratios": cmp, "checks": chk,
                   "errors": b.errors}, f, indent=1)
    print("\n" + md)
    print(f"bench: wrote {args.out}/bench.md and {args.out}/bench.json")
    if b.errors:
        print("bench: %d program(s) failed:" % len(b.errors), file=sys.stderr)
        for rid, msg in b.errors:
            print(f"  {rid}: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
