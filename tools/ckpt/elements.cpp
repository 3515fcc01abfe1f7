#include "elements.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace ckpt::cli {
namespace {

template <class T>
T load(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);  // checkpoints are little-endian, as is every host ckpt supports
  return v;
}

// A binary float of the given layout, finite or subnormal (no NaN/inf handling).
double decode_finite(bool negative, uint32_t exp, uint32_t mant, int mant_bits, int bias) noexcept {
  double m = static_cast<double>(mant) / static_cast<double>(1u << mant_bits);
  double v = exp == 0 ? std::ldexp(m, 1 - bias) : std::ldexp(1.0 + m, static_cast<int>(exp) - bias);
  return negative ? -v : v;
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

}  // namespace

ElementClass element_class(DType d) noexcept {
  switch (d) {
    case DType::int8: case DType::int16: case DType::int32: case DType::int64:
    case DType::qint8: case DType::qint32:
      return ElementClass::signed_int;
    case DType::uint8: case DType::uint16: case DType::uint32: case DType::uint64: case DType::quint8:
      return ElementClass::unsigned_int;
    case DType::bool_: return ElementClass::boolean;
    case DType::complex32: case DType::complex64: case DType::complex128: return ElementClass::complex;
    case DType::quint4x2: case DType::quint2x4: case DType::bits8: case DType::bits16:
    case DType::bits1x8: case DType::bits2x4: case DType::bits4x2:
      return ElementClass::raw;
    default: return ElementClass::floating;
  }
}

double half_to_double(uint16_t b) noexcept {
  uint32_t exp = (b >> 10) & 0x1f, mant = b & 0x3ff;
  bool neg = b & 0x8000;
  if (exp == 0x1f) return mant ? kNaN : (neg ? -kInf : kInf);
  return decode_finite(neg, exp, mant, 10, 15);
}

