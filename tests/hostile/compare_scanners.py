#!/usr/bin/env python3
"""Runs ckpt scan, picklescan, modelscan and fickling over the hostile corpus
and prints the comparison table of docs/security.md (not a ctest: the other
tools change from release to release).

    ~/.cache/ckpt/venv/bin/python tests/hostile/compare_scanners.py --ckpt build/ckpt [--update-doc docs/security.md]

Each tool runs once per file in its own process (timeout 60 s) through its
documented interface, and each answer is one of
  flagged  the tool says unsafe (exit 1 / issues found / severity above LIKELY_SAFE)
  error    the tool failed or refused to read the file (exit 2, crash, timeout)
  clean    the tool says nothing is wrong (exit 0 / no issues)
A `dangerous` file counts as detected only when flagged; a `damaged` file when
flagged or error (a scanner that reports the damage did its job). The clean
fixtures of tests/data/valid are scanned too: flagging one is a false positive.
"""
import argparse
import collections
import concurrent.futures
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BEGIN = "<!-- compare_scanners.py: begin -->"
END = "<!-- compare_scanners.py: end -->"
TIMEOUT_S = 60

# fickling's CLI reads bare pickles only; zip archives go through its own
# scan_zip_archive (members named .pkl/.pickle/.bin), as its README suggests.
FICKLING = r"""
import os, sys, zipfile
from fickling.analysis import Severity
from fickling.loader import scan_file, scan_zip_archive
p = sys.argv[1]
try:
    if zipfile.is_zipfile(p):
        results = list(scan_zip_archive(p, graceful=True, json_output_path=os.devnull).values())
    else:
        results = [scan_file(p, graceful=True, json_output_path=os.devnull)]
except Exception as e:
    print("error", type(e).__name__, e); sys.exit(2)
flagged = any(r.severity != Severity.LIKELY_SAFE for r in results)
errors = any(getattr(r, "errors", None) for r in results)
sys.exit(1 if flagged else 2 if (errors or not results) else 0)
"""


def tools(ckpt, venv_bin):
    return {
        "ckpt scan": lambda p: [ckpt, "scan", p],
        "picklescan": lambda p: [os.path.join(venv_bin, "picklescan"), "--path", p],
        "modelscan": lambda p: [os.path.join(venv_bin, "modelscan"), "-p", p],
        "fickling": lambda p: [os.path.join(venv_bin, "python"), "-c", FICKLING, p],
    }


def run(argv):
    try:
        r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=TIMEOUT_S,
                           env=dict(os.environ, PYTHONWARNINGS="ignore"))
    except subprocess.TimeoutExpired:
        return "error"
    except OSError:
        return "missing"
    return {0: "clean", 1: "flagged"}.get(r.returncode, "error")


def version(name, venv_bin):
    if name == "ckpt scan":
        return ""
    py = os.path.join(venv_bin, "python")
    mod = {"picklescan": "picklescan", "modelscan": "modelscan", "fickling": "fickling"}[name]
    r = subprocess.run([py, "-c", "import importlib.metadata as m; print(m.version(%r))" % mod],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "not installed"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--venv", default=os.environ.get("CKPT_VENV", os.path.expanduser("~/.cache/ckpt/venv")))
    ap.add_argument("--corpus", default=os.path.join(HERE, "corpus"))
    ap.add_argument("--update-doc", help="replace the table between the markers in this file")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    venv_bin = os.path.join(a.venv, "bin")
    with open(os.path.join(HERE, "manifest.json")) as f:
        manifest = json.load(f)
    clean_dir = os.path.join(ROOT, "tests", "data", "valid")
    clean = sorted(os.path.join(d, n) for d, _, ns in os.walk(clean_dir) for n in ns
                   if n.endswith((".pt", ".safetensors")))
    ts = tools(os.path.abspath(a.ckpt), venv_bin)
    jobs = [(t, os.path.join(a.corpus, n)) for t in ts for n in sorted(manifest)]
    jobs += [(t, p) for t in ts for p in clean]
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as ex:
        answers = dict(zip(jobs, ex.map(lambda j: run(ts[j[0]](j[1])), jobs)))

    names = list(ts)
    classes = collections.OrderedDict()
    for n in sorted(manifest, key=lambda n: (manifest[n]["class"], n)):
        classes.setdefault(manifest[n]["class"], []).append(n)
    lines = []
    vers = ", ".join("%s %s" % (t, version(t, venv_bin)) for t in names if t != "ckpt scan")
    lines.append("Corpus: %d files in %d attack classes; tools: %s." % (len(manifest), len(classes), vers))
    lines.append("A cell is detected/files, with the files the tool failed on (error) in brackets when it")
    lines.append("missed them; `damaged` files count as detected when flagged or reported as errors.")
    lines.append("")
    lines.append("| attack class | expected | files | " + " | ".join(names) + " |")
    lines.append("|---|---|---|" + "---|" * len(names))
    totals = {t: [0, 0] for t in names}
    missed = {t: [] for t in names}
    for cls, files in classes.items():
        expected = sorted({manifest[n]["expected"] for n in files})
        row = "| %s | %s | %d |" % (cls, "/".join(expected), len(files))
        for t in names:
            det = err = 0
            for n in files:
                ans = answers[(t, os.path.join(a.corpus, n))]
                ok = ans == "flagged" or (manifest[n]["expected"] == "damaged" and ans == "error")
                det += ok
                if not ok:
                    missed[t].append(n)
                    err += ans == "error"
            totals[t][0] += det
            totals[t][1] += len(files)
            row += " %d/%d%s |" % (det, len(files), " (%d err)" % err if err else "")
        lines.append(row)
    lines.append("| **total** | | %d | " % len(manifest) +
                 " | ".join("**%d/%d**" % tuple(totals[t]) for t in names) + " |")
    fp_row = "| clean fixtures flagged (false positives) | safe | %d |" % len(clean)
    for t in names:
        fp = sum(answers[(t, p)] == "flagged" for p in clean)
        er = sum(answers[(t, p)] == "error" for p in clean)
        fp_row += " %d%s |" % (fp, " (%d err)" % er if er else "")
    lines.append(fp_row)
    lines.append("")
    for t in names:
        if missed[t]:
            lines.append("- %s missed: %s" % (t, ", ".join("`%s`" % m for m in missed[t])))
    table = "\n".join(lines)
    print(table)
    if a.update_doc:
        with open(a.update_doc) as f:
            doc = f.read()
        i, j = doc.index(BEGIN), doc.index(END)
        doc = doc[:i + len(BEGIN)] + "\n" + table + "\n" + doc[j:]
        with open(a.update_doc, "w") as f:
            f.write(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
