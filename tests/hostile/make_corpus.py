#!/usr/bin/env python3
"""Writes the hostile-file corpus of tests/hostile/ (run_hostile.py checks it).

    python3 tests/hostile/make_corpus.py [OUTDIR]   # default: tests/hostile/corpus

Every pickle here is assembled by hand from opcodes; nothing is ever unpickled
or executed. Each payload, if some loader ever ran it, would create the canary
file /tmp/ckpt-hostile-canary (shell payloads: `touch`; Python payloads:
open(..., 'w')), so a test can check that nothing ran. Output is deterministic
(fixed zip timestamps, seeded bit flips), so regenerating gives the same bytes.
Needs only the standard library; reads tests/data/valid/torch2/scripted.pt for
the TorchScript carriers.
"""
import io
import json
import os
import random
import struct
import sys
import tarfile
import zipfile
import warnings
import zlib

warnings.filterwarnings("ignore", "Duplicate name")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CANARY = "/tmp/ckpt-hostile-canary"
SHELL = "touch " + CANARY
PYCODE = "open(%r, 'w').close()" % CANARY

# ---------------------------------------------------------------- opcodes

PROTO2 = b"\x80\x02"
PROTO4 = b"\x80\x04"
STOP = b"."
MARK = b"("
TUPLE = b"t"
TUPLE1 = b"\x85"
TUPLE2 = b"\x86"
TUPLE3 = b"\x87"
EMPTY_TUPLE = b")"
EMPTY_DICT = b"}"
EMPTY_LIST = b"]"
REDUCE = b"R"
BUILD = b"b"
NEWOBJ = b"\x81"
NEWOBJ_EX = b"\x92"
STACK_GLOBAL = b"\x93"
MEMOIZE = b"\x94"
SETITEM = b"s"
SETITEMS = b"u"
APPEND = b"a"
NONE = b"N"
NEWFALSE = b"\x89"
BINPERSID = b"Q"
POP = b"0"


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def inst(module, name):
    return b"i" + module.encode() + b"\n" + name.encode() + b"\n"


def u(s):  # str: SHORT_BINUNICODE or BINUNICODE
    b = s.encode() if isinstance(s, str) else s
    return (b"\x8c" + bytes([len(b)]) if len(b) < 256 else b"X" + struct.pack("<I", len(b))) + b


def pstr(s):  # protocol 0 STRING
    return b"S" + repr(s).encode() + b"\n"


def binbytes(b):
    return b"B" + struct.pack("<I", len(b)) + b


def binint(i):
    return b"J" + struct.pack("<i", i)


def put(i):
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)


def get(i):
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def call(fn, *args):  # fn(*args) with REDUCE; args are pickled fragments
    return fn + MARK + b"".join(args) + TUPLE + REDUCE


def system_call():
    return call(glob("os", "system"), u(SHELL))


# A clean tensor: {'w': float32 tensor of 4 elements in record data/0}
def clean_state_pickle(extra=b""):
    pid = MARK + u("storage") + glob("torch", "FloatStorage") + u("0") + u("cpu") + binint(4) + TUPLE
    tensor = (glob("torch._utils", "_rebuild_tensor_v2") + MARK + pid + BINPERSID + binint(0) +
              MARK + binint(4) + TUPLE + MARK + binint(1) + TUPLE + NEWFALSE +
              glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + TUPLE + REDUCE)
    return PROTO2 + glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + u("w") + tensor + SETITEM + extra + STOP


STORAGE0 = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)

# ---------------------------------------------------------------- containers

FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def zip_bytes(records, compress=()):
    """records: list of (name, bytes). Names in `compress` are deflated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in records:
            zi = zipfile.ZipInfo(name, FIXED_TIME)
            zi.compress_type = zipfile.ZIP_DEFLATED if name in compress else zipfile.ZIP_STORED
            z.writestr(zi, data)
    return buf.getvalue()


def torch_zip(data_pkl, extra=(), prefix="archive", compress=()):
    recs = [(prefix + "/data.pkl", data_pkl), (prefix + "/byteorder", b"little"),
            (prefix + "/data/0", STORAGE0), (prefix + "/version", b"3\n")]
    recs += list(extra)
    return zip_bytes(recs, compress)


LEGACY_MAGIC = PROTO2 + b"\x8a\x0a" + (0x1950a86a20f9469cfc6c).to_bytes(10, "little") + STOP
LEGACY_PROTO = PROTO2 + b"M" + struct.pack("<H", 1001) + STOP
LEGACY_SYSINFO = PROTO2 + EMPTY_DICT + STOP


def legacy(obj_pickle, keys=PROTO2 + EMPTY_LIST + STOP, tail=b""):
    return LEGACY_MAGIC + LEGACY_PROTO + LEGACY_SYSINFO + obj_pickle + keys + tail


def tar_bytes(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1577836800
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def v7_tar(members):
    """A pre-POSIX tar: no "ustar" magic; Python's tarfile accepts it by checksum."""
    out = b""
    for name, data in members:
        h = bytearray(512)
        h[0:len(name)] = name
        h[100:108] = b"0000644\0"
        h[108:116] = b"0000000\0"
        h[116:124] = b"0000000\0"
        h[124:136] = b"%011o\0" % len(data)
        h[136:148] = b"13600000000\0"
        h[156:157] = b"0"
        h[148:156] = b" " * 8
        h[148:156] = b"%06o\0 " % sum(h)
        out += bytes(h) + data + b"\0" * (-len(data) % 512)
    return out + b"\0" * 1024


def scripted_records():
    path = os.path.join(ROOT, "tests", "data", "valid", "torch2", "scripted.pt")
    with zipfile.ZipFile(path) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def replace_records(records, replacements, extra=()):
    out = [(n, replacements.get(n, d)) for n, d in records]
    return out + list(extra)


# ---------------------------------------------------------------- the corpus

CORPUS = {}  # name -> (bytes, attack class, expected)


def add(name, data, cls, expected="dangerous"):
    assert name not in CORPUS, name
    CORPUS[name] = (data, cls, expected)


def both(stem, pickle_bytes, cls, expected="dangerous"):
    """The pickle as a bare file (what every scanner reads) and as data.pkl of
    a torch zip (what the loader reads)."""
    add(stem + ".pkl", pickle_bytes, cls, expected)
    add(stem + ".pt", torch_zip(pickle_bytes), cls, expected)


# data.pkl without its STOP: the loader refuses the file as damaged, so a
# scanner only says "dangerous" if it finds the pickle hidden elsewhere.
def broken_main():
    return clean_state_pickle()[:-1]


