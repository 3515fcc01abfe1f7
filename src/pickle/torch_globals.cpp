#include "pickle/torch_globals.hpp"

#include <array>
#include <string>

#include "ckpt/error.hpp"
#include "ckpt/sparse.hpp"
#include "pickle/utf8.hpp"

namespace ckpt::pickle {
namespace {

using Fn = Value (*)(const List& args, CallContext& ctx);

// Argument errors carry no context here; the VM adds file, record and offset.
[[noreturn]] void bad_args(std::string_view fn, const std::string& why) {
  throw FormatError(std::string(fn) + ": " + why);
}

void expect_arity(std::string_view fn, const List& args, size_t lo, size_t hi) {
  if (args.size() < lo || args.size() > hi)
    bad_args(fn, "takes " + std::to_string(lo) + (lo == hi ? "" : ".." + std::to_string(hi)) +
                     " arguments, got " + std::to_string(args.size()));
}

std::string kind_of(const Value& v) { return std::string(v.kind_name()); }

bool is_integer(const Value& v) { return v.is_int() || v.is_bool(); }

// A tuple/list of ints or a torch.Size: tensor sizes and strides.
std::vector<int64_t> int_sequence(std::string_view fn, const Value& v, const char* what, const Limits& limits) {
  if (v.kind() == Value::Kind::Size) {
    if (v.as_size().dims.size() > limits.max_tensor_dims)
      bad_args(fn, std::string(what) + " has " + std::to_string(v.as_size().dims.size()) +
                       " dimensions (limit " + std::to_string(limits.max_tensor_dims) + ")");
    return v.as_size().dims;
  }
  if (!v.is_tuple() && !v.is_list()) bad_args(fn, std::string(what) + " is a " + kind_of(v) + ", not a tuple of ints");
  const List& items = v.items();
  if (items.size() > limits.max_tensor_dims)
    bad_args(fn, std::string(what) + " has " + std::to_string(items.size()) + " dimensions (limit " +
                     std::to_string(limits.max_tensor_dims) + ")");
  std::vector<int64_t> out;
  out.reserve(items.size());
  for (const auto& x : items) {
    if (!is_integer(x)) bad_args(fn, std::string(what) + " holds a " + kind_of(x) + ", not an int");
    out.push_back(x.as_int());
  }
  return out;
}

bool flag(std::string_view fn, const Value& v) {
  if (!is_integer(v)) bad_args(fn, "requires_grad is a " + kind_of(v) + ", not a bool");
  return v.as_int() != 0;
}

// ---------------------------------------------------------------- tensors

// storage[offset:] viewed as `size` / `stride` (all in elements of `dtype`,
// which defaults to the storage's own).
Tensor rebuild(std::string_view fn, const Value& storage, const Value& offset, const Value& size, const Value& stride,
               std::optional<DType> dtype, const Limits& limits) {
  if (storage.kind() != Value::Kind::Storage) bad_args(fn, "expects a storage, got a " + kind_of(storage));
  if (!is_integer(offset)) bad_args(fn, "storage offset is a " + kind_of(offset) + ", not an int");
  const StorageValue& sv = storage.as_storage();
  std::vector<int64_t> sizes = int_sequence(fn, size, "size", limits);
  std::vector<int64_t> strides = int_sequence(fn, stride, "stride", limits);
  Tensor t(sv.storage, dtype.value_or(sv.dtype), std::move(sizes), std::move(strides), offset.as_int());
  t.set_device(sv.device);
  return t;
}

// torch._utils._rebuild_tensor(storage, storage_offset, size, stride)
Value rebuild_tensor(const List& a, CallContext& ctx) {
  expect_arity("_rebuild_tensor", a, 4, 4);
  return Value(rebuild("_rebuild_tensor", a[0], a[1], a[2], a[3], std::nullopt, ctx.limits()));
}

// torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
//                                 requires_grad, backward_hooks[, metadata])
Value rebuild_tensor_v2(const List& a, CallContext& ctx) {
  expect_arity("_rebuild_tensor_v2", a, 6, 7);
  Tensor t = rebuild("_rebuild_tensor_v2", a[0], a[1], a[2], a[3], std::nullopt, ctx.limits());
  t.set_requires_grad(flag("_rebuild_tensor_v2", a[4]));
  return Value(std::move(t));
}

// torch._utils._rebuild_tensor_v3(untyped_storage, storage_offset, size,
//                                 stride, requires_grad, backward_hooks,
//                                 dtype[, metadata]); offsets in `dtype` elements.
Value rebuild_tensor_v3(const List& a, CallContext& ctx) {
  expect_arity("_rebuild_tensor_v3", a, 7, 8);
  if (a[6].kind() == Value::Kind::Global)  // torch.int1..7, uint1..7, bcomplex32: allowed, not modelled
    throw UnsupportedError("tensors of dtype " + a[6].as_global().qualified() + " are not supported");
  if (a[6].kind() != Value::Kind::DType) bad_args("_rebuild_tensor_v3", "dtype argument is a " + kind_of(a[6]));
  Tensor t = rebuild("_rebuild_tensor_v3", a[0], a[1], a[2], a[3], a[6].as_dtype(), ctx.limits());
  t.set_requires_grad(flag("_rebuild_tensor_v3", a[4]));
  return Value(std::move(t));
}

// The quantizer parameters torch pickles: (torch.per_tensor_affine, scale,
// zero_point) or (torch.per_channel_affine[_float_qparams], scales,
// zero_points, axis).
std::shared_ptr<const Quantization> quantizer(const Value& params, const Tensor& t) {
  constexpr std::string_view fn = "_rebuild_qtensor";
  if (!params.is_tuple() || params.as_tuple().empty() || params.as_tuple()[0].kind() != Value::Kind::Global)
    bad_args(fn, "quantizer parameters are not (qscheme, ...)");
  const List& p = params.as_tuple();
  auto q = std::make_shared<Quantization>();
  q->scheme = p[0].as_global().name;
  if (q->scheme == "per_tensor_affine") {
    if (p.size() != 3 || !(p[1].is_float() || is_integer(p[1])) || !is_integer(p[2]))
      bad_args(fn, "per_tensor_affine parameters are not (scheme, scale, zero_point)");
    q->scale = p[1].as_float();
    q->zero_point = p[2].as_int();
    return q;
  }
  if (q->scheme != "per_channel_affine" && q->scheme != "per_channel_affine_float_qparams")
    throw UnsupportedError("quantized tensors with qscheme " + p[0].as_global().qualified() + " are not supported");
  if (p.size() != 4 || !p[1].is_tensor() || !p[2].is_tensor() || !is_integer(p[3]))
    bad_args(fn, q->scheme + " parameters are not (scheme, scales, zero_points, axis)");
  q->scales = p[1].as_tensor();
  q->zero_points = p[2].as_tensor();
  q->axis = p[3].as_int();
  if (q->axis < 0 || q->axis >= t.dim()) bad_args(fn, "axis " + std::to_string(q->axis) + " is not a dimension of the tensor");
  const auto channels = t.sizes()[static_cast<size_t>(q->axis)];
  for (const Tensor* x : {&q->scales, &q->zero_points})
    if (x->dim() != 1 || x->sizes()[0] != channels)
      bad_args(fn, "per-channel parameters of shape " + format_shape(x->sizes()) + " do not match " +
                       std::to_string(channels) + " channels along axis " + std::to_string(q->axis));
  return q;
}

// torch._utils._rebuild_qtensor(storage, storage_offset, size, stride,
//                               quantizer_params, requires_grad, backward_hooks)
Value rebuild_qtensor(const List& a, CallContext& ctx) {
  expect_arity("_rebuild_qtensor", a, 7, 7);
  Tensor t = rebuild("_rebuild_qtensor", a[0], a[1], a[2], a[3], std::nullopt, ctx.limits());
  if (!info(t.dtype()).is_quantized)
    bad_args("_rebuild_qtensor", "storage holds " + std::string(name(t.dtype())) + ", not a quantized dtype");
  t.set_quantization(quantizer(a[4], t));
  t.set_requires_grad(flag("_rebuild_qtensor", a[5]));
  return Value(std::move(t));
}

// torch._utils._rebuild_sparse_tensor(layout, data) (and torch 1.x's
// _rebuild_sparse_csr_tensor): kept as the inert call it is (ckpt/sparse.hpp),
// after checking that its parts are tensors of consistent shapes.
template <const char* Fn>
Value rebuild_sparse(const List& a, CallContext&) {
  expect_arity(Fn, a, 2, 2);
  auto o = std::make_shared<Object>();
  o->module = "torch._utils";
  o->name = Fn;
  o->how = "REDUCE";
  o->args = Value::tuple(a);
  Value v(std::move(o));
  auto s = as_sparse(v);
  if (!s)
    bad_args(Fn, "expects (torch.sparse_coo, (indices, values, size[, is_coalesced])) or (torch.sparse_csr/csc/bsr/bsc, "
                 "(compressed_indices, plain_indices, values, size)), got " + Value::tuple(a).repr());
  const Tensor& values = s->parts.back().second;
  if (s->layout == "sparse_coo") {
    const Tensor& idx = s->parts[0].second;
    if (idx.dim() != 2 || values.dim() < 1 || idx.sizes()[1] != values.sizes()[0] ||
        static_cast<size_t>(idx.sizes()[0]) + static_cast<size_t>(values.dim() - 1) != s->sizes.size())
      bad_args(Fn, "COO indices " + format_shape(idx.sizes()) + " and values " + format_shape(values.sizes()) +
                       " do not describe a tensor of shape " + format_shape(s->sizes));
  } else if (s->parts[0].second.dim() < 1 || s->parts[1].second.dim() < 1) {
    bad_args(Fn, s->layout + " index tensors must have at least one dimension");
  }
  return v;
}
constexpr char kRebuildSparse[] = "_rebuild_sparse_tensor";
constexpr char kRebuildSparseCsr[] = "_rebuild_sparse_csr_tensor";

Value make_parameter(std::string_view fn, const List& a) {
  if (a.empty() || !a[0].is_tensor()) bad_args(fn, "expects a tensor, got a " + (a.empty() ? "nothing" : kind_of(a[0])));
  Tensor t = a[0].as_tensor();
  t.set_is_parameter(true);
  t.set_requires_grad(a.size() > 1 ? flag(fn, a[1]) : true);
  return Value(std::move(t));
}

// torch._utils._rebuild_parameter(data, requires_grad, backward_hooks)
Value rebuild_parameter(const List& a, CallContext&) {
  expect_arity("_rebuild_parameter", a, 3, 3);
  return make_parameter("_rebuild_parameter", a);
}

// torch._utils._rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
// the state (Python attributes of the Parameter) is not modelled.
Value rebuild_parameter_with_state(const List& a, CallContext&) {
  expect_arity("_rebuild_parameter_with_state", a, 4, 4);
  return make_parameter("_rebuild_parameter_with_state", a);
}

// torch.nn.parameter.Parameter(data=None, requires_grad=True) (NEWOBJ / REDUCE).
Value parameter_new(const List& a, CallContext&) {
  expect_arity("Parameter", a, 0, 2);
  if (a.empty()) {  // Parameter() is an empty float tensor
    Tensor t = Tensor::empty(DType::float32, {0});
    t.set_is_parameter(true);
    t.set_requires_grad(true);
    return Value(std::move(t));
  }
  return make_parameter("Parameter", a);
}

// torch._tensor._rebuild_from_type_v2(func, new_type, args, state): func(*args)
// viewed as new_type (Tensor or Parameter); the state (Python attributes) is
// not modelled.
Value rebuild_from_type_v2(const List& a, CallContext& ctx) {
  constexpr std::string_view fn = "_rebuild_from_type_v2";
  expect_arity(fn, a, 4, 4);
  if (a[0].kind() != Value::Kind::Global) bad_args(fn, "func is a " + kind_of(a[0]) + ", not a function");
  const Global& func = a[0].as_global();
  if (func.module == "torch._tensor" && func.name == fn)
    bad_args(fn, "nested type rebuilds are not supported");  // also bounds native recursion
  if (!a[2].is_tuple()) bad_args(fn, "args is a " + kind_of(a[2]) + ", not a tuple");
  Value r = ctx.call(a[0], a[2]);
  if (r.is_tensor()) {
    if (a[1].kind() == Value::Kind::Global && a[1].as_global().module == "torch.nn.parameter" &&
        a[1].as_global().name == "Parameter")
      r.as_tensor().set_is_parameter(true);
    return r;
  }
  if (r.is_object()) return r;  // an inert call (inspection)
  bad_args(fn, func.qualified() + " did not rebuild a tensor");
}

template <const char* What>
Value unsupported(const List&, CallContext&) {
  throw UnsupportedError(std::string(What) + " are not supported yet");
}
constexpr char kNested[] = "nested tensors";
constexpr char kMeta[] = "meta tensors without storage";
constexpr char kSubclass[] = "tensor subclasses without storage (wrapper subclasses)";
constexpr char kDevice[] = "device tensors rebuilt from numpy arrays or CPU copies";

// ---------------------------------------------------------------- other values

// collections.OrderedDict() / OrderedDict([(k, v), ...]) / OrderedDict(dict)
Value ordered_dict(const List& a, CallContext& ctx) {
  expect_arity("OrderedDict", a, 0, 1);
  Value d = Value::ordered_dict();
  if (a.empty()) return d;
  if (a[0].is_dict()) {
    for (const auto& [k, v] : a[0].as_dict()) d.as_dict().set(k, v);
    return d;
  }
  if (!a[0].is_list() && !a[0].is_tuple()) bad_args("OrderedDict", "expects a list of pairs, got a " + kind_of(a[0]));
  for (const auto& kv : a[0].items()) {
    if ((!kv.is_tuple() && !kv.is_list()) || kv.items().size() != 2) bad_args("OrderedDict", "items must be pairs");
    const List& p = kv.items();
    ctx.check_key(p[0]);
    d.as_dict().set(p[0], p[1]);
  }
  return d;
}

// collections.Counter(dict): kept as a plain dict.
Value counter(const List& a, CallContext&) {
  expect_arity("Counter", a, 0, 1);
  Value d = Value::dict();
  if (a.size() == 1) {
    if (!a[0].is_dict()) bad_args("Counter", "expects a dict, got a " + kind_of(a[0]));
    for (const auto& [k, v] : a[0].as_dict()) d.as_dict().set(k, v);
  }
  return d;
}

// torch.Size((d0, d1, ...))
Value torch_size(const List& a, CallContext& ctx) {
  expect_arity("torch.Size", a, 0, 1);
  return Value(Size{a.empty() ? std::vector<int64_t>{} : int_sequence("torch.Size", a[0], "dims", ctx.limits())});
}

// torch.device('cuda', 0) / torch.device('cuda:0') / torch.device('cpu')
Value torch_device(const List& a, CallContext&) {
  expect_arity("torch.device", a, 1, 2);
  if (!a[0].is_string() || a[0].as_string().empty()) bad_args("torch.device", "device type is not a string");
  std::string name = a[0].as_string();
  if (a.size() == 2 && !a[1].is_none()) {
    if (!a[1].is_int() || a[1].as_int() < 0) bad_args("torch.device", "device index is not a non-negative int");
    if (name.find(':') != std::string::npos) bad_args("torch.device", "device '" + name + "' already has an index");
    name += ":" + std::to_string(a[1].as_int());
  }
  return Value(Device{name});
}

std::string normalized_encoding(std::string e) {
  for (char& c : e) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c == '_') c = '-';
  }
  return e;
}

