// python/src/module.cpp — ckpt._ckpt, the native half of the `ckpt` Python package.
//
// The Python package (python/ckpt/__init__.py) owns the public API; this
// module does the work that must be fast or that needs the C++ library:
//   - load(): ckpt::load with the GIL released, then the object tree turned
//     into Python objects here, in C++ (one Python call per storage and one
//     per tensor at most). Tensor bytes are never copied: every ckpt Storage
//     becomes a StorageBuffer (a Python buffer object that owns a handle to
//     the Storage), which torch.frombuffer / numpy.frombuffer wrap; the
//     Python tensor keeps the buffer and so the C++ bytes alive.
//   - Reader: ckpt::open for ckpt.open()'s lazy mapping.
//   - save(): Python objects turned into a ckpt::Value whose tensors are
//     external storages over the Python tensors' memory (no copy).
//   - scan(): ckpt::scan_file.
// Errors from the library are raised as the Python classes that
// python/ckpt/_errors.py defines (set_error_classes), with the C++ message.
#include <Python.h>
#include <sys/mman.h>
#include <unistd.h>

#include <nanobind/nanobind.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "ckpt/ckpt.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// ---- errors ---------------------------------------------------------------

struct ErrorClasses {
  nb::object error, io, format, limit, unsupported, unsafe, type;
};
ErrorClasses* g_errors = nullptr;  // set once at import (leaked on purpose: lives as long as the interpreter)

void raise_ckpt_error(const ckpt::Error& e) {
  if (!g_errors) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return;
  }
  nb::handle cls = g_errors->error;
  if (dynamic_cast<const ckpt::LimitError*>(&e)) cls = g_errors->limit;
  else if (dynamic_cast<const ckpt::FormatError*>(&e)) cls = g_errors->format;
  else if (dynamic_cast<const ckpt::IoError*>(&e)) cls = g_errors->io;
  else if (dynamic_cast<const ckpt::UnsupportedError*>(&e)) cls = g_errors->unsupported;
  else if (dynamic_cast<const ckpt::UnsafeError*>(&e)) cls = g_errors->unsafe;
  else if (dynamic_cast<const ckpt::TypeError*>(&e)) cls = g_errors->type;
  try {
    // what() and message() are printable UTF-8 (ckpt::Error escapes them); the context's
    // file and record are raw bytes: a path decodes as os.fsdecode does (surrogateescape,
    // so it opens again), a record name from a hostile file with backslash escapes.
    auto decode = [](const std::string& s, const char* errors) -> nb::object {
      if (s.empty()) return nb::none();
      return nb::steal(PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), errors));
    };
    nb::object inst = cls(nb::str(e.what()));
    inst.attr("message") = nb::str(e.message().c_str());
    const auto& c = e.context();
    inst.attr("file") = decode(c.file, "surrogateescape");
    inst.attr("record") = decode(c.record, "backslashreplace");
    inst.attr("offset") = c.offset ? nb::object(nb::int_(*c.offset)) : nb::none();
    if (auto* io = dynamic_cast<const ckpt::IoError*>(&e)) inst.attr("errno") = nb::int_(io->code());
    PyErr_SetObject(cls.ptr(), inst.ptr());
  } catch (nb::python_error& pe) {
    pe.restore();
  }
}

void set_error_classes(nb::dict d) {
  auto* ec = new ErrorClasses{d["Error"], d["IoError"], d["FormatError"], d["LimitError"],
                              d["UnsupportedError"], d["UnsafeError"], d["TypeError"]};
  delete g_errors;
  g_errors = ec;
}

// ---- a Storage as a Python buffer -------------------------------------------

bool make_writable(const ckpt::Storage& s);

struct StorageBuffer {
  ckpt::Storage storage;
  std::byte* data = nullptr;
  bool writable = false;
};

// Mapped storages are read-only views of a MAP_PRIVATE mapping. torch tensors
// have no read-only flag, so, as torch.load(mmap=True) does, the pages are
// made copy-on-write writable: a write changes this process's copy, never the
// file, and cannot fault.
StorageBuffer make_buffer(const ckpt::Storage& s) {
  StorageBuffer b;
  b.storage = s;
  b.data = const_cast<std::byte*>(s.data());
  b.writable = s.writable();
  if (!b.writable) b.writable = make_writable(s);
  return b;
}

int storage_getbuffer(PyObject* self, Py_buffer* view, int flags) {
  StorageBuffer* b = nb::inst_ptr<StorageBuffer>(self);
  static char empty = 0;
  void* data = b->data ? static_cast<void*>(b->data) : static_cast<void*>(&empty);
  return PyBuffer_FillInfo(view, self, data, static_cast<Py_ssize_t>(b->storage.nbytes()), b->writable ? 0 : 1,
                           flags);
}
void storage_releasebuffer(PyObject*, Py_buffer*) {}

