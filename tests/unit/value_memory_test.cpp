// The compact object model (include/ckpt/value.hpp): Value's size and the
// value semantics of its out-of-line alternatives, Dict's lazy hash index, and
// the pickle VM's memo and growth budget (src/pickle/unpickler.cpp).
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "ckpt/error.hpp"
#include "ckpt/value.hpp"
#include "pickle/unpickler.hpp"

using namespace ckpt;
using namespace std::string_literals;

namespace {

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

Value unpickle(const std::string& p) {
  pickle::Options o;
  o.file = "budget.pkl";
  o.record = "data.pkl";
  return pickle::unpickle(bytes_of(p), o);
}

std::string u32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[static_cast<size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// BINUNICODE of s.
std::string str_op(const std::string& s) { return "X" + u32(static_cast<uint32_t>(s.size())) + s; }

// ---------------------------------------------------------------- Value

TEST(ValueLayout, ValueIsAtMost48BytesAndDictIsSmall) {
  EXPECT_LE(sizeof(Value), 48u);
  EXPECT_LE(sizeof(Dict), 96u);
}

TEST(ValueLayout, OutOfLineTensorIsCopyOnWrite) {
  Value a(Tensor::from_bytes(DType::uint8, {2}, bytes_of("ab")));
  Value b = a;  // a copy, not a shared handle
  b.as_tensor() = Tensor::empty(DType::float32, {3, 4});
  EXPECT_EQ(a.as_tensor().sizes(), (std::vector<int64_t>{2}));
  EXPECT_EQ(b.as_tensor().sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(a.as_tensor().dtype(), DType::uint8);
  Value c;
  c = b;  // copy assignment
  EXPECT_EQ(c.as_tensor().sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_TRUE(c == b);

  Value g(Global{"collections", "OrderedDict"});
  Value h = g;
  EXPECT_EQ(h.as_global().qualified(), "collections.OrderedDict");
  EXPECT_EQ(h.hash(), g.hash());

  // Copies share the out-of-line object until one of them is written through.
  Value x(Tensor::from_bytes(DType::uint8, {2}, bytes_of("xy")));
  Value y = x;
  EXPECT_EQ(&std::as_const(x).as_tensor(), &std::as_const(y).as_tensor());
  Tensor& own = y.as_tensor();  // y gets its own copy
  EXPECT_NE(&std::as_const(x).as_tensor(), &own);
  own = Tensor::empty(DType::int64, {1});
  EXPECT_EQ(std::as_const(x).as_tensor().dtype(), DType::uint8);
  EXPECT_EQ(&y.as_tensor(), &own);  // not shared any more: no second copy

  // A moved-from Value stays usable (reads as a default object of its kind).
  Value moved = std::move(a);
  EXPECT_EQ(moved.as_tensor().sizes(), (std::vector<int64_t>{2}));
  EXPECT_TRUE(a.is_tensor());                       // NOLINT(bugprone-use-after-move): deliberate
  EXPECT_TRUE(a.as_tensor().sizes().empty());       // NOLINT(bugprone-use-after-move)
  Value again = a;                                  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(again.is_tensor());
}

// ---------------------------------------------------------------- Dict

TEST(DictIndex, SmallDictsHaveNoIndexAndLargeOnesKeepOrder) {
  Dict d;
  for (int i = 0; i < static_cast<int>(Dict::kLinearMax); ++i) d.set("k" + std::to_string(i), i);
  EXPECT_FALSE(d.indexed());
  EXPECT_EQ(d.at("k3").as_int(), 3);
  d.set("k" + std::to_string(Dict::kLinearMax), 99);
  EXPECT_TRUE(d.indexed());
  for (int i = 0; i < 1000; ++i) d.set("k" + std::to_string(i), i);
  ASSERT_EQ(d.size(), 1000u);
  size_t pos = 0;
  for (const auto& [k, v] : d) {  // insertion order; the overwritten k8 kept its place
    EXPECT_EQ(k.as_string(), "k" + std::to_string(pos));
    EXPECT_EQ(v.as_int(), static_cast<int64_t>(pos));
    ++pos;
  }
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(d.at("k" + std::to_string(i)).as_int(), i) << i;
  EXPECT_EQ(d.find("k1000"), nullptr);
  EXPECT_THROW(d.at("nope"), TypeError);
}

TEST(DictIndex, EqualKeysOfDifferentKindsAreOneKeyBeforeAndAfterTheIndex) {
  for (int fill : {0, 20}) {
    Dict d;
    for (int i = 0; i < fill; ++i) d.set(Value("s" + std::to_string(i)), i);
    d.set(Value(1), "int");
    d.set(Value(true), "bool");  // True == 1: overwrites, keeps the first key
    d.set(Value(1.0), "float");
    EXPECT_EQ(d.size(), static_cast<size_t>(fill) + 1) << fill;
    EXPECT_EQ(d.at(Value(1)).as_string(), "float");
    EXPECT_TRUE(d.items().back().first.is_int());
    d.set(Value::tuple({Value(1), Value("a")}), "t");
    EXPECT_EQ(d.at(Value::tuple({Value(true), Value("a")})).as_string(), "t");
    EXPECT_THROW(d.set(Value::list(), 1), TypeError);
  }
}

TEST(DictIndex, EraseCopyAndClearKeepLookupsRight) {
  Dict d;
  for (int i = 0; i < 40; ++i) d.set(i, i * 10);
  EXPECT_TRUE(d.erase(5));
  EXPECT_FALSE(d.erase(5));
  EXPECT_EQ(d.size(), 39u);
  EXPECT_EQ(d.find(5), nullptr);
  for (int i = 6; i < 40; ++i) ASSERT_EQ(d.at(i).as_int(), i * 10);
  d.set(5, 7);  // re-inserted at the end
  EXPECT_EQ(d.items().back().first.as_int(), 5);

  Dict copy = d;
  copy.set(1000, 1);
  EXPECT_EQ(d.find(1000), nullptr);
  EXPECT_EQ(copy.at(39).as_int(), 390);
  Dict assigned;
  assigned.set("x", 1);
  assigned = copy;
  EXPECT_EQ(assigned.find("x"), nullptr);
  EXPECT_EQ(assigned.at(1000).as_int(), 1);

  while (d.size() > 3) ASSERT_TRUE(d.erase(d.items().front().first));
  EXPECT_FALSE(d.indexed());
  EXPECT_EQ(d.at(5).as_int(), 7);
  d.clear();
  EXPECT_TRUE(d.empty());
  EXPECT_EQ(d.find(5), nullptr);
  d.set(5, 1);
  EXPECT_EQ(d.at(5).as_int(), 1);
}

TEST(DictIndex, DuplicateKeysInAPickleKeepTheFirstPositionAndTheLastValue) {
  // {k0: 0, ..., k19: 19} then SETITEMS again on k3 and k15 (as Python: the later value wins).
  std::string p = "\x80\x02}(";
  for (int i = 0; i < 20; ++i) p += str_op("k" + std::to_string(i)) + "K" + std::string(1, static_cast<char>(i));
  p += str_op("k3") + "Kd" + str_op("k15") + "Ke" + "u.";
  Value v = unpickle(p);
  const Dict& d = v.as_dict();
  ASSERT_EQ(d.size(), 20u);
  EXPECT_EQ(d.items()[3].first.as_string(), "k3");
  EXPECT_EQ(d.at("k3").as_int(), 'd');
  EXPECT_EQ(d.at("k15").as_int(), 'e');
  EXPECT_EQ(d.at("k19").as_int(), 19);
}

// ---------------------------------------------------------------- memo

TEST(UnpicklerMemo, FarAndRewrittenIndices) {
  // LONG_BINPUT at 2^32-1 (stored aside, not by growing the dense memo), a
  // rewritten slot, and dense slots around them.
  std::string p = "\x80\x02(K\x01r"s + u32(0xffffffffu) + "K\x02q\x00K\x03q\x00j"s + u32(0xffffffffu) +
                  "h\x00l."s;
  Value v = unpickle(p);
  const List& items = v.as_list();
  ASSERT_EQ(items.size(), 5u);
  EXPECT_EQ(items[3].as_int(), 1);
  EXPECT_EQ(items[4].as_int(), 3);
}

TEST(UnpicklerMemo, ReadBeforeWriteAndMemoOfAContainerShares) {
  try {
    unpickle("\x80\x02h\x05.");
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("memo entry 5 is read before it is stored"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("budget.pkl"), std::string::npos) << e.what();
  }
  // [x, x] where x = [] from the memo: one list, shared.
  Value v = unpickle("\x80\x02](]q\x00h\x00" "e."s);
  ASSERT_EQ(v.as_list().size(), 2u);
  EXPECT_EQ(v.as_list()[0].container_id(), v.as_list()[1].container_id());
}

// ---------------------------------------------------------------- growth budget

TEST(UnpicklerBudget, MemoReadsOfALongStringAreChargedBeforeTheCopy) {
  // A 64 KiB string stored once and read back 4096 times: 256 MiB of copies
  // from a pickle of 72 KiB (budget 32 MiB + 128 x 72 KiB = 41 MiB).
  std::string p = "\x80\x02(" + str_op(std::string(64 << 10, 'a')) + "q\x00"s;
  for (int i = 0; i < 4096; ++i) p += "h\x00"s;
  p += "l.";
  try {
    unpickle(p);
    FAIL() << "no error";
  } catch (const LimitError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("MiB of objects"), std::string::npos) << what;
    EXPECT_NE(what.find("budget.pkl"), std::string::npos) << what;
    ASSERT_TRUE(e.context().offset.has_value());
    EXPECT_GT(*e.context().offset, 64u << 10);  // a BINGET, not the start
    EXPECT_LT(*e.context().offset, p.size());
  }
}

TEST(UnpicklerBudget, DenseButShortPicklesFitTheBudget) {
  // 2^18 empty dicts in one list (4 bytes each) and 2^18 small ints: real
  // objects, well within 128 bytes per pickle byte.
  std::string p = "\x80\x02](";
  for (int i = 0; i < (1 << 18); ++i) p += "}K\x07";
  p += "e.";
  Value v = unpickle(p);
  EXPECT_EQ(v.as_list().size(), size_t{2} << 18);
}

}  // namespace
