"""ckpt.save round trips, ckpt.open, ckpt.scan, errors and hostile files."""
import collections
import json
import os
import pickle
import time

import pytest

import ckpt
from conftest import DATA, ROOT, assert_same, needs_torch, sharing, torch, torch_load_saved

HOSTILE = ROOT / "tests" / "hostile"


@needs_torch
def test_save_round_trip_torch_reads_it(tmp_path):
    w = torch.randn(4, 3)
    sd = collections.OrderedDict(
        [("w", w), ("w_t", w.t()), ("row", w[1]), ("p", torch.nn.Parameter(torch.randn(2))),
         ("frozen", torch.nn.Parameter(torch.randn(2), requires_grad=False)),
         ("i", torch.arange(5, dtype=torch.int64)), ("bf", torch.randn(3).to(torch.bfloat16)),
         ("empty", torch.zeros(0, 3)), ("scalar", torch.tensor(2.5))])
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    obj = {"model": sd, "epoch": 3, "lr": 0.5, "names": ["a", "b"], "flags": (True, None), "big": 2 ** 80,
           "neg": -5, "c": 1 + 2j, "b": b"\x00\xff", "dt": torch.float16, "size": torch.Size([2, 3])}
    path = tmp_path / "out.pt"
    ckpt.save(obj, path)
    back = torch_load_saved(path)
    assert_same(back, obj)
    assert sharing(back) == sharing(obj)
    assert_same(ckpt.load(path), obj)


@needs_torch
def test_save_reload_generated_fixtures(generated, tmp_path):
    for name in ("training_checkpoint", "views", "tied", "module_state_dict", "parameters", "misc_values"):
        ref = torch_load_saved(generated / f"{name}.pt")
        out = tmp_path / f"{name}.pt"
        ckpt.save(ckpt.load(generated / f"{name}.pt"), out)
        back = torch_load_saved(out)
        assert_same(back, ref)
        assert sharing(back) == sharing(ref)


def test_save_keeps_shared_containers_and_refuses_cycles(tmp_path):
    shared = [1, 2]
    ckpt.save({"a": shared, "b": shared}, tmp_path / "s.pt")
    back = ckpt.load(tmp_path / "s.pt")
    assert back == {"a": [1, 2], "b": [1, 2]} and back["a"] is back["b"]
    cyc = [1]
    cyc.append(cyc)
    with pytest.raises(ValueError):
        ckpt.save({"c": cyc}, tmp_path / "c.pt")
    d = {}
    d["self"] = d
    with pytest.raises(ValueError):
        ckpt.save(d, tmp_path / "d.pt")
    assert not (tmp_path / "c.pt").exists() and not (tmp_path / "d.pt").exists()