double bfloat16_to_double(uint16_t b) noexcept {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

double float8_to_double(uint8_t b, DType d) noexcept {
  bool neg = b & 0x80;
  switch (d) {
    case DType::float8_e5m2: return half_to_double(static_cast<uint16_t>(b << 8));
    case DType::float8_e4m3fn: {
      uint32_t exp = (b >> 3) & 0xf, mant = b & 7;
      if (exp == 0xf && mant == 7) return kNaN;  // no infinities
      return decode_finite(neg, exp, mant, 3, 7);
    }
    case DType::float8_e5m2fnuz:  // fnuz: 0x80 is the only NaN, no infinities, no -0
      if (b == 0x80) return kNaN;
      return decode_finite(neg, (b >> 2) & 0x1f, b & 3, 2, 16);
    case DType::float8_e4m3fnuz:
      if (b == 0x80) return kNaN;
      return decode_finite(neg, (b >> 3) & 0xf, b & 7, 3, 8);
    case DType::float8_e8m0fnu:  // exponent only: 2^(b - 127); 0xff is NaN
      if (b == 0xff) return kNaN;
      return std::ldexp(1.0, static_cast<int>(b) - 127);
    case DType::float4_e2m1fn_x2: {  // low nibble: s e e m, bias 1
      uint8_t n = b & 0xf;
      return decode_finite(n & 8, (n >> 1) & 3, n & 1, 1, 1);
    }
    default: return kNaN;
  }
}

double read_double(const std::byte* p, DType d) noexcept {
  switch (d) {
    case DType::float64: return load<double>(p);
    case DType::float32: return load<float>(p);
    case DType::float16: return half_to_double(load<uint16_t>(p));
    case DType::bfloat16: return bfloat16_to_double(load<uint16_t>(p));
    case DType::float8_e5m2: case DType::float8_e4m3fn: case DType::float8_e5m2fnuz:
    case DType::float8_e4m3fnuz: case DType::float8_e8m0fnu: case DType::float4_e2m1fn_x2:
      return float8_to_double(load<uint8_t>(p), d);
    case DType::complex32: case DType::complex64: case DType::complex128: return read_complex(p, d).real();
    default: break;
  }
  switch (element_class(d)) {
    case ElementClass::signed_int: case ElementClass::boolean: return static_cast<double>(read_int64(p, d));
    case ElementClass::unsigned_int: return static_cast<double>(read_uint64(p, d));
    default: return kNaN;
  }
}

int64_t read_int64(const std::byte* p, DType d) noexcept {
  switch (d) {
    case DType::int8: case DType::qint8: return load<int8_t>(p);
    case DType::int16: return load<int16_t>(p);
    case DType::int32: case DType::qint32: return load<int32_t>(p);
    case DType::int64: return load<int64_t>(p);
    case DType::bool_: return load<uint8_t>(p) != 0;
    default: return static_cast<int64_t>(read_uint64(p, d));
  }
}

uint64_t read_uint64(const std::byte* p, DType d) noexcept {
  switch (itemsize(d)) {
    case 1: return load<uint8_t>(p);
    case 2: return load<uint16_t>(p);
    case 4: return load<uint32_t>(p);
    case 8: return load<uint64_t>(p);
    default: return 0;
  }
}

std::complex<double> read_complex(const std::byte* p, DType d) noexcept {
  switch (d) {
    case DType::complex32: return {half_to_double(load<uint16_t>(p)), half_to_double(load<uint16_t>(p + 2))};
    case DType::complex64: return {load<float>(p), load<float>(p + 4)};
    case DType::complex128: return {load<double>(p), load<double>(p + 8)};
    default: return {read_double(p, d), 0.0};
  }
}

namespace {

// Walks the index space of `sizes` in row-major order, calling step(offsets)
// with the element offset (in elements) of each tensor.
template <class F>
void walk(const std::vector<int64_t>& sizes, const std::vector<const std::vector<int64_t>*>& strides, F&& step) {
  const size_t nd = sizes.size();
  for (int64_t s : sizes)
    if (s == 0) return;
  std::vector<int64_t> idx(nd, 0);
  std::vector<int64_t> off(strides.size(), 0);
  while (true) {
    step(off);
    size_t k = nd;
    while (k > 0) {
      --k;
      if (++idx[k] < sizes[k]) {
        for (size_t t = 0; t < strides.size(); ++t) off[t] += (*strides[t])[k];
        break;
      }
      for (size_t t = 0; t < strides.size(); ++t) off[t] -= (*strides[t])[k] * (sizes[k] - 1);
      idx[k] = 0;
      if (k == 0) return;
    }
    if (nd == 0) return;
  }
}

}  // namespace

void for_each_element(const Tensor& t, const std::function<void(const std::byte*)>& fn) {
  if (t.numel() == 0) return;
  const std::byte* base = t.data();
  const size_t isz = t.itemsize();
  if (t.is_contiguous()) {
    for (int64_t i = 0; i < t.numel(); ++i) fn(base + static_cast<size_t>(i) * isz);
    return;
  }
  walk(t.sizes(), {&t.strides()}, [&](const std::vector<int64_t>& off) { fn(base + off[0] * static_cast<int64_t>(isz)); });
}

void for_each_element_pair(const Tensor& a, const Tensor& b,
                           const std::function<void(const std::byte*, const std::byte*)>& fn) {
  if (a.numel() == 0) return;
  const std::byte* pa = a.data();
  const std::byte* pb = b.data();
  const auto ia = static_cast<int64_t>(a.itemsize()), ib = static_cast<int64_t>(b.itemsize());
  if (a.is_contiguous() && b.is_contiguous()) {
    for (int64_t i = 0; i < a.numel(); ++i) fn(pa + i * ia, pb + i * ib);
    return;
  }
  walk(a.sizes(), {&a.strides(), &b.strides()},
       [&](const std::vector<int64_t>& off) { fn(pa + off[0] * ia, pb + off[1] * ib); });
}

}  // namespace ckpt::cli
