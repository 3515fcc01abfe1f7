// ckpt/dtype.hpp — element types of tensors.
//
// DType lists every element type PyTorch can store in a checkpoint. Each one
// knows its torch name ("float32", as in torch.float32), the legacy typed
// storage class that pickles name it by ("FloatStorage"; empty for dtypes that
// are only ever saved as UntypedStorage + _rebuild_tensor_v3), its safetensors
// code ("F32"; empty where safetensors has none) and its element size in
// bytes. All functions here are pure and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace ckpt {

enum class DType : uint8_t {
  float64,
  float32,
  float16,
  bfloat16,
  float8_e5m2,
  float8_e4m3fn,
  float8_e5m2fnuz,
  float8_e4m3fnuz,
  float8_e8m0fnu,
  float4_e2m1fn_x2,  // two 4-bit values packed in one byte
  int8,
  int16,
  int32,
  int64,
  uint8,
  uint16,
  uint32,
  uint64,
  bool_,
  complex32,
  complex64,
  complex128,
  qint8,
  quint8,
  qint32,
  quint4x2,
  quint2x4,
  bits8,
  bits16,
  bits1x8,
  bits2x4,
  bits4x2,
};

inline constexpr size_t kNumDTypes = static_cast<size_t>(DType::bits4x2) + 1;

struct DTypeInfo {
  DType dtype;
  std::string_view name;          // torch name without "torch.": "float32"
  std::string_view storage_name;  // legacy storage class: "FloatStorage", or ""
  std::string_view safetensors;   // safetensors code: "F32", or ""
  uint8_t itemsize;               // bytes per element (packed types: per byte)
  bool is_floating;               // floating point (incl. float8 / bfloat16)
  bool is_complex;
  bool is_quantized;
};

// Static information about a dtype.
const DTypeInfo& info(DType dtype) noexcept;

inline std::string_view name(DType dtype) noexcept { return info(dtype).name; }
inline size_t itemsize(DType dtype) noexcept { return info(dtype).itemsize; }

// Lookups; std::nullopt when unknown. dtype_from_name accepts the canonical
// names and torch's aliases ("float", "double", "half", "long", "int",
// "short", "cfloat", "cdouble", "chalf"), with or without "torch.".
std::optional<DType> dtype_from_name(std::string_view name) noexcept;
std::optional<DType> dtype_from_storage_name(std::string_view storage_name) noexcept;
std::optional<DType> dtype_from_safetensors(std::string_view code) noexcept;

}  // namespace ckpt