PyType_Slot storage_slots[] = {
    {Py_bf_getbuffer, reinterpret_cast<void*>(storage_getbuffer)},
    {Py_bf_releasebuffer, reinterpret_cast<void*>(storage_releasebuffer)},
    {0, nullptr},
};

// ---- a tensor over a Storage through DLPack ------------------------------------
// The unversioned DLPack ABI (dlpack.h v0.8, what torch._C._from_dlpack reads):
// one call makes a torch tensor of any shape over ckpt's bytes, and the deleter
// (which torch may run on any thread, without the GIL) drops the Storage handle.

namespace dl {
struct Device { int32_t device_type; int32_t device_id; };
struct DataType { uint8_t code; uint8_t bits; uint16_t lanes; };
struct Tensor {
  void* data; Device device; int32_t ndim; DataType dtype; int64_t* shape; int64_t* strides; uint64_t byte_offset;
};
struct Managed {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(Managed*);
};
}  // namespace dl

struct DlpackOwner {
  ckpt::Storage storage;
  std::vector<int64_t> shape, strides;
  dl::Managed managed{};
};

void dlpack_delete(dl::Managed* m) { delete static_cast<DlpackOwner*>(m->manager_ctx); }

void dlpack_capsule_destructor(PyObject* capsule) {
  // Only an unconsumed capsule still owns its tensor (consumers rename it "used_dltensor").
  if (PyCapsule_IsValid(capsule, "dltensor")) {
    auto* m = static_cast<dl::Managed*>(PyCapsule_GetPointer(capsule, "dltensor"));
    if (m && m->deleter) m->deleter(m);
  } else {
    PyErr_Clear();
  }
}

// The DLPack code of the dtypes every supported torch (1.13 and 2.x) reads.
bool dlpack_dtype(ckpt::DType d, dl::DataType& out) {
  using D = ckpt::DType;
  uint8_t bits = static_cast<uint8_t>(ckpt::itemsize(d) * 8);
  switch (d) {
    case D::float64: case D::float32: case D::float16: out = {2, bits, 1}; return true;
    case D::bfloat16: out = {4, 16, 1}; return true;
    case D::int8: case D::int16: case D::int32: case D::int64: out = {0, bits, 1}; return true;
    case D::uint8: out = {1, 8, 1}; return true;
    case D::complex64: case D::complex128: out = {5, bits, 1}; return true;
    default: return false;
  }
}

// Makes mapped (read-only, MAP_PRIVATE) pages copy-on-write writable; see make_buffer.
bool make_writable(const ckpt::Storage& s) {
  if (s.writable()) return true;
  if (s.backing() != ckpt::Storage::Backing::mapped || s.nbytes() == 0) return false;
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  uintptr_t p = reinterpret_cast<uintptr_t>(s.data());
  uintptr_t begin = p & ~(page - 1);
  return ::mprotect(reinterpret_cast<void*>(begin), p + s.nbytes() - begin, PROT_READ | PROT_WRITE) == 0;
}

nb::object dlpack_capsule(const ckpt::Tensor& t, const dl::DataType& dtype) {
  auto* o = new DlpackOwner;
  o->storage = t.storage();
  o->shape = t.sizes();
  o->strides = t.strides();
  o->managed.dl_tensor.data = const_cast<std::byte*>(t.data());
  o->managed.dl_tensor.device = {1, 0};  // kDLCPU
  o->managed.dl_tensor.ndim = static_cast<int32_t>(o->shape.size());
  o->managed.dl_tensor.dtype = dtype;
  o->managed.dl_tensor.shape = o->shape.data();
  o->managed.dl_tensor.strides = o->strides.data();
  o->managed.dl_tensor.byte_offset = 0;
  o->managed.manager_ctx = o;
  o->managed.deleter = dlpack_delete;
  PyObject* cap = PyCapsule_New(&o->managed, "dltensor", dlpack_capsule_destructor);
  if (!cap) {
    delete o;
    throw nb::python_error();
  }
  return nb::steal(cap);
}

// ---- Value -> Python ----------------------------------------------------------

nb::object steal_checked(PyObject* o) {
  if (!o) throw nb::python_error();
  return nb::steal(o);
}

nb::object int_tuple(const std::vector<int64_t>& v) {
  PyObject* t = PyTuple_New(static_cast<Py_ssize_t>(v.size()));
  if (!t) throw nb::python_error();
  nb::object r = nb::steal(t);
  for (size_t i = 0; i < v.size(); ++i) {
    PyObject* x = PyLong_FromLongLong(v[i]);
    if (!x) throw nb::python_error();
    PyTuple_SET_ITEM(t, static_cast<Py_ssize_t>(i), x);
  }
  return r;
}

