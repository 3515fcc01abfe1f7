#include <gtest/gtest.h>

#include <cstring>

#include "ckpt/dtype.hpp"
#include "ckpt/error.hpp"
#include "ckpt/state_dict.hpp"
#include "ckpt/tensor.hpp"
#include "ckpt/tree.hpp"
#include "ckpt/value.hpp"

using namespace ckpt;

TEST(DType, TableLookups) {
  EXPECT_EQ(dtype_from_name("float32"), DType::float32);
  EXPECT_EQ(dtype_from_name("torch.float"), DType::float32);
  EXPECT_EQ(dtype_from_name("cdouble"), DType::complex128);
  EXPECT_EQ(dtype_from_storage_name("BFloat16Storage"), DType::bfloat16);
  EXPECT_EQ(dtype_from_safetensors("F8_E4M3"), DType::float8_e4m3fn);
  EXPECT_FALSE(dtype_from_name("float33").has_value());
  EXPECT_EQ(itemsize(DType::complex128), 16u);
  EXPECT_EQ(name(DType::bool_), "bool");
  for (size_t i = 0; i < kNumDTypes; ++i) {
    auto d = static_cast<DType>(i);
    EXPECT_EQ(dtype_from_name(name(d)), d) << name(d);
  }
}

TEST(Tensor, ViewBoundsAreChecked) {
  Storage s = Storage::allocate(4 * 6);
  EXPECT_NO_THROW(Tensor(s, DType::float32, {2, 3}, {3, 1}, 0));
  EXPECT_THROW(Tensor(s, DType::float32, {2, 3}, {3, 1}, 1), FormatError);
  EXPECT_THROW(Tensor(s, DType::float32, {2, 4}, {4, 1}, 0), FormatError);
  EXPECT_THROW(Tensor(s, DType::float32, {-1}, {1}, 0), FormatError);
  EXPECT_THROW(Tensor(s, DType::float32, {1LL << 62, 4}, {4, 1}, 0), FormatError);
  // An empty view addresses nothing, whatever its offset.
  EXPECT_NO_THROW(Tensor(s, DType::float32, {0, 3}, {3, 1}, 100));
}

