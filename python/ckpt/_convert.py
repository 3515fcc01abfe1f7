"""Framework adapters used by the native module (private).

The native module turns ckpt's object tree into Python objects itself; what
depends on the framework (torch tensors or numpy arrays, devices, dtypes) goes
through a builder defined here. Per storage one ``storage()`` call, per tensor
one ``set_`` call on the torch path.
"""
import collections
import importlib.util
import sys

from . import _ckpt
from ._errors import FormatError, UnsupportedError
from ._objects import Global, Object

_DTYPE_NAMES = _ckpt.dtype_names()


def have_torch():
    return "torch" in sys.modules or importlib.util.find_spec("torch") is not None


def _common(builder):
    builder.OrderedDict = collections.OrderedDict
    builder.global_ = Global
    builder.object = lambda module, name, how, args, kwargs, state, list_items, dict_items: Object(
        module, name, how, args, kwargs, state, list_items, dict_items
    )


class TorchBuilder:
    torch = True

    def __init__(self, map_location=None):
        import torch
        from torch.serialization import default_restore_location

        self._torch = torch
        self._restore = default_restore_location
        self.dtypes = []
        for n in _DTYPE_NAMES:
            d = getattr(torch, n, None)
            self.dtypes.append(d if isinstance(d, torch.dtype) else None)
        self.empty = torch.empty
        self.from_dlpack = torch._C._from_dlpack
        self.Parameter = torch.nn.Parameter
        self._u8 = torch.uint8
        self._frombuffer = torch.frombuffer
        self._untyped = (
            (lambda t: t.untyped_storage()) if hasattr(torch.Tensor, "untyped_storage") else (lambda t: t.storage().untyped())
        )
        self._fn = map_location if callable(map_location) else None
        self.callable = self._fn is not None
        self.tensor = None
        _common(self)
        self.object = self._object

    def storage(self, buf, location):
        torch = self._torch
        if len(buf) == 0:
            s = torch.UntypedStorage(0)
        else:
            s = self._untyped(self._frombuffer(buf, dtype=self._u8))
        if self._fn is not None:
            r = self._fn(s, location)
            if r is not None:
                return getattr(r, "_untyped_storage", r) if not isinstance(r, torch.UntypedStorage) else r
        if location != "cpu":
            s = self._restore(s, location)
            s = getattr(s, "_untyped_storage", s)
        return s

    def _sparse(self, layout, data):
        torch = self._torch
        try:
            if layout == torch.sparse_coo:
                indices, values, size = data[:3]
                try:
                    t = torch.sparse_coo_tensor(indices, values, size, check_invariants=True)
                except TypeError:  # torch 1.13: no check_invariants
                    t = torch.sparse_coo_tensor(indices, values, size)
                    torch._validate_sparse_coo_tensor_args(indices, values, size)
                if len(data) > 3 and data[3]:
                    t = t._coalesced_(True)
                return t
            c, p, v, size = data[:4]
            if not hasattr(torch, "sparse_compressed_tensor"):
                return torch.sparse_csr_tensor(c, p, v, size)
            try:
                return torch.sparse_compressed_tensor(c, p, v, size, layout=layout, check_invariants=True)
            except TypeError:  # torch 1.13: no check_invariants
                t = torch.sparse_compressed_tensor(c, p, v, size, layout=layout)
                torch._validate_sparse_compressed_tensor_args(c, p, v, size, layout)
                return t
        except (RuntimeError, ValueError, TypeError) as e:
            raise FormatError(f"invalid {layout} tensor: {e}") from None

    def storage_value(self, storage, dtype_name):
        torch = self._torch
        dt = getattr(torch, dtype_name)
        try:
            return torch.storage.TypedStorage(wrap_storage=storage, dtype=dt, _internal=True)
        except TypeError:  # torch 1.13
            return torch.storage.TypedStorage(wrap_storage=storage, dtype=dt)

    def dtype(self, name):
        return getattr(self._torch, name)

    def device(self, name):
        return self._torch.device(name)

    def size(self, dims):
        return self._torch.Size(dims)

    def quantized(self, storage, dtype, offset, size, stride, requires_grad, scheme, scale, zero_point,
                  scales, zero_points, axis):
        # As torch._utils._rebuild_qtensor: an empty quantized tensor with the quantizer
        # parameters, set_ onto the storage.
        torch = self._torch
        if scheme == "per_tensor_affine":
            t = torch._empty_affine_quantized(size, scale=scale, zero_point=zero_point, dtype=dtype,
                                              device=storage.device)
        elif scheme in ("per_channel_affine", "per_channel_affine_float_qparams"):
            t = torch._empty_per_channel_affine_quantized(size, scales=scales, zero_points=zero_points, axis=axis,
                                                          dtype=dtype, device=storage.device)
        else:
            raise UnsupportedError(f"quantization scheme {scheme} is not supported")
        try:
            t.set_(storage, offset, size, stride)
        except (TypeError, RuntimeError):  # torch 1.13: a typed storage of the quantized dtype
            t.set_(torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype), offset, size, stride)
        if requires_grad:
            t.requires_grad = True
        return t

    def _object(self, module, name, how, args, kwargs, state, list_items, dict_items):
        # Sparse tensors: torch._utils._rebuild_sparse_tensor (torch 1.13 also
        # _rebuild_sparse_csr_tensor) is on torch's weights-only allow-list; ckpt keeps the
        # call inert and the tensor is assembled here from its parts, invariants checked.
        if module == "torch._utils" and name in ("_rebuild_sparse_tensor", "_rebuild_sparse_csr_tensor") \
                and how == "REDUCE" and isinstance(args, tuple) and len(args) == 2:
            layout = args[0]
            if isinstance(layout, Global) and layout.module == "torch":
                layout = getattr(self._torch, layout.name, None)
            if isinstance(layout, self._torch.layout) and isinstance(args[1], tuple):
                return self._sparse(layout, args[1])
        return Object(module, name, how, args, kwargs, state, list_items, dict_items)

    def unsupported_dtype(self, name):
        raise UnsupportedError(f"torch {self._torch.__version__} has no dtype {name}")