def build():
    # -- reduce to dangerous callables (bare pickles)
    simple = [
        ("os_system", glob("os", "system"), u(SHELL)),
        ("posix_system", glob("posix", "system"), u(SHELL)),
        ("nt_system", glob("nt", "system"), u(SHELL)),
        ("subprocess_popen", glob("subprocess", "Popen"), MARK + u("sh") + u("-c") + u(SHELL) + b"l"),
        ("subprocess_check_output", glob("subprocess", "check_output"), u(SHELL)),
        ("builtins_eval", glob("builtins", "eval"), u("__import__('os').system(%r)" % SHELL)),
        ("builtins_exec", glob("builtins", "exec"), u(PYCODE)),
        ("builtins_compile", glob("builtins", "compile"), u(PYCODE) + u("<x>") + u("exec")),
        ("builtin_py2_eval", glob("__builtin__", "eval"), u("__import__('os').system(%r)" % SHELL)),
        ("builtins_open", glob("builtins", "open"), u(CANARY) + u("w")),
        ("runpy_run_path", glob("runpy", "run_path"), u(CANARY)),
        ("importlib_import_module", glob("importlib", "import_module"), u("os")),
        ("webbrowser_open", glob("webbrowser", "open"), u("file://" + CANARY)),
        ("socket_create_connection", glob("socket", "create_connection"), MARK + u("127.0.0.1") + binint(9) + TUPLE),
        ("pty_spawn", glob("pty", "spawn"), u(SHELL)),
        ("shutil_copyfile", glob("shutil", "copyfile"), u("/etc/hostname") + u(CANARY)),
        ("ctypes_cdll", glob("ctypes", "CDLL"), u("libc.so.6")),
        ("marshal_loads", glob("marshal", "loads"), binbytes(b"\xe3" + b"\x00" * 16)),
        ("types_functiontype", glob("types", "FunctionType"), NONE + EMPTY_DICT),
        ("torch_hub_download", glob("torch.hub", "download_url_to_file"), u("http://127.0.0.1:9/x") + u(CANARY)),
        ("torch_c_internal", glob("torch._C", "_jit_pass_lower_all_tuples"), NONE),
        ("torch_load_nested", glob("torch", "load"), u(CANARY)),
        ("requests_get", glob("requests", "get"), u("http://127.0.0.1:9/")),
        ("urllib_urlopen", glob("urllib.request", "urlopen"), u("http://127.0.0.1:9/")),
        ("http_client", glob("http.client", "HTTPConnection"), u("127.0.0.1")),
        ("asyncio_subprocess", glob("asyncio.subprocess", "create_subprocess_shell"), u(SHELL)),
        ("multiprocessing_process", glob("multiprocessing", "Process"), NONE),
        ("signal_raise", glob("signal", "raise_signal"), binint(9)),
        ("pdb_run", glob("pdb", "run"), u(PYCODE)),
        ("tempfile_mkstemp", glob("tempfile", "mkstemp"), u("") + u("") + u("/tmp")),
        ("sys_exit", glob("sys", "exit"), binint(3)),
        ("code_interact", glob("code", "InteractiveInterpreter"), NONE),
        ("numpy_runstring", glob("numpy.testing._private.utils", "runstring"), u(PYCODE) + EMPTY_DICT),
        ("unknown_module", glob("evil_plugin.loader", "run"), u(SHELL)),
        ("main_class", glob("__main__", "Exploit"), u(SHELL)),
    ]
    for name, fn, args in simple:
        add("reduce_" + name + ".pt", torch_zip(PROTO2 + fn + MARK + args + TUPLE + REDUCE + STOP),
            "reduce-dangerous-callable")

    # protocol 0 (no PROTO opcode at all), the classic form
    both("reduce_proto0_os_system", b"cos\nsystem\n(" + pstr(SHELL) + b"tR.", "reduce-dangerous-callable")

    # -- getattr / attribute chains
    builtins_mod = call(glob("importlib", "import_module"), u("builtins"))
    both("getattr_builtins_eval",
        PROTO2 + call(call(glob("builtins", "getattr"), builtins_mod, u("eval")), u("__import__('os').system(%r)" % SHELL)) + STOP,
        "getattr-chain")
    os_mod = call(glob("builtins", "__import__"), u("os"))
    both("getattr_import_os_system",
        PROTO2 + call(call(glob("builtins", "getattr"), os_mod, u("system")), u(SHELL)) + STOP, "getattr-chain")
    both("operator_attrgetter",
        PROTO2 + call(call(glob("operator", "attrgetter"), u("system")), os_mod) + STOP, "getattr-chain")
    both("operator_methodcaller",
        PROTO2 + call(call(glob("operator", "methodcaller"), u("system"), u(SHELL)), os_mod) + STOP, "getattr-chain")
    both("functools_partial_system",
        PROTO2 + call(call(glob("functools", "partial"), glob("os", "system"), u(SHELL))) + STOP, "getattr-chain")
    # protocol 4 dotted attribute on an allow-listed class: OrderedDict.__init__.__globals__
    both("stack_global_dotted_allowed",
        PROTO4 + u("collections") + u("OrderedDict.__init__.__globals__") + STACK_GLOBAL + STOP, "getattr-chain")
    both("stack_global_dotted_eval",
        PROTO4 + u("builtins") + u("eval.__call__") + STACK_GLOBAL + MARK + u(PYCODE) + TUPLE + REDUCE + STOP,
        "getattr-chain")

    # -- INST / OBJ / NEWOBJ / NEWOBJ_EX
    both("inst_os_system", b"(" + pstr(SHELL) + inst("os", "system") + b".", "inst-obj-newobj")
    both("inst_subprocess_popen", b"(" + pstr(SHELL) + inst("subprocess", "Popen") + b".", "inst-obj-newobj")
    both("obj_os_system", PROTO2 + MARK + glob("os", "system") + u(SHELL) + b"o" + STOP, "inst-obj-newobj")
    both("newobj_subprocess_popen",
        PROTO2 + glob("subprocess", "Popen") + MARK + u(SHELL) + TUPLE + NEWOBJ + STOP, "inst-obj-newobj")
    both("newobj_ex_popen_shell",
        PROTO4 + glob("subprocess", "Popen") + MARK + u(SHELL) + TUPLE + EMPTY_DICT + u("shell") + b"\x88" +
        SETITEM + NEWOBJ_EX + STOP, "inst-obj-newobj")
    both("build_setstate_unknown",
        PROTO2 + glob("evil_plugin", "Gadget") + EMPTY_TUPLE + NEWOBJ + EMPTY_DICT + u("cmd") + u(SHELL) +
        SETITEM + BUILD + STOP, "inst-obj-newobj")

    # -- STACK_GLOBAL with names fetched from the memo
    both("stack_global_memo_names",
        PROTO4 + EMPTY_DICT + u("os") + MEMOIZE + u("system") + MEMOIZE + SETITEM + POP +
        get(0) + get(1) + STACK_GLOBAL + MARK + u(SHELL) + TUPLE + REDUCE + STOP, "stack-global-memo")
    both("stack_global_names_in_list",
        PROTO4 + EMPTY_LIST + MEMOIZE + MARK + u("subprocess") + MEMOIZE + u("getoutput") + MEMOIZE + b"e" + POP +
        get(1) + get(2) + STACK_GLOBAL + MARK + u(SHELL) + TUPLE + REDUCE + STOP, "stack-global-memo")
    both("global_odd_chars",
        PROTO2 + glob("os", "sys\x7ftem\t") + MARK + u(SHELL) + TUPLE + REDUCE + STOP, "stack-global-memo")

    # -- memo tricks: a global memoized early, fetched late; memo slots overwritten
    both("memo_long_binget_callable",
        PROTO2 + glob("os", "system") + put(300) + POP + EMPTY_DICT + u("x") + get(300) + MARK + u(SHELL) +
        TUPLE + REDUCE + SETITEM + STOP, "memo-trick")
    both("memo_overwrite_slot",
        PROTO2 + glob("collections", "OrderedDict") + put(1) + POP + glob("os", "system") + put(1) + POP +
        get(1) + MARK + u(SHELL) + TUPLE + REDUCE + STOP, "memo-trick")
    both("memo_put_text",
        b"cos\nsystem\np0\n0g0\n(" + pstr(SHELL) + b"tR.", "memo-trick")

    # -- extension registry codes
    both("ext1_code", PROTO2 + b"\x82\x01" + MARK + u(SHELL) + TUPLE + REDUCE + STOP, "ext-opcode")
    both("ext2_code", PROTO2 + b"\x83\x34\x12" + MARK + u(SHELL) + TUPLE + REDUCE + STOP, "ext-opcode")
    both("ext4_code", PROTO2 + b"\x84\x78\x56\x34\x12" + MARK + u(SHELL) + TUPLE + REDUCE + STOP, "ext-opcode")

    # -- nested pickles
    inner = PROTO2 + system_call() + STOP
    both("nested_pickle_loads", PROTO2 + call(glob("pickle", "loads"), binbytes(inner)) + STOP, "nested-pickle")
    both("nested_cpickle_loads", PROTO2 + call(glob("_pickle", "loads"), binbytes(inner)) + STOP, "nested-pickle")
    add("zip_data_pkl_nested_loads.pt",
        torch_zip(clean_state_pickle(u("n") + call(glob("pickle", "loads"), binbytes(inner)) + SETITEM)), "nested-pickle")

    # -- torch zip carriers: data.pkl itself, and pickles hidden in other records
    add("zip_data_pkl_os_system.pt", torch_zip(PROTO2 + system_call() + STOP), "zip-carrier")
    add("zip_after_tensor.pt", torch_zip(clean_state_pickle(u("x") + system_call() + SETITEM)), "zip-carrier")
    add("zip_extra_pkl.pt", torch_zip(broken_main(), extra=[("archive/extra.pkl", inner)]), "zip-carrier")
    add("zip_storage_record_is_pickle.pt", torch_zip(broken_main(), extra=[("archive/data/evil", inner)]),
        "zip-carrier")
    add("zip_proto0_record.pt",
        torch_zip(broken_main(), extra=[("archive/data/1", b"cos\nsystem\n(" + pstr(SHELL) + b"tR.")]),
        "zip-carrier")
    add("zip_extra_record_no_name.pt", torch_zip(broken_main(), extra=[("archive/.data/x", inner)]), "zip-carrier")
    add("zip_deflated_data_pkl.pt",
        torch_zip(PROTO2 + system_call() + STOP, compress=("archive/data.pkl",)), "zip-carrier")
    add("zip_other_prefix.pt", torch_zip(PROTO2 + system_call() + STOP, prefix="my_model"), "zip-carrier")

    # -- zip structure attacks
    add("zip_slip_names.pt", torch_zip(PROTO2 + system_call() + STOP, prefix="../../etc"), "zip-structure")
    add("zip_slip_extra.pt",
        torch_zip(broken_main(), extra=[("../../../tmp/evil.pkl", inner)]), "zip-structure")
    dup = zip_bytes([("archive/data.pkl", clean_state_pickle()), ("archive/data.pkl", inner),
                     ("archive/data/0", STORAGE0), ("archive/version", b"3\n")])
    add("zip_duplicate_data_pkl.pt", dup, "zip-structure", "damaged")
    add("zip_overlapping_entries.pt", overlapping_zip(inner), "zip-structure", "damaged")
    add("zip_lying_uncompressed_size.pt", lying_size_zip(inner, 1 << 40), "zip-structure", "damaged")
    add("zip_lying_compressed_size.pt", lying_size_zip(inner, None), "zip-structure", "damaged")
    # a deflate bomb: data.pkl is a dangerous pickle followed by 20 MB of zeros (~1000:1)
    bomb = PROTO2 + system_call() + STOP + b"\x00" * (20 << 20)
    add("zip_bomb_data_pkl.pt", torch_zip(bomb, compress=("archive/data.pkl",)), "zip-bomb")
    # -- what torch.load sees (issue #18): files torch reads differently from a naive reader
    evil = PROTO2 + system_call() + STOP
    add("torchview_data_pkl_upper_case.pt",
        zip_bytes([("archive/DATA.PKL", evil), ("archive/byteorder", b"little"), ("archive/data/0", STORAGE0),
                   ("archive/version", b"3\n")]), "torch-view")
    add("torchview_data_pkl_case_twin.pt",
        zip_bytes([("archive/data.pkl", clean_state_pickle()), ("archive/Data.pkl", evil),
                   ("archive/data/0", STORAGE0), ("archive/version", b"3\n")]), "torch-view")
    add("torchview_v7_tar_pickle_name.pt",
        v7_tar([(b"N.", b"x"), (b"storages", PROTO2 + b"K\x00" + STOP + PROTO2 + EMPTY_LIST + STOP),
                (b"tensors", PROTO2 + b"K\x00" + STOP), (b"pickle", evil)]), "torch-view")
    magic4 = b"\x80\x04\x95\x0d" + b"\0" * 7 + b"\x8a\x0a" + (0x1950a86a20f9469cfc6c).to_bytes(10, "little") + STOP
    add("torchview_legacy_magic_protocol4.pt",
        magic4 + LEGACY_PROTO + LEGACY_SYSINFO + evil + PROTO2 + EMPTY_LIST + STOP, "torch-view")

    add("zip_bomb_extra.pt",
        torch_zip(broken_main(), extra=[("archive/extra.pkl", inner + b"\x00" * (20 << 20))], compress=("archive/extra.pkl",)),
        "zip-bomb")

    # -- persistent-id abuse
    def pid_file(pid):
        return torch_zip(PROTO2 + pid + BINPERSID + STOP)
    add("persid_not_tuple.pt", pid_file(binint(7)), "persistent-id", "damaged")
    add("persid_short_tuple.pt", pid_file(MARK + u("storage") + TUPLE), "persistent-id", "damaged")
    add("persid_huge_numel.pt",
        pid_file(MARK + u("storage") + glob("torch", "FloatStorage") + u("0") + u("cpu") +
                 b"\x8a\x08" + struct.pack("<q", 1 << 62) + TUPLE), "persistent-id", "damaged")
    add("persid_missing_record.pt",
        pid_file(MARK + u("storage") + glob("torch", "FloatStorage") + u("404") + u("cpu") + binint(4) + TUPLE),
        "persistent-id", "damaged")
    add("persid_type_is_os_system.pt",
        pid_file(MARK + u("storage") + glob("os", "system") + u("0") + u("cpu") + binint(4) + TUPLE),
        "persistent-id")
    both("persid_called", b"P" + SHELL.encode() + b"\n(" + pstr(SHELL) + b"tR.", "persistent-id", "damaged")

    # -- legacy format carriers
    add("legacy_object_os_system.pt", legacy(PROTO2 + system_call() + STOP), "legacy-carrier")
    add("legacy_sysinfo_evil.pt",
        LEGACY_MAGIC + LEGACY_PROTO + PROTO2 + system_call() + STOP + PROTO2 + EMPTY_DICT + STOP + PROTO2 + EMPTY_LIST + STOP,
        "legacy-carrier")
    add("legacy_keys_evil.pt",
        legacy(PROTO2 + EMPTY_DICT + STOP, keys=PROTO2 + system_call() + STOP), "legacy-carrier")
    add("tar_pickle_evil.pt",
        tar_bytes([("storages", PROTO2 + binint(0) + STOP + PROTO2 + EMPTY_LIST + STOP),
                   ("tensors", PROTO2 + binint(0) + STOP), ("pickle", PROTO2 + system_call() + STOP)]),
        "legacy-carrier")
    add("tar_storages_evil.pt",
        tar_bytes([("storages", PROTO2 + system_call() + STOP), ("tensors", PROTO2 + binint(0) + STOP),
                   ("pickle", PROTO2 + EMPTY_DICT + STOP)]), "legacy-carrier")

    # -- TorchScript archive carriers
    ts = scripted_records()
    prefix = ts[0][0].split("/")[0]
    names = [n for n, _ in ts]
    data_pkl = dict(ts)[prefix + "/data.pkl"]
    add("ts_constants_evil.pt", zip_bytes(replace_records(ts, {prefix + "/constants.pkl": inner})), "torchscript-carrier")
    add("ts_data_pkl_evil.pt",
        zip_bytes(replace_records(ts, {prefix + "/data.pkl": PROTO2 + glob("os", "system") + POP + data_pkl[2:]})),
        "torchscript-carrier")
    add("ts_code_dir_pickle.pt",
        zip_bytes(replace_records(ts, {prefix + "/data.pkl": data_pkl[:-1]},
                                  extra=[(prefix + "/code/__torch__/evil.pkl", inner)])), "torchscript-carrier")
    debug = [n for n in names if n.endswith(".debug_pkl")][0]
    add("ts_debug_pkl_evil.pt",
        zip_bytes(replace_records(ts, {debug: inner,
                                       prefix + "/data.pkl": data_pkl[:-1]})),
        "torchscript-carrier")

    # -- damaged files: a real small checkpoint truncated at each record boundary, bit flips, absurd counts
    good = torch_zip(clean_state_pickle())
    bounds = record_boundaries(good)
    for i, off in enumerate(bounds):
        add("trunc_%02d_at_%d.pt" % (i, off), good[:off], "truncation", "damaged")
    flips = structural_offsets(good)
    for i, (what, off) in enumerate(flips):
        b = bytearray(good)
        b[off] ^= 0xFF
        add("bitflip_%s.pt" % what, bytes(b), "bit-flip", "damaged")
    rng = random.Random(1234)
    pk = bytearray(clean_state_pickle())
    for i in range(3):  # flips inside data.pkl's opcodes: position chosen by a seeded RNG
        b = bytearray(pk)
        pos = rng.randrange(2, len(b) - 1)
        b[pos] = 0xFF  # not an opcode
        both("bitflip_pickle_%d" % i, bytes(b), "bit-flip", "damaged")
    both("absurd_binunicode8", PROTO4 + b"\x8d" + struct.pack("<Q", 1 << 60) + b"abc" + STOP, "absurd-count", "damaged")
    both("absurd_binbytes8", PROTO4 + b"\x8e" + struct.pack("<Q", (1 << 62) + 5) + b"abc" + STOP, "absurd-count", "damaged")
    both("absurd_long4", PROTO2 + b"\x8b" + struct.pack("<i", (1 << 31) - 1) + b"\x01" * 16 + STOP, "absurd-count", "damaged")
    both("absurd_memo_index", PROTO2 + b"j" + struct.pack("<I", 0xFFFFFFFF) + STOP, "absurd-count", "damaged")
    both("absurd_memo_put", PROTO2 + NONE + b"r" + struct.pack("<I", 0xFFFFFFFE) + POP + b"j" + struct.pack("<I", 0xFFFFFFFD) + STOP, "absurd-count", "damaged")
    both("absurd_frame", PROTO4 + b"\x95" + struct.pack("<Q", 1 << 62) + NONE + STOP, "absurd-count", "damaged")
    both("absurd_nesting", PROTO2 + EMPTY_LIST * 50000 + APPEND * 49999 + STOP, "absurd-count", "damaged")
    both("absurd_marks", PROTO2 + MARK * 60000 + STOP, "absurd-count", "damaged")
    add("absurd_legacy_numel.pt",
        legacy(PROTO2 + MARK + u("storage") + glob("torch", "FloatStorage") + u("0") + u("cpu") +
               b"\x8a\x08" + struct.pack("<q", 1 << 61) + NONE + TUPLE + BINPERSID + STOP,
               keys=PROTO2 + MARK + u("0") + b"l" + STOP, tail=struct.pack("<q", 1 << 61)),
        "absurd-count", "damaged")
    # a zip whose end record claims 2^32-1 entries
    add("absurd_zip_entry_count.pt", absurd_entry_count(good), "absurd-count", "damaged")
    onnx_models()


