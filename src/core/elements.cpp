// The dtype-conversion engine (ckpt/elements.hpp) and Tensor::to, which is
// cast_elements restricted to the floating types checkpoints are stored in.
#include "ckpt/elements.hpp"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "ckpt/error.hpp"

namespace ckpt {
namespace {

template <class T>
T load(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);  // checkpoints are little-endian, as is every host ckpt supports
  return v;
}

template <class T>
void put(std::byte* out, T v) noexcept {
  std::memcpy(out, &v, sizeof v);
}

// A binary float of the given layout, finite or subnormal (no NaN/inf handling).
double decode_finite(bool negative, uint32_t exp, uint32_t mant, int mant_bits, int bias) noexcept {
  double m = static_cast<double>(mant) / static_cast<double>(1u << mant_bits);
  double v = exp == 0 ? std::ldexp(m, 1 - bias) : std::ldexp(1.0 + m, static_cast<int>(exp) - bias);
  return negative ? -v : v;
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

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

// fn(element_pointer) for each element of t, row-major; inlined (no std::function).
template <class F>
void each_element(const Tensor& t, F&& fn) {
  if (t.numel() == 0) return;
  const std::byte* base = t.data();
  const auto isz = static_cast<int64_t>(t.itemsize());
  if (t.is_contiguous()) {
    for (int64_t i = 0; i < t.numel(); ++i) fn(base + i * isz);
    return;
  }
  walk(t.sizes(), {&t.strides()}, [&](const std::vector<int64_t>& off) { fn(base + off[0] * isz); });
}

bool is_integer(ElementClass c) {
  return c == ElementClass::signed_int || c == ElementClass::unsigned_int || c == ElementClass::boolean;
}

// One element of `from` at p as an integer: exact from integers, truncated
// toward zero from floating values (non-finite or beyond int64: 0).
int64_t integer_of(const std::byte* p, DType from, ElementClass fc) noexcept {
  if (is_integer(fc)) return fc == ElementClass::unsigned_int ? static_cast<int64_t>(read_uint64(p, from)) : read_int64(p, from);
  const double x = read_double(p, from);
  return std::isfinite(x) && std::fabs(x) < 9.2e18 ? static_cast<int64_t>(x) : 0;
}

bool is_cast_target(DType d) {
  switch (d) {
    case DType::float64: case DType::float32: case DType::float16: case DType::bfloat16:
    case DType::complex64: case DType::complex128: case DType::bool_:
    case DType::int8: case DType::int16: case DType::int32: case DType::int64:
    case DType::uint8: case DType::uint16: case DType::uint32: case DType::uint64:
      return true;
    default: return false;
  }
}

// Tensor::to's dtypes.
bool castable(DType d) {
  return d == DType::float64 || d == DType::float32 || d == DType::float16 || d == DType::bfloat16;
}

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

float half_to_float(uint16_t h) noexcept {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24
    float v = static_cast<float>(mant) * 0x1p-24f;
    return sign ? -v : v;
  }
  uint32_t bits;
  if (exp == 0x1f) bits = sign | 0x7f800000u | (mant << 13);  // inf / nan (payload kept)
  else bits = sign | ((exp + 112u) << 23) | (mant << 13);
  return std::bit_cast<float>(bits);
}

uint16_t float_to_half(float f) noexcept {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or nan
    if (abs == 0x7f800000u) return sign | 0x7c00u;
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));  // quiet nan
  }
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: inf
  if (abs < 0x38800000u) {
    // result is subnormal (or zero): value / 2^-24, rounded to nearest even
    const float a = std::bit_cast<float>(abs);
    const float scaled = a * 0x1p24f;  // exact: a < 2^-14, scaled < 2^10
    const float r = std::nearbyint(scaled);  // default rounding mode: to nearest even
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(r));
  }
  // normal: rebias exponent, round mantissa from 23 to 10 bits (nearest even)
  uint32_t m = abs - 0x38000000u;  // exponent rebiased from 127 to 15
  const uint32_t round_bit = 0x1000u;
  uint32_t h = m >> 13;
  const uint32_t rem = m & 0x1fffu;
  if (rem > round_bit || (rem == round_bit && (h & 1u))) ++h;  // may carry into the exponent: fine
  return static_cast<uint16_t>(sign | h);
}

