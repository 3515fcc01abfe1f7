// Reading tensor elements as numbers, for every dtype (diff, stats, extract).
//
// Each element class says how an element is compared and summarised:
// floating types (float64 down to the float8 and float4 formats) read as
// double; integers read exactly as int64 / uint64; complex types read as a
// pair of doubles; bool as 0/1; `raw` types (the bitsN dtypes and packed
// quantized types) have no numeric meaning and compare bitwise only.
// Quantized qint8/quint8/qint32 read as their stored integers (scale and
// zero point are not applied). Pure functions; thread-safe.
#pragma once

#include <complex>
#include <cstddef>
#include <cstdint>
#include <functional>

#include "ckpt/dtype.hpp"
#include "ckpt/tensor.hpp"

namespace ckpt::cli {

enum class ElementClass : uint8_t { floating, signed_int, unsigned_int, boolean, complex, raw };

ElementClass element_class(DType dtype) noexcept;

// Element at p (itemsize(dtype) bytes, little-endian) as a number. For
// float4_e2m1fn_x2 the byte holds two values; these read the low nibble.
double read_double(const std::byte* p, DType dtype) noexcept;  // any class but raw; complex: real part
int64_t read_int64(const std::byte* p, DType dtype) noexcept;  // signed_int, boolean
uint64_t read_uint64(const std::byte* p, DType dtype) noexcept;  // unsigned_int, raw (the bits)
std::complex<double> read_complex(const std::byte* p, DType dtype) noexcept;  // complex (others: imag 0)

// Decoders for the formats C++ has no type for (exposed for tests).
double half_to_double(uint16_t bits) noexcept;
double bfloat16_to_double(uint16_t bits) noexcept;
double float8_to_double(uint8_t bits, DType dtype) noexcept;

// Calls fn(element_pointer) for each element of t in row-major order,
// following its strides (non-contiguous views included).
void for_each_element(const Tensor& t, const std::function<void(const std::byte*)>& fn);

// Same, for two tensors of equal shape, in lockstep.
void for_each_element_pair(const Tensor& a, const Tensor& b,
                           const std::function<void(const std::byte*, const std::byte*)>& fn);

}  // namespace ckpt::cli