// Turns ckpt Values into Python objects. `builder` is a Python object
// (ckpt/_convert.py) that knows the framework: torch tensors, or numpy arrays.
class Converter {
 public:
  explicit Converter(nb::object builder) : builder_(std::move(builder)) {
    torch_ = nb::cast<bool>(builder_.attr("torch"));
    nb::list dts = builder_.attr("dtypes");
    for (size_t i = 0; i < ckpt::kNumDTypes && i < nb::len(dts); ++i) dtypes_[i] = dts[i];
    storage_fn_ = builder_.attr("storage");
    tensor_fn_ = builder_.attr("tensor");
    if (torch_) {
      empty_ = builder_.attr("empty");
      callable_ = nb::cast<bool>(builder_.attr("callable"));
      from_dlpack_ = builder_.attr("from_dlpack");
      parameter_ = builder_.attr("Parameter");
    }
    ordered_dict_ = builder_.attr("OrderedDict");
  }

  nb::object convert(const ckpt::Value& v) {
    if (torch_ && from_dlpack_.is_valid() && !callable_) count_refs(v, 0);
    return to_py(v, 0);
  }

  nb::object tensor(const ckpt::Tensor& t) {
    const nb::object& dt = dtypes_[static_cast<size_t>(t.dtype())];
    if (!dt.is_valid() || dt.is_none())
      return builder_.attr("unsupported_dtype")(nb::str(std::string(ckpt::name(t.dtype())).c_str()));
    if (const ckpt::Quantization* q = t.quantization()) {
      nb::object st = storage(t.storage(), t.device());
      nb::object scales = q->scales.defined() ? tensor(q->scales) : nb::none();
      nb::object zero_points = q->zero_points.defined() ? tensor(q->zero_points) : nb::none();
      return builder_.attr("quantized")(st, dt, t.storage_offset(), int_tuple(t.sizes()), int_tuple(t.strides()),
                                        t.requires_grad(), nb::str(q->scheme.c_str()), q->scale, q->zero_point,
                                        scales, zero_points, q->axis);
    }
    // Fast path: the only tensor of its storage, covering all of it, on the CPU: one
    // DLPack import (what torch.load builds: same storage size, offset 0, no _base).
    dl::DataType dlt{};
    if (!refs_.empty() && t.storage().id() && t.storage_offset() == 0 && t.numel() > 0 && t.is_contiguous() &&
        t.nbytes() == t.storage().nbytes() && t.device() == "cpu" && dlpack_dtype(t.dtype(), dlt)) {
      auto it = refs_.find(t.storage().id());
      if (it != refs_.end() && it->second == 1 && (t.storage().writable() || make_writable(t.storage()))) {
        nb::object out = from_dlpack_(dlpack_capsule(t, dlt));
        if (t.is_parameter()) return parameter_(out, t.requires_grad());
        if (t.requires_grad()) out.attr("requires_grad_")(true);
        return out;
      }
    }
    nb::object st = storage(t.storage(), t.device());
    nb::object size = int_tuple(t.sizes());
    nb::object stride = int_tuple(t.strides());
    if (!torch_)
      return tensor_fn_(st, dt, t.storage_offset(), size, stride, t.requires_grad(), t.is_parameter());
    nb::object out = (callable_ || t.device() != "cpu") ? empty_(0, "dtype"_a = dt, "device"_a = st.attr("device"))
                                                        : empty_(0, "dtype"_a = dt);
    out = out.attr("set_")(st, t.storage_offset(), size, stride);
    if (t.is_parameter()) return parameter_(out, t.requires_grad());
    if (t.requires_grad()) out.attr("requires_grad_")(true);
    return out;
  }

 private:
  void count_refs(const ckpt::Value& v, int depth) {
    using K = ckpt::Value::Kind;
    if (depth > 10000) return;  // to_py reports it
    switch (v.kind()) {
      case K::Tensor: {
        const auto& t = v.as_tensor();
        refs_[t.storage().id()] += t.quantization() ? 2 : 1;
        break;
      }
      case K::Storage: refs_[v.as_storage().storage.id()] += 2; break;
      default: break;
    }
    // Each container once: a shared one holds the same tensors however often it is referenced.
    if (const void* id = v.container_id(); !id || !counted_.insert(id).second) return;
    switch (v.kind()) {
      case K::List: case K::Tuple:
        for (const auto& x : v.items()) count_refs(x, depth + 1);
        break;
      case K::Set:
        for (const auto& x : v.as_set()) count_refs(x, depth + 1);
        break;
      case K::Dict:
        for (const auto& [k, x] : v.as_dict()) {
          count_refs(k, depth + 1);
          count_refs(x, depth + 1);
        }
        if (v.as_dict().attributes.is_dict()) count_refs(v.as_dict().attributes, depth + 1);
        break;
      case K::Object: {
        const auto& o = v.as_object();
        count_refs(o.args, depth + 1);
        count_refs(o.kwargs, depth + 1);
        count_refs(o.state, depth + 1);
        for (const auto& x : o.list_items) count_refs(x, depth + 1);
        for (const auto& [k, x] : o.dict_items) {
          count_refs(k, depth + 1);
          count_refs(x, depth + 1);
        }
        break;
      }
      default: break;
    }
  }

