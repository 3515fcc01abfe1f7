// Quantized and sparse tensors and numpy values, as the real torch 1.13 and
// 2.x write them (tests/interop/tensor_kinds.py --fixtures): listed bit-exactly
// as torch sees them, and saved back unchanged. The interop test
// tensor_kinds_* checks the same against a live torch, both directions.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <ostream>
#include <span>
#include <string>

#include "ckpt/ckpt.hpp"
#include "pickle/unpickler.hpp"
#include "test_util.hpp"

using namespace ckpt;
using ckpt::testing::data_path;
using ckpt::testing::slurp;

namespace {

struct Fixture {
  std::string version, kind, format;
  std::string path() const { return data_path("valid/" + version + "/" + kind + "_" + format + ".pt"); }
  nlohmann::json expected() const {
    return nlohmann::json::parse(
        slurp(data_path("valid/" + version + "/" + kind + "_" + format + ".expected.json")));
  }
};

std::string fixture_name(const ::testing::TestParamInfo<Fixture>& i) {
  return i.param.version + "_" + i.param.kind + "_" + i.param.format;
}

// Short names in test listings (and ctest), not a byte dump.
void PrintTo(const Fixture& f, std::ostream* os) { *os << f.version << "/" << f.kind << "_" << f.format; }

class TensorKinds : public ::testing::TestWithParam<Fixture> {};
class SparseFixtures : public TensorKinds {};
class NumpyFixtures : public TensorKinds {};

LoadOptions options_for(const Fixture& f) {
  LoadOptions o;
  o.numpy = f.kind == "numpy";
  return o;
}

TEST_P(TensorKinds, ListedAsTorchSeesThem) {
  const Fixture& f = GetParam();
  const Value root = load(f.path(), options_for(f));
  const auto exp = f.expected();
  size_t i = 0;
  for_each_tensor(root, [&](const std::string& path, const Tensor& t) {
    ASSERT_LT(i, exp["tensors"].size()) << path;
    const auto& e = exp["tensors"][i++];
    EXPECT_EQ(path, e["path"].get<std::string>());
    EXPECT_EQ(std::string(name(t.dtype())), e["dtype"].get<std::string>()) << path;
    EXPECT_EQ(t.sizes(), e["shape"].get<std::vector<int64_t>>()) << path;
    EXPECT_EQ(tensor_sha256(t), e["sha256"].get<std::string>()) << path;
    const Quantization* q = t.quantization();
    ASSERT_EQ(q != nullptr, e.contains("quantization")) << path;
    if (q == nullptr) return;
    const auto& eq = e["quantization"];
    EXPECT_EQ(q->scheme, eq["scheme"].get<std::string>()) << path;
    if (q->per_channel()) {
      EXPECT_EQ(q->axis, eq["axis"].get<int64_t>()) << path;
      EXPECT_EQ(tensor_sha256(q->scales), eq["scales_sha256"].get<std::string>()) << path;
      EXPECT_EQ(tensor_sha256(q->zero_points), eq["zero_points_sha256"].get<std::string>()) << path;
    } else {
      EXPECT_EQ(q->scale, eq["scale"].get<double>()) << path;
      EXPECT_EQ(q->zero_point, eq["zero_point"].get<int64_t>()) << path;
    }
  });
  EXPECT_EQ(i, exp["tensors"].size());

  if (f.kind != "numpy") return;
  for (const auto& [key, want] : exp["scalars"].items()) {
    const Value& v = root.as_dict().at(Value(key));
    if (want.is_boolean()) {
      EXPECT_TRUE(v.is_bool()) << key;
      EXPECT_EQ(v.as_bool(), want.get<bool>()) << key;
    } else if (want.is_string()) {  // an integer, as decimal text
      EXPECT_EQ(v.is_int() ? std::to_string(v.as_int()) : v.as_bigint().to_string(), want.get<std::string>()) << key;
    } else if (want.is_array()) {
      EXPECT_EQ(v.as_complex(), std::complex<double>(want[0].get<double>(), want[1].get<double>())) << key;
    } else {
      EXPECT_TRUE(v.is_float()) << key;
      EXPECT_EQ(v.as_float(), want.get<double>()) << key;
    }
  }
}

TEST_P(TensorKinds, SavedBackUnchanged) {
  const Fixture& f = GetParam();
  const Value root = load(f.path(), options_for(f));
  const std::string bytes = save_to_buffer(root);
  const Value back = load(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
  EXPECT_TRUE(back == root) << f.path();
}

TEST_P(SparseFixtures, SparseTensorsKeepTheirParts) {
  const Fixture& f = GetParam();
  const Value root = load(f.path());
  auto coo = as_sparse(root.as_dict().at(Value("coo")));
  ASSERT_TRUE(coo);
  EXPECT_EQ(coo->layout, "sparse_coo");
  EXPECT_EQ(coo->sizes, (std::vector<int64_t>{4, 6}));
  ASSERT_EQ(coo->parts.size(), 2u);
  EXPECT_EQ(coo->parts[0].first, "indices");
  auto csr = as_sparse(root.as_dict().at(Value("csr")));
  ASSERT_TRUE(csr);
  EXPECT_EQ(csr->layout, "sparse_csr");
  EXPECT_EQ(csr->parts[0].second.sizes(), (std::vector<int64_t>{5}));  // crow_indices: rows + 1
  EXPECT_FALSE(as_sparse(root));
}

TEST_P(NumpyFixtures, NumpyNeedsTheOption) {
  const Fixture& f = GetParam();
  try {
    (void)load(f.path());
    FAIL() << "expected UnsafeError";
  } catch (const UnsafeError& e) {
    EXPECT_NE(std::string(e.what()).find("--numpy"), std::string::npos) << e.what();
  }
  LoadOptions o;
  o.weights_only = false;  // inert objects, not decoded
  const Value root = load(f.path(), o);
  EXPECT_TRUE(root.as_dict().at(Value("f32")).is_object());
}

std::vector<Fixture> fixtures(std::vector<const char*> kinds) {
  std::vector<Fixture> out;
  for (const char* v : {"torch113", "torch2"})
    for (const char* k : kinds)
      for (const char* fmt : {"zip", "legacy"}) out.push_back({v, k, fmt});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Torch, TensorKinds, ::testing::ValuesIn(fixtures({"quantized", "sparse", "numpy"})),
                         fixture_name);
INSTANTIATE_TEST_SUITE_P(Torch, SparseFixtures, ::testing::ValuesIn(fixtures({"sparse"})), fixture_name);
INSTANTIATE_TEST_SUITE_P(Torch, NumpyFixtures, ::testing::ValuesIn(fixtures({"numpy"})), fixture_name);

// numpy pickles that lie: refused with a clear error, nothing allocated beyond the file.
Value unpickle_numpy(const std::string& p) {
  pickle::Options o;
  o.numpy = true;
  o.file = "test.pkl";
  return pickle::unpickle(std::as_bytes(std::span<const char>(p.data(), p.size())), o);
}

// _reconstruct(ndarray, (0,), b'b') + BUILD (1, SHAPE, dtype(CODE), False, DATA)
std::string array_pickle(const std::string& code, const std::string& shape_ops, const std::string& data) {
  using namespace std::string_literals;  // the literals hold NULs
  std::string s = "\x80\x02" "cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" "C\x01" "b\x87R"s;
  s += "(K\x01" + shape_ops;
  s += "cnumpy\ndtype\nX" + std::string(1, static_cast<char>(code.size())) + std::string(3, '\0') + code + "\x89\x88\x87R";
  static const char kDtypeState[] = "(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb";
  s.append(kDtypeState, sizeof kDtypeState - 1);
  s += "\x89" "C" + std::string(1, static_cast<char>(data.size())) + data + "tb.";
  return s;
}

TEST(NumpyDecode, HandMadeArrayDecodes) {
  Value v = unpickle_numpy(array_pickle("i2", std::string("K\x02\x85", 3), std::string("\x01\x00\x02\x00", 4)));
  ASSERT_TRUE(v.is_tensor());
  EXPECT_EQ(v.as_tensor().dtype(), DType::int16);
  EXPECT_EQ(v.as_tensor().sizes(), (std::vector<int64_t>{2}));
}

TEST(NumpyDecode, WrongByteCountIsAFormatError) {
  try {
    unpickle_numpy(array_pickle("f4", std::string("K\x03\x85", 3), "12345678"));
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("needs 12 bytes, the pickle has 8"), std::string::npos) << e.what();
  }
}

TEST(NumpyDecode, UnsupportedDtypesAreNamed) {
  try {
    unpickle_numpy(array_pickle("U4", std::string("K\x01\x85", 3), "abcd"));
    FAIL();
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("'U4'"), std::string::npos) << e.what();
  }
}

TEST(NumpyDecode, ArraySubclassesAreRefused) {
  std::string p = array_pickle("i2", std::string("K\x01\x85", 3), std::string("\x01\x00", 2));
  p.replace(p.find("ndarray"), 7, "matrix\n");  // numpy.matrix: not numpy.ndarray
  p.erase(p.find("matrix\n") + 7, 1);
  EXPECT_THROW(unpickle_numpy(p), UnsafeError);
}

}  // namespace
