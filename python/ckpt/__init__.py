"""ckpt: load and save PyTorch checkpoints safely and fast.

``ckpt.load`` reads what ``torch.load(weights_only=True)`` reads, and more (legacy
files, TorchScript archives, safetensors, Hugging Face sharded sets, DCP directories,
numpy values), with a C++ unpickler that never imports or executes anything from the
file. Tensors are created over ckpt's memory without copying it.

    import ckpt
    sd = ckpt.load("model.pt")                      # like torch.load(weights_only=True)
    with ckpt.open("model.safetensors") as f:       # lazy, like safetensors.safe_open
        w = f["lm_head.weight"]
    ckpt.save(sd, "copy.pt")                        # torch.load(weights_only=True) reads it
    print(ckpt.scan("untrusted.pt").verdict)        # "safe", "unsafe-but-known", "dangerous", "error"

With torch installed tensors are ``torch.Tensor`` / ``torch.nn.Parameter``; without it
they are numpy arrays (``framework="numpy"`` asks for numpy explicitly).
"""
import builtins as _builtins
import collections.abc as _abc
import gc as _gc
import os as _os
import warnings as _warnings

from . import _ckpt, _convert, _errors
from ._errors import Error, FormatError, IoError, LimitError, TypeError, UnsafeError, UnsupportedError
from ._objects import Global, Object

_ckpt.set_error_classes({n: getattr(_errors, n) for n in _errors.__all__})

__version__ = _ckpt.version()

__all__ = [
    "load", "save", "open", "scan", "CheckpointFile", "ScanReport", "ScanFinding",
    "Error", "IoError", "FormatError", "LimitError", "UnsupportedError", "UnsafeError", "TypeError",
    "Global", "Object", "__version__",
]

_builtins_TypeError = _builtins.TypeError
ScanReport = _ckpt.ScanReport
ScanFinding = _ckpt.ScanFinding


def _map_location(map_location):
    """Splits torch's map_location into what the C++ library applies and a callable."""
    if map_location is None or callable(map_location) and not isinstance(map_location, (str, dict)):
        return None, map_location
    if isinstance(map_location, str):
        return map_location, None
    if isinstance(map_location, dict):
        return {str(k): str(v) for k, v in map_location.items()}, None
    if type(map_location).__name__ == "device":  # torch.device
        return str(map_location), None
    raise _builtins_TypeError(
        f"map_location should be a str, a torch.device, a dict or a callable, not {type(map_location).__name__}"
    )


def load(f, map_location=None, *, weights_only=True, mmap=False, framework=None):
    """Loads a checkpoint without executing anything from it.

    Returns what ``torch.load(f, weights_only=True)`` returns: the same containers
    (dict, OrderedDict with its ``_metadata``, list, tuple, numbers, str, bytes, None)
    and tensors with the same dtype, shape, stride, storage offset, bytes and
    requires_grad (``torch.nn.Parameter`` where one was saved). Tensors that share a
    storage in the file share one storage here. Tensor bytes are not copied: the
    tensors view ckpt's buffers (or, with ``mmap=True``, the file's pages,
    copy-on-write) and keep them alive.

    Args:
        f: a path (``str`` / ``os.PathLike``) to a torch zip or legacy file, a
            TorchScript archive, a safetensors file, a sharded set's index (or its
            directory), or a torch.distributed.checkpoint directory; or a binary
            file object / ``bytes`` (read into memory first).
        map_location: as torch.load: a device string ("cpu", "cuda:0"), a
            ``torch.device``, a dict mapping saved to new locations, or a callable
            ``(storage, location) -> storage | None``.
        weights_only: True (default): anything outside torch's weights-only
            allow-list raises ``ckpt.UnsafeError``. False: such objects load as
            inert ``ckpt.Object`` / ``ckpt.Global`` values; still nothing runs.
            numpy arrays and scalars are accepted either way (arrays become
            tensors, scalars Python numbers).
        mmap: map the file instead of reading it (torch zip and safetensors).
        framework: None (torch when installed, else numpy), "pt"/"torch" or
            "np"/"numpy".

    Raises:
        ckpt.Error and its subclasses, with the file, record and byte offset.
    """
    loc, fn = _map_location(map_location)
    b = _convert.builder(framework, fn)
    if isinstance(f, (bytes, bytearray, memoryview)):
        data, path = bytes(f), None
    elif hasattr(f, "read") and not isinstance(f, (str, _os.PathLike)):
        data, path = f.read(), None
    else:
        data, path = None, _os.fsdecode(_os.fspath(f))
    # The object tree is acyclic and built in one go: the cyclic garbage collector would
    # only rescan the growing tree (a 100,000-tensor file: ~25% of the time).
    gc_was_enabled = _gc.isenabled()
    _gc.disable()
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", UserWarning)  # torch.frombuffer on read-only pages
            if path is None:
                return _ckpt.load_bytes(data, loc, weights_only, True, b)
            return _ckpt.load(path, loc, weights_only, mmap, True, b)
    finally:
        if gc_was_enabled:
            _gc.enable()