  nb::object storage(const ckpt::Storage& s, const std::string& device) {
    const void* id = s.id();
    if (id) {
      auto it = storages_.find(id);
      if (it != storages_.end()) return it->second;
    }
    nb::object buf = nb::cast(make_buffer(s), nb::rv_policy::move);
    nb::object st = storage_fn_(buf, nb::str(device.c_str()));
    if (id) storages_.emplace(id, st);
    return st;
  }

  nb::object to_py(const ckpt::Value& v, int depth) {
    using K = ckpt::Value::Kind;
    if (depth > 10000) throw ckpt::LimitError("object tree nested too deeply for Python");
    switch (v.kind()) {
      case K::None: return nb::none();
      case K::Bool: return nb::bool_(v.as_bool());
      case K::Int: return steal_checked(PyLong_FromLongLong(v.as_int()));
      case K::BigInt: {
        std::string s = v.as_bigint().to_string();
        return steal_checked(PyLong_FromString(s.c_str(), nullptr, 10));
      }
      case K::Float: return steal_checked(PyFloat_FromDouble(v.as_float()));
      case K::Complex: {
        auto c = v.as_complex();
        return steal_checked(PyComplex_FromDoubles(c.real(), c.imag()));
      }
      case K::String: {
        const std::string& s = v.as_string();
        return steal_checked(PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "surrogatepass"));
      }
      case K::Bytes: {
        const std::string& s = v.as_bytes();
        if (v.is_bytearray())
          return steal_checked(PyByteArray_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size())));
        return steal_checked(PyBytes_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size())));
      }
      case K::Tensor: return tensor(v.as_tensor());
      case K::Storage: {
        const auto& sv = v.as_storage();
        nb::object st = storage(sv.storage, sv.device);
        return builder_.attr("storage_value")(st, nb::str(std::string(ckpt::name(sv.dtype)).c_str()));
      }
      case K::DType: return builder_.attr("dtype")(nb::str(std::string(ckpt::name(v.as_dtype())).c_str()));
      case K::Device: return builder_.attr("device")(nb::str(v.as_device().name.c_str()));
      case K::Size: return builder_.attr("size")(int_tuple(v.as_size().dims));
      case K::Global: {
        const auto& g = v.as_global();
        return builder_.attr("global_")(nb::str(g.module.c_str()), nb::str(g.name.c_str()));
      }
      default: break;
    }
    // Shared containers: one Python object per C++ container.
    const void* id = v.container_id();
    if (id) {
      auto it = containers_.find(id);
      if (it != containers_.end()) return it->second;
    }
    nb::object out;
    switch (v.kind()) {
      case K::List: {
        const auto& items = v.as_list();
        PyObject* l = PyList_New(static_cast<Py_ssize_t>(items.size()));
        out = steal_checked(l);
        for (size_t i = 0; i < items.size(); ++i)
          PyList_SET_ITEM(l, static_cast<Py_ssize_t>(i), to_py(items[i], depth + 1).release().ptr());
        break;
      }
      case K::Tuple: {
        const auto& items = v.as_tuple();
        PyObject* t = PyTuple_New(static_cast<Py_ssize_t>(items.size()));
        out = steal_checked(t);
        for (size_t i = 0; i < items.size(); ++i)
          PyTuple_SET_ITEM(t, static_cast<Py_ssize_t>(i), to_py(items[i], depth + 1).release().ptr());
        break;
      }
      case K::Set: {
        out = steal_checked(PySet_New(nullptr));
        for (const auto& x : v.as_set())
          if (PySet_Add(out.ptr(), to_py(x, depth + 1).ptr()) != 0) throw nb::python_error();
        break;
      }
      case K::Dict: {
        const ckpt::Dict& d = v.as_dict();
        out = d.ordered ? ordered_dict_() : nb::object(nb::dict());
        for (const auto& [k, x] : d) {
          nb::object pk = to_py(k, depth + 1);
          nb::object px = to_py(x, depth + 1);
          if (PyObject_SetItem(out.ptr(), pk.ptr(), px.ptr()) != 0) throw nb::python_error();
        }
        // Attributes BUILD set on the dict (a state dict's _metadata).
        if (d.ordered && d.attributes.is_dict()) {
          for (const auto& [k, x] : d.attributes.as_dict())  // dunder names (__class__, __dict__) never
            if (k.is_string() && !k.as_string().starts_with("__") && k.as_string().find('\0') == std::string::npos)
              out.attr(k.as_string().c_str()) = to_py(x, depth + 1);
        }
        break;
      }
      case K::Object: {
        const ckpt::Object& o = v.as_object();
        nb::list list_items;
        for (const auto& x : o.list_items) list_items.append(to_py(x, depth + 1));
        nb::list dict_items;
        for (const auto& [k, x] : o.dict_items) dict_items.append(nb::make_tuple(to_py(k, depth + 1), to_py(x, depth + 1)));
        out = builder_.attr("object")(nb::str(o.module.c_str()), nb::str(o.name.c_str()), nb::str(o.how.c_str()),
                                      to_py(o.args, depth + 1), to_py(o.kwargs, depth + 1), to_py(o.state, depth + 1),
                                      list_items, dict_items);
        break;
      }
      default: throw ckpt::UnsupportedError("cannot convert a " + std::string(v.kind_name()) + " to Python");
    }
    if (id) containers_.emplace(id, out);
    return out;
  }

  nb::object builder_;
  bool torch_ = false;
  bool callable_ = false;  // map_location is a Python callable: storages may be anywhere
  std::array<nb::object, ckpt::kNumDTypes> dtypes_;
  nb::object storage_fn_, tensor_fn_, empty_, parameter_, ordered_dict_, from_dlpack_;
  std::unordered_set<const void*> counted_;  // containers count_refs has walked
  std::unordered_map<const void*, int> refs_;  // storage id -> tensors (and storage values) viewing it
  std::unordered_map<const void*, nb::object> storages_;
  std::unordered_map<const void*, nb::object> containers_;
};

