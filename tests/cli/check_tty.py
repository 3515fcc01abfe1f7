"""The ckpt tool on a terminal and off it, driven through a pseudo-terminal:

- a progress bar appears on stderr when stderr is a terminal, and not when it
  is a pipe;
- colour (ANSI SGR sequences) appears on a terminal stdout, never in a pipe,
  and never with NO_COLOR set.

    python3 tests/cli/check_tty.py --ckpt build/ckpt

Needs only the Python standard library (pty: Linux/macOS).
"""
import argparse
import os
import pty
import select
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
C = os.path.join(ROOT, "tests", "data", "cli")

failures = []


def check(cond, what, detail=""):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)
        if detail:
            print("     got:", repr(detail)[:600])


def run(cmd, tty_stdout, tty_stderr, env):
    """Runs cmd with stdout / stderr on a pseudo-terminal or a pipe; returns (stdout, stderr, exit)."""
    master, slave = pty.openpty()
    out = slave if tty_stdout else subprocess.PIPE
    err = slave if tty_stderr else subprocess.PIPE
    p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
    os.close(slave)
    tty_data = b""
    while True:
        r, _, _ = select.select([master], [], [], 30)
        if not r:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        tty_data += chunk
    so, se = p.communicate(timeout=60)
    os.close(master)
    so = tty_data if tty_stdout else so
    se = tty_data if tty_stderr and not tty_stdout else se
    return so or b"", se or b"", p.returncode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ckpt = os.path.abspath(ap.parse_args().ckpt)
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    env.pop("CKPT_NO_PROGRESS", None)
    stats = [ckpt, "stats", os.path.join(C, "stats.pt")]
    diff = [ckpt, "diff", os.path.join(C, "diff_a.pt"), os.path.join(C, "diff_b.pt")]

    # progress bar: on a terminal stderr only
    so, se, rc = run(stats, tty_stdout=False, tty_stderr=True, env=env)
    check(rc == 0, "stats exits 0 with stderr on a terminal")
    check(b"stats [" in se and b"%" in se, "progress bar drawn on a terminal stderr", se)
    check(b"\r\x1b[2K" in se, "progress bar erased when done", se)
    check(b"\x1b[" not in so and b"stats [" not in so, "stdout (a pipe) has no bar and no colour", so)
    so, se, rc = run(stats, tty_stdout=False, tty_stderr=False, env=env)
    check(rc == 0 and se == b"", "no progress bar when stderr is a pipe", se)
    so, se, rc = run(stats, tty_stdout=False, tty_stderr=True, env=dict(env, CKPT_NO_PROGRESS="1"))
    check(b"stats [" not in se, "no progress bar with CKPT_NO_PROGRESS", se)

    # convert: a byte-counting bar while the output is written, none into a pipe
    with tempfile.TemporaryDirectory() as tmp:
        convert = [ckpt, "convert", os.path.join(C, "stats.pt"), os.path.join(tmp, "out.safetensors")]
        so, se, rc = run(convert, tty_stdout=False, tty_stderr=True, env=env)
        check(rc == 0 and b"convert [" in se and b"ckpt: wrote" in se, "convert draws a bar on a terminal", se)
        so, se, rc = run(convert, tty_stdout=False, tty_stderr=False, env=env)
        check(rc == 0 and b"convert [" not in se, "convert draws no bar into a pipe", se)

    # colour: a terminal stdout, unless NO_COLOR
    so, se, rc = run(diff, tty_stdout=True, tty_stderr=False, env=env)
    check(rc == 1, "diff exits 1 (different) on a terminal")
    check(b"\x1b[31m- only in A:" in so and b"\x1b[32m+ only in B:" in so, "diff colours on a terminal", so)
    so, se, rc = run(diff, tty_stdout=True, tty_stderr=False, env=dict(env, NO_COLOR="1"))
    check(b"\x1b[" not in so and b"- only in A:" in so, "no colour with NO_COLOR set", so)
    so, se, rc = run(diff, tty_stdout=False, tty_stderr=False, env=env)
    check(b"\x1b[" not in so and b"- only in A:" in so, "no colour into a pipe", so)

    if failures:
        print(f"{len(failures)} failures")
        return 1
    print("terminal behaviour as documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