def test_save_refuses_arbitrary_objects(tmp_path):
    class Thing:
        pass

    with pytest.raises(TypeError):
        ckpt.save({"x": Thing()}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


@needs_torch
def test_open_lazy_mapping(generated, tmp_path):
    save_file = pytest.importorskip("safetensors.torch").save_file

    sd = {"a": torch.randn(3, 4), "b": torch.arange(6, dtype=torch.int32)}
    st = tmp_path / "m.safetensors"
    save_file(sd, st, metadata={"format": "pt"})
    with ckpt.open(st) as f:
        assert sorted(f.keys()) == ["a", "b"]
        assert len(f) == 2 and "a" in f and "zz" not in f
        assert torch.equal(f["a"], sd["a"]) and torch.equal(f.get_tensor("b"), sd["b"])
        assert f.metadata() == {"format": "pt"}
        assert f.format == "safetensors"
        assert f.info("a")["shape"] == (3, 4)
        with pytest.raises(KeyError):
            f["zz"]
    ref = torch.load(generated / "tied.pt", weights_only=True)
    f = ckpt.open(generated / "tied.pt")
    assert list(f.keys()) == list(ref.keys())
    got = {k: f[k] for k in f}
    assert_same(got, dict(ref))
    assert sharing(got) == sharing(ref)


def test_scan_verdicts(tmp_path):
    r = ckpt.scan(DATA / "valid" / "torch2" / "net_state_dict.pt")
    assert r.verdict == "safe" and r.errors == []
    r = ckpt.scan(DATA / "valid" / "torch2" / "full_model.pt")
    assert r.verdict in ("unsafe-but-known", "dangerous")
    assert r.findings and all(f.category != "allowed" for f in r.findings)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    r = ckpt.scan(evil)
    assert r.verdict == "dangerous"
    assert any(f.module in ("os", "posix") and f.name == "system" for f in r.findings)
    assert json.loads(r.to_json())
    r = ckpt.scan(tmp_path / "missing.pt")
    assert r.verdict == "error"


def test_errors_carry_context(tmp_path):
    with pytest.raises(ckpt.IoError) as ei:
        ckpt.load(tmp_path / "missing.pt")
    assert isinstance(ei.value, OSError) and isinstance(ei.value, ckpt.Error)
    assert "missing.pt" in str(ei.value)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(ckpt.FormatError) as ei:
        ckpt.load(bad)
    assert ei.value.file and "bad.pt" in str(ei.value)


@needs_torch
def test_errors_on_hostile_record_names_are_python_strings(tmp_path):
    """A record name that is not UTF-8 (found by the differential campaign) raises
    ckpt.FormatError with printable text, not a str() conversion error."""
    good = tmp_path / "u8.pt"
    torch.save({"a": torch.ones(2)}, good)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes().replace(b"u8/data.pkl", b"u8\xb7data.pkl"))
    with pytest.raises(ckpt.FormatError) as ei:
        ckpt.load(bad)
    assert "\\xb7" in str(ei.value) and "\\xb7" in ei.value.message
    assert ei.value.file.endswith("bad.pt")


def _hostile_files():
    manifest = json.loads((HOSTILE / "manifest.json").read_text())
    return sorted(manifest.items())


@pytest.mark.parametrize("name,entry", _hostile_files(), ids=[n for n, _ in _hostile_files()])
def test_hostile_corpus(name, entry, tmp_path):
    """Every hostile file raises a ckpt.Error (or loads, when the corpus says it is benign);
    nothing runs, nothing crashes."""
    path = HOSTILE / "corpus" / name
    marker_before = set(os.listdir(tmp_path))
    try:
        ckpt.load(path)
        loaded = True
    except ckpt.Error:
        loaded = False
    if entry["expected"] in ("damaged", "dangerous"):
        assert not loaded, f"{name} ({entry}) loaded"
    assert set(os.listdir(tmp_path)) == marker_before
    assert ckpt.scan(path).verdict in ("safe", "unsafe-but-known", "dangerous", "error")


def test_numpy_framework(tmp_path):
    np = pytest.importorskip("numpy")
    import importlib.util

    if importlib.util.find_spec("ml_dtypes"):  # bfloat16 inside
        out = ckpt.load(DATA / "valid" / "safetensors" / "names.safetensors", framework="numpy")
        assert out and all(isinstance(v, np.ndarray) for v in out.values())
    with pytest.raises(ckpt.UnsupportedError):  # float4_e2m1fn_x2 has no numpy dtype
        ckpt.load(DATA / "valid" / "safetensors" / "all_dtypes.safetensors", framework="numpy")
    sd = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], dtype=np.int64), "n": 3}
    p = tmp_path / "np.pt"
    ckpt.save(sd, p)
    back = ckpt.load(p, framework="numpy")
    assert np.array_equal(back["a"], sd["a"]) and back["a"].dtype == np.float32 and back["n"] == 3
    if not importlib.util.find_spec("ml_dtypes"):  # views.pt holds a bfloat16 tensor
        return
    v = ckpt.load(DATA / "valid" / "torch2" / "views.pt", framework="numpy")
    base = v["base"]
    assert np.shares_memory(base, v["transposed"])
    assert np.array_equal(v["transposed"], base.T)