ckpt::MapLocation map_location_of(const nb::object& ml) {
  if (ml.is_none()) return {};
  if (nb::isinstance<nb::str>(ml)) return ckpt::MapLocation(nb::cast<std::string>(ml));
  if (nb::isinstance<nb::dict>(ml)) return ckpt::MapLocation(nb::cast<std::map<std::string, std::string>>(ml));
  throw nb::type_error("map_location must be None, a str or a dict of str to str here");
}

nb::object load(const std::string& path, nb::object map_location, bool weights_only, bool mmap, bool numpy,
                nb::object builder) {
  ckpt::LoadOptions opt;
  opt.map_location = map_location_of(map_location);
  opt.weights_only = weights_only;
  opt.mmap = mmap;
  opt.numpy = numpy;
  ckpt::Value v;
  {
    nb::gil_scoped_release nogil;
    v = ckpt::load(path, opt);
  }
  Converter c(std::move(builder));
  return c.convert(v);
}

nb::object load_bytes(nb::bytes data, nb::object map_location, bool weights_only, bool numpy, nb::object builder) {
  ckpt::LoadOptions opt;
  opt.map_location = map_location_of(map_location);
  opt.weights_only = weights_only;
  opt.numpy = numpy;
  ckpt::Value v;
  {
    std::span<const std::byte> bytes(static_cast<const std::byte*>(static_cast<const void*>(data.c_str())), data.size());
    nb::gil_scoped_release nogil;
    v = ckpt::load(bytes, opt);
  }
  Converter c(std::move(builder));
  return c.convert(v);
}

// ---- ckpt.open ---------------------------------------------------------------

ckpt::Reader open_reader(const std::string& path, const nb::object& map_location, bool weights_only) {
  ckpt::OpenOptions opt;
  opt.map_location = map_location_of(map_location);
  opt.weights_only = weights_only;
  nb::gil_scoped_release nogil;
  return ckpt::open(path, opt);
}

class PyReader {
 public:
  PyReader(const std::string& path, nb::object map_location, bool weights_only, nb::object builder)
      : reader_(open_reader(path, map_location, weights_only)), conv_(std::move(builder)) {}
  std::vector<std::string> keys() const { return reader_.keys(); }
  size_t size() const { return reader_.size(); }
  bool contains(const std::string& k) const { return reader_.contains(k); }
  nb::object get(const std::string& k) {
    ckpt::Tensor t = reader_.get(k);
    return conv_.tensor(t);
  }
  nb::dict info(const std::string& k) const {
    const ckpt::TensorInfo& i = reader_.info(k);
    nb::dict d;
    d["name"] = i.name;
    d["dtype"] = std::string(ckpt::name(i.dtype));
    d["shape"] = int_tuple(i.shape);
    d["strides"] = int_tuple(i.strides);
    d["storage_offset"] = i.storage_offset;
    d["device"] = i.device;
    d["file"] = i.file;
    d["file_offset"] = i.file_offset;
    d["nbytes"] = i.nbytes;
    d["contiguous"] = i.contiguous;
    return d;
  }
  std::string format() const { return std::string(ckpt::format_name(reader_.format())); }
  std::string path() const { return reader_.path(); }
  bool sharded() const { return reader_.sharded(); }
  std::vector<std::string> files() const { return reader_.files(); }
  std::map<std::string, std::string> metadata() const { return reader_.metadata(); }
  uint64_t nbytes() const { return reader_.nbytes(); }

