"""Golden-output tests for the ckpt command line.

Each case runs `ckpt ARGS...` from the repository root with stdout and stderr
piped (so no colour and no progress bar) and compares stdout, stderr and the
exit code with tests/cli/golden/<case>.txt. Paths under the per-run scratch
directory print as $TMP.

    python3 tests/cli/run_golden.py --ckpt build/ckpt            # check
    python3 tests/cli/run_golden.py --ckpt build/ckpt --update   # rewrite the goldens
    python3 tests/cli/run_golden.py --ckpt build/ckpt -k diff    # only cases whose name contains 'diff'

Needs only the Python standard library.
"""
import argparse
import difflib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
GOLDEN = os.path.join(HERE, "golden")
V = "tests/data/valid"
C = "tests/data/cli"

# name -> (args, setup). Arguments may use $TMP (the scratch directory).
CASES = [
    # ---- ls
    ("ls_torch2", ["ls", f"{V}/torch2/net_state_dict.pt"]),
    ("ls_torch113_json", ["ls", "--json", f"{V}/torch113/net_state_dict.pt"]),
    ("ls_json_digest", ["ls", "--json", "--digest", f"{V}/torch2/views.pt"]),
    ("ls_tree", ["ls", "--tree", f"{V}/torch2/checkpoint.pt"]),
    ("ls_filter", ["ls", "--filter", "^model/fc", f"{V}/torch2/checkpoint.pt"]),
    ("ls_safetensors", ["ls", f"{V}/safetensors/all_dtypes.safetensors"]),
    ("ls_several", ["ls", f"{V}/torch2/net_state_dict.pt", f"{V}/torch113/net_state_dict_legacy.pt"]),
    ("ls_several_json", ["ls", "--json", f"{V}/torch2/net_state_dict.pt", f"{V}/safetensors/names.safetensors"]),
    ("ls_control_characters", ["ls", f"{V}/safetensors/names.safetensors"]),
    ("ls_escape_sequences", ["ls", "--tree", "$TMP/escapes.safetensors"]),
    ("ls_legacy_tar", ["ls", f"{V}/torch113/old_tar.pt"]),
    # ---- info
    ("info_checkpoint", ["info", f"{V}/torch2/checkpoint.pt"]),
    # a torch.distributed.checkpoint directory torch 2.x wrote with 2 ranks (consolidated)
    ("ls_dcp", ["ls", "tests/data/dcp/torch2_w2"]),
    ("info_dcp", ["info", "tests/data/dcp/torch2_w2"]),
    ("verify_dcp", ["verify", "tests/data/dcp/torch2_w2", "tests/data/dcp/ckpt_mpi3"]),
    ("info_checkpoint_json", ["info", "--json", f"{V}/torch2/checkpoint.pt"]),
    ("info_torch113", ["info", f"{V}/torch113/checkpoint_legacy.pt"]),
    ("info_safetensors", ["info", f"{V}/safetensors/metadata_many.safetensors"]),
    ("info_scripted", ["info", f"{V}/torch2/scripted.pt"]),
    ("info_several_json", ["info", "--json", f"{V}/torch2/save_empty.pt", f"{V}/safetensors/no_tensors.safetensors"]),
    # ---- verify
    ("verify_several", ["verify", f"{V}/torch2/checkpoint.pt", f"{V}/torch113/checkpoint_legacy.pt",
                        f"{V}/safetensors/views.safetensors"]),
    ("verify_damaged", ["verify", "$TMP/damaged.pt"]),
    # ---- diff
    ("diff_torch2_vs_torch113", ["diff", f"{V}/torch2/net_state_dict.pt", f"{V}/torch113/net_state_dict_legacy.pt"]),
    ("diff_pt_vs_safetensors", ["diff", f"{C}/stats.pt", "$TMP/stats.safetensors"]),
    ("diff_pt_vs_safetensors_json", ["diff", "--json", f"{C}/stats.pt", "$TMP/stats.safetensors"]),
    ("diff_tree_vs_safetensors", ["diff", f"{C}/diff_a.pt", "$TMP/diff_a.safetensors"]),
    ("diff_tree_vs_safetensors_tensors_only", ["diff", "--tensors-only", "--equal-nan", f"{C}/diff_a.pt",
                                               "$TMP/diff_a.safetensors"]),
    ("diff_changes", ["diff", f"{C}/diff_a.pt", f"{C}/diff_b.pt"]),
    ("diff_changes_json", ["diff", "--json", f"{C}/diff_a.pt", f"{C}/diff_b.pt"]),
    ("diff_tolerance", ["diff", "--atol", "0.6", "--equal-nan", "--tensors-only", "--filter", "fc|emb|nan",
                        f"{C}/diff_a.pt", f"{C}/diff_b.pt"]),
    ("diff_nested_vs_flat", ["diff", "--tensors-only", f"{V}/torch2/checkpoint.pt", f"{V}/torch113/checkpoint.pt"]),
    ("diff_dtypes_self", ["diff", f"{V}/torch2/save_dtypes.pt", f"{V}/torch2/save_dtypes.pt"]),
    # ---- stats
    ("stats", ["stats", f"{C}/stats.pt"]),
    ("stats_json", ["stats", "--json", f"{C}/stats.pt"]),
    ("stats_filter", ["stats", "--filter", "^model/fc", f"{V}/torch2/checkpoint.pt"]),
    ("stats_dtypes", ["stats", f"{V}/torch2/save_dtypes.pt"]),
    # ---- extract
    ("extract_one", ["extract", f"{V}/torch2/net_state_dict.pt", "fc.weight", "-o", "$TMP/fc.npy"]),
    ("extract_bf16_refused", ["extract", f"{V}/torch2/save_dtypes.pt", "bfloat16", "-o", "$TMP/x.npy"]),
    ("extract_as_float32", ["extract", f"{V}/torch2/save_dtypes.pt", "float8_e4m3fn", "--as", "float32", "-o",
                            "$TMP/f8.npy"]),
    ("extract_bits_refused", ["extract", f"{V}/torch2/save_dtypes.pt", "bits8", "-o", "$TMP/x.npy"]),
    ("extract_usage", ["extract", f"{V}/torch2/save_dtypes.pt"]),
    ("stats_several_json", ["stats", "--json", f"{V}/torch2/save_empty.pt", f"{V}/safetensors/edge_shapes.safetensors"]),
    ("extract_all", ["extract", f"{V}/torch2/checkpoint.pt", "--all", "$TMP/all"]),
    ("extract_missing_name", ["extract", f"{V}/torch2/net_state_dict.pt", "nope", "-o", "$TMP/x.npy"]),
    # ---- manage
    ("manage_list", ["manage", "$TMP/run"]),
    ("manage_verify", ["manage", "--verify", "--metric", "val_loss", "$TMP/run_damaged"]),
    ("manage_json", ["manage", "--json", "--metric", "val_loss", "$TMP/run"]),
    ("manage_prune_dry_run", ["manage", "--prune", "--dry-run", "--keep-last", "1", "--keep-best", "1",
                              "--metric", "val_loss", "$TMP/run"]),
    ("manage_prune", ["manage", "--prune", "--keep-last", "1", "$TMP/run_prune"]),
    ("manage_prune_no_policy", ["manage", "--prune", "$TMP/run"]),
    ("manage_not_a_dir", ["manage", f"{V}"]),
    # opened by a CheckpointManager, never saved to: valid and empty (issue #19.4)
    ("manage_verify_empty", ["manage", "--verify", "$TMP/run_empty"]),
    ("manage_verify_empty_json", ["manage", "--verify", "--json", "$TMP/run_empty"]),
    # ---- convert --to dcp into a directory that exists (issue #19.2)
    ("convert_dcp_into_empty_dir", ["convert", f"{V}/torch2/checkpoint.pt", "$TMP/dcp_empty", "--to", "dcp"]),
    ("convert_dcp_over_earlier_output", ["convert", f"{V}/torch2/checkpoint.pt", "$TMP/dcp_again", "--to", "dcp"]),
    ("ls_dcp_after_overwrite", ["ls", "$TMP/dcp_again"]),
    # ---- help
    ("help", ["help"]),
    ("help_diff", ["help", "diff"]),
    ("help_unknown", ["help", "frobnicate"]),
    ("completion_bash", ["completion", "bash"]),
    ("completion_zsh", ["completion", "zsh"]),
    # ---- errors
    ("error_missing_file", ["ls", "$TMP/does-not-exist.pt"]),
    ("error_not_a_checkpoint", ["info", "README.md"]),
    ("error_truncated", ["ls", "$TMP/truncated.pt"]),
    ("error_one_of_several", ["ls", f"{V}/torch2/save_empty.pt", "$TMP/does-not-exist.pt"]),
    ("error_no_command", []),
    ("error_unknown_command", ["frobnicate"]),
    ("error_missing_argument", ["diff", f"{V}/torch2/net_state_dict.pt"]),
    ("error_bad_option", ["stats", "--no-such-option", f"{V}/torch2/net_state_dict.pt"]),
    ("error_bad_regex", ["ls", "--filter", "(", f"{V}/torch2/net_state_dict.pt"]),
    ("error_bad_tolerance", ["diff", "--rtol", "-1", f"{C}/diff_a.pt", f"{C}/diff_b.pt"]),
    ("error_unsafe", ["ls", "$TMP/unsafe.pt"]),
    ("info_unsafe", ["info", "$TMP/unsafe.pt"]),
    ("ls_unsafe_objects", ["ls", "--objects", "$TMP/unsafe.pt"]),
]


