#include "ckpt/dtype.hpp"

#include <array>

namespace ckpt {
namespace {

// clang-format off
constexpr std::array<DTypeInfo, kNumDTypes> kInfos = {{
  //  dtype                     name                storage class             st        sz  float  cplx   quant
  {DType::float64,          "float64",          "DoubleStorage",          "F64",      8, true,  false, false},
  {DType::float32,          "float32",          "FloatStorage",           "F32",      4, true,  false, false},
  {DType::float16,          "float16",          "HalfStorage",            "F16",      2, true,  false, false},
  {DType::bfloat16,         "bfloat16",         "BFloat16Storage",        "BF16",     2, true,  false, false},
  {DType::float8_e5m2,      "float8_e5m2",      "",                       "F8_E5M2",  1, true,  false, false},
  {DType::float8_e4m3fn,    "float8_e4m3fn",    "",                       "F8_E4M3",  1, true,  false, false},
  {DType::float8_e5m2fnuz,  "float8_e5m2fnuz",  "",                       "F8_E5M2FNUZ", 1, true, false, false},
  {DType::float8_e4m3fnuz,  "float8_e4m3fnuz",  "",                       "F8_E4M3FNUZ", 1, true, false, false},
  {DType::float8_e8m0fnu,   "float8_e8m0fnu",   "",                       "F8_E8M0",  1, true,  false, false},
  {DType::float4_e2m1fn_x2, "float4_e2m1fn_x2", "",                       "",         1, true,  false, false},
  {DType::int8,             "int8",             "CharStorage",            "I8",       1, false, false, false},
  {DType::int16,            "int16",            "ShortStorage",           "I16",      2, false, false, false},
  {DType::int32,            "int32",            "IntStorage",             "I32",      4, false, false, false},
  {DType::int64,            "int64",            "LongStorage",            "I64",      8, false, false, false},
  {DType::uint8,            "uint8",            "ByteStorage",            "U8",       1, false, false, false},
  {DType::uint16,           "uint16",           "",                       "U16",      2, false, false, false},
  {DType::uint32,           "uint32",           "",                       "U32",      4, false, false, false},
  {DType::uint64,           "uint64",           "",                       "U64",      8, false, false, false},
  {DType::bool_,            "bool",             "BoolStorage",            "BOOL",     1, false, false, false},
  {DType::complex32,        "complex32",        "",                       "",         4, false, true,  false},
  {DType::complex64,        "complex64",        "ComplexFloatStorage",    "C64",      8, false, true,  false},
  {DType::complex128,       "complex128",       "ComplexDoubleStorage",   "",        16, false, true,  false},
  {DType::qint8,            "qint8",            "QInt8Storage",           "",         1, false, false, true},
  {DType::quint8,           "quint8",           "QUInt8Storage",          "",         1, false, false, true},
  {DType::qint32,           "qint32",           "QInt32Storage",          "",         4, false, false, true},
  {DType::quint4x2,         "quint4x2",         "QUInt4x2Storage",        "",         1, false, false, true},
  {DType::quint2x4,         "quint2x4",         "QUInt2x4Storage",        "",         1, false, false, true},
  {DType::bits8,            "bits8",            "",                       "",         1, false, false, false},
  {DType::bits16,           "bits16",           "",                       "",         2, false, false, false},
  {DType::bits1x8,          "bits1x8",          "",                       "",         1, false, false, false},
  {DType::bits2x4,          "bits2x4",          "",                       "",         1, false, false, false},
  {DType::bits4x2,          "bits4x2",          "",                       "",         1, false, false, false},
}};
// clang-format on

constexpr bool table_is_indexed_by_enum() {
  for (size_t i = 0; i < kInfos.size(); ++i)
    if (static_cast<size_t>(kInfos[i].dtype) != i) return false;
  return true;
}
static_assert(table_is_indexed_by_enum(), "kInfos must follow the DType enum order");

struct Alias {
  std::string_view alias;
  DType dtype;
};
constexpr Alias kAliases[] = {
    {"float", DType::float32},    {"double", DType::float64},   {"half", DType::float16},
    {"long", DType::int64},       {"int", DType::int32},        {"short", DType::int16},
    {"cfloat", DType::complex64}, {"cdouble", DType::complex128}, {"chalf", DType::complex32},
};

}  // namespace

const DTypeInfo& info(DType dtype) noexcept { return kInfos[static_cast<size_t>(dtype)]; }

std::optional<DType> dtype_from_name(std::string_view n) noexcept {
  if (n.starts_with("torch.")) n.remove_prefix(6);
  for (const auto& i : kInfos)
    if (i.name == n) return i.dtype;
  for (const auto& a : kAliases)
    if (a.alias == n) return a.dtype;
  return std::nullopt;
}

std::optional<DType> dtype_from_storage_name(std::string_view n) noexcept {
  if (n.empty()) return std::nullopt;
  for (const auto& i : kInfos)
    if (i.storage_name == n) return i.dtype;
  return std::nullopt;
}

std::optional<DType> dtype_from_safetensors(std::string_view code) noexcept {
  if (code.empty()) return std::nullopt;
  for (const auto& i : kInfos)
    if (i.safetensors == code) return i.dtype;
  return std::nullopt;
}

}  // namespace ckpt