// _codecs.encode(str, encoding='utf-8', errors='strict'): protocol 2 writes
// bytes as encode(latin-1 decoded str, 'latin1').
std::string encode(std::string_view fn, const List& a) {
  if (!a[0].is_string()) bad_args(fn, "expects a str, got a " + kind_of(a[0]));
  if (a.size() > 1 && !a[1].is_string()) bad_args(fn, "encoding is a " + kind_of(a[1]) + ", not a str");
  if (a.size() > 2 && (!a[2].is_string() || a[2].as_string() != "strict"))
    bad_args(fn, "only errors='strict' is supported");
  const std::string enc = a.size() > 1 ? normalized_encoding(a[1].as_string()) : "utf-8";
  const std::string& s = a[0].as_string();
  if (enc == "utf-8" || enc == "utf8") {
    if (!utf8::valid(s)) bad_args(fn, "string is not valid UTF-8");
    return s;
  }
  uint32_t max;
  if (enc == "latin1" || enc == "latin-1" || enc == "iso-8859-1" || enc == "iso8859-1" || enc == "l1") {
    max = 0xFF;
  } else if (enc == "ascii" || enc == "us-ascii") {
    max = 0x7F;
  } else {
    bad_args(fn, "unsupported encoding '" + a[1].as_string() + "'");
  }
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  uint32_t cp = 0;
  while (i < s.size()) {
    if (!utf8::next(s, i, cp)) bad_args(fn, "string is not valid UTF-8");
    if (cp > max) bad_args(fn, "character U+" + std::to_string(cp) + " cannot be encoded as " + a[1].as_string());
    out += static_cast<char>(cp);
  }
  return out;
}

