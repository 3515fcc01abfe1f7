// ckpt/elements.hpp — a tensor's elements as numbers, and casts between dtypes.
//
// The one dtype-conversion engine of ckpt: Tensor::to, and the ckpt tool's
// stats, diff and `extract --as`, read and convert elements through these
// functions.
//
// Each element class says how an element is read: floating types (float64
// down to the float8 and float4 formats) read as double; integers read
// exactly as int64 / uint64; complex types read as a pair of doubles; bool as
// 0/1; `raw` types (the bitsN dtypes and the packed quantized types) have no
// numeric meaning and compare bitwise only. Quantized qint8/quint8/qint32
// read as their stored integers (scale and zero point are not applied).
//
// Half and bfloat16 decode exactly (a NaN keeps its sign and payload) and
// encode rounding to nearest even, as torch's CPU kernels do. Elements are
// little-endian, as in every checkpoint. All functions here are pure and
// thread-safe.
#pragma once

#include <complex>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

#include "ckpt/dtype.hpp"
#include "ckpt/tensor.hpp"

namespace ckpt {

enum class ElementClass : uint8_t { floating, signed_int, unsigned_int, boolean, complex, raw };

ElementClass element_class(DType dtype) noexcept;

// The element at p (itemsize(dtype) bytes) as a number. For float4_e2m1fn_x2
// the byte holds two values; these read the low nibble.
double read_double(const std::byte* p, DType dtype) noexcept;  // any class but raw (NaN); complex: real part
int64_t read_int64(const std::byte* p, DType dtype) noexcept;  // signed_int, boolean
uint64_t read_uint64(const std::byte* p, DType dtype) noexcept;  // unsigned_int, raw (the bits)
std::complex<double> read_complex(const std::byte* p, DType dtype) noexcept;  // complex (others: imag 0)

// Scalar codecs for the formats C++ has no type for. The decoders are exact;
// the encoders round to nearest even (overflow gives inf, a NaN stays a quiet
// NaN with its sign and the payload bits that fit).
float half_to_float(uint16_t bits) noexcept;
uint16_t float_to_half(float value) noexcept;
float bfloat16_to_float(uint16_t bits) noexcept;
uint16_t float_to_bfloat16(float value) noexcept;
// A float8 (or the low float4 of a float4_e2m1fn_x2 byte) of `dtype` as double.
double float8_to_double(uint8_t bits, DType dtype) noexcept;

// Writes the elements of `t`, row-major (following its strides), converted
// to `to`, into `out` (numel() * itemsize(to) bytes). As torch's
// tensor.to(dtype): float32, float16 and bfloat16 round to nearest even (to
// float16 and bfloat16 through float32, as c10::Half's constructor does);
// integers to integers are exact, wrapping to the target's width; floating
// values to integers truncate toward zero (NaN, inf and values beyond int64
// give 0); to bool: != 0 (complex: its real part). A complex target takes a
// real source with imaginary part 0; a real non-complex target takes a
// complex source's real part. Targets: float64, float32, float16, bfloat16,
// complex64, complex128, bool and the integer dtypes; sources: every dtype
// but the raw ones. Throws ckpt::UnsupportedError for other pairs, and
// std::invalid_argument when `out` has the wrong size.
void cast_elements(const Tensor& t, DType to, std::span<std::byte> out);

// Calls fn(element_pointer) for each element of t in row-major order,
// following its strides (non-contiguous views included).
void for_each_element(const Tensor& t, const std::function<void(const std::byte*)>& fn);

// Same, for two tensors of equal shape, in lockstep.
void for_each_element_pair(const Tensor& a, const Tensor& b,
                           const std::function<void(const std::byte*, const std::byte*)>& fn);

}  // namespace ckpt