 private:
  ckpt::Reader reader_;
  Converter conv_;
};

// ---- Python -> Value (ckpt.save) ------------------------------------------------

class Saver {
 public:
  explicit Saver(nb::object helper) : helper_(std::move(helper)) {
    ordered_dict_ = helper_.attr("OrderedDict");
    classify_ = helper_.attr("classify");
  }

  ckpt::Value to_value(nb::handle o, int depth) {
    if (depth > 1000) throw nb::value_error("ckpt.save: object nested too deeply");
    PyObject* p = o.ptr();
    if (p == Py_None) return {};
    if (PyBool_Check(p)) return ckpt::Value(p == Py_True);
    if (PyLong_CheckExact(p)) return int_value(o);
    if (PyFloat_CheckExact(p)) return ckpt::Value(PyFloat_AS_DOUBLE(p));
    if (PyUnicode_CheckExact(p)) {
      Py_ssize_t n = 0;
      const char* s = PyUnicode_AsUTF8AndSize(p, &n);
      if (!s) throw nb::python_error();
      return ckpt::Value(std::string(s, static_cast<size_t>(n)));
    }
    if (PyBytes_CheckExact(p))
      return ckpt::Value::bytes(std::string(PyBytes_AS_STRING(p), static_cast<size_t>(PyBytes_GET_SIZE(p))));
    if (PyByteArray_CheckExact(p))
      return ckpt::Value::bytearray(
          std::string(PyByteArray_AS_STRING(p), static_cast<size_t>(PyByteArray_GET_SIZE(p))));
    if (PyComplex_CheckExact(p)) return ckpt::Value(std::complex<double>(PyComplex_RealAsDouble(p), PyComplex_ImagAsDouble(p)));
    if (PyList_CheckExact(p) || PyTuple_CheckExact(p) || PyDict_CheckExact(p) || PySet_CheckExact(p) ||
        PyFrozenSet_CheckExact(p) || PyObject_TypeCheck(p, reinterpret_cast<PyTypeObject*>(ordered_dict_.ptr())))
      return container(o, depth);
    // Everything else: tensors, arrays, dtypes, devices, sizes, numpy scalars.
    nb::tuple c = nb::cast<nb::tuple>(classify_(o));
    std::string kind = nb::cast<std::string>(c[0]);
    if (kind == "tensor") return tensor(c);
    if (kind == "dtype") {
      auto dt = ckpt::dtype_from_name(nb::cast<std::string>(c[1]));
      if (!dt) throw ckpt::UnsupportedError("ckpt.save: unknown dtype " + nb::cast<std::string>(c[1]));
      return ckpt::Value(*dt);
    }
    if (kind == "device") return ckpt::Value(ckpt::Device{nb::cast<std::string>(c[1])});
    if (kind == "size") return ckpt::Value(ckpt::Size{nb::cast<std::vector<int64_t>>(c[1])});
    if (kind == "value") return to_value(c[1], depth + 1);  // e.g. a numpy scalar as a Python number
    if (kind == "int") return int_value(c[1]);
    if (kind == "list" || kind == "tuple" || kind == "dict") return container(c[1], depth);
    throw nb::type_error(("ckpt.save cannot save an object of type " +
                          nb::cast<std::string>(nb::str(nb::handle(reinterpret_cast<PyObject*>(Py_TYPE(p)))))).c_str());
  }

 private:
  ckpt::Value int_value(nb::handle o) {
    int overflow = 0;
    long long x = PyLong_AsLongLongAndOverflow(o.ptr(), &overflow);
    if (overflow == 0) {
      if (x == -1 && PyErr_Occurred()) throw nb::python_error();
      return ckpt::Value(static_cast<int64_t>(x));
    }
    nb::bytes b = nb::cast<nb::bytes>(helper_.attr("int_bytes")(o));
    ckpt::BigInt bi;
    const auto* d = static_cast<const uint8_t*>(static_cast<const void*>(b.c_str()));
    bi.bytes.assign(d, d + b.size());
    return ckpt::Value(std::move(bi));
  }