Value codecs_encode(const List& a, CallContext&) {
  expect_arity("_codecs.encode", a, 1, 3);
  return Value::bytes(encode("_codecs.encode", a));
}

// builtins.set() / set(iterable)
Value builtins_set(const List& a, CallContext& ctx) {
  expect_arity("set", a, 0, 1);
  Value s = Value::set();
  if (a.empty()) return s;
  const List* items = nullptr;
  if (a[0].is_list() || a[0].is_tuple()) items = &a[0].items();
  else if (a[0].kind() == Value::Kind::Set) items = &a[0].as_set();
  else bad_args("set", "expects a list, got a " + kind_of(a[0]));
  for (const auto& x : *items) ctx.set_add(s, x);
  return s;
}

// builtins.bytearray() / bytearray(bytes) / bytearray(str, encoding[, errors])
Value builtins_bytearray(const List& a, CallContext&) {
  expect_arity("bytearray", a, 0, 3);
  if (a.empty()) return Value::bytearray("");
  if (a.size() == 1 && a[0].is_bytes()) return Value::bytearray(a[0].as_bytes());
  if (a[0].is_string() && a.size() >= 2) return Value::bytearray(encode("bytearray", a));
  bad_args("bytearray", "expects bytes, or a str and an encoding");
}

// builtins.complex(real, imag)
Value builtins_complex(const List& a, CallContext&) {
  expect_arity("complex", a, 0, 2);
  for (const auto& x : a)
    if (!x.is_int() && !x.is_bool() && !x.is_float()) bad_args("complex", "expects numbers, got a " + kind_of(x));
  double re = a.size() > 0 ? a[0].as_float() : 0.0, im = a.size() > 1 ? a[1].as_float() : 0.0;
  return Value(std::complex<double>(re, im));
}