def save(obj, f):
    """Saves ``obj`` as a PyTorch zip checkpoint that ``torch.load(weights_only=True)`` reads.

    ``obj`` may hold dicts (OrderedDicts keep their ``_metadata``), lists, tuples,
    sets, None, bool, int, float, complex, str, bytes, torch tensors and Parameters
    (storage sharing kept; CUDA tensors are copied to the host and keep their device),
    torch dtypes, devices and Sizes, numpy arrays (saved as tensors) and numpy scalars.
    The file is written atomically (temporary file, fsync, rename). ``f`` is a path.
    """
    if hasattr(f, "write") and not isinstance(f, (str, _os.PathLike)):
        raise _builtins_TypeError("ckpt.save needs a path (str or os.PathLike), not a file object")
    _ckpt.save(obj, _os.fsdecode(_os.fspath(f)), _convert.SaveHelper())


class CheckpointFile(_abc.Mapping):
    """A lazy, read-only mapping of tensor names to tensors (see :func:`open`)."""

    def __init__(self, path, map_location=None, *, weights_only=True, framework=None):
        loc, fn = _map_location(map_location)
        if fn is not None:
            raise _builtins_TypeError("ckpt.open: map_location must be a str, torch.device or dict")
        self._reader = _ckpt.Reader(_os.fsdecode(_os.fspath(path)), loc, weights_only, _convert.builder(framework, None))

    def __getitem__(self, name):
        if not isinstance(name, str) or name not in self._reader:
            raise KeyError(name)
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", UserWarning)
            return self._reader.get(name)

    def get_tensor(self, name):
        """The tensor called ``name`` (safetensors' ``safe_open`` spelling); KeyError when absent."""
        return self[name]

    def __iter__(self):
        return iter(self._reader.keys())

    def __len__(self):
        return len(self._reader)

    def __contains__(self, name):
        return isinstance(name, str) and name in self._reader

    def keys(self):
        """Tensor names in the file's order (a list, as safetensors' ``keys()``)."""
        return self._reader.keys()

    def info(self, name):
        """dtype, shape, strides, storage_offset, device, file, file_offset, nbytes of a tensor, without reading it."""
        if name not in self:
            raise KeyError(name)
        return self._reader.info(name)

    def metadata(self):
        """safetensors ``__metadata__`` (or a sharded index's metadata) as a dict of str."""
        return self._reader.metadata()

    @property
    def format(self):
        """"torch_zip", "safetensors", ... (see ckpt's docs/formats.md)."""
        return self._reader.format

    @property
    def files(self):
        """Every file read (the shards of a sharded set)."""
        return self._reader.files

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __repr__(self):
        return f"ckpt.CheckpointFile({self._reader.path!r}, {len(self)} tensors, {self.format})"


def open(path, map_location=None, *, weights_only=True, framework=None):  # noqa: A001 (as safetensors.safe_open)
    """Opens a checkpoint lazily: reads its structure only (safetensors header, zip directory and pickle).

    Returns a :class:`CheckpointFile`, a read-only mapping (``keys()``, ``[name]``, ``in``,
    ``len``) whose tensors are created on access as views of the memory-mapped file.
    Accepts a torch zip or safetensors file (and every other single-file format, whose
    tensors are read at open), a sharded set's index or directory.
    """
    return CheckpointFile(path, map_location, weights_only=weights_only, framework=framework)


def scan(path, *, include_allowed=False):
    """Reports what a checkpoint's pickles would import and call, without running them.

    Returns a :class:`ScanReport` with ``verdict`` ("safe", "unsafe-but-known",
    "dangerous", "error"), ``findings`` (each with ``record``, ``offset``, ``op``,
    ``module``, ``name``, ``category``), ``errors``, ``format`` and ``to_json()``.
    Never raises for the file's contents.
    """
    return _ckpt.scan(_os.fsdecode(_os.fspath(path)), include_allowed)
