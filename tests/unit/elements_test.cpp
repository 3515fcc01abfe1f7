// ckpt/elements.hpp: reading elements as numbers, the half/bfloat16/float8
// codecs, cast_elements (the engine behind Tensor::to and `ckpt extract
// --as`) and the strided element walks.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "ckpt/elements.hpp"
#include "ckpt/error.hpp"

using namespace ckpt;

namespace {

template <class T>
Tensor tensor_of(DType d, const std::vector<T>& v, std::vector<int64_t> sizes = {}) {
  if (sizes.empty()) sizes = {static_cast<int64_t>(v.size())};
  return Tensor::from_bytes(d, std::move(sizes), std::as_bytes(std::span(v.data(), v.size())));
}

template <class T>
std::vector<T> cast_to(const Tensor& t, DType to) {
  std::vector<T> out(static_cast<size_t>(t.numel()) * itemsize(to) / sizeof(T));
  cast_elements(t, to, std::as_writable_bytes(std::span(out)));
  return out;
}

const std::byte* bytes_of(const void* p) { return static_cast<const std::byte*>(p); }

}  // namespace

TEST(Elements, Classes) {
  EXPECT_EQ(element_class(DType::float32), ElementClass::floating);
  EXPECT_EQ(element_class(DType::float8_e4m3fn), ElementClass::floating);
  EXPECT_EQ(element_class(DType::int16), ElementClass::signed_int);
  EXPECT_EQ(element_class(DType::qint8), ElementClass::signed_int);
  EXPECT_EQ(element_class(DType::uint64), ElementClass::unsigned_int);
  EXPECT_EQ(element_class(DType::quint8), ElementClass::unsigned_int);
  EXPECT_EQ(element_class(DType::bool_), ElementClass::boolean);
  EXPECT_EQ(element_class(DType::complex32), ElementClass::complex);
  EXPECT_EQ(element_class(DType::bits16), ElementClass::raw);
  EXPECT_EQ(element_class(DType::quint4x2), ElementClass::raw);
}

