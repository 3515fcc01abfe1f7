"""ckpt.load against torch.load on every fixture the C++ interop tests use."""
import collections
import glob
import json
import os

import pytest

import ckpt
from conftest import TORCH2, DATA, assert_same, storage_of, tensor_bytes, needs_torch, sharing, torch, torch_reference

pytestmark = needs_torch

GEN_NAMES = [
    "dtypes_all", "shapes", "views", "tied", "module_state_dict", "module_tied", "training_checkpoint",
    "parameters", "buffer_saved", "prefix.with.dots", "protocol4", "protocol5", "many_tensors",
    "unicode_keys", "list_root", "tensor_root", "misc_values", "no_tensors",
]


@pytest.mark.parametrize("name", GEN_NAMES)
def test_generated_equals_torch(generated, name):
    path = generated / f"{name}.pt"
    ref, _ = torch_reference(path)
    ours = ckpt.load(path)
    assert_same(ours, ref)
    assert sharing(ours) == sharing(ref)


@pytest.mark.parametrize("mmap", [False, True])
def test_generated_mmap(generated, mmap):
    path = generated / "views.pt"
    ref = torch.load(path, weights_only=True)
    ours = ckpt.load(str(path), mmap=mmap)
    assert_same(ours, ref)
    assert sharing(ours) == sharing(ref)
    # writable like torch.load(mmap=True): a write changes this process's copy, not the file
    before = path.read_bytes()
    ours["base"].add_(1)
    assert torch.equal(ours["base"], ref["base"] + 1)
    assert ours["transposed"][0, 0] == ref["base"][0, 0] + 1  # shared storage sees it
    assert path.read_bytes() == before


def _valid_files():
    out = []
    for d in ("torch2", "torch113", "libtorch2", "libtorch113"):
        for p in sorted(glob.glob(str(DATA / "valid" / d / "*.pt")) + glob.glob(str(DATA / "valid" / d / "*.ckpt"))):
            out.append(pytest.param(p, id=f"{d}/{os.path.basename(p)}"))
    return out


@pytest.mark.parametrize("path", _valid_files())
def test_checked_in_fixtures(path):
    """Every file either loads equal to torch.load, or is refused by both as unsafe."""
    try:
        ours = ckpt.load(path, map_location="cpu")
    except ckpt.UnsafeError:
        with pytest.raises(Exception):
            torch.load(path, weights_only=True)
        # and it still loads inertly, executing nothing
        inert = ckpt.load(path, weights_only=False)
        assert inert is not None
        return
    except ckpt.UnsupportedError as e:
        pytest.skip(f"not supported by the Python package: {e}")
    try:
        ref, wo = torch_reference(path, map_location="cpu")
    except Exception as e:
        # torch 2.x cannot read it at all (torch 1.13's sparse CSR rebuild function is gone):
        # ckpt still reads it, inertly
        assert ours is not None, e
        return
    if isinstance(ref, torch.jit.ScriptModule):
        # torch.load hands TorchScript archives to torch.jit.load; ckpt gives their tensors
        sd = ref.state_dict()
        theirs = {k: v for k, v in sd.items()}
        mine = {k: v for k, v in ours.items() if k in theirs}
        assert mine, f"no tensor of {path} matched the ScriptModule's state dict {list(theirs)}"
        for k, v in mine.items():
            assert torch.equal(v, theirs[k]), k
        return
    assert_same(ours, ref, numpy_as_tensor=not wo)
    assert sharing(ours) == sharing(ref)


def test_legacy_and_torchscript_formats():
    for name in ("checkpoint_legacy.pt", "net_state_dict_legacy.pt", "views_legacy.pt", "scripted.pt"):
        path = DATA / "valid" / "torch2" / name
        ours = ckpt.load(path, map_location="cpu")
        assert walk_count(ours) > 0, name


def walk_count(obj):
    from conftest import walk

    return len(walk(obj))


def test_safetensors_equal_safetensors_library():
    load_file = pytest.importorskip("safetensors.torch").load_file

    files = sorted(glob.glob(str(DATA / "valid" / "safetensors" / "*.safetensors")))
    assert files
    for p in files:
        ref = load_file(p)
        ours = ckpt.load(p)
        assert list(ours.keys()) == list(ref.keys()) or sorted(ours) == sorted(ref), p
        for k in ref:
            assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape, (p, k)
            assert ours[k].stride() == ref[k].stride(), (p, k)
            assert tensor_bytes(ours[k]) == tensor_bytes(ref[k]), (p, k)


def test_map_location_forms(generated):
    path = generated / "tied.pt"
    ref = torch.load(path, weights_only=True)
    for ml in ("cpu", torch.device("cpu"), {"cpu": "cpu"}, lambda s, loc: s, lambda s, loc: None):
        ours = ckpt.load(path, map_location=ml)
        assert_same(ours, ref)
        assert sharing(ours) == sharing(ref)
    with pytest.raises(TypeError):
        ckpt.load(path, map_location=3)


def test_cuda_locations_map_to_cpu():
    path = DATA / "valid" / "torch2" / "cuda_locations.pt"
    ref = torch.load(path, weights_only=True, map_location="cpu")
    ours = ckpt.load(path, map_location={"cuda:0": "cpu", "cuda:1": "cpu"})
    assert_same(ours, ref)
    ours = ckpt.load(path, map_location=lambda s, loc: s)  # torch's idiom for "keep on CPU"
    assert_same(ours, ref)


