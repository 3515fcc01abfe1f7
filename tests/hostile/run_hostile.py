#!/usr/bin/env python3
"""Runs the ckpt binary over every file of the hostile corpus (ctest label `hostile`).

    python3 tests/hostile/run_hostile.py --ckpt build/ckpt [--corpus DIR] [--manifest FILE]

For each file listed in manifest.json:
  - `ckpt ls FILE` (the weights_only load path) refuses: exit code 2 and
    `ckpt: error:` on stderr, never a signal;
  - `ckpt ls --objects FILE` (inspection mode) ends by itself (any exit code,
    not a signal);
  - `ckpt scan FILE` says exit 1 for an `expected: dangerous` file, and 2 (or
    1 when it saw something dangerous before the damage) for `damaged`;
  - no run takes more than 20 s, none has a peak RSS above 64 MiB + 16 x the
    file size (measured per child with wait4), and the canary file that every
    payload would create does not exist afterwards.
Exits 1 listing every failure; prints 'N passed, M failed' last.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CANARY = "/tmp/ckpt-hostile-canary"
TIMEOUT_S = 20
RSS_BASE = 64 << 20
RSS_FACTOR = 16


def run_measured(argv, env):
    """Like run(), with the child's own peak RSS (os.wait4) and a hard timeout."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = t0 + TIMEOUT_S
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid != 0:
            break
        if time.monotonic() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            p.returncode = -9
            return "timeout", p.stderr.read(), ru.ru_maxrss * 1024, time.monotonic() - t0
        time.sleep(0.005)
    p.returncode = 0  # reaped here; keep Popen from waiting again
    err = p.stderr.read()
    p.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    return code, err, ru.ru_maxrss * 1024, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--corpus", default=os.path.join(HERE, "corpus"))
    ap.add_argument("--manifest", default=os.path.join(HERE, "manifest.json"))
    ap.add_argument("--rss-base-mib", type=int, default=RSS_BASE >> 20,
                    help="fixed part of the memory bound (raise it for sanitizer builds)")
    a = ap.parse_args()
    with open(a.manifest) as f:
        manifest = json.load(f)
    present = set(os.listdir(a.corpus))
    env = dict(os.environ, CKPT_CANARY=CANARY)
    if os.path.exists(CANARY):
        os.remove(CANARY)

    passed = failed = 0
    failures = []
    for name in sorted(manifest):
        entry = manifest[name]
        path = os.path.join(a.corpus, name)
        problems = []
        if name not in present:
            problems.append("missing from the corpus (run tests/hostile/make_corpus.py)")
        else:
            size = os.path.getsize(path)
            rss_limit = (a.rss_base_mib << 20) + RSS_FACTOR * size
            checks = [
                ("ls", [a.ckpt, "ls", path]),
                ("ls --objects", [a.ckpt, "ls", "--objects", path]),
                ("scan", [a.ckpt, "scan", path]),
            ]
            for label, argv in checks:
                code, err, rss, secs = run_measured(argv, env)
                err = err.decode("utf-8", "replace")
                if code == "timeout":
                    problems.append("%s: still running after %d s" % (label, TIMEOUT_S))
                    continue
                if code < 0:
                    problems.append("%s: killed by signal %s" % (label, signal.Signals(-code).name))
                    continue
                if rss > rss_limit:
                    problems.append("%s: peak RSS %d MiB > limit %d MiB" % (label, rss >> 20, rss_limit >> 20))
                if "AddressSanitizer" in err or "runtime error:" in err:
                    problems.append("%s: sanitizer report: %s" % (label, err[:300]))
                if label == "ls":
                    if code != 2 or "ckpt: error:" not in err:
                        problems.append("ls: expected a refusal (exit 2, 'ckpt: error:'), got exit %d" % code)
                elif label == "ls --objects":
                    if code not in (0, 2):
                        problems.append("ls --objects: exit %d" % code)
                    if code == 2 and "ckpt: error:" not in err:
                        problems.append("ls --objects: exit 2 without 'ckpt: error:'")
                else:
                    want = {1} if entry["expected"] == "dangerous" else {1, 2}
                    if code not in want:
                        problems.append("scan: exit %d, expected %s for a %s file" %
                                        (code, " or ".join(map(str, sorted(want))), entry["expected"]))
                if os.path.exists(CANARY):
                    problems.append("%s: the canary %s exists: something was executed" % (label, CANARY))
                    os.remove(CANARY)
        if problems:
            failed += 1
            failures.append((name, entry["class"], problems))
        else:
            passed += 1
    extra = sorted(present - set(manifest))
    for name in extra:
        failed += 1
        failures.append((name, "?", ["in the corpus but not in manifest.json"]))
    for name, cls, problems in failures:
        print("FAIL %s (%s)" % (name, cls))
        for p in problems:
            print("     " + p)
    print("hostile corpus: %d files, %d classes" % (len(manifest), len({e["class"] for e in manifest.values()})))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
