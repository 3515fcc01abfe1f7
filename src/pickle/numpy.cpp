#include "pickle/numpy.hpp"

#include <array>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/tensor.hpp"
#include "core/byteswap.hpp"
#include "core/checked.hpp"
#include "pickle/rewrite.hpp"

namespace ckpt::pickle {

namespace {

bool is_multiarray(std::string_view module) {
  return module == "numpy.core.multiarray" || module == "numpy._core.multiarray";
}

struct NumpyType {
  std::string_view code;
  DType dtype;
};
constexpr std::array<NumpyType, 14> kTypes = {{
    {"b1", DType::bool_},   {"i1", DType::int8},     {"i2", DType::int16},      {"i4", DType::int32},
    {"i8", DType::int64},   {"u1", DType::uint8},    {"u2", DType::uint16},     {"u4", DType::uint32},
    {"u8", DType::uint64},  {"f2", DType::float16},  {"f4", DType::float32},    {"f8", DType::float64},
    {"c8", DType::complex64}, {"c16", DType::complex128},
}};

struct Dtype {
  DType dtype;
  bool big_endian;
};

[[noreturn]] void bad(const std::string& what, const ErrorContext& where) {
  throw FormatError("numpy: " + what, where);
}

// numpy.dtype(code, align, copy) + BUILD (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
Dtype parse_dtype(const Value& v, const ErrorContext& where) {
  if (!v.is_object() || v.as_object().module != "numpy" || v.as_object().name != "dtype")
    bad("expected a numpy.dtype, got " + std::string(v.kind_name()), where);
  const Object& o = v.as_object();
  if (!o.args.is_tuple() || o.args.as_tuple().empty() || !o.args.as_tuple()[0].is_string())
    bad("numpy.dtype() arguments are not (code, align, copy)", where);
  const std::string& code = o.args.as_tuple()[0].as_string();
  if (!o.state.is_tuple() || o.state.as_tuple().size() < 5) bad("dtype '" + code + "' has no (version, byteorder, ...) state", where);
  const List& st = o.state.as_tuple();
  if (!st[1].is_string()) bad("dtype '" + code + "' byte order is not a str", where);
  const std::string& order = st[1].as_string();
  if (!st[2].is_none() || !st[3].is_none() || !st[4].is_none())
    throw UnsupportedError("numpy structured and sub-array dtypes (" + code + ") are not supported", where);
  for (const auto& t : kTypes) {
    if (t.code != code) continue;
    if (order != "<" && order != ">" && order != "|" && order != "=")
      bad("dtype '" + code + "' has byte order '" + order + "'", where);
    return {t.dtype, order == ">"};
  }
  throw UnsupportedError("numpy dtype '" + code + "' is not supported (only bool, integer, float and complex arrays are)",
                         where);
}

// Raw little- or big-endian element bytes into an owned, little-endian storage.
Storage native_storage(const std::string& raw, const Dtype& d) {
  Storage s = Storage::copy_of(std::as_bytes(std::span<const char>(raw.data(), raw.size())));
  if (d.big_endian && s.nbytes() > 0) byteswap_dtype_elements(s.mutable_data(), s.nbytes(), d.dtype);
  return s;
}

// _reconstruct(ndarray, (0,), b'b') + BUILD (version, shape, dtype, is_fortran, data)
Value decode_array(const Object& o, const ErrorContext& where) {
  const List* args = o.args.is_tuple() ? &o.args.as_tuple() : nullptr;
  if (args == nullptr || args->size() != 3 || args->at(0).kind() != Value::Kind::Global ||
      args->at(0).as_global().module != "numpy" || args->at(0).as_global().name != "ndarray")
    bad("_reconstruct() is not called with numpy.ndarray (array subclasses are not supported)", where);
  if (!o.state.is_tuple() || o.state.as_tuple().size() != 5)
    bad("array state is not (version, shape, dtype, is_fortran, data)", where);
  const List& st = o.state.as_tuple();
  if (!st[1].is_tuple()) bad("array shape is a " + std::string(st[1].kind_name()) + ", not a tuple", where);
  Dtype d = parse_dtype(st[2], where);
  if (!st[3].is_bool()) bad("array is_fortran flag is not a bool", where);
  if (st[4].is_list()) throw UnsupportedError("numpy object arrays are not supported", where);
  if (!st[4].is_bytes()) bad("array data is a " + std::string(st[4].kind_name()) + ", not bytes", where);
  std::vector<int64_t> sizes;
  int64_t numel = 1;
  for (const auto& dim : st[1].as_tuple()) {
    if (!dim.is_int() || dim.as_int() < 0) bad("array shape " + st[1].repr() + " is not a tuple of sizes", where);
    sizes.push_back(dim.as_int());
    numel = checked_mul(numel, dim.as_int(), "numpy array size");
  }
  const std::string& raw = st[4].as_bytes();
  const int64_t nbytes = checked_mul(numel, static_cast<int64_t>(itemsize(d.dtype)), "numpy array size");
  if (static_cast<uint64_t>(nbytes) != raw.size())
    bad("array of shape " + st[1].repr() + " and dtype " + std::string(name(d.dtype)) + " needs " +
            std::to_string(nbytes) + " bytes, the pickle has " + std::to_string(raw.size()),
        where);
  std::vector<int64_t> strides = Tensor::contiguous_strides(sizes);
  if (st[3].as_bool()) {  // column-major: the first index varies fastest
    int64_t step = 1;
    for (size_t i = 0; i < sizes.size(); ++i) {
      strides[i] = step;
      step *= std::max<int64_t>(sizes[i], 1);
    }
  }
  return Value(Tensor(native_storage(raw, d), d.dtype, std::move(sizes), std::move(strides)));
}

// scalar(dtype, raw bytes) -> the Python number
Value decode_scalar(const Object& o, const ErrorContext& where) {
  if (!o.args.is_tuple() || o.args.as_tuple().size() != 2) bad("scalar() arguments are not (dtype, data)", where);
  const List& args = o.args.as_tuple();
  Dtype d = parse_dtype(args[0], where);
  if (!args[1].is_bytes()) bad("scalar data is a " + std::string(args[1].kind_name()) + ", not bytes", where);
  const std::string& raw = args[1].as_bytes();
  if (raw.size() != itemsize(d.dtype))
    bad("a " + std::string(name(d.dtype)) + " scalar has " + std::to_string(raw.size()) + " bytes", where);
  Storage s = native_storage(raw, d);
  const std::byte* p = s.data();
  auto load = [p](auto v, size_t at = 0) {
    std::memcpy(&v, p + at, sizeof v);
    return v;
  };
  switch (d.dtype) {
    case DType::bool_: return Value(load(uint8_t{}) != 0);
    case DType::int8: return Value(int64_t{load(int8_t{})});
    case DType::int16: return Value(int64_t{load(int16_t{})});
    case DType::int32: return Value(int64_t{load(int32_t{})});
    case DType::int64: return Value(load(int64_t{}));
    case DType::uint8: return Value(int64_t{load(uint8_t{})});
    case DType::uint16: return Value(int64_t{load(uint16_t{})});
    case DType::uint32: return Value(int64_t{load(uint32_t{})});
    case DType::uint64: {
      uint64_t u = load(uint64_t{});
      if (u <= static_cast<uint64_t>(INT64_MAX)) return Value(static_cast<int64_t>(u));
      BigInt b;  // little-endian two's complement, as pickle's LONG1
      for (int i = 0; i < 8; ++i) b.bytes.push_back(static_cast<uint8_t>(u >> (8 * i)));
      b.bytes.push_back(0);
      return Value(std::move(b));
    }
    case DType::float16: {
      double x = 0;
      std::memcpy(&x, Tensor(s, d.dtype, {}, {}).to(DType::float64).data(), sizeof x);
      return Value(x);
    }
    case DType::float32: return Value(static_cast<double>(load(float{})));
    case DType::float64: return Value(load(double{}));
    case DType::complex64:
      return Value(std::complex<double>(load(float{}), load(float{}, 4)));
    case DType::complex128:
      return Value(std::complex<double>(load(double{}), load(double{}, 8)));
    default: break;
  }
  throw UnsupportedError("numpy scalar of dtype " + std::string(name(d.dtype)) + " is not supported", where);
}

}  // namespace

bool is_numpy_global(std::string_view module, std::string_view name) {
  if (is_multiarray(module)) return name == "_reconstruct" || name == "scalar";
  if (module == "builtins") return name == "bytes";  // an empty array's data: CPython pickles b'' as bytes()
  return module == "numpy" && (name == "ndarray" || name == "dtype");
}

Value decode_numpy(const Value& root, const ErrorContext& where) {
  return rewrite_objects(root, [&where](const Value& v) -> Value {
    const Object& o = v.as_object();
    if (o.module == "builtins" && o.name == "bytes") {  // bytes() / bytes(b'...')
      const List* args = o.args.is_tuple() ? &o.args.as_tuple() : nullptr;
      if (args != nullptr && args->empty() && o.state.is_none()) return Value::bytes("");
      if (args != nullptr && args->size() == 1 && args->at(0).is_bytes() && o.state.is_none()) return args->at(0);
      bad("builtins.bytes() is called with " + o.args.repr() + ", not with nothing or bytes", where);
    }
    if (!is_multiarray(o.module)) return v;
    if (o.name == "_reconstruct") return decode_array(o, where);
    if (o.name == "scalar") return decode_scalar(o, where);
    return v;
  });
}

}  // namespace ckpt::pickle