def _pb_varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _pb(number, payload):
    if isinstance(payload, int):
        return _pb_varint(number << 3) + _pb_varint(payload)
    return _pb_varint((number << 3) | 2) + _pb_varint(len(payload)) + payload


def _onnx_model(tensor_fields, graph=None):
    g = graph if graph is not None else _pb(2, b"g") + _pb(5, tensor_fields)
    return _pb(1, 8) + _pb(2, b"hostile") + _pb(7, g) + _pb(8, _pb(2, 17))


def onnx_models():
    """ONNX models: external data that reads files outside the model's folder, absurd sizes."""
    def ext(location):
        return (_pb(1, 4) + _pb(2, 1) + _pb(8, b"w") + _pb(13, _pb(1, b"location") + _pb(2, location)) +
                _pb(14, 1))
    add("onnx_external_traversal.onnx", _onnx_model(ext(b"../../../../../../etc/passwd")), "path-traversal", "damaged")
    add("onnx_external_absolute.onnx", _onnx_model(ext(b"/etc/passwd")), "path-traversal", "damaged")
    add("onnx_absurd_length.onnx", _pb(1, 8) + _pb(2, b"h") + _pb_varint((7 << 3) | 2) + _pb_varint(1 << 62) + b"\0" * 8,
        "absurd-count", "damaged")
    add("onnx_absurd_dims.onnx",
        _onnx_model(_pb(1, 1 << 40) + _pb(1, 1 << 40) + _pb(2, 1) + _pb(8, b"w") + _pb(9, b"\0" * 16)),
        "absurd-count", "damaged")
    add("onnx_overlong_varint.onnx", _pb(1, 8) + _pb(2, b"h") + b"\x3a" + b"\xff" * 11, "absurd-count", "damaged")