def write_manager_dir(path, entries, damage=None):
    """A CheckpointManager directory built by hand: copies of fixture files
    and the manifest that describes them (docs/manager.md)."""
    os.makedirs(path)
    rows = []
    for step, src, metrics in entries:
        name = f"step={step:08d}.pt"
        data = open(os.path.join(ROOT, src), "rb").read()
        open(os.path.join(path, name), "wb").write(data)
        rows.append({"file": name, "step": step, "metrics": metrics, "size": len(data),
                     "crc32": f"{zlib.crc32(data) & 0xffffffff:08x}", "pinned": False})
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump({"format": "ckpt-manager-manifest", "version": 1, "checkpoints": rows}, f)
    with open(os.path.join(path, "last"), "w") as f:
        f.write(rows[-1]["file"] + "\n")
    if damage:
        p = os.path.join(path, damage)
        data = bytearray(open(p, "rb").read())
        data[len(data) // 2] ^= 0xFF  # same size, different CRC
        open(p, "wb").write(bytes(data))


def setup(ckpt, tmp):
    src = os.path.join(ROOT, V, "torch2", "net_state_dict.pt")
    data = open(src, "rb").read()
    open(os.path.join(tmp, "truncated.pt"), "wb").write(data[: len(data) // 2])
    damaged = bytearray(data)
    # flip a byte inside the first record's payload: the zip stays readable, its CRC does not match
    damaged[200] ^= 0xFF
    open(os.path.join(tmp, "damaged.pt"), "wb").write(bytes(damaged))
    # a pickle that names os.system (never executed; refused under weights-only)
    with zipfile.ZipFile(os.path.join(tmp, "unsafe.pt"), "w") as z:
        z.writestr("unsafe/data.pkl", b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.")
        z.writestr("unsafe/version", b"3\n")
    # tensor names that try to drive the terminal: ESC [2J (clear), BEL, CSI as U+009B
    names = ["\x1b[2Jclear", "bell\x07", "csi\u009b31m", "back\\slash\n"]
    header = {n: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, n in enumerate(names)}
    hb = json.dumps(header).encode()
    with open(os.path.join(tmp, "escapes.safetensors"), "wb") as f:
        f.write(len(hb).to_bytes(8, "little") + hb + bytes(4 * len(names)))
    for name in ("stats", "diff_a"):
        subprocess.run([ckpt, "convert", os.path.join(ROOT, C, name + ".pt"), os.path.join(tmp, name + ".safetensors")],
                       check=True, stderr=subprocess.DEVNULL)
    entries = [(100, f"{V}/torch2/net_state_dict.pt", {"val_loss": 0.5}),
               (200, f"{V}/torch113/net_state_dict.pt", {"val_loss": 0.25}),
               (300, f"{V}/torch2/net_state_dict.pt", {"val_loss": 0.375})]
    write_manager_dir(os.path.join(tmp, "run"), entries)
    write_manager_dir(os.path.join(tmp, "run_prune"), entries)
    write_manager_dir(os.path.join(tmp, "run_damaged"), entries, damage="step=00000200.pt")
    # what CheckpointManager leaves in a directory it opened and never saved to: its lock file
    os.makedirs(os.path.join(tmp, "run_empty"))
    open(os.path.join(tmp, "run_empty", ".lock"), "w").close()
    os.makedirs(os.path.join(tmp, "dcp_empty"))
    subprocess.run([ckpt, "convert", os.path.join(ROOT, V, "torch2", "net_state_dict.pt"), os.path.join(tmp, "dcp_again"),
                    "--to", "dcp"], check=True, stderr=subprocess.DEVNULL)


def render(args, proc, tmp):
    def clean(s):
        return s.replace(tmp, "$TMP")
    shown = " ".join(args)
    return (f"$ ckpt {shown}\n{clean(proc.stdout)}--- stderr\n{clean(proc.stderr)}--- exit {proc.returncode}\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--update", action="store_true", help="rewrite the golden files")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    opts = ap.parse_args()
    ckpt = os.path.abspath(opts.ckpt)
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    env["COLUMNS"] = "100"  # CLI11 help formatting does not depend on it, but keep runs alike
    failures = 0
    ran = 0
    with tempfile.TemporaryDirectory(prefix="ckpt-cli-") as tmp:
        setup(ckpt, tmp)
        os.makedirs(GOLDEN, exist_ok=True)
        for name, args in CASES:
            if opts.k not in name:
                continue
            ran += 1
            real = [a.replace("$TMP", tmp) for a in args]
            proc = subprocess.run([ckpt] + real, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            got = render(args, proc, tmp)
            path = os.path.join(GOLDEN, name + ".txt")
            if opts.update:
                with open(path, "w") as f:
                    f.write(got)
                continue
            want = open(path).read() if os.path.exists(path) else ""
            if got != want:
                failures += 1
                print(f"FAIL {name}")
                sys.stdout.writelines(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                                           "golden/" + name + ".txt", "actual"))
            elif proc.returncode < 0:
                failures += 1
                print(f"FAIL {name}: killed by signal {-proc.returncode}")
    if opts.update:
        print(f"updated {ran} golden files in {GOLDEN}")
        return 0
    print(f"{ran - failures} of {ran} cases match their golden output")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