// torch.serialization._get_layout('torch.sparse_coo') -> the layout, as a Global.
Value get_layout(const List& a, CallContext&) {
  expect_arity("_get_layout", a, 1, 1);
  if (!a[0].is_string()) bad_args("_get_layout", "expects a str, got a " + kind_of(a[0]));
  std::string_view n = a[0].as_string();
  if (!n.starts_with("torch.") || n.size() == 6 || n.find('.', 6) != std::string_view::npos)
    bad_args("_get_layout", "'" + std::string(n) + "' is not a torch layout");
  return Value(Global{"torch", std::string(n.substr(6))});
}

// ---------------------------------------------------------------- the tables

struct Native {
  std::string_view module;
  std::string_view name;
  Fn fn;
};

// Allowed globals that can be called (REDUCE / NEWOBJ / INST / OBJ).
constexpr std::array<Native, 24> kNatives = {{
    {"collections", "OrderedDict", ordered_dict},
    {"collections", "Counter", counter},
    {"torch.nn.parameter", "Parameter", parameter_new},
    {"torch.serialization", "_get_layout", get_layout},
    {"torch", "Size", torch_size},
    {"torch", "device", torch_device},
    {"_codecs", "encode", codecs_encode},
    {"builtins", "bytearray", builtins_bytearray},
    {"builtins", "set", builtins_set},
    {"builtins", "complex", builtins_complex},
    {"torch._utils", "_rebuild_tensor", rebuild_tensor},
    {"torch._utils", "_rebuild_tensor_v2", rebuild_tensor_v2},
    {"torch._utils", "_rebuild_tensor_v3", rebuild_tensor_v3},
    {"torch._utils", "_rebuild_parameter", rebuild_parameter},
    {"torch._utils", "_rebuild_parameter_with_state", rebuild_parameter_with_state},
    {"torch._utils", "_rebuild_qtensor", rebuild_qtensor},
    {"torch._utils", "_rebuild_sparse_tensor", rebuild_sparse<kRebuildSparse>},
    {"torch._utils", "_rebuild_sparse_csr_tensor", rebuild_sparse<kRebuildSparseCsr>},
    {"torch._utils", "_rebuild_nested_tensor", unsupported<kNested>},
    {"torch._utils", "_rebuild_meta_tensor_no_storage", unsupported<kMeta>},
    {"torch._utils", "_rebuild_wrapper_subclass", unsupported<kSubclass>},
    {"torch._utils", "_rebuild_device_tensor_from_numpy", unsupported<kDevice>},
    {"torch._utils", "_rebuild_device_tensor_from_cpu_tensor", unsupported<kDevice>},
    {"torch._tensor", "_rebuild_from_type_v2", rebuild_from_type_v2},
}};