def local_headers(data):
    """Offsets of local file headers, central directory and end record."""
    offs = []
    i = data.find(b"PK\x03\x04")
    while i != -1:
        offs.append(i)
        i = data.find(b"PK\x03\x04", i + 4)
    return offs


def record_boundaries(data):
    cd = data.rfind(b"PK\x01\x02")
    first_cd = data.find(b"PK\x01\x02")
    eocd = data.rfind(b"PK\x05\x06")
    offs = [o for o in local_headers(data) if o < first_cd]
    return sorted(set([o for o in offs if o > 0] + [first_cd, cd, eocd, len(data) - 1, 1, 30]))


def structural_offsets(data):
    first_cd = data.find(b"PK\x01\x02")
    eocd = data.rfind(b"PK\x05\x06")
    return [("eocd_signature", eocd), ("eocd_cd_offset", eocd + 16), ("cd_signature", first_cd),
            ("cd_name_length", first_cd + 28), ("local_signature", 0), ("local_name_length", 26)]


def lying_size_zip(payload, uncompressed):
    z = bytearray(zip_bytes([("archive/data.pkl", payload), ("archive/version", b"3\n")]))
    cd = z.find(b"PK\x01\x02")
    if uncompressed is not None:  # central directory: uncompressed size 0xFFFFFFFF without ZIP64
        struct.pack_into("<I", z, cd + 24, 0xFFFFFFFF)
    else:  # compressed size far past the end of the file
        struct.pack_into("<I", z, cd + 20, 0x7FFFFFFF)
    return bytes(z)


