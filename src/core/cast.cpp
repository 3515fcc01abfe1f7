// Tensor::to(DType): casts between the floating types checkpoints are stored
// in (float64, float32, float16, bfloat16), rounding to nearest even exactly
// as torch's CPU kernels do (double -> half goes through float, as c10::Half's
// constructor does).
#include <bit>
#include <cmath>
#include <cstring>

#include "ckpt/error.hpp"
#include "ckpt/tensor.hpp"

namespace ckpt {
namespace {

float half_to_float(uint16_t h) {
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

uint16_t float_to_half(float f) {
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

float bf16_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t float_to_bf16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);  // quiet nan
  x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(x >> 16);
}

bool castable(DType d) {
  return d == DType::float64 || d == DType::float32 || d == DType::float16 || d == DType::bfloat16;
}

double load(DType d, const std::byte* p) {
  switch (d) {
    case DType::float64: { double v; std::memcpy(&v, p, 8); return v; }
    case DType::float32: { float v; std::memcpy(&v, p, 4); return v; }
    case DType::float16: { uint16_t v; std::memcpy(&v, p, 2); return half_to_float(v); }
    default: { uint16_t v; std::memcpy(&v, p, 2); return bf16_to_float(v); }
  }
}

void store(DType d, double v, std::byte* p) {
  switch (d) {
    case DType::float64: std::memcpy(p, &v, 8); break;
    case DType::float32: { float f = static_cast<float>(v); std::memcpy(p, &f, 4); break; }
    case DType::float16: { uint16_t h = float_to_half(static_cast<float>(v)); std::memcpy(p, &h, 2); break; }
    default: { uint16_t b = float_to_bf16(static_cast<float>(v)); std::memcpy(p, &b, 2); break; }
  }
}

}  // namespace

Tensor Tensor::to(DType target) const {
  if (target == dtype_) return *this;
  if (!castable(dtype_) || !castable(target))
    throw UnsupportedError("cannot cast a " + std::string(name(dtype_)) + " tensor to " +
                           std::string(name(target)) +
                           ": casts are supported between float64, float32, float16 and bfloat16");
  const Tensor src = is_contiguous() ? *this : contiguous();
  Tensor out = Tensor::empty(target, sizes_);
  const std::byte* in = src.data();
  std::byte* o = out.mutable_data();
  const size_t is = ckpt::itemsize(dtype_), os = ckpt::itemsize(target);
  for (int64_t i = 0; i < numel_; ++i) store(target, load(dtype_, in + i * is), o + i * os);
  out.set_device(device_);
  out.set_requires_grad(requires_grad_);
  out.set_is_parameter(is_parameter_);
  return out;
}

}  // namespace ckpt