TEST(Elements, HalfAndBfloat16Codecs) {
  EXPECT_EQ(half_to_float(0x3c00), 1.0f);
  EXPECT_EQ(half_to_float(0xc000), -2.0f);
  EXPECT_EQ(half_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(half_to_float(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(std::bit_cast<uint32_t>(half_to_float(0x8000)), 0x80000000u);  // -0
  // A NaN keeps its sign and payload (as torch's half -> float does).
  EXPECT_EQ(std::bit_cast<uint32_t>(half_to_float(0xfe01)), 0xffc02000u);
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);  // rounds up to inf
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie -> even
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -25)), 0x0000);  // tie -> even (zero)
  EXPECT_EQ(float_to_half(std::bit_cast<float>(0xffc02000u)), 0xfe01);  // NaN round trip
  for (uint32_t h = 0; h < 0x10000; ++h) {  // every non-NaN half survives half -> float -> half
    const auto bits = static_cast<uint16_t>(h);
    if ((bits & 0x7c00) == 0x7c00 && (bits & 0x3ff)) continue;
    ASSERT_EQ(float_to_half(half_to_float(bits)), bits) << h;
  }
  EXPECT_EQ(bfloat16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(float_to_bfloat16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie -> even
  EXPECT_EQ(float_to_bfloat16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(float_to_bfloat16(std::numeric_limits<float>::quiet_NaN()), 0x7fc0);
}

TEST(Elements, Float8) {
  EXPECT_EQ(float8_to_double(0x38, DType::float8_e4m3fn), 1.0);
  EXPECT_EQ(float8_to_double(0x7e, DType::float8_e4m3fn), 448.0);
  EXPECT_TRUE(std::isnan(float8_to_double(0x7f, DType::float8_e4m3fn)));
  EXPECT_EQ(float8_to_double(0x3c, DType::float8_e5m2), 1.0);
  EXPECT_EQ(float8_to_double(0x7c, DType::float8_e5m2), std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(float8_to_double(0x80, DType::float8_e4m3fnuz)));
  EXPECT_EQ(float8_to_double(0x40, DType::float8_e4m3fnuz), 1.0);
  EXPECT_TRUE(std::isnan(float8_to_double(0x80, DType::float8_e5m2fnuz)));
  EXPECT_EQ(float8_to_double(127, DType::float8_e8m0fnu), 1.0);
  EXPECT_TRUE(std::isnan(float8_to_double(0xff, DType::float8_e8m0fnu)));
  EXPECT_EQ(float8_to_double(0xf3, DType::float4_e2m1fn_x2), 1.5);  // low nibble 0011
  EXPECT_EQ(float8_to_double(0x0f, DType::float4_e2m1fn_x2), -6.0);
}

TEST(Elements, ReadAsNumbers) {
  const int16_t i16 = -300;
  EXPECT_EQ(read_int64(bytes_of(&i16), DType::int16), -300);
  EXPECT_EQ(read_double(bytes_of(&i16), DType::int16), -300.0);
  const uint64_t u64 = 0xffffffffffffffffull;
  EXPECT_EQ(read_uint64(bytes_of(&u64), DType::uint64), u64);
  const uint8_t b = 7;
  EXPECT_EQ(read_int64(bytes_of(&b), DType::bool_), 1);
  const uint16_t bf = 0x4040;  // 3.0
  EXPECT_EQ(read_double(bytes_of(&bf), DType::bfloat16), 3.0);
  const uint16_t c32[2] = {0x3c00, 0xc000};  // 1 - 2i
  EXPECT_EQ(read_complex(bytes_of(c32), DType::complex32), std::complex<double>(1.0, -2.0));
  EXPECT_EQ(read_double(bytes_of(c32), DType::complex32), 1.0);
  const float f = 2.5f;
  EXPECT_EQ(read_complex(bytes_of(&f), DType::float32), std::complex<double>(2.5, 0.0));
  EXPECT_TRUE(std::isnan(read_double(bytes_of(&bf), DType::bits16)));
  EXPECT_EQ(read_uint64(bytes_of(&bf), DType::bits16), 0x4040u);
}

TEST(Elements, CastFloatsRoundLikeTorch) {
  const Tensor d = tensor_of<double>(DType::float64, {1.0 + std::ldexp(1.0, -30), -0.0, 1e300, NAN});
  const auto f = cast_to<float>(d, DType::float32);
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_EQ(std::bit_cast<uint32_t>(f[1]), 0x80000000u);
  EXPECT_TRUE(std::isinf(f[2]));
  EXPECT_TRUE(std::isnan(f[3]));
  const auto h = cast_to<uint16_t>(d, DType::float16);
  EXPECT_EQ(h[0], 0x3c00);
  EXPECT_EQ(h[2], 0x7c00);
  // double -> half goes through float: 1 + 2^-11 + 2^-40 rounds to float
  // 1 + 2^-11 (a half tie), then to even.
  const Tensor tie = tensor_of<double>(DType::float64, {1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40)});
  EXPECT_EQ(cast_to<uint16_t>(tie, DType::float16)[0], 0x3c00);
  EXPECT_EQ(cast_to<uint16_t>(tie, DType::bfloat16)[0], 0x3f80);
  // Tensor::to is the same engine.
  Tensor t = d.to(DType::float16);
  std::vector<uint16_t> via_to(4);
  std::memcpy(via_to.data(), t.data(), 8);
  EXPECT_EQ(via_to, h);
}

TEST(Elements, CastIntegersBoolAndComplex) {
  const Tensor f = tensor_of<float>(DType::float32, {-1.9f, 2.9f, NAN, INFINITY, 3e19f, 0.0f});
  EXPECT_EQ(cast_to<int64_t>(f, DType::int64), (std::vector<int64_t>{-1, 2, 0, 0, 0, 0}));  // toward zero
  EXPECT_EQ(cast_to<uint8_t>(f, DType::bool_), (std::vector<uint8_t>{1, 1, 1, 1, 1, 0}));
  const Tensor i = tensor_of<int64_t>(DType::int64, {-1, 300, int64_t{1} << 40});
  EXPECT_EQ(cast_to<uint8_t>(i, DType::uint8), (std::vector<uint8_t>{255, 44, 0}));  // wraps
  EXPECT_EQ(cast_to<int32_t>(i, DType::int32), (std::vector<int32_t>{-1, 300, 0}));
  EXPECT_EQ(cast_to<double>(i, DType::float64), (std::vector<double>{-1.0, 300.0, std::ldexp(1.0, 40)}));
  const Tensor u = tensor_of<uint64_t>(DType::uint64, {0xffffffffffffffffull});
  EXPECT_EQ(cast_to<int64_t>(u, DType::int64), (std::vector<int64_t>{-1}));
  const Tensor c = tensor_of<float>(DType::complex64, {1.5f, -2.0f, 0.0f, 3.0f}, {2});
  EXPECT_EQ(cast_to<double>(c, DType::complex128), (std::vector<double>{1.5, -2.0, 0.0, 3.0}));
  EXPECT_EQ(cast_to<uint8_t>(c, DType::bool_), (std::vector<uint8_t>{1, 0}));  // the real part
  const Tensor h = tensor_of<uint16_t>(DType::float16, {0x3c00});
  EXPECT_EQ(cast_to<float>(h, DType::complex64), (std::vector<float>{1.0f, 0.0f}));
}

TEST(Elements, CastFollowsStrides) {
  // [[0, 1, 2], [3, 4, 5]] transposed: row-major 0 3 1 4 2 5
  const Tensor base = tensor_of<int32_t>(DType::int32, {0, 1, 2, 3, 4, 5}, {2, 3});
  const Tensor tr(base.storage(), DType::int32, {3, 2}, {1, 3});
  EXPECT_EQ(cast_to<double>(tr, DType::float64), (std::vector<double>{0, 3, 1, 4, 2, 5}));
  std::vector<int32_t> seen;
  for_each_element(tr, [&](const std::byte* p) { seen.push_back(static_cast<int32_t>(read_int64(p, DType::int32))); });
  EXPECT_EQ(seen, (std::vector<int32_t>{0, 3, 1, 4, 2, 5}));
  std::vector<std::pair<int64_t, int64_t>> pairs;
  const Tensor other = tensor_of<int32_t>(DType::int32, {10, 11, 12, 13, 14, 15}, {3, 2});
  for_each_element_pair(tr, other, [&](const std::byte* a, const std::byte* b) {
    pairs.emplace_back(read_int64(a, DType::int32), read_int64(b, DType::int32));
  });
  ASSERT_EQ(pairs.size(), 6u);
  EXPECT_EQ(pairs[1], (std::pair<int64_t, int64_t>{3, 11}));
  EXPECT_EQ(pairs[5], (std::pair<int64_t, int64_t>{5, 15}));
  int n = 0;
  for_each_element(tensor_of<int32_t>(DType::int32, {}, {0, 3}), [&](const std::byte*) { ++n; });
  EXPECT_EQ(n, 0);
}

TEST(Elements, CastRefusesWhatItCannot) {
  const Tensor raw = tensor_of<uint16_t>(DType::bits16, {1});
  std::vector<std::byte> out(8);
  EXPECT_THROW(cast_elements(raw, DType::float64, out), UnsupportedError);
  const Tensor f = tensor_of<float>(DType::float32, {1.0f});
  EXPECT_THROW(cast_elements(f, DType::qint8, std::span(out).first(1)), UnsupportedError);
  EXPECT_THROW(cast_elements(f, DType::float8_e4m3fn, std::span(out).first(1)), UnsupportedError);
  EXPECT_THROW(cast_elements(f, DType::float64, std::span(out).first(4)), std::invalid_argument);
  // Tensor::to keeps to the floating types, with its own message.
  try {
    (void)f.to(DType::int64);
    FAIL();
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("casts are supported between float64, float32, float16 and bfloat16"),
              std::string::npos);
  }
}