class NumpyBuilder:
    torch = False

    def __init__(self, map_location=None):
        import numpy as np

        if callable(map_location):
            raise TypeError("ckpt.load: a callable map_location needs torch")
        self._np = np
        table = {
            "float64": np.float64, "float32": np.float32, "float16": np.float16,
            "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
            "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
            "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128,
        }
        try:  # bfloat16 and float8 need ml_dtypes (optional)
            import ml_dtypes

            for n in ("bfloat16", "float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz", "float8_e4m3fnuz", "float8_e8m0fnu"):
                if hasattr(ml_dtypes, n):
                    table[n] = getattr(ml_dtypes, n)
        except ImportError:
            pass
        self.dtypes = [np.dtype(table[n]) if n in table else None for n in _DTYPE_NAMES]
        self.callable = False
        _common(self)

    def storage(self, buf, location):
        np = self._np
        if len(buf) == 0:
            return np.empty(0, dtype=np.uint8)
        return np.frombuffer(buf, dtype=np.uint8)

    def tensor(self, base, dtype, offset, size, stride, requires_grad, is_parameter):
        isz = dtype.itemsize
        return self._np.ndarray(size, dtype, buffer=base, offset=offset * isz, strides=tuple(s * isz for s in stride))

    def storage_value(self, storage, dtype_name):
        dt = self.dtype(dtype_name)
        return storage.view(dt) if isinstance(dt, self._np.dtype) else storage

    def dtype(self, name):
        i = _DTYPE_NAMES.index(name)
        return self.dtypes[i] if self.dtypes[i] is not None else name

    def device(self, name):
        return name

    def size(self, dims):
        return tuple(dims)

    def quantized(self, *args):
        raise UnsupportedError("quantized tensors need torch")

    def unsupported_dtype(self, name):
        raise UnsupportedError(f"numpy has no dtype {name} (install torch, or ml_dtypes for bfloat16 and float8)")