// Allowed globals that are only values (type arguments, pid storage classes).
constexpr std::array<std::pair<std::string_view, std::string_view>, 5> kValues = {{
    {"torch", "Tensor"},
    {"torch.storage", "UntypedStorage"},
    {"torch.storage", "TypedStorage"},
    {"torch", "UntypedStorage"},
    {"torch", "bcomplex32"},  // a torch 2.x dtype ckpt does not model
}};

constexpr std::string_view kQSchemes[] = {"per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
                                          "per_channel_symmetric", "per_channel_affine_float_qparams"};

// torch._tensor_classes: <prefix>Tensor in torch / torch.cuda, and all but
// Bool in torch.sparse / torch.cuda.sparse.
constexpr std::string_view kTensorClassPrefixes[] = {"Double", "Float", "Half",  "BFloat16", "Long",
                                                     "Int",    "Short", "Char",  "Byte",     "Bool"};

const Native* find_native(std::string_view module, std::string_view name) {
  for (const auto& e : kNatives)
    if (e.module == module && e.name == name) return &e;
  return nullptr;
}

bool is_tensor_class(std::string_view module, std::string_view name) {
  const bool dense = module == "torch" || module == "torch.cuda";
  const bool sparse = module == "torch.sparse" || module == "torch.cuda.sparse";
  if ((!dense && !sparse) || !name.ends_with("Tensor")) return false;
  name.remove_suffix(6);
  for (auto p : kTensorClassPrefixes)
    if (p == name) return dense || p != "Bool";
  return false;
}