TEST(Tensor, ContiguousCopyOfTransposedView) {
  std::vector<int32_t> vals = {0, 1, 2, 3, 4, 5};
  Tensor t = Tensor::from_bytes(DType::int32, {2, 3},
                                std::as_bytes(std::span<const int32_t>(vals)));
  Tensor tt(t.storage(), DType::int32, {3, 2}, {1, 3}, 0);
  EXPECT_FALSE(tt.is_contiguous());
  auto bytes = tt.contiguous_bytes();
  std::vector<int32_t> out(6);
  std::memcpy(out.data(), bytes.data(), bytes.size());
  EXPECT_EQ(out, (std::vector<int32_t>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(tt.storage(), t.storage());
}

TEST(Value, DictKeepsOrderAndPythonKeySemantics) {
  Value v = Value::dict();
  Dict& d = v.as_dict();
  d.set(Value("b"), Value(1));
  d.set(Value("a"), Value(2));
  d.set(Value(int64_t{1}), Value("one"));
  d.set(Value(true), Value("true"));  // True == 1: overwrites in place
  ASSERT_EQ(d.size(), 3u);
  EXPECT_EQ(d.items()[0].first.as_string(), "b");
  EXPECT_EQ(d.at(Value(1.0)).as_string(), "true");
  EXPECT_THROW(d.set(Value::list(), Value()), TypeError);
  EXPECT_THROW(d.at(Value("zz")), TypeError);
  EXPECT_EQ(v.repr(), "{'b': 1, 'a': 2, 1: 'true'}");
}

TEST(Value, ContainersAreShared) {
  Value a = Value::list({Value(1)});
  Value b = a;
  b.as_list().push_back(Value(2.5));
  EXPECT_EQ(a.as_list().size(), 2u);
  EXPECT_EQ(a.repr(), "[1, 2.5]");
  EXPECT_THROW(a.as_dict(), TypeError);
}

TEST(Value, BigIntDecimal) {
  // 0x1950a86a20f9469cfc6c, the legacy torch magic number
  BigInt b{{0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19}};
  EXPECT_EQ(b.to_string(), "119547037146038801333356");
  EXPECT_EQ((BigInt{{0xff}}).to_string(), "-1");
}

TEST(StateDict, RoundTripsThroughValue) {
  StateDict sd;
  sd.set("w", Tensor::empty(DType::float32, {2}));
  sd.set("b", Tensor::empty(DType::int64, {}));
  Value meta = Value::ordered_dict();
  Value v1 = Value::dict();
  v1.as_dict().set(Value("version"), Value(1));
  meta.as_dict().set(Value(""), v1);
  sd.metadata = meta;
  StateDict back = StateDict::from_value(sd.to_value());
  EXPECT_EQ(back.keys(), (std::vector<std::string>{"w", "b"}));
  EXPECT_EQ(back.metadata, meta);
  Value bad = Value::dict();
  bad.as_dict().set(Value("x"), Value(3));
  EXPECT_THROW(StateDict::from_value(bad), TypeError);
}

// The name index lives beside the items (names stored once): inserts,
// replacements in place, erases, copies and lookups of names not there.
TEST(StateDict, IndexFindsReplacesErasesAndCopies) {
  StateDict sd;
  EXPECT_EQ(sd.find("a"), nullptr);
  EXPECT_FALSE(sd.erase("a"));
  for (int i = 0; i < 1000; ++i) sd.set("layer" + std::to_string(i) + ".weight", Tensor::empty(DType::float32, {i % 7}));
  ASSERT_EQ(sd.size(), 1000u);
  EXPECT_EQ(sd.at("layer999.weight").sizes(), std::vector<int64_t>{999 % 7});
  sd.set("layer5.weight", Tensor::empty(DType::int8, {3}));  // replaced where it was
  EXPECT_EQ(sd.size(), 1000u);
  EXPECT_EQ(sd.items()[5].first, "layer5.weight");
  EXPECT_EQ(sd.items()[5].second.dtype(), DType::int8);
  EXPECT_TRUE(sd.erase("layer0.weight"));
  EXPECT_FALSE(sd.contains("layer0.weight"));
  EXPECT_EQ(sd.items()[0].first, "layer1.weight");
  EXPECT_EQ(sd.at("layer5.weight").dtype(), DType::int8);
  StateDict copy = sd;
  copy.set("extra", Tensor::empty(DType::float32, {1}));
  EXPECT_TRUE(copy.contains("layer999.weight"));
  EXPECT_FALSE(sd.contains("extra"));
  StateDict assigned;
  assigned = copy;
  EXPECT_TRUE(assigned.contains("extra"));
  StateDict moved = std::move(copy);
  EXPECT_EQ(moved.size(), 1000u);
  EXPECT_EQ(moved.find("nope"), nullptr);
  EXPECT_THROW(moved.at("nope"), TypeError);
}

TEST(StateDict, FromAnRvalueTreeMovesTheTensors) {
  StateDict sd;
  sd.set("w", Tensor::empty(DType::float32, {2, 3}));
  Value tree = sd.to_value();
  const StateDict copied = StateDict::from_value(tree);
  EXPECT_EQ(tree.as_dict().at(Value("w")).as_tensor().sizes(), (std::vector<int64_t>{2, 3}));
  const StateDict taken = StateDict::from_value(std::move(tree));
  EXPECT_EQ(taken.at("w").sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(taken.at("w").storage(), sd.at("w").storage());
  EXPECT_EQ(copied.at("w").storage(), sd.at("w").storage());
}

TEST(Tree, MutableWalkVisitsLikeTheConstOneAndCopiesSharedTensorsFirst) {
  Value root = Value::dict();
  Tensor t = Tensor::empty(DType::float32, {2});
  Value shared(t);
  root.as_dict().set(Value("a"), shared);
  Value inner = Value::list({Value(Tensor::empty(DType::int8, {1})), Value(3)});
  root.as_dict().set(Value("b"), inner);
  std::vector<std::string> paths, mutable_paths;
  for_each_tensor(root, [&](const std::string& p, const Tensor&) { paths.push_back(p); });
  for_each_mutable_tensor(root, [&](const std::string& p, Tensor& x) {
    mutable_paths.push_back(p);
    x = Tensor();  // taken
  });
  EXPECT_EQ(paths, (std::vector<std::string>{"a", "b/0"}));
  EXPECT_EQ(mutable_paths, paths);
  EXPECT_FALSE(root.as_dict().at(Value("a")).as_tensor().defined());
  EXPECT_TRUE(shared.as_tensor().defined());  // another Value's tensor is not touched
}

TEST(Error, RendersContext) {
  FormatError e("bad opcode", ErrorContext{"model.pt", "archive/data.pkl", 0x1a3});
  EXPECT_STREQ(e.what(), "model.pt: record 'archive/data.pkl': offset 0x1a3: bad opcode");
}

// Messages quote names and strings from hostile files: what() and message()
// are printable, valid UTF-8 whatever those bytes are (Python's str(), JSON
// writers and terminals take them as they are).
TEST(Error, MessagesAreEscapedToPrintableUtf8) {
  const std::string raw = std::string("key '\xb7\xff\x1b[31m\x7f' \xc2\x9b n\u00e9 \xe2\x82\xac \xf0\x9f\x98\x80") +
                          " \xed\xa0\x80 \xc0\xaf \xe2\x82 line\nnext\ttab";
  FormatError e(raw, ErrorContext{std::string("dir/m\x01.pt"), std::string("archive/d\xfe.pkl"), 4});
  EXPECT_EQ(e.message(),
            "key '\\xb7\\xff\\x1b[31m\\x7f' \\u009b n\u00e9 \xe2\x82\xac \xf0\x9f\x98\x80 "
            "\\xed\\xa0\\x80 \\xc0\\xaf \\xe2\\x82 line\nnext\ttab");
  EXPECT_EQ(std::string(e.what()), "dir/m\\x01.pt: record 'archive/d\\xfe.pkl': offset 0x4: " + e.message());
  // Context added on the way up is escaped too.
  FormatError inner("x", ErrorContext{});
  inner.add_context(ErrorContext{std::string("\x80.pt")});
  EXPECT_STREQ(inner.what(), "\\x80.pt: x");
  // Plain messages are untouched.
  EXPECT_STREQ(FormatError("plain: 'a.b' [1, 2]").what(), "plain: 'a.b' [1, 2]");
}