float bfloat16_to_float(uint16_t b) noexcept { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t float_to_bfloat16(float f) noexcept {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);  // quiet nan
  x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(x >> 16);
}

double float8_to_double(uint8_t b, DType d) noexcept {
  bool neg = b & 0x80;
  switch (d) {
    case DType::float8_e5m2: return half_to_float(static_cast<uint16_t>(b << 8));  // the top byte of a half
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
    case DType::float16: return half_to_float(load<uint16_t>(p));
    case DType::bfloat16: return bfloat16_to_float(load<uint16_t>(p));
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
    case DType::complex32: return {half_to_float(load<uint16_t>(p)), half_to_float(load<uint16_t>(p + 2))};
    case DType::complex64: return {load<float>(p), load<float>(p + 4)};
    case DType::complex128: return {load<double>(p), load<double>(p + 8)};
    default: return {read_double(p, d), 0.0};
  }
}

void cast_elements(const Tensor& t, DType to, std::span<std::byte> out) {
  const DType from = t.dtype();
  const ElementClass fc = element_class(from);
  if (fc == ElementClass::raw || !is_cast_target(to))
    throw UnsupportedError("cannot cast a " + std::string(name(from)) + " tensor to " + std::string(name(to)));
  const size_t osz = itemsize(to);
  if (out.size() != static_cast<size_t>(t.numel()) * osz)
    throw std::invalid_argument("cast_elements: the output has " + std::to_string(out.size()) + " bytes, not " +
                                std::to_string(static_cast<size_t>(t.numel()) * osz));
  std::byte* o = out.data();
  // One loop per target, the conversion inlined into it.
  auto each = [&](auto&& convert) {
    each_element(t, [&](const std::byte* p) {
      convert(p, o);
      o += osz;
    });
  };
  switch (to) {
    case DType::float64: each([&](const std::byte* p, std::byte* q) { put(q, read_double(p, from)); }); break;
    case DType::float32:
      each([&](const std::byte* p, std::byte* q) { put(q, static_cast<float>(read_double(p, from))); });
      break;
    case DType::float16:
      each([&](const std::byte* p, std::byte* q) {
        put(q, float_to_half(static_cast<float>(read_double(p, from))));
      });
      break;
    case DType::bfloat16:
      each([&](const std::byte* p, std::byte* q) {
        put(q, float_to_bfloat16(static_cast<float>(read_double(p, from))));
      });
      break;
    case DType::complex64:
      each([&](const std::byte* p, std::byte* q) {
        const auto z = read_complex(p, from);
        put(q, static_cast<float>(z.real()));
        put(q + 4, static_cast<float>(z.imag()));
      });
      break;
    case DType::complex128:
      each([&](const std::byte* p, std::byte* q) {
        const auto z = read_complex(p, from);
        put(q, z.real());
        put(q + 8, z.imag());
      });
      break;
    case DType::bool_:
      each([&](const std::byte* p, std::byte* q) { put(q, static_cast<uint8_t>(read_double(p, from) != 0)); });
      break;
    default:  // integers, wrapped to the target's width
      each([&](const std::byte* p, std::byte* q) {
        const int64_t v = integer_of(p, from, fc);
        switch (osz) {
          case 1: put(q, static_cast<uint8_t>(v)); break;
          case 2: put(q, static_cast<uint16_t>(v)); break;
          case 4: put(q, static_cast<uint32_t>(v)); break;
          default: put(q, static_cast<uint64_t>(v)); break;
        }
      });
      break;
  }
}

void for_each_element(const Tensor& t, const std::function<void(const std::byte*)>& fn) { each_element(t, fn); }

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

Tensor Tensor::to(DType target) const {
  if (target == dtype_) return *this;
  if (!castable(dtype_) || !castable(target))
    throw UnsupportedError("cannot cast a " + std::string(name(dtype_)) + " tensor to " +
                           std::string(name(target)) +
                           ": casts are supported between float64, float32, float16 and bfloat16");
  Tensor out = Tensor::empty(target, sizes_);
  cast_elements(*this, target, {out.mutable_data(), out.nbytes()});
  out.set_device(device_);
  out.set_requires_grad(requires_grad_);
  out.set_is_parameter(is_parameter_);
  return out;
}

}  // namespace ckpt