bool is_small_int_dtype(std::string_view name) {  // torch.int1..int7, torch.uint1..uint7
  std::string_view rest = name.starts_with("uint") ? name.substr(4) : name.starts_with("int") ? name.substr(3) : "";
  return rest.size() == 1 && rest[0] >= '1' && rest[0] <= '7';
}

// torch._utils.IMPORT_MAPPING / NAME_MAPPING (copies of CPython's
// _compat_pickle tables that the weights-only unpickler applies).
struct NameMapping {
  std::string_view from_module, from_name, to_module, to_name;
};
constexpr NameMapping kNameMapping[] = {
    {"__builtin__", "xrange", "builtins", "range"},
    {"__builtin__", "reduce", "functools", "reduce"},
    {"__builtin__", "intern", "sys", "intern"},
    {"__builtin__", "unichr", "builtins", "chr"},
    {"__builtin__", "unicode", "builtins", "str"},
    {"__builtin__", "long", "builtins", "int"},
    {"itertools", "izip", "builtins", "zip"},
    {"itertools", "imap", "builtins", "map"},
    {"itertools", "ifilter", "builtins", "filter"},
    {"itertools", "ifilterfalse", "itertools", "filterfalse"},
    {"itertools", "izip_longest", "itertools", "zip_longest"},
    {"UserDict", "IterableUserDict", "collections", "UserDict"},
    {"UserList", "UserList", "collections", "UserList"},
    {"UserString", "UserString", "collections", "UserString"},
    {"__builtin__", "basestring", "builtins", "str"},
    {"exceptions", "StandardError", "builtins", "Exception"},
    {"UserDict", "UserDict", "collections", "UserDict"},
};
constexpr std::pair<std::string_view, std::string_view> kImportMapping[] = {
    {"__builtin__", "builtins"}, {"copy_reg", "copyreg"},   {"Queue", "queue"},
    {"repr", "reprlib"},         {"_abcoll", "collections.abc"}, {"UserDict", "collections"},
    {"UserList", "collections"}, {"UserString", "collections"},  {"whichdb", "dbm"},
    {"StringIO", "io"},          {"cStringIO", "io"},
    {"torch.tensor", "torch._tensor"},  // torch.serialization's load_module_mapping
};

}  // namespace