  ckpt::Value container(nb::handle o, int depth) {
    PyObject* p = o.ptr();
    auto it = memo_.find(p);
    if (it != memo_.end()) {
      // torch.save writes cycles through the pickle memo; a checkpoint Value is a tree
      // (shared, never cyclic), so a container inside itself is refused.
      if (open_.count(p)) throw nb::value_error("ckpt.save: the object contains itself (a reference cycle)");
      return it->second;
    }
    keep_.push_back(nb::borrow(o));  // ids stay valid while memoised
    open_.insert(p);
    struct Close {
      std::unordered_set<PyObject*>& s;
      PyObject* p;
      ~Close() { s.erase(p); }
    } close{open_, p};
    ckpt::Value out;
    if (PyList_Check(p) || PyTuple_Check(p)) {
      bool tuple = PyTuple_Check(p);
      out = tuple ? ckpt::Value::tuple() : ckpt::Value::list();
      memo_.emplace(p, out);
      auto& items = out.items();
      nb::object seq = steal_checked(PySequence_Fast(p, "expected a sequence"));
      Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.ptr());
      items.reserve(static_cast<size_t>(n));
      for (Py_ssize_t i = 0; i < n; ++i) items.push_back(to_value(PySequence_Fast_GET_ITEM(seq.ptr(), i), depth + 1));
    } else if (PyAnySet_Check(p)) {
      out = ckpt::Value::set();
      memo_.emplace(p, out);
      nb::object it2 = steal_checked(PyObject_GetIter(p));
      while (PyObject* x = PyIter_Next(it2.ptr())) {
        nb::object xo = nb::steal(x);
        out.as_set().push_back(to_value(xo, depth + 1));
      }
      if (PyErr_Occurred()) throw nb::python_error();
    } else {
      bool ordered = !PyDict_CheckExact(p);
      out = ordered ? ckpt::Value::ordered_dict() : ckpt::Value::dict();
      memo_.emplace(p, out);
      ckpt::Dict& d = out.as_dict();
      nb::object items = steal_checked(PyMapping_Items(p));
      Py_ssize_t n = PyList_GET_SIZE(items.ptr());
      d.reserve(static_cast<size_t>(n));
      for (Py_ssize_t i = 0; i < n; ++i) {
        PyObject* kv = PyList_GET_ITEM(items.ptr(), i);
        d.set(to_value(PyTuple_GET_ITEM(kv, 0), depth + 1), to_value(PyTuple_GET_ITEM(kv, 1), depth + 1));
      }
      if (ordered && PyObject_HasAttrString(p, "_metadata")) {
        ckpt::Value attrs = ckpt::Value::dict();
        attrs.as_dict().set(ckpt::Value("_metadata"), to_value(o.attr("_metadata"), depth + 1));
        d.attributes = attrs;
      }
    }
    return out;
  }

  // ("tensor", key, data_ptr, nbytes, dtype, sizes, strides, offset, requires_grad, is_param, device, keepalive)
  ckpt::Value tensor(const nb::tuple& c) {
    nb::object key = c[1];
    auto dt = ckpt::dtype_from_name(nb::cast<std::string>(c[4]));
    if (!dt) throw ckpt::UnsupportedError("ckpt.save: unsupported dtype " + nb::cast<std::string>(c[4]));
    ckpt::Storage st;
    nb::object found = nb::borrow(PyDict_GetItem(storages_.ptr(), key.ptr()));
    if (found.is_valid()) {
      st = storage_list_[nb::cast<size_t>(found)];
    } else {
      auto ptr = nb::cast<uintptr_t>(c[2]);
      auto n = nb::cast<size_t>(c[3]);
      PyObject* keep = c[11].ptr();
      Py_INCREF(keep);
      st = ckpt::Storage::external(reinterpret_cast<std::byte*>(ptr), n, [keep] {
        nb::gil_scoped_acquire gil;
        Py_DECREF(keep);
      });
      storages_[key] = storage_list_.size();
      storage_list_.push_back(st);
    }
    ckpt::Tensor t(st, *dt, nb::cast<std::vector<int64_t>>(c[5]), nb::cast<std::vector<int64_t>>(c[6]),
                   nb::cast<int64_t>(c[7]));
    t.set_requires_grad(nb::cast<bool>(c[8]));
    t.set_is_parameter(nb::cast<bool>(c[9]));
    t.set_device(nb::cast<std::string>(c[10]));
    return ckpt::Value(std::move(t));
  }

  nb::object helper_, ordered_dict_, classify_;
  nb::dict storages_;
  std::vector<ckpt::Storage> storage_list_;
  std::unordered_map<PyObject*, ckpt::Value> memo_;
  std::unordered_set<PyObject*> open_;  // containers being converted (cycle check)
  std::vector<nb::object> keep_;
};

void save(nb::handle obj, const std::string& path, nb::object helper) {
  ckpt::Value v;
  {
    Saver s(std::move(helper));
    v = s.to_value(obj, 0);
    ckpt::save(path, v);
  }
}

}  // namespace