def test_file_objects_and_bytes(generated):
    path = generated / "training_checkpoint.pt"
    ref, _ = torch_reference(path)
    with open(path, "rb") as f:
        assert_same(ckpt.load(f), ref)
    assert_same(ckpt.load(path.read_bytes()), ref)


def test_numpy_values_load_without_unsafe_pickle():
    path = DATA / "valid" / "torch2" / "numpy_zip.pt"
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    try:
        ours = ckpt.load(path)
    except ckpt.UnsupportedError as e:  # torch 1.13 has no uint16/32/64 for numpy's unsigned arrays
        assert not TORCH2 and "has no dtype" in str(e)
        return
    try:
        ref = torch.load(path, weights_only=False)
    except ImportError:  # saved with numpy 2 (numpy._core); this numpy is 1.x: ckpt still reads it
        assert any(isinstance(v, torch.Tensor) for v in ours.values())
        return
    assert_same(ours, ref, numpy_as_tensor=True)


def test_zero_copy_and_lifetime(generated):
    """Tensors view ckpt's buffers (no copy) and keep them alive on their own."""
    import gc

    sd = ckpt.load(generated / "tied.pt")
    a = sd["a"]
    assert storage_of(a).data_ptr() == storage_of(sd["b"]).data_ptr()
    expected = a.clone()
    del sd
    gc.collect()
    junk = [bytearray(1 << 16) for _ in range(64)]  # reuse freed memory if any was freed
    assert torch.equal(a, expected)
    del junk


def test_weights_only_false_is_inert(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil(), "t": torch.ones(2)}, path)
    with pytest.raises(ckpt.UnsafeError) as ei:
        ckpt.load(path)
    assert isinstance(ei.value, pickle.UnpicklingError)
    assert "evil.pt" in str(ei.value) and ei.value.file and ei.value.record
    out = ckpt.load(path, weights_only=False)
    assert isinstance(out["x"], ckpt.Object)
    assert out["x"].module in ("posix", "os") and out["x"].name == "system"
    assert torch.equal(out["t"], torch.ones(2))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("mmap", [False, True])
def test_unshared_tensors_fast_path(tmp_path, mmap):
    """Tensors alone on their storage (the DLPack path) are plain tensors like torch.load's:
    no _base, the same storage size, writable, alive after everything else is gone."""
    import gc

    sd = collections.OrderedDict((f"t{i}", torch.randn(3, 4).to(dt)) for i, dt in
                                 enumerate([torch.float32, torch.bfloat16, torch.int64, torch.float16, torch.uint8,
                                            torch.complex64, torch.bool, torch.int8]))
    sd["p"] = torch.nn.Parameter(torch.randn(5))
    sd["g"] = torch.randn(2).requires_grad_()
    path = tmp_path / "u.pt"
    torch.save(sd, path)
    ref = torch.load(path, weights_only=True)
    ours = ckpt.load(path, mmap=mmap)
    assert_same(ours, ref)
    for k, t in ours.items():
        assert t._base is None, k
        assert storage_of(t).nbytes() == storage_of(ref[k]).nbytes(), k
    before = path.read_bytes()
    t0 = ours["t0"]
    t0.add_(1)
    assert torch.equal(t0, ref["t0"] + 1)
    assert path.read_bytes() == before
    del ours
    gc.collect()
    junk = [bytearray(1 << 16) for _ in range(64)]
    assert torch.equal(t0, ref["t0"] + 1)
    del junk


def test_dcp_directory_equals_torch_consolidation():
    """A torch.distributed.checkpoint directory loads consolidated, as torch's
    format_utils.dcp_to_torch_save wrote it (tests/data/dcp/make_dcp_fixture.py)."""
    ref = torch.load(DATA / "dcp" / "torch2_w2.pt", weights_only=False)
    ours = ckpt.load(DATA / "dcp" / "torch2_w2")
    from conftest import walk

    mine = dict(walk(ours))
    theirs = dict(walk(ref))
    assert mine.keys() == theirs.keys() and mine
    for k, t in theirs.items():
        assert mine[k].dtype == t.dtype and torch.equal(mine[k], t), k


def test_sharded_set(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    a, b, c = torch.randn(3, 2), torch.arange(4), torch.randn(5).to(torch.bfloat16)
    st.save_file({"a": a, "b": b}, tmp_path / "model-00001-of-00002.safetensors")
    st.save_file({"c": c}, tmp_path / "model-00002-of-00002.safetensors")
    index = {"metadata": {"total_size": 0}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    for p in (tmp_path, tmp_path / "model.safetensors.index.json"):
        sd = ckpt.load(p)
        assert list(sd) == ["a", "b", "c"]
        assert torch.equal(sd["a"], a) and torch.equal(sd["b"], b) and torch.equal(sd["c"], c)
        with ckpt.open(p) as f:
            assert f.keys() == ["a", "b", "c"] and len(f.files) == 2
            assert torch.equal(f["c"], c)


def test_dict_attributes_never_set_dunders(tmp_path):
    """BUILD state on an OrderedDict sets its attributes (_metadata); names like __class__
    or __dict__ from a file are skipped, not assigned (assigning raised TypeError before)."""
    od = collections.OrderedDict(w=torch.ones(2))
    od._metadata = {"": {"version": 1}}
    vars(od)["__class__"] = 5
    vars(od)["__dict__"] = {"x": 1}
    path = tmp_path / "attrs.pt"
    torch.save({"sd": od}, path)
    out = ckpt.load(path)
    assert type(out["sd"]) is collections.OrderedDict
    assert out["sd"]._metadata == {"": {"version": 1}}
    assert torch.equal(out["sd"]["w"], torch.ones(2))