void map_global_name(std::string& module, std::string& name) {
  for (const auto& m : kNameMapping) {
    if (m.from_module == module && m.from_name == name) {
      module = m.to_module;
      name = m.to_name;
      return;
    }
  }
  for (const auto& [from, to] : kImportMapping) {
    if (from == module) {
      module = to;
      return;
    }
  }
}

bool is_blocked_module(std::string_view module) {
  return module == "sys" || module == "os" || module == "posix" || module == "nt";
}

bool is_allowed_global(std::string_view module, std::string_view name) {
  if (is_blocked_module(module)) return false;
  if (find_native(module, name)) return true;
  for (const auto& [m, n] : kValues)
    if (m == module && n == name) return true;
  if (is_tensor_class(module, name)) return true;
  if ((module == "torch" || module == "torch.cuda" || module == "torch.storage") &&
      name.find("Storage") != std::string_view::npos)
    return dtype_from_storage_name(name).has_value();
  if (module == "torch") {
    if (name.find('.') == std::string_view::npos && dtype_from_name(name)) return true;
    if (is_small_int_dtype(name)) return true;
    for (auto q : kQSchemes)
      if (q == name) return true;
  }
  return false;
}

bool is_callable_global(const Global& g) { return find_native(g.module, g.name) != nullptr; }

Value call_torch_global(const Global& g, const List& args, CallContext& ctx) {
  const Native* e = find_native(g.module, g.name);
  if (e == nullptr) throw UnsupportedError("calling '" + g.qualified() + "' is not supported");
  return e->fn(args, ctx);
}

}  // namespace ckpt::pickle