def overlapping_zip(payload):
    # two central directory entries pointing at the same local header
    z = zip_bytes([("archive/data.pkl", payload), ("archive/version", b"3\n")])
    cd = z.find(b"PK\x01\x02")
    eocd = z.rfind(b"PK\x05\x06")
    first_len = 46 + struct.unpack_from("<H", z, cd + 28)[0]
    entry = bytearray(z[cd:cd + first_len])
    entry2 = bytearray(entry)
    entry2[46:46 + len("archive/data.pkl")] = b"archive/data/0__"[:len("archive/data.pkl")]
    cdir = bytes(entry) + bytes(entry2) + z[cd + first_len:eocd]
    end = bytearray(z[eocd:])
    n = struct.unpack_from("<H", end, 10)[0] + 1
    struct.pack_into("<HHII", end, 8, n, n, len(cdir), cd)
    return z[:cd] + cdir + bytes(end)


def absurd_entry_count(z):
    b = bytearray(z)
    eocd = b.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", b, eocd + 8, 0xFFFF, 0xFFFF)
    return bytes(b)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")
    os.makedirs(out, exist_ok=True)
    build()
    for old in os.listdir(out):
        if old not in CORPUS:
            os.remove(os.path.join(out, old))
    manifest = {}
    for name in sorted(CORPUS):
        data, cls, expected = CORPUS[name]
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        manifest[name] = {"class": cls, "expected": expected}
    with open(os.path.join(HERE, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(len(d) for d, _, _ in CORPUS.values())
    print("wrote %d files (%d bytes) to %s" % (len(CORPUS), total, out))


if __name__ == "__main__":
    main()