NB_MODULE(_ckpt, m) {
  nb::set_leak_warnings(false);  // torch may keep tensors (and so buffers) alive past interpreter exit
  m.doc() = "Native half of the ckpt package (see ckpt/__init__.py).";
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const ckpt::Error& e) {
      raise_ckpt_error(e);
    }
  });
  m.def("set_error_classes", &set_error_classes);
  m.def("version", [] { return std::string(ckpt::version()); });
  m.def("dtype_names", [] {
    std::vector<std::string> out;
    for (size_t i = 0; i < ckpt::kNumDTypes; ++i) out.emplace_back(ckpt::name(static_cast<ckpt::DType>(i)));
    return out;
  });

  nb::class_<StorageBuffer>(m, "StorageBuffer", nb::type_slots(storage_slots),
                            "The bytes of one ckpt storage, as a Python buffer (kept alive by its users).")
      .def_prop_ro("nbytes", [](const StorageBuffer& b) { return b.storage.nbytes(); })
      .def_prop_ro("writable", [](const StorageBuffer& b) { return b.writable; })
      .def("__len__", [](const StorageBuffer& b) { return b.storage.nbytes(); });

  m.def("load", &load, "path"_a, "map_location"_a.none(), "weights_only"_a, "mmap"_a, "numpy"_a, "builder"_a);
  m.def("load_bytes", &load_bytes, "data"_a, "map_location"_a.none(), "weights_only"_a, "numpy"_a, "builder"_a);
  m.def("save", &save, "obj"_a, "path"_a, "helper"_a);

  nb::class_<PyReader>(m, "Reader")
      .def(nb::init<const std::string&, nb::object, bool, nb::object>(), "path"_a, "map_location"_a.none(),
           "weights_only"_a, "builder"_a)
      .def("keys", &PyReader::keys)
      .def("__len__", &PyReader::size)
      .def("__contains__", &PyReader::contains)
      .def("get", &PyReader::get)
      .def("info", &PyReader::info)
      .def("metadata", &PyReader::metadata)
      .def_prop_ro("format", &PyReader::format)
      .def_prop_ro("path", &PyReader::path)
      .def_prop_ro("sharded", &PyReader::sharded)
      .def_prop_ro("files", &PyReader::files)
      .def_prop_ro("nbytes", &PyReader::nbytes);

  nb::class_<ckpt::ScanFinding>(m, "ScanFinding")
      .def_ro("record", &ckpt::ScanFinding::record)
      .def_ro("offset", &ckpt::ScanFinding::offset)
      .def_ro("op", &ckpt::ScanFinding::op)
      .def_ro("module", &ckpt::ScanFinding::module)
      .def_ro("name", &ckpt::ScanFinding::name)
      .def_prop_ro("category", [](const ckpt::ScanFinding& f) { return std::string(ckpt::scan_category_name(f.category)); })
      .def("__repr__", [](const ckpt::ScanFinding& f) {
        return "ScanFinding(" + std::string(ckpt::scan_category_name(f.category)) + " " + f.op + " " + f.module +
               (f.module.empty() ? "" : ".") + f.name + " in " + (f.record.empty() ? "<pickle>" : f.record) +
               " at " + std::to_string(f.offset) + ")";
      });
  nb::class_<ckpt::ScanReport>(m, "ScanReport")
      .def_ro("path", &ckpt::ScanReport::path)
      .def_prop_ro("format", [](const ckpt::ScanReport& r) {
        return r.bare_pickle ? std::string("pickle") : std::string(ckpt::format_name(r.format));
      })
      .def_ro("pickles", &ckpt::ScanReport::pickles)
      .def_ro("findings", &ckpt::ScanReport::findings)
      .def_ro("findings_omitted", &ckpt::ScanReport::findings_omitted)
      .def_ro("errors", &ckpt::ScanReport::errors)
      .def_prop_ro("verdict", [](const ckpt::ScanReport& r) { return std::string(ckpt::scan_verdict_name(r.verdict)); })
      .def("to_json", [](const ckpt::ScanReport& r) { return ckpt::scan_reports_json({r}); })
      .def("__repr__", [](const ckpt::ScanReport& r) {
        return "ScanReport(" + r.path + ": " + std::string(ckpt::scan_verdict_name(r.verdict)) + ", " +
               std::to_string(r.findings.size()) + " findings, " + std::to_string(r.errors.size()) + " errors)";
      });
  m.def(
      "scan",
      [](const std::string& path, bool include_allowed) {
        nb::gil_scoped_release nogil;
        return ckpt::scan_file(path, {.include_allowed = include_allowed});
      },
      "path"_a, "include_allowed"_a = false);
  m.def("format_of", [](const std::string& path) { return std::string(ckpt::format_name(ckpt::detect_format(path))); });
}
