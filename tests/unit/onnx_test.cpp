// ONNX initializers (src/formats/onnx.cpp): models built byte by byte here,
// so every field encoding, hostile length and truncation is exercised
// without the Python onnx package (tests/interop/onnx_interop.py uses it).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fcntl.h>
#include <unistd.h>

#include "ckpt/ckpt.hpp"
#include "formats/onnx.hpp"
#include "test_util.hpp"

using namespace ckpt;
using ckpt::testing::slurp;
using ckpt::testing::TempDir;
using ckpt::testing::write_file;

namespace {

// ---------------------------------------------------------------- a tiny protobuf writer

std::string varint(uint64_t v) {
  std::string s;
  formats::append_varint(s, v);
  return s;
}
std::string tag(uint32_t field, int wire) { return varint((uint64_t{field} << 3) | static_cast<uint64_t>(wire)); }
std::string vfield(uint32_t field, uint64_t v) { return tag(field, 0) + varint(v); }
std::string lfield(uint32_t field, const std::string& payload) { return tag(field, 2) + varint(payload.size()) + payload; }
template <class T>
std::string le(T v) {
  std::string s(sizeof v, '\0');
  std::memcpy(s.data(), &v, sizeof v);
  return s;
}

struct TensorSpec {
  std::string name;
  int32_t data_type = 1;
  std::vector<int64_t> dims;
  std::string extra;  // data fields
};

std::string tensor(const TensorSpec& t) {
  std::string s;
  for (int64_t d : t.dims) s += vfield(1, static_cast<uint64_t>(d));
  s += vfield(2, static_cast<uint64_t>(t.data_type));
  s += lfield(8, t.name);
  s += t.extra;
  return s;
}

std::string model(const std::vector<std::string>& tensors, const std::string& graph_extra = "") {
  std::string g = lfield(1, lfield(4, "Identity") + lfield(1, "x") + lfield(2, "y"));  // a node
  g += lfield(2, "main");
  for (const auto& t : tensors) g += lfield(5, t);
  g += graph_extra;
  std::string m = vfield(1, 8);                    // ir_version
  m += lfield(2, "ckpt-test");                     // producer_name
  m += lfield(7, g);                               // graph
  m += lfield(8, lfield(1, "") + vfield(2, 17));   // opset_import
  return m;
}

std::string ext_entry(const std::string& k, const std::string& v) { return lfield(13, lfield(1, k) + lfield(2, v)); }

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

StateDict load_bytes(const std::string& s) { return load_state_dict(as_bytes(s)); }

std::string raw_floats(std::initializer_list<float> v) {
  std::string s;
  for (float f : v) s += le(f);
  return s;
}

template <class T>
std::vector<T> values(const Tensor& t) {
  std::vector<T> out(static_cast<size_t>(t.numel()));
  std::memcpy(out.data(), t.data(), t.nbytes());
  return out;
}

// ---------------------------------------------------------------- reading

TEST(Onnx, DetectsAndReadsRawData) {
  std::string m = model({tensor({"fc.weight", 1, {2, 2}, lfield(9, raw_floats({1, 2, 3, 4}))}),
                         tensor({"fc.bias", 1, {2}, lfield(9, raw_floats({-1, 0.5}))})});
  EXPECT_EQ(detect_format(as_bytes(m)), Format::onnx);
  EXPECT_EQ(format_name(Format::onnx), "onnx");
  StateDict sd = load_bytes(m);
  ASSERT_EQ(sd.keys(), (std::vector<std::string>{"fc.weight", "fc.bias"}));  // graph order
  EXPECT_EQ(sd.at("fc.weight").sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(values<float>(sd.at("fc.weight")), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(values<float>(sd.at("fc.bias")), (std::vector<float>{-1, 0.5}));
}

TEST(Onnx, TypedFields) {
  // float_data packed; int32_data carrying float16 bits, int8 (negative,
  // sign-extended varints) and bool; int64_data unpacked; double_data;
  // uint64_data for uint32.
  std::string p16 = varint(0x3c00) + varint(0xc000);
  std::string p8 = varint(static_cast<uint64_t>(int64_t{-5})) + varint(7);
  std::string m = model({
      tensor({"f32", 1, {3}, lfield(4, raw_floats({1.5f, -2, 3}))}),
      tensor({"f16", 10, {2}, lfield(5, p16)}),
      tensor({"i8", 3, {2}, lfield(5, p8)}),
      tensor({"b", 9, {3}, lfield(5, varint(1) + varint(0) + varint(1))}),
      tensor({"i64", 7, {2}, vfield(7, static_cast<uint64_t>(int64_t{-3})) + vfield(7, 1ull << 40)}),
      tensor({"f64", 11, {1}, lfield(10, le(2.25))}),
      tensor({"u32", 12, {1}, lfield(11, varint(0xfffffffful))}),
      tensor({"bf16", 16, {1}, lfield(5, varint(0x3f80))}),
      tensor({"empty", 1, {0, 3}, ""}),
  });
  StateDict sd = load_bytes(m);
  EXPECT_EQ(values<float>(sd.at("f32")), (std::vector<float>{1.5f, -2, 3}));
  EXPECT_EQ(sd.at("f16").dtype(), DType::float16);
  EXPECT_EQ(values<uint16_t>(sd.at("f16")), (std::vector<uint16_t>{0x3c00, 0xc000}));
  EXPECT_EQ(values<int8_t>(sd.at("i8")), (std::vector<int8_t>{-5, 7}));
  EXPECT_EQ(values<uint8_t>(sd.at("b")), (std::vector<uint8_t>{1, 0, 1}));
  EXPECT_EQ(values<int64_t>(sd.at("i64")), (std::vector<int64_t>{-3, int64_t{1} << 40}));
  EXPECT_EQ(values<double>(sd.at("f64")), (std::vector<double>{2.25}));
  EXPECT_EQ(values<uint32_t>(sd.at("u32")), (std::vector<uint32_t>{0xffffffffu}));
  EXPECT_EQ(sd.at("bf16").dtype(), DType::bfloat16);
  EXPECT_EQ(values<uint16_t>(sd.at("bf16")), (std::vector<uint16_t>{0x3f80}));
  EXPECT_EQ(sd.at("empty").numel(), 0);
  EXPECT_EQ(sd.at("empty").sizes(), (std::vector<int64_t>{0, 3}));
}

TEST(Onnx, MmapViewsWhenAligned) {
  TempDir dir;
  // Pad the producer name so raw_data lands on a 4-byte boundary.
  for (int pad = 0; pad < 4; ++pad) {
    std::string m = model({tensor({"w", 1, {4}, lfield(9, raw_floats({1, 2, 3, 4}))})}, lfield(10, std::string(size_t(pad), 'x')));
    std::string path = dir / ("m" + std::to_string(pad) + ".onnx");
    write_file(path, m);
    Reader r = open(path);
    EXPECT_EQ(r.format(), Format::onnx);
    Tensor t = r.get("w");
    EXPECT_EQ(values<float>(t), (std::vector<float>{1, 2, 3, 4}));
    const size_t at = m.find(raw_floats({1, 2, 3, 4}));
    if (at % 4 == 0) {
      EXPECT_EQ(t.storage().backing(), Storage::Backing::mapped);
      EXPECT_EQ(r.info("w").file_offset, static_cast<int64_t>(at));
    } else {
      EXPECT_EQ(t.storage().backing(), Storage::Backing::owned);
    }
  }
}

TEST(Onnx, ExternalData) {
  TempDir dir;
  std::string data = std::string(16, '\0') + raw_floats({5, 6, 7});
  write_file(dir / "weights.bin", data);
  std::string m = model({tensor({"w", 1, {3}, ext_entry("location", "weights.bin") + ext_entry("offset", "16") +
                                                  ext_entry("length", "12") + vfield(14, 1)})});
  write_file(dir / "m.onnx", m);
  for (bool mmap : {false, true}) {
    LoadOptions o;
    o.mmap = mmap;
    StateDict sd = load_state_dict(dir / "m.onnx", o);
    EXPECT_EQ(values<float>(sd.at("w")), (std::vector<float>{5, 6, 7}));
    EXPECT_EQ(sd.at("w").storage().backing(), mmap ? Storage::Backing::mapped : Storage::Backing::owned);
  }
  // From a buffer there is no folder to resolve the location against.
  EXPECT_THROW(load_bytes(m), FormatError);
}

TEST(Onnx, ExternalDataRefusedOutsideFolder) {
  TempDir dir;
  std::filesystem::create_directory(dir / "sub");
  write_file(dir / "secret.bin", raw_floats({1, 2, 3}));
  std::filesystem::create_symlink(dir / "secret.bin", dir / "sub/link.bin");
  for (const std::string& loc : std::vector<std::string>{"../secret.bin", dir / "secret.bin", "link.bin", "a/../../secret.bin"}) {
    std::string m = model({tensor({"w", 1, {3}, ext_entry("location", loc) + vfield(14, 1)})});
    write_file(dir / "sub/m.onnx", m);
    try {
      (void)load_state_dict(dir / "sub/m.onnx");
      ADD_FAILURE() << loc << " was accepted";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("folder"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
    }
  }
}

TEST(Onnx, ExternalDataPastEndAndLengthMismatch) {
  TempDir dir;
  write_file(dir / "w.bin", raw_floats({1, 2}));
  write_file(dir / "a.onnx", model({tensor({"w", 1, {3}, ext_entry("location", "w.bin") + vfield(14, 1)})}));
  EXPECT_THROW((void)load_state_dict(dir / "a.onnx"), FormatError);
  write_file(dir / "b.onnx", model({tensor({"w", 1, {2}, ext_entry("location", "w.bin") + ext_entry("length", "4") +
                                                             vfield(14, 1)})}));
  EXPECT_THROW((void)load_state_dict(dir / "b.onnx"), FormatError);
  // Offsets beyond 32 bits are carried as such (and here pass the end).
  write_file(dir / "c.onnx", model({tensor({"w", 1, {2}, ext_entry("location", "w.bin") +
                                                             ext_entry("offset", "6000000000") + vfield(14, 1)})}));
  try {
    (void)load_state_dict(dir / "c.onnx");
    ADD_FAILURE();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("6000000000"), std::string::npos) << e.what();
  }
}

TEST(Onnx, LargeOffsetsInSparseExternalFile) {
  // A tensor 5 GB into a sparse external file: no 32-bit offset anywhere.
  TempDir dir;
  const uint64_t off = 5'000'000'000ull;
  int fd = ::open((dir / "big.bin").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  std::string payload = raw_floats({9, 8});
  bool ok = ::pwrite(fd, payload.data(), payload.size(), static_cast<off_t>(off)) == static_cast<ssize_t>(payload.size());
  ::close(fd);
  if (!ok) GTEST_SKIP() << "the file system has no sparse files of this size";
  write_file(dir / "m.onnx", model({tensor({"w", 1, {2}, ext_entry("location", "big.bin") +
                                                             ext_entry("offset", std::to_string(off)) + vfield(14, 1)})}));
  StateDict sd = load_state_dict(dir / "m.onnx");
  EXPECT_EQ(values<float>(sd.at("w")), (std::vector<float>{9, 8}));
}

TEST(Onnx, ParsesLengthsAsSixtyFourBit) {
  // A length-delimited field claiming 2^33 + 5 bytes must be reported as
  // such, not wrapped to 5.
  std::string m = vfield(1, 8) + tag(7, 2) + varint((1ull << 33) + 5) + std::string(5, '\0');
  try {
    (void)formats::parse_onnx(as_bytes(m), "t.onnx");
    ADD_FAILURE();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("8589934597"), std::string::npos) << e.what();
  }
}

TEST(Onnx, HostileAndTruncated) {
  std::string good = model({tensor({"w", 1, {2}, lfield(9, raw_floats({1, 2}))})});
  ASSERT_NO_THROW(load_bytes(good));
  // Every truncation is an error, except cutting exactly the trailing
  // opset_import field (6 bytes), which leaves a smaller valid message.
  const size_t graph_end = good.size() - 6;
  for (size_t n = 1; n < good.size(); ++n) {
    std::string cut = good.substr(0, n);
    if (n != graph_end) {
      EXPECT_THROW((void)formats::parse_onnx(as_bytes(cut), "<memory>"), FormatError) << n;
    } else {
      EXPECT_EQ(values<float>(load_bytes(cut).at("w")), (std::vector<float>{1, 2})) << n;
    }
  }
  auto refused = [](const std::string& m) {
    EXPECT_THROW(load_bytes(m), Error) << "accepted";
  };
  refused(model({tensor({"w", 1, {3}, lfield(9, raw_floats({1, 2}))})}));             // raw_data too short
  refused(model({tensor({"w", 1, {2}, lfield(4, raw_floats({1, 2, 3}))})}));          // too many values
  refused(model({tensor({"w", 1, {-1}, ""})}));                                       // negative dim
  refused(model({tensor({"w", 1, {1ll << 40, 1ll << 40}, ""})}));                     // overflow
  refused(model({tensor({"w", 1, {2}, ""})}));                                        // no data
  refused(model({tensor({"w", 8, {1}, lfield(6, "abc")})}));                         // STRING
  refused(model({tensor({"w", 21, {2}, lfield(9, "a")})}));                           // UINT4
  refused(model({tensor({"", 1, {1}, lfield(9, raw_floats({1}))})}));                 // no name
  refused(model({tensor({"w", 1, {1}, lfield(9, raw_floats({1}))}),
                 tensor({"w", 1, {1}, lfield(9, raw_floats({1}))})}));                // duplicate
  refused(model({tensor({"w", 1, {1}, lfield(5, varint(1))})}));                     // float in int32_data
  refused(model({tensor({"w", 1, {1}, vfield(14, 1)})}));                             // external without location
  refused(vfield(1, 8) + tag(7, 3));                                                  // group wire type
  refused(vfield(1, 8) + lfield(2, "x") + tag(7, 2) + std::string(11, '\xff'));       // overlong varint
  refused(vfield(1, 8) + lfield(2, "x"));                                             // no graph
  refused(vfield(1, 8) + lfield(2, "x") + lfield(7, lfield(5, tag(1, 1))));           // truncated fixed64
  refused(model({tensor({"w", 1, {1}, tag(1, 5) + le(uint32_t{1}) + lfield(9, raw_floats({1}))})}));  // dims as fixed32
}

// ---------------------------------------------------------------- refresh

TEST(Onnx, RefreshReplacesOnlyTheData) {
  TempDir dir;
  std::string m = model({tensor({"a", 1, {2}, lfield(9, raw_floats({1, 2}))}),
                         tensor({"typed", 1, {2}, lfield(4, raw_floats({3, 4})) + lfield(12, "doc")}),
                         tensor({"kept", 1, {1}, lfield(9, raw_floats({9}))})});
  write_file(dir / "t.onnx", m);
  StateDict w;
  w.set("a", Tensor::from_bytes(DType::float32, {2}, as_bytes(raw_floats({10, 20}))));
  w.set("typed", Tensor::from_bytes(DType::float32, {2}, as_bytes(raw_floats({30, 40}))));
  w.set("other", Tensor::from_bytes(DType::float32, {1}, as_bytes(raw_floats({0}))));
  OnnxRefreshResult r = refresh_onnx_weights(dir / "t.onnx", w, dir / "o.onnx");
  EXPECT_EQ(r.replaced, (std::vector<std::string>{"a", "typed"}));
  EXPECT_EQ(r.unused, (std::vector<std::string>{"other"}));
  EXPECT_FALSE(std::filesystem::exists(dir / "o.onnx.data"));
  StateDict sd = load_state_dict(dir / "o.onnx");
  EXPECT_EQ(values<float>(sd.at("a")), (std::vector<float>{10, 20}));
  EXPECT_EQ(values<float>(sd.at("typed")), (std::vector<float>{30, 40}));
  EXPECT_EQ(values<float>(sd.at("kept")), (std::vector<float>{9}));
  // raw_data replaced in place: same size, only those bytes differ; the
  // template is unchanged.
  std::string o = slurp(dir / "o.onnx");
  EXPECT_EQ(slurp(dir / "t.onnx"), m);
  std::string expected = model({tensor({"a", 1, {2}, lfield(9, raw_floats({10, 20}))}),
                                tensor({"typed", 1, {2}, lfield(9, raw_floats({30, 40})) + lfield(12, "doc")}),
                                tensor({"kept", 1, {1}, lfield(9, raw_floats({9}))})});
  EXPECT_EQ(o, expected);
}

TEST(Onnx, RefreshMismatchWritesNothing) {
  TempDir dir;
  write_file(dir / "t.onnx", model({tensor({"a", 1, {2}, lfield(9, raw_floats({1, 2}))})}));
  StateDict w;
  w.set("a", Tensor::from_bytes(DType::float32, {1, 2}, as_bytes(raw_floats({1, 2}))));
  try {
    refresh_onnx_weights(dir / "t.onnx", w, dir / "o.onnx");
    ADD_FAILURE();
  } catch (const TypeError& e) {
    EXPECT_NE(std::string(e.what()).find("shape mismatch for 'a'"), std::string::npos) << e.what();
  }
  w.set("a", Tensor::from_bytes(DType::float64, {1}, as_bytes(le(1.0))));
  EXPECT_THROW(refresh_onnx_weights(dir / "t.onnx", w, dir / "o.onnx"), TypeError);
  EXPECT_FALSE(std::filesystem::exists(dir / "o.onnx"));
  EXPECT_THROW(refresh_onnx_weights(dir / "t.onnx", {}, dir / "t.onnx"), Error);  // never in place
}

TEST(Onnx, RefreshExternalData) {
  TempDir dir;
  std::string data = raw_floats({1, 2, 3}) + std::string(4, 'p') + raw_floats({4, 5});
  write_file(dir / "t.onnx.data", data);
  std::string m = model({tensor({"x", 1, {3}, ext_entry("location", "t.onnx.data") + ext_entry("offset", "0") +
                                                  ext_entry("length", "12") + vfield(14, 1)}),
                         tensor({"y", 1, {2}, ext_entry("location", "t.onnx.data") + ext_entry("offset", "16") +
                                                  ext_entry("length", "8") + vfield(14, 1)})});
  write_file(dir / "t.onnx", m);
  StateDict w;
  w.set("y", Tensor::from_bytes(DType::float32, {2}, as_bytes(raw_floats({40, 50}))));
  OnnxRefreshResult r = refresh_onnx_weights(dir / "t.onnx", w, dir / "o.onnx");
  EXPECT_EQ(r.written, (std::vector<std::string>{dir / "o.onnx.data", dir / "o.onnx"}));
  EXPECT_EQ(slurp(dir / "t.onnx.data"), data);  // the template's data untouched
  EXPECT_EQ(slurp(dir / "o.onnx.data"), raw_floats({1, 2, 3}) + std::string(4, 'p') + raw_floats({40, 50}));
  StateDict sd = load_state_dict(dir / "o.onnx");
  EXPECT_EQ(values<float>(sd.at("x")), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(values<float>(sd.at("y")), (std::vector<float>{40, 50}));
  EXPECT_NE(slurp(dir / "o.onnx").find("o.onnx.data"), std::string::npos);
  // Into another folder: the data file goes next to the output.
  std::filesystem::create_directory(dir / "out");
  refresh_onnx_weights(dir / "t.onnx", w, dir / "out/n.onnx");
  EXPECT_EQ(values<float>(load_state_dict(dir / "out/n.onnx").at("y")), (std::vector<float>{40, 50}));
}

TEST(Onnx, RefreshSeveralExternalFiles) {
  TempDir dir;
  write_file(dir / "x.bin", raw_floats({1, 2, 3}));
  write_file(dir / "y.bin", raw_floats({4, 5}));
  write_file(dir / "t.onnx", model({tensor({"x", 1, {3}, ext_entry("location", "x.bin") + vfield(14, 1)}),
                                    tensor({"y", 1, {2}, ext_entry("location", "y.bin") + vfield(14, 1)})}));
  StateDict w;
  w.set("x", Tensor::from_bytes(DType::float32, {3}, as_bytes(raw_floats({7, 8, 9}))));
  refresh_onnx_weights(dir / "t.onnx", w, dir / "o.onnx");
  StateDict sd = load_state_dict(dir / "o.onnx");
  EXPECT_EQ(values<float>(sd.at("x")), (std::vector<float>{7, 8, 9}));
  EXPECT_EQ(values<float>(sd.at("y")), (std::vector<float>{4, 5}));
}

}  // namespace

// Found by fuzz_onnx: dims declaring ~40 GB with a few bytes of typed data
// allocated the 40 GB before noticing. Refused before any allocation now.
TEST(Onnx, TypedFieldTooShortForItsDimsIsRefusedBeforeAllocating) {
  for (const auto& [type, field, payload] : std::vector<std::tuple<int32_t, uint32_t, std::string>>{
           {1, 4, raw_floats({1, 2})},           // float_data: 4 bytes per value
           {11, 10, le(1.0) + le(2.0)},          // double_data: 8 bytes per value
           {6, 5, varint(1) + varint(2)},        // int32_data varints: >= 1 byte per value
           {14, 4, raw_floats({1, 2, 3})}}) {    // complex64: two floats per value
    std::string m = model({tensor({"w", type, {100000, 100000}, lfield(field, payload)})});
    try {
      load_bytes(m);
      FAIL() << "type " << type << ": accepted";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("cannot hold"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
    }
  }
  // Two complex64 values need four floats: three are refused.
  std::string m = model({tensor({"c", 14, {2}, lfield(4, raw_floats({1, 2, 3}))})});
  EXPECT_THROW(load_bytes(m), FormatError);
}
