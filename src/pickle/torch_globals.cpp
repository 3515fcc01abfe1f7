#include "pickle/torch_globals.hpp"

#include <array>
#include <string>

#include "ckpt/error.hpp"

namespace ckpt::pickle {
namespace {

using Fn = Value (*)(const List& args, const Limits& limits);

[[noreturn]] void bad_args(std::string_view fn, const std::string& why) {
  throw FormatError(std::string(fn) + ": " + why);
}

void expect_arity(std::string_view fn, const List& args, size_t lo, size_t hi) {
  if (args.size() < lo || args.size() > hi)
    bad_args(fn, "takes " + std::to_string(lo) + (lo == hi ? "" : ".." + std::to_string(hi)) + " arguments, got " +
                     std::to_string(args.size()));
}

std::vector<int64_t> int_sequence(std::string_view fn, const Value& v, const char* what, const Limits& limits) {
  const List* items = nullptr;
  if (v.kind() == Value::Kind::Size) return v.as_size().dims;
  if (v.is_tuple() || v.is_list()) items = &v.items();
  if (!items) bad_args(fn, std::string(what) + " is a " + std::string(v.kind_name()) + ", not a tuple of ints");
  if (items->size() > limits.max_tensor_dims)
    bad_args(fn, std::string(what) + " has " + std::to_string(items->size()) + " dimensions (limit " +
                     std::to_string(limits.max_tensor_dims) + ")");
  std::vector<int64_t> out;
  out.reserve(items->size());
  for (const auto& x : *items) {
    if (!x.is_int()) bad_args(fn, std::string(what) + " holds a " + std::string(x.kind_name()));
    out.push_back(x.as_int());
  }
  return out;
}

Tensor rebuild(std::string_view fn, const Value& storage, const Value& offset, const Value& size, const Value& stride,
               std::optional<DType> dtype, const Limits& limits) {
  if (storage.kind() != Value::Kind::Storage)
    bad_args(fn, "expects a storage, got a " + std::string(storage.kind_name()));
  if (!offset.is_int()) bad_args(fn, "storage offset is a " + std::string(offset.kind_name()));
  const StorageValue& sv = storage.as_storage();
  Tensor t(sv.storage, dtype.value_or(sv.dtype), int_sequence(fn, size, "size", limits),
           int_sequence(fn, stride, "stride", limits), offset.as_int());
  t.set_device(sv.device);
  return t;
}

bool flag(std::string_view fn, const Value& v) {
  if (!v.is_bool() && !v.is_int()) bad_args(fn, "requires_grad is a " + std::string(v.kind_name()));
  return v.as_int() != 0;
}

Value rebuild_tensor(const List& a, const Limits& l) {
  expect_arity("_rebuild_tensor", a, 4, 4);
  return Value(rebuild("_rebuild_tensor", a[0], a[1], a[2], a[3], std::nullopt, l));
}

Value rebuild_tensor_v2(const List& a, const Limits& l) {
  expect_arity("_rebuild_tensor_v2", a, 6, 7);
  Tensor t = rebuild("_rebuild_tensor_v2", a[0], a[1], a[2], a[3], std::nullopt, l);
  t.set_requires_grad(flag("_rebuild_tensor_v2", a[4]));
  return Value(std::move(t));
}

Value rebuild_tensor_v3(const List& a, const Limits& l) {
  expect_arity("_rebuild_tensor_v3", a, 7, 8);
  if (a[6].kind() != Value::Kind::DType) bad_args("_rebuild_tensor_v3", "dtype argument is a " + std::string(a[6].kind_name()));
  Tensor t = rebuild("_rebuild_tensor_v3", a[0], a[1], a[2], a[3], a[6].as_dtype(), l);
  t.set_requires_grad(flag("_rebuild_tensor_v3", a[4]));
  return Value(std::move(t));
}

Value make_parameter(std::string_view fn, const List& a) {
  if (a.empty() || !a[0].is_tensor()) bad_args(fn, "expects a tensor");
  Tensor t = a[0].as_tensor();
  t.set_is_parameter(true);
  t.set_requires_grad(a.size() > 1 ? flag(fn, a[1]) : true);
  return Value(std::move(t));
}

Value rebuild_parameter(const List& a, const Limits&) {
  expect_arity("_rebuild_parameter", a, 3, 3);
  return make_parameter("_rebuild_parameter", a);
}

Value rebuild_parameter_with_state(const List& a, const Limits&) {
  expect_arity("_rebuild_parameter_with_state", a, 4, 4);
  return make_parameter("_rebuild_parameter_with_state", a);
}

Value parameter_new(const List& a, const Limits&) {
  expect_arity("Parameter", a, 0, 2);
  if (a.empty()) bad_args("Parameter", "Parameter() without data is not supported");
  return make_parameter("Parameter", a);
}

Value ordered_dict(const List& a, const Limits&) {
  expect_arity("OrderedDict", a, 0, 1);
  Value d = Value::ordered_dict();
  if (a.size() == 1) {
    if (!a[0].is_list() && !a[0].is_tuple()) bad_args("OrderedDict", "expects a list of pairs");
    for (const auto& kv : a[0].items()) {
      if (!kv.is_tuple() && !kv.is_list()) bad_args("OrderedDict", "items must be pairs");
      const List& p = kv.items();
      if (p.size() != 2) bad_args("OrderedDict", "items must be pairs");
      if (!p[0].hashable()) bad_args("OrderedDict", "unhashable key");
      d.as_dict().set(p[0], p[1]);
    }
  }
  return d;
}

Value counter(const List& a, const Limits&) {
  expect_arity("Counter", a, 0, 1);
  Value d = Value::dict();
  if (a.size() == 1) {
    if (!a[0].is_dict()) bad_args("Counter", "expects a dict");
    for (const auto& [k, v] : a[0].as_dict()) d.as_dict().set(k, v);
  }
  return d;
}

Value torch_size(const List& a, const Limits& l) {
  expect_arity("torch.Size", a, 0, 1);
  return Value(Size{a.empty() ? std::vector<int64_t>{} : int_sequence("torch.Size", a[0], "dims", l)});
}

Value torch_device(const List& a, const Limits&) {
  expect_arity("torch.device", a, 1, 2);
  if (!a[0].is_string()) bad_args("torch.device", "device type is not a string");
  std::string name = a[0].as_string();
  if (a.size() == 2 && !a[1].is_none()) {
    if (!a[1].is_int()) bad_args("torch.device", "device index is not an int");
    name += ":" + std::to_string(a[1].as_int());
  }
  return Value(Device{name});
}

Value codecs_encode(const List& a, const Limits&) {
  expect_arity("_codecs.encode", a, 1, 2);
  if (!a[0].is_string()) bad_args("_codecs.encode", "expects a str");
  std::string enc = a.size() == 2 && a[1].is_string() ? a[1].as_string() : "utf-8";
  const std::string& s = a[0].as_string();
  if (enc == "utf-8" || enc == "utf8") return Value::bytes(s);
  if (enc != "latin1" && enc != "latin-1" && enc != "iso-8859-1") bad_args("_codecs.encode", "unsupported encoding '" + enc + "'");
  // str (UTF-8 here) -> one byte per code point, each < 256.
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {
      unsigned cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
      if (cp > 0xFF) bad_args("_codecs.encode", "character U+" + std::to_string(cp) + " is not latin-1");
      out += static_cast<char>(cp);
      ++i;
    } else {
      bad_args("_codecs.encode", "string is not latin-1");
    }
  }
  return Value::bytes(std::move(out));
}

Value builtins_set(const List& a, const Limits&) {
  expect_arity("set", a, 0, 1);
  if (a.empty()) return Value::set();
  if (!a[0].is_list() && !a[0].is_tuple() && a[0].kind() != Value::Kind::Set) bad_args("set", "expects a list");
  const List& items = a[0].kind() == Value::Kind::Set ? a[0].as_set() : a[0].items();
  return Value::set(items);
}

Value builtins_bytearray(const List& a, const Limits&) {
  expect_arity("bytearray", a, 0, 3);
  if (a.empty()) return Value::bytearray("");
  if (a[0].is_bytes()) return Value::bytearray(a[0].as_bytes());
  if (a[0].is_string() && a.size() >= 2) return Value::bytearray(codecs_encode({a[0], a[1]}, Limits{}).as_bytes());
  bad_args("bytearray", "unsupported arguments");
}

Value builtins_complex(const List& a, const Limits&) {
  expect_arity("complex", a, 0, 2);
  double re = a.size() > 0 ? a[0].as_float() : 0.0, im = a.size() > 1 ? a[1].as_float() : 0.0;
  return Value(std::complex<double>(re, im));
}

Value get_layout(const List& a, const Limits&) {
  expect_arity("_get_layout", a, 1, 1);
  if (!a[0].is_string()) bad_args("_get_layout", "expects a string");
  std::string n = a[0].as_string();
  if (n.starts_with("torch.")) n = n.substr(6);
  return Value(Global{"torch", n});
}

Value rebuild_from_type_v2(const List& a, const Limits& l) {
  expect_arity("_rebuild_from_type_v2", a, 4, 4);
  if (a[0].kind() != Value::Kind::Global) bad_args("_rebuild_from_type_v2", "func is not a function");
  if (!a[2].is_tuple()) bad_args("_rebuild_from_type_v2", "args is not a tuple");
  const Global& fn = a[0].as_global();
  if (!is_allowed_global(fn.module, fn.name))
    throw UnsafeError("_rebuild_from_type_v2 calls '" + fn.qualified() + "', which is not allowed");
  if (fn.name == "_rebuild_from_type_v2") bad_args("_rebuild_from_type_v2", "nested type rebuilds are not supported");
  Value r = call_torch_global(fn, a[2].as_tuple(), l);
  if (a[1].kind() == Value::Kind::Global && r.is_tensor()) {
    const Global& type = a[1].as_global();
    if (type.module == "torch.nn.parameter" && type.name == "Parameter") r.as_tensor().set_is_parameter(true);
  }
  return r;
}

template <const char* What>
Value unsupported(const List&, const Limits&) {
  throw UnsupportedError(std::string(What) + " are not supported yet");
}
constexpr char kQuantized[] = "quantized tensors";
constexpr char kSparse[] = "sparse tensors";
constexpr char kNested[] = "nested tensors";
constexpr char kMeta[] = "meta tensors without storage";
constexpr char kSubclass[] = "tensor subclasses without storage (wrapper subclasses)";
constexpr char kDevice[] = "device tensors rebuilt from numpy / CPU copies";

struct Entry {
  std::string_view module;
  std::string_view name;
  Fn fn;  // null: allowed as a value, not callable
};

// torch 2.x `_get_allowed_globals()` (torch/_weights_only_unpickler.py), minus
// the generated families (dtypes, storage and tensor classes) handled below.
constexpr std::array<Entry, 27> kTable = {{
    {"collections", "OrderedDict", ordered_dict},
    {"collections", "Counter", counter},
    {"torch.nn.parameter", "Parameter", parameter_new},
    {"torch.serialization", "_get_layout", get_layout},
    {"torch", "Size", torch_size},
    {"torch", "Tensor", nullptr},
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
    {"torch._utils", "_rebuild_qtensor", unsupported<kQuantized>},
    {"torch._utils", "_rebuild_sparse_tensor", unsupported<kSparse>},
    {"torch._utils", "_rebuild_nested_tensor", unsupported<kNested>},
    {"torch._utils", "_rebuild_meta_tensor_no_storage", unsupported<kMeta>},
    {"torch._utils", "_rebuild_wrapper_subclass", unsupported<kSubclass>},
    {"torch._utils", "_rebuild_device_tensor_from_numpy", unsupported<kDevice>},
    {"torch._utils", "_rebuild_device_tensor_from_cpu_tensor", unsupported<kDevice>},
    {"torch._tensor", "_rebuild_from_type_v2", rebuild_from_type_v2},
    {"torch.storage", "UntypedStorage", nullptr},
    {"torch.storage", "TypedStorage", nullptr},
    {"torch", "UntypedStorage", nullptr},
}};

constexpr std::string_view kQSchemes[] = {"per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
                                          "per_channel_symmetric", "per_channel_affine_float_qparams"};

const Entry* find_entry(std::string_view module, std::string_view name) {
  for (const auto& e : kTable)
    if (e.module == module && e.name == name) return &e;
  return nullptr;
}

bool is_small_int_dtype(std::string_view name) {  // torch.int1..int7, torch.uint1..uint7
  std::string_view rest = name.starts_with("uint") ? name.substr(4) : name.starts_with("int") ? name.substr(3) : "";
  return rest.size() == 1 && rest[0] >= '1' && rest[0] <= '7';
}

}  // namespace

bool is_blocked_module(std::string_view module) {
  return module == "sys" || module == "os" || module == "posix" || module == "nt";
}

bool is_allowed_global(std::string_view module, std::string_view name) {
  if (is_blocked_module(module)) return false;
  if (find_entry(module, name)) return true;
  if (module == "torch" || module == "torch.cuda") {
    if (name.find("Storage") != std::string_view::npos) return dtype_from_storage_name(name).has_value();
    if (name.size() > 6 && name.ends_with("Tensor")) return true;  // torch._tensor_classes
  }
  if (module == "torch") {
    if (dtype_from_name(name) && name == ckpt::name(*dtype_from_name(name))) return true;
    if (is_small_int_dtype(name)) return true;
    for (auto q : kQSchemes)
      if (q == name) return true;
  }
  return false;
}

Value call_torch_global(const Global& g, const List& args, const Limits& limits) {
  const Entry* e = find_entry(g.module, g.name);
  if (e == nullptr || e->fn == nullptr)
    throw UnsupportedError("calling '" + g.qualified() + "' is not supported (it is allowed only as a value)");
  return e->fn(args, limits);
}

}  // namespace ckpt::pickle