def builder(framework, map_location):
    if framework in (None, "pt", "torch"):
        if framework is None and not have_torch():
            return NumpyBuilder(map_location)
        return TorchBuilder(map_location)
    if framework in ("np", "numpy"):
        return NumpyBuilder(map_location)
    raise ValueError(f"framework must be 'pt', 'torch', 'np' or 'numpy', not {framework!r}")


class SaveHelper:
    """Describes the Python objects the native saver cannot read itself."""

    OrderedDict = collections.OrderedDict

    def __init__(self):
        self._cpu = {}
        self._torch = sys.modules.get("torch")
        self._np = sys.modules.get("numpy")

    @staticmethod
    def int_bytes(v):
        return v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)

    def classify(self, o):
        torch, np = self._torch, self._np
        if torch is not None:
            if isinstance(o, torch.Tensor):
                return self._torch_tensor(o)
            if isinstance(o, torch.dtype):
                return ("dtype", str(o))
            if isinstance(o, torch.device):
                return ("device", str(o))
            if isinstance(o, torch.Size):
                return ("size", tuple(o))
        if np is not None:
            if isinstance(o, np.ndarray):
                return self._array(o)
            if isinstance(o, np.generic):
                return ("value", o.item())
        if isinstance(o, bool):
            return ("value", bool(o))
        if isinstance(o, int):
            return ("int", int(o))
        if isinstance(o, float):
            return ("value", float(o))
        if isinstance(o, str):
            return ("value", str(o))
        if isinstance(o, collections.OrderedDict):
            return ("dict", o)
        if isinstance(o, (list, tuple, dict)) and type(o).__name__ != "defaultdict":
            if isinstance(o, tuple) and hasattr(o, "_fields"):
                return ("other",)
            return (("list" if isinstance(o, list) else "tuple" if isinstance(o, tuple) else "dict"), o)
        return ("other",)

    def _torch_tensor(self, t):
        torch = self._torch
        if t.layout != torch.strided:
            raise UnsupportedError(f"ckpt.save: {t.layout} tensors are not supported")
        if t.is_quantized:
            raise UnsupportedError("ckpt.save: quantized tensors are not supported")
        if getattr(t, "is_conj", lambda: False)() or getattr(t, "is_neg", lambda: False)():
            t = t.resolve_conj().resolve_neg()
        s = t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage().untyped()
        device = str(t.device)
        ptr, n = s.data_ptr(), s.nbytes()
        key = (device, ptr, n) if ptr else ("empty", id(t))
        keep = s
        if t.device.type != "cpu":
            keep = self._cpu.get(key)
            if keep is None:
                keep = self._cpu[key] = s.cpu()
            ptr = keep.data_ptr()
        dt = str(t.dtype).replace("torch.", "")
        return ("tensor", key, ptr, n, dt, tuple(t.shape), tuple(t.stride()), t.storage_offset(),
                bool(t.requires_grad), isinstance(t, torch.nn.Parameter), device, keep)

    def _array(self, a):
        np = self._np
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        a = np.ascontiguousarray(a)
        name = "bool" if a.dtype == np.bool_ else a.dtype.name
        if a.dtype.kind not in "biufc" and name not in ("bfloat16",) and not name.startswith("float8"):
            raise UnsupportedError(f"ckpt.save: numpy arrays of dtype {a.dtype} are not supported")
        isz = a.dtype.itemsize
        return ("tensor", ("np", id(a)), a.ctypes.data, a.nbytes, name, a.shape,
                tuple(s // isz for s in a.strides), 0, False, False, "cpu", a)
