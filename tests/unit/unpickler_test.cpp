// The safe pickle VM (src/pickle/unpickler.cpp) on pickles written by CPython
// and torch (tests/unit/unpickler_vectors.inc, made by
// tests/data/make_pickle_vectors.py) and on hand-assembled ones.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "ckpt/error.hpp"
#include "ckpt/sparse.hpp"
#include "pickle/unpickler.hpp"

using namespace ckpt;
using ckpt::pickle::GlobalPolicy;

namespace {

#include "unpickler_vectors.inc"

// ---------------------------------------------------------------- helpers

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

pickle::Options opts(GlobalPolicy policy = GlobalPolicy::weights_only) {
  pickle::Options o;
  o.policy = policy;
  o.file = "t.pkl";
  o.record = "data.pkl";
  return o;
}

Value load(const std::string& p, const pickle::Options& o = opts()) { return pickle::unpickle(bytes_of(p), o); }
Value inspect(const std::string& p) { return load(p, opts(GlobalPolicy::inspect)); }

// what() of the error of exactly type E (or a subclass) that loading throws.
template <typename E = Error>
std::string error_of(const std::string& p, const pickle::Options& o = opts()) {
  try {
    load(p, o);
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
    return "<wrong exception type>";
  }
  ADD_FAILURE() << "loaded without an error";
  return "<no error>";
}

template <typename E = Error>
std::optional<uint64_t> error_offset(const std::string& p, const pickle::Options& o = opts()) {
  try {
    load(p, o);
  } catch (const E& e) {
    return e.context().offset;
  }
  ADD_FAILURE() << "loaded without an error";
  return std::nullopt;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
#define EXPECT_CONTAINS(s, part) EXPECT_TRUE(contains((s), (part))) << "in: " << (s)

// Hand-assembles pickles, named after pickletools' opcode names.
class P {
 public:
  P& raw(std::string_view b) { s_ += b; return *this; }
  P& op(uint8_t o) { s_ += static_cast<char>(o); return *this; }
  P& proto(int v) { return op(0x80).op(static_cast<uint8_t>(v)); }
  P& u16(uint16_t v) { return le(v, 2); }
  P& u32(uint32_t v) { return le(v, 4); }
  P& u64(uint64_t v) { return le(v, 8); }
  P& le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) s_ += static_cast<char>((v >> (8 * i)) & 0xff);
    return *this;
  }
  P& mark() { return op('('); }
  P& stop() { return op('.'); }
  P& none() { return op('N'); }
  P& binint1(uint8_t v) { return op('K').op(v); }
  P& binint(int32_t v) { return op('J').u32(static_cast<uint32_t>(v)); }
  P& binunicode(std::string_view s) { return op('X').u32(static_cast<uint32_t>(s.size())).raw(s); }
  P& short_binunicode(std::string_view s) { return op(0x8c).op(static_cast<uint8_t>(s.size())).raw(s); }
  P& global(std::string_view module, std::string_view name) {
    last_global_ = s_.size();
    return op('c').raw(module).raw("\n").raw(name).raw("\n");
  }
  P& stack_global() { last_global_ = s_.size(); return op(0x93); }
  P& empty_list() { return op(']'); }
  P& empty_tuple() { return op(')'); }
  P& empty_dict() { return op('}'); }
  P& tuple() { return op('t'); }
  P& tuple1() { return op(0x85); }
  P& tuple2() { return op(0x86); }
  P& reduce() { return op('R'); }
  P& build() { return op('b'); }
  P& append() { return op('a'); }
  P& appends() { return op('e'); }
  P& setitem() { return op('s'); }
  P& setitems() { return op('u'); }
  P& binput(uint8_t i) { return op('q').op(i); }
  P& binget(uint8_t i) { return op('h').op(i); }
  P& binpersid() { return op('Q'); }
  size_t size() const { return s_.size(); }
  size_t last_global() const { return last_global_; }
  const std::string& str() const { return s_; }
  operator std::string() const { return s_; }

 private:
  std::string s_;
  size_t last_global_ = 0;
};

struct Recorder : pickle::Observer {
  std::vector<pickle::Event> events;
  void on_event(const pickle::Event& e) override { events.push_back(e); }
  std::string kinds() const {
    static const char* names[] = {"global", "reduce", "build", "newobj", "newobj_ex", "inst", "obj", "persid", "ext"};
    std::string out;
    for (const auto& e : events) {
      if (!out.empty()) out += " ";
      out += names[static_cast<int>(e.kind)];
      if (!e.module.empty()) out += ":" + e.module + "." + e.name;
      if (!e.allowed) out += "!";
    }
    return out;
  }
};

// torch's persistent_load for the zip format, against fake storages: pid =
// ('storage', storage class, key, location, numel). Storages are filled with
// bytes 0, 1, 2, ... so that views can be checked.
struct StorageLoader {
  std::vector<std::string> pids;
  std::map<std::string, StorageValue> by_key;
  Value operator()(const Value& pid, uint64_t) {
    pids.push_back(pid.repr());
    const List& t = pid.as_tuple();
    const Global& cls = t[1].as_global();
    DType dtype = cls.name == "UntypedStorage" ? DType::uint8 : *dtype_from_storage_name(cls.name);
    auto it = by_key.find(t[2].as_string());
    if (it != by_key.end()) return Value(it->second);
    size_t nbytes = static_cast<size_t>(t[4].as_int()) * itemsize(dtype);
    Storage s = Storage::allocate(nbytes);
    for (size_t i = 0; i < nbytes; ++i) s.mutable_data()[i] = static_cast<std::byte>(i & 0xff);
    StorageValue sv{s, dtype, t[3].as_string()};
    by_key.emplace(t[2].as_string(), sv);
    return Value(sv);
  }
};

Value load_torch(const std::string& p, StorageLoader& loader, GlobalPolicy policy = GlobalPolicy::weights_only,
                 pickle::Observer* observer = nullptr) {
  pickle::Options o = opts(policy);
  o.persistent_load = [&loader](const Value& pid, uint64_t off) { return loader(pid, off); };
  o.observer = observer;
  return load(p, o);
}

// A storage-backed 2x2 float32 tensor: _rebuild_tensor_v2(pid, offset, (2, 2), (2, 1), False, OrderedDict()).
P rebuild_v2_pickle(int offset = 0, int numel = 4) {
  P p;
  p.proto(2).global("torch._utils", "_rebuild_tensor_v2").mark();
  p.mark().binunicode("storage").global("torch", "FloatStorage").binunicode("0").binunicode("cpu").binint1(
      static_cast<uint8_t>(numel));
  p.tuple().binpersid().binint1(static_cast<uint8_t>(offset));
  p.binint1(2).binint1(2).tuple2().binint1(2).binint1(1).tuple2().op(0x89);
  p.global("collections", "OrderedDict").empty_tuple().reduce().tuple();
  return p;
}

// ---------------------------------------------------------------- CPython pickles, protocols 0-5

const std::string* const kNested[] = {&kNestedP0, &kNestedP1, &kNestedP2, &kNestedP3, &kNestedP4, &kNestedP5};

TEST(UnpicklerProtocols, NestedStructureAtEveryProtocol) {
  std::string first_repr;
  for (int proto = 0; proto <= 5; ++proto) {
    SCOPED_TRACE("protocol " + std::to_string(proto));
    Value v = load(*kNested[proto]);
    ASSERT_TRUE(v.is_dict());
    const Dict& d = v.as_dict();
    EXPECT_FALSE(d.ordered);
    EXPECT_EQ(d.at(Value("ints")).repr(),
              "[0, 1, -1, 255, 256, 65535, 65536, 2147483647, -2147483648, 2147483648, -2147483649, "
              "9223372036854775807, -9223372036854775808, 9223372036854775808, -9223372036854775809, "
              "18446744073709551616, 1267650600228229401496703205376, -1180591620717411303424, "
              "10000000000000000000000000000000000000000]");
    const List& ints = d.at(Value("ints")).as_list();
    EXPECT_EQ(ints[11].kind(), Value::Kind::Int);     // 2**63 - 1
    EXPECT_EQ(ints[12].kind(), Value::Kind::Int);     // -2**63
    EXPECT_EQ(ints[13].kind(), Value::Kind::BigInt);  // 2**63: never truncated
    EXPECT_EQ(ints[14].kind(), Value::Kind::BigInt);

    const List& floats = d.at(Value("floats")).as_list();
    ASSERT_EQ(floats.size(), 6u);
    EXPECT_EQ(floats[0].as_float(), 1.5);
    EXPECT_TRUE(floats[1].as_float() == 0.0 && std::signbit(floats[1].as_float()));
    EXPECT_EQ(floats[2].as_float(), 1e300);
    EXPECT_EQ(floats[3].as_float(), INFINITY);
    EXPECT_EQ(floats[4].as_float(), -INFINITY);
    EXPECT_EQ(floats[5].as_float(), 2.5e-310);

    const List& strs = d.at(Value("strs")).as_list();
    ASSERT_EQ(strs.size(), 6u);
    EXPECT_EQ(strs[0].as_string(), "");
    EXPECT_EQ(strs[1].as_string(), "ascii");
    EXPECT_EQ(strs[2].as_string(), "\xc3\xa9");
    EXPECT_EQ(strs[3].as_string(), "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e");
    EXPECT_EQ(strs[4].as_string(), "\xf0\x9f\x98\x80");
    EXPECT_EQ(strs[5].as_string(), std::string("line\nbreak\\back\r\0\x1a", 18));

    const List& bytes = d.at(Value("bytes")).as_list();
    EXPECT_EQ(bytes[0].as_bytes(), std::string("\x00\xff", 2));
    EXPECT_EQ(bytes[1].as_bytes(), "abc\n");
    EXPECT_FALSE(bytes[0].is_bytearray());

    EXPECT_EQ(d.at(Value("misc")).repr(), "(None, True, False)");
    EXPECT_TRUE(d.at(Value("misc")).as_tuple()[1].is_bool());
    EXPECT_EQ(d.at(Value("tuples")).repr(), "[(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)]");
    EXPECT_TRUE(d.at(Value("tuples")).as_list()[4].is_tuple());

    const Dict& keys = d.at(Value("keys")).as_dict();
    EXPECT_EQ(keys.at(Value(1)).as_string(), "one");
    EXPECT_EQ(keys.at(Value::tuple({Value(2), Value("two")})).as_int(), 2);
    EXPECT_TRUE(keys.at(Value(-3)).is_none());
    EXPECT_EQ(keys.at(Value("k")).as_float(), 1.0);

    EXPECT_EQ(d.at(Value("set")).repr(), "{3, 4}");
    EXPECT_TRUE(d.at(Value("bytearray")).is_bytearray());
    EXPECT_EQ(d.at(Value("bytearray")).as_bytes(), "\x01\x02");
    EXPECT_EQ(d.at(Value("complex")).as_complex(), std::complex<double>(1.5, -2.0));

    // The same list referenced twice is one container (memo = references).
    const List& shared = d.at(Value("shared")).as_list();
    ASSERT_EQ(shared.size(), 2u);
    EXPECT_NE(shared[0].container_id(), nullptr);
    EXPECT_EQ(shared[0].container_id(), shared[1].container_id());
    shared[0].as_list().push_back(Value(3));
    EXPECT_EQ(shared[1].as_list().size(), 3u);

    if (proto == 0) first_repr = v.repr();
    else EXPECT_EQ(v.repr(), first_repr);
  }
}

TEST(UnpicklerProtocols, FrozensetAndEmptyBytesAtProtocol4) {
  EXPECT_EQ(load(kFrozensetP4).repr(), "[{5}, b'']");
}

TEST(UnpicklerProtocols, BuiltinsBytesAndFrozensetBelowProtocol3AreNotOnTheAllowList) {
  // As in torch: b'' pickles as builtins.bytes() and frozenset as
  // builtins.frozenset([...]) below protocol 3/4; neither is allow-listed.
  EXPECT_CONTAINS(error_of<UnsafeError>(kEmptyBytesP2), "offset 0x2: global 'builtins.bytes' is not allowed");
  EXPECT_CONTAINS(error_of<UnsafeError>(kFrozensetP2), "global 'builtins.frozenset' is not allowed");
  Value o = inspect(kFrozensetP2);
  ASSERT_TRUE(o.is_object());
  EXPECT_EQ(o.as_object().qualified(), "builtins.frozenset");
  EXPECT_EQ(o.as_object().how, "REDUCE");
  EXPECT_EQ(o.as_object().args.repr(), "([5],)");
}

TEST(UnpicklerProtocols, OrderedDictWithMetadataBuild) {
  for (const std::string* p : {&kOrderedDictMetaP0, &kOrderedDictMetaP2, &kOrderedDictMetaP4}) {
    Value v = load(*p);
    ASSERT_TRUE(v.is_dict());
    EXPECT_TRUE(v.as_dict().ordered);
    EXPECT_EQ(v.repr(), "OrderedDict({'w': 1, 'b': 2})");
    EXPECT_EQ(v.as_dict().attributes.repr(), "{'_metadata': OrderedDict({'': {'version': 1}})}");
  }
}

// ---------------------------------------------------------------- opcodes one by one

TEST(UnpicklerOpcodes, Numbers) {
  // BINFLOAT is big-endian.
  EXPECT_EQ(load(P().op('G').raw(std::string("\x3f\xf8\0\0\0\0\0\0", 8)).stop()).as_float(), 1.5);
  // INT: 01 / 00 are booleans, as Python 2 wrote them.
  EXPECT_EQ(load("I01\n.").repr(), "True");
  EXPECT_EQ(load("I00\n.").repr(), "False");
  EXPECT_EQ(load("I42\n.").repr(), "42");
  EXPECT_EQ(load("I-7\n.").repr(), "-7");
  EXPECT_EQ(load("I12345678901234567890\n.").repr(), "12345678901234567890");
  EXPECT_EQ(load("L123L\n.").repr(), "123");
  EXPECT_EQ(load("L-1180591620717411303424L\n.").repr(), "-1180591620717411303424");
  EXPECT_EQ(load("L-9223372036854775808\n.").kind(), Value::Kind::Int);
  EXPECT_EQ(load("L-9223372036854775809\n.").kind(), Value::Kind::BigInt);
  EXPECT_CONTAINS(error_of<FormatError>("I1x\n."), "offset 0x0: malformed INT argument '1x'");
  EXPECT_CONTAINS(error_of<FormatError>("I5L\n."), "malformed INT argument");
  EXPECT_CONTAINS(error_of<FormatError>("I\n."), "malformed INT argument");
  EXPECT_CONTAINS(error_of<FormatError>("I 5\n."), "malformed INT argument");
  // Python's 4300-digit limit on decimal integers.
  EXPECT_EQ(load("L" + std::string(4300, '9') + "\n.").kind(), Value::Kind::BigInt);
  EXPECT_CONTAINS(error_of<LimitError>("L" + std::string(4301, '9') + "\n."), "4301 digits");
  // FLOAT text.
  EXPECT_EQ(load("F1.5\n.").as_float(), 1.5);
  EXPECT_EQ(load("F-inf\n.").as_float(), -INFINITY);
  EXPECT_TRUE(std::isnan(load("Fnan\n.").as_float()));
  EXPECT_EQ(load("F1e+100\n.").as_float(), 1e100);
  EXPECT_CONTAINS(error_of<FormatError>("F1.5x\n."), "malformed FLOAT argument '1.5x'");
  // BININT family.
  EXPECT_EQ(load(P().binint(-2).stop()).as_int(), -2);
  EXPECT_EQ(load(P().op('M').u16(65535).stop()).as_int(), 65535);
  // LONG1 / LONG4: minimal or not, int64 when it fits, else exact BigInt.
  EXPECT_EQ(load(P().op(0x8a).op(0).stop()).as_int(), 0);
  EXPECT_EQ(load(P().op(0x8a).op(3).raw("\xff\xff\xff").stop()).as_int(), -1);
  EXPECT_EQ(load(P().op(0x8a).op(9).raw(std::string("\0\0\0\0\0\0\0\x80\0", 9)).stop()).repr(),
            "9223372036854775808");
  EXPECT_EQ(load(P().op(0x8a).op(9).raw(std::string("\0\0\0\0\0\0\0\x80\xff", 9)).stop()).as_int(),
            std::numeric_limits<int64_t>::min());
  EXPECT_EQ(load(P().op(0x8b).u32(9).raw(std::string("\0\0\0\0\0\0\0\0\x01", 9)).stop()).repr(),
            "18446744073709551616");
  EXPECT_CONTAINS(error_of<FormatError>(P().op(0x8b).u32(0xffffffff).stop()), "LONG4 with a negative length");
}

TEST(UnpicklerOpcodes, Python2Strings) {
  // STRING: a quoted repr; escapes decoded as codecs.escape_decode does.
  EXPECT_EQ(load("S'a\\n\\x41\\101\\'\\q'\n.").as_string(), "a\nAA'\\q");
  EXPECT_EQ(load("S\"it's\"\n.").as_string(), "it's");
  EXPECT_CONTAINS(error_of<FormatError>("Sabc\n."), "is not quoted");
  EXPECT_CONTAINS(error_of<FormatError>("S'abc\"\n."), "is not quoted");
  EXPECT_CONTAINS(error_of<FormatError>("S'\\x4'\n."), "invalid \\x escape");
  EXPECT_CONTAINS(error_of<FormatError>("S'a\\'\n."), "lone backslash");
  // UTF-8 -> str (torch.load(encoding='utf-8')); anything else stays bytes.
  EXPECT_EQ(load("S'\\xc3\\xa9'\n.").repr(), "'\xc3\xa9'");
  EXPECT_EQ(load("S'\\xe9'\n.").repr(), "b'\\xe9'");
  EXPECT_EQ(load(P().op('U').op(2).raw("\xc3\xa9").stop()).as_string(), "\xc3\xa9");
  EXPECT_EQ(load(P().op('T').u32(1).raw("\xff").stop()).as_bytes(), "\xff");
  EXPECT_CONTAINS(error_of<FormatError>(P().op('T').u32(0x80000000).stop()), "BINSTRING with a negative length");
  // UNICODE: raw-unicode-escape; bytes are Latin-1; only \u / \U escape.
  EXPECT_EQ(load("Va\\u00e9\\U0001f600\xe9\\x\n.").as_string(), "a\xc3\xa9\xf0\x9f\x98\x80\xc3\xa9\\x");
  EXPECT_EQ(load("V\\\\u0041\n.").as_string(), "\\\\u0041");  // an escaped backslash is no escape
  EXPECT_CONTAINS(error_of<FormatError>("V\\u12\n."), "truncated \\u escape");
  EXPECT_CONTAINS(error_of<FormatError>("V\\U00110000\n."), "out of range");
  EXPECT_CONTAINS(error_of<FormatError>("V\\ud800\n."), "lone surrogate");
}

TEST(UnpicklerOpcodes, UnicodeAndBytes) {
  EXPECT_EQ(load(P().binunicode("\xe2\x82\xac").stop()).as_string(), "\xe2\x82\xac");
  EXPECT_EQ(load(P().op(0x8d).u64(2).raw("hi").stop()).as_string(), "hi");
  // Strict UTF-8: invalid, overlong, surrogates.
  for (std::string bad : {std::string("\xff"), std::string("\xc0\x80"), std::string("\xed\xa0\x80"),
                          std::string("\xf4\x90\x80\x80"), std::string("\xe2\x82")}) {
    EXPECT_CONTAINS(error_of<FormatError>(P().binunicode(bad).stop()), "BINUNICODE string is not valid UTF-8");
  }
  EXPECT_EQ(load(P().op('C').op(2).raw("ab").stop()).repr(), "b'ab'");
  EXPECT_EQ(load(P().op('B').u32(1).raw("x").stop()).repr(), "b'x'");
  EXPECT_EQ(load(P().op(0x8e).u64(1).raw("y").stop()).repr(), "b'y'");
  Value ba = load(P().op(0x96).u64(1).raw("z").stop());
  EXPECT_TRUE(ba.is_bytes());
  EXPECT_TRUE(ba.is_bytearray());
  // Out-of-band buffers cannot come from a file.
  EXPECT_CONTAINS(error_of<FormatError>(P().proto(5).op(0x97).stop()),
                  "offset 0x2: NEXT_BUFFER: the pickle refers to out-of-band buffers");
  EXPECT_CONTAINS(error_of<FormatError>(P().proto(5).op(0x98).stop()), "READONLY_BUFFER");
}

TEST(UnpicklerOpcodes, FramesAndProtocols) {
  EXPECT_EQ(load(P().proto(4).op(0x95).u64(2).binint1(7).stop()).as_int(), 7);
  EXPECT_CONTAINS(error_of<FormatError>(P().proto(4).op(0x95).u64(1000).binint1(7).stop()),
                  "offset 0x2: pickle is truncated: FRAME needs 1000 bytes, only 3 remain");
  EXPECT_CONTAINS(error_of<FormatError>(P().proto(4).op(0x95).u64(~uint64_t{0}).stop()), "truncated");
  for (int v = 0; v <= 5; ++v) EXPECT_TRUE(load(P().proto(v).none().stop()).is_none());
  EXPECT_CONTAINS(error_of<FormatError>(P().proto(6).none().stop()), "unsupported pickle protocol 6");
}

TEST(UnpicklerOpcodes, StackManipulation) {
  EXPECT_EQ(load(P().binint1(1).binint1(2).op('0').stop()).as_int(), 1);             // POP
  EXPECT_EQ(load(P().binint1(1).mark().op('0').stop()).as_int(), 1);                 // POP of a mark
  EXPECT_EQ(load(P().binint1(1).mark().binint1(2).binint1(3).op('1').stop()).as_int(), 1);  // POP_MARK
  Value dup = load(P().empty_list().op('2').op('0').stop());                          // DUP
  EXPECT_TRUE(dup.is_list());
}

TEST(UnpicklerOpcodes, MemoDenseAndFarIndicesTogether) {
  // 0 and 1 are dense; 1,000,000 is far past the entries stored (kept apart
  // from the dense ones); storing again replaces; MEMOIZE numbers by the
  // count of entries (3 here), whatever their indices.
  P p;
  p.proto(4).mark();
  p.binint1(1).binput(0);
  p.binint1(2).op('r').u32(1000000);
  p.binint1(3).binput(1);
  p.binint1(9).binput(0);
  p.binint1(8).op('r').u32(1000000);
  p.binint1(7).op(0x94);
  p.binget(0).binget(1).op('j').u32(1000000).binget(3);
  EXPECT_EQ(load(p.op('t').stop()).repr(), "(1, 2, 3, 9, 8, 7, 9, 3, 8, 7)");
}

TEST(UnpicklerOpcodes, DupOfAListIntoItselfIsACycle) {
  EXPECT_CONTAINS(error_of<FormatError>(P().empty_list().op('2').append().stop()), "recursive structure");
}

TEST(UnpicklerOpcodes, Memo) {
  // MEMOIZE numbers entries by the memo's size; PUT/GET are decimal text.
  EXPECT_EQ(load(P().proto(4).binint1(5).op(0x94).op('0').op('h').op(0).stop()).as_int(), 5);
  EXPECT_EQ(load("I5\np7\n0g7\n.").as_int(), 5);
  EXPECT_EQ(load(P().binint1(9).op('r').u32(100000).op('0').op('j').u32(100000).stop()).as_int(), 9);
  EXPECT_CONTAINS(error_of<FormatError>(P().proto(2).binget(5).stop()),
                  "offset 0x2: memo entry 5 is read before it is stored");
  EXPECT_CONTAINS(error_of<FormatError>("I5\np-1\n."), "negative PUT index '-1'");
  EXPECT_CONTAINS(error_of<FormatError>("I5\npx\n."), "malformed PUT index 'x'");
  // The index text is what CPython's C unpickler (PyLong_FromString, base 10)
  // accepts; each case below was run through pickle.loads in torch 1.13's
  // and torch 2's Python: the accepted ones load 5, the others raise.
  for (const char* ok : {"7", " 7", "7 ", "1_0", "+7", "07", "\t7\v", " 1_0 ", "-0"})
    EXPECT_EQ(load(std::string("I5\np") + ok + "\n0g" + ok + "\n.").as_int(), 5) << ok;
  EXPECT_EQ(load(std::string("I5\np7\0x\n0g7\n.", 13)).as_int(), 5);  // text after a NUL is ignored
  for (const char* bad : {"1__0", "_1", "1_", "0x7", "\xd9\xa7", "", " ", "+", "7 7"})
    EXPECT_CONTAINS(error_of<FormatError>(std::string("I5\np") + bad + "\n."), "malformed PUT index") << bad;
  EXPECT_CONTAINS(error_of<FormatError>("I5\np99999999999999999999\n."), "PUT index '99999999999999999999' is out of range");
  EXPECT_CONTAINS(error_of<FormatError>(P().binput(0).stop()), "BINPUT needs a value, but the stack is empty");
  EXPECT_CONTAINS(error_of<FormatError>(P().binint1(1).mark().binput(0).stop()), "empty since the last MARK");
  // Storing over an existing index replaces it, as Python does.
  EXPECT_EQ(load(P().binint1(1).binput(0).binint1(2).binput(0).op('0').op('0').binget(0).stop()).as_int(), 2);
}

TEST(UnpicklerOpcodes, StopAndTrailingBytes) {
  EXPECT_CONTAINS(error_of<FormatError>("NN."), "offset 0x2: STOP with 2 values on the stack, expected 1");
  EXPECT_CONTAINS(error_of<FormatError>("(N."), "STOP with a MARK still open");
  EXPECT_CONTAINS(error_of<FormatError>("."), "STOP with 0 values on the stack");
  EXPECT_CONTAINS(error_of<FormatError>(""), "offset 0x0: pickle is truncated: no STOP opcode");
  EXPECT_CONTAINS(error_of<FormatError>("N"), "offset 0x1: pickle is truncated: no STOP opcode");
  // Trailing bytes: ignored, and reported through `consumed`.
  size_t consumed = 0;
  std::string two = std::string(P().binint1(1).stop()) + std::string(P().binint1(2).stop());
  EXPECT_EQ(pickle::unpickle(bytes_of(two), opts(), &consumed).as_int(), 1);
  EXPECT_EQ(consumed, 3u);
  EXPECT_EQ(pickle::unpickle(bytes_of(two).subspan(consumed), opts(), &consumed).as_int(), 2);
  EXPECT_EQ(load(two).as_int(), 1);
}

TEST(UnpicklerOpcodes, UnknownOpcodeNamesTheByteAndOffset) {
  EXPECT_EQ(error_of<FormatError>(P().proto(2).op(0xff).stop()),
            "t.pkl: record 'data.pkl': offset 0x2: unknown pickle opcode 0xff");
  EXPECT_CONTAINS(error_of<FormatError>(P().proto(2).op(0x99).stop()), "unknown pickle opcode 0x99");
  EXPECT_CONTAINS(error_of<FormatError>("\n."), "unknown pickle opcode 0x0a");
}

TEST(UnpicklerOpcodes, WrongTypesAndMarkMisuse) {
  EXPECT_CONTAINS(error_of<FormatError>("a."), "offset 0x0: APPEND needs a value, but the stack is empty");
  EXPECT_CONTAINS(error_of<FormatError>(P().empty_list().appends().stop()), "APPENDS needs a MARK, but none is open");
  EXPECT_CONTAINS(error_of<FormatError>(P().empty_tuple().none().append().stop()),
                  "offset 0x2: APPEND onto a tuple, which is not a list");
  EXPECT_CONTAINS(error_of<FormatError>(P().proto(4).op(0x8f).none().append().stop()), "APPEND onto a set");
  EXPECT_CONTAINS(error_of<FormatError>(P().empty_dict().mark().none().appends().stop()),
                  "APPENDS onto a dict, which is not a list");
  EXPECT_CONTAINS(error_of<FormatError>(P().empty_list().none().none().setitem().stop()),
                  "SETITEM onto a list, which is not a dict");
  EXPECT_CONTAINS(error_of<FormatError>(P().empty_list().mark().setitems().stop()),
                  "SETITEMS onto a list, which is not a dict");
  EXPECT_CONTAINS(error_of<FormatError>(P().empty_dict().mark().none().setitems().stop()),
                  "SETITEMS with an odd number of values");
  EXPECT_CONTAINS(error_of<FormatError>(P().mark().none().op('d').stop()), "DICT with an odd number of values");
  EXPECT_CONTAINS(error_of<FormatError>(P().proto(4).empty_list().mark().op(0x90).stop()),
                  "ADDITEMS onto a list, which is not a set");
  EXPECT_CONTAINS(error_of<FormatError>(P().none().tuple1().tuple2().stop()), "TUPLE2 needs a value");
  EXPECT_CONTAINS(error_of<FormatError>(P().proto(4).binint1(1).short_binunicode("x").stack_global().stop()),
                  "STACK_GLOBAL needs two strings, got a int and a str");
  EXPECT_CONTAINS(error_of<FormatError>(P().mark().op('o').stop()), "OBJ needs a class");
  // REDUCE on something that is not a class or function.
  EXPECT_CONTAINS(error_of<UnsafeError>(P().none().empty_tuple().reduce().stop()),
                  "REDUCE on a None is not allowed when loading weights");
  EXPECT_CONTAINS(error_of<FormatError>(P().none().empty_tuple().reduce().stop(), opts(GlobalPolicy::inspect)),
                  "REDUCE on a None: only classes and functions can be called");
  EXPECT_CONTAINS(error_of<FormatError>(P().global("collections", "OrderedDict").empty_list().reduce().stop()),
                  "REDUCE arguments are a list, not a tuple");
}

TEST(UnpicklerOpcodes, DictKeysMustBeHashable) {
  EXPECT_CONTAINS(error_of<FormatError>(P().empty_dict().empty_list().binint1(1).setitem().stop()),
                  "offset 0x4: unhashable list used as a dict key or set item");
  EXPECT_CONTAINS(error_of<FormatError>(P().empty_dict().empty_dict().tuple1().binint1(1).setitem().stop()),
                  "unhashable dict used as a dict key");  // the key ({},) is a tuple holding a dict
  EXPECT_CONTAINS(error_of<FormatError>(P().proto(4).op(0x8f).mark().empty_list().op(0x90).stop()), "unhashable list");
  // Tuples of hashables and the other leaves are fine.
  Value d = load(P().empty_dict().binint1(1).none().tuple2().binint1(2).setitem().stop());
  EXPECT_EQ(d.repr(), "{(1, None): 2}");
}

TEST(UnpicklerOpcodes, SetsKeepPythonSemantics) {
  // {1, True, 1.0} is one element in Python (the first one).
  Value s = load(P().proto(4).op(0x8f).mark().binint1(1).op(0x88).raw("G?\xf0").raw(std::string(6, '\0')).op(0x90).stop());
  ASSERT_EQ(s.as_set().size(), 1u);
  EXPECT_EQ(s.repr(), "{1}");
  EXPECT_EQ(load(P().proto(4).mark().binint1(2).binint1(2).binint1(3).op(0x91).stop()).repr(), "{2, 3}");
  EXPECT_EQ(load(P().global("__builtin__", "set").mark().binint1(4).binint1(4).op('l').tuple1().reduce().stop()).repr(),
            "{4}");
}

TEST(UnpicklerOpcodes, Build) {
  // (state, slotstate) on an OrderedDict: both become attributes.
  P p;
  p.proto(2).global("collections", "OrderedDict").empty_tuple().reduce();
  p.empty_dict().binunicode("a").binint1(1).setitem().empty_dict().binunicode("b").binint1(2).setitem().tuple2().build().stop();
  EXPECT_EQ(load(p).as_dict().attributes.repr(), "{'a': 1, 'b': 2}");
  // An empty BUILD still records that attributes were set.
  P e;
  e.proto(2).global("collections", "OrderedDict").empty_tuple().reduce().empty_dict().build().stop();
  EXPECT_EQ(load(e).as_dict().attributes.repr(), "{}");
  // Attribute names are strings.
  P bad;
  bad.proto(2).global("collections", "OrderedDict").empty_tuple().reduce();
  bad.empty_dict().binint1(1).binint1(1).setitem().build().stop();
  EXPECT_CONTAINS(error_of<FormatError>(bad), "BUILD attribute name is a int, not a str");
  // A plain dict or a list has no attributes: torch refuses; Python fails unless the state is empty.
  std::string on_dict = P().empty_dict().empty_dict().binunicode("a").none().setitem().build().stop();
  EXPECT_CONTAINS(error_of<UnsafeError>(on_dict), "BUILD on a dict is not allowed when loading weights");
  EXPECT_CONTAINS(error_of<FormatError>(on_dict, opts(GlobalPolicy::inspect)),
                  "BUILD sets attributes on a dict, which has none");
  EXPECT_EQ(inspect(P().empty_list().none().build().stop()).repr(), "[]");
  EXPECT_CONTAINS(error_of<FormatError>(P().empty_list().binint1(1).build().stop(), opts(GlobalPolicy::inspect)),
                  "BUILD sets attributes on a list");
  EXPECT_CONTAINS(error_of<UnsafeError>(P().empty_list().none().build().stop()), "BUILD on a list is not allowed");
  EXPECT_CONTAINS(error_of<FormatError>(P().none().build().stop()), "BUILD needs a value");
}

TEST(UnpicklerOpcodes, InstObjNewobjWithAllowedClasses) {
  // INST / OBJ / NEWOBJ of allow-listed classes run their native versions.
  Value od = load(P().mark().raw("icollections\nOrderedDict\n").stop());
  EXPECT_TRUE(od.is_dict() && od.as_dict().ordered);
  Value sz = load(P().mark().global("torch", "Size").binint1(2).binint1(3).tuple2().op('o').stop());
  EXPECT_EQ(sz.repr(), "torch.Size([2, 3])");
  Value dev = load(P().proto(2).global("torch", "device").binunicode("cuda").binint1(1).tuple2().op(0x81).stop());
  EXPECT_EQ(dev.repr(), "device('cuda:1')");
  // NEWOBJ of Parameter(tensor, requires_grad): rebuild_v2_pickle() leaves the
  // tensor's callable and args; REDUCE them, then NEWFALSE TUPLE2 NEWOBJ.
  std::string param = P().proto(2).global("torch.nn.parameter", "Parameter").str() +
                      rebuild_v2_pickle().str().substr(2) + "R" + std::string("\x89\x86\x81.", 4);
  StorageLoader loader;
  Value t = load_torch(param, loader);
  ASSERT_TRUE(t.is_tensor());
  EXPECT_TRUE(t.as_tensor().is_parameter());
  EXPECT_FALSE(t.as_tensor().requires_grad());
  // Allowed only as a value: calling it is not modelled.
  EXPECT_CONTAINS(error_of<UnsupportedError>(P().global("torch", "Tensor").empty_tuple().reduce().stop()),
                  "REDUCE of 'torch.Tensor' is not supported");
  EXPECT_EQ(inspect(P().global("torch", "Tensor").empty_tuple().reduce().stop()).repr(), "torch.Tensor()");
}

TEST(UnpicklerOpcodes, NativeCallArgumentsAreChecked) {
  auto call = [](std::string_view module, std::string_view name, P args) {
    return P().proto(2).global(module, name).raw(args.str()).reduce().stop().str();
  };
  EXPECT_EQ(load(call("torch", "device", P().binunicode("cuda:0").tuple1())).repr(), "device('cuda:0')");
  EXPECT_EQ(load(call("torch", "device", P().binunicode("cpu").tuple1())).repr(), "device('cpu')");
  EXPECT_CONTAINS(error_of<FormatError>(call("torch", "device", P().binint1(1).tuple1())),
                  "offset 0x13: torch.device: device type is not a string");
  EXPECT_EQ(load(call("_codecs", "encode", P().binunicode("\xc3\xa9\x01").binunicode("latin1").tuple2())).repr(),
            "b'\\xe9\\x01'");
  EXPECT_EQ(load(call("_codecs", "encode", P().binunicode("\xc3\xa9").binunicode("utf-8").tuple2())).repr(),
            "b'\\xc3\\xa9'");
  EXPECT_CONTAINS(error_of<FormatError>(call("_codecs", "encode", P().binunicode("\xe2\x82\xac").binunicode("latin-1").tuple2())),
                  "cannot be encoded as latin-1");
  EXPECT_CONTAINS(error_of<FormatError>(call("_codecs", "encode", P().binunicode("x").binunicode("rot13").tuple2())),
                  "unsupported encoding 'rot13'");
  EXPECT_EQ(load(call("builtins", "complex", P().binint1(1).binint1(2).tuple2())).repr(), "(1.0+2.0j)");
  EXPECT_CONTAINS(error_of<FormatError>(call("builtins", "complex", P().binunicode("1").tuple1())),
                  "complex: expects numbers, got a str");
  EXPECT_EQ(load(call("torch.serialization", "_get_layout", P().binunicode("torch.sparse_coo").tuple1())).repr(),
            "<global torch.sparse_coo>");
  EXPECT_CONTAINS(error_of<FormatError>(call("collections", "OrderedDict", P().binint1(1).tuple1())),
                  "OrderedDict: expects a list of pairs, got a int");
  EXPECT_EQ(load(call("collections", "OrderedDict",
                      P().empty_list().binunicode("a").binint1(1).tuple2().append().tuple1()))
                .repr(),
            "OrderedDict({'a': 1})");
  EXPECT_EQ(load(call("collections", "Counter", P().empty_dict().binunicode("a").binint1(3).setitem().tuple1())).repr(),
            "{'a': 3}");
  EXPECT_CONTAINS(error_of<FormatError>(call("torch", "Size", P().binint1(1).tuple1())),
                  "torch.Size: dims is a int, not a tuple of ints");
}

TEST(UnpicklerOpcodes, ExtensionRegistry) {
  for (std::string ext : {std::string(P().proto(2).op(0x82).op(7).stop()),
                          std::string(P().proto(2).op(0x83).u16(7).stop()),
                          std::string(P().proto(2).op(0x84).u32(7).stop())}) {
    EXPECT_CONTAINS(error_of<UnsafeError>(ext), "offset 0x2: extension registry codes are not allowed");
    Recorder r;
    pickle::Options o = opts(GlobalPolicy::inspect);
    o.observer = &r;
    Value v = load(ext, o);
    EXPECT_EQ(v.repr(), "<global copyreg.ext.7>");
    EXPECT_EQ(r.kinds(), "ext:copyreg.ext.7!");
  }
  EXPECT_CONTAINS(error_of<FormatError>(P().proto(2).op(0x82).op(0).stop(), opts(GlobalPolicy::inspect)),
                  "EXT1 specifies code <= 0");
  EXPECT_CONTAINS(error_of<FormatError>(P().proto(2).op(0x84).u32(0x80000000).stop()), "EXT4 specifies code <= 0");
}

TEST(UnpicklerOpcodes, PersistentIds) {
  pickle::Options o = opts();
  std::vector<std::string> seen;
  std::vector<uint64_t> offsets;
  o.persistent_load = [&](const Value& pid, uint64_t off) {
    seen.push_back(pid.repr());
    offsets.push_back(off);
    return Value(int64_t{42});
  };
  EXPECT_EQ(load("Pabc\n.", o).as_int(), 42);  // PERSID: the pid is the text
  EXPECT_EQ(load(P().proto(2).binint1(7).binint1(8).tuple2().binpersid().stop(), o).as_int(), 42);
  EXPECT_EQ(seen, (std::vector<std::string>{"'abc'", "(7, 8)"}));
  EXPECT_EQ(offsets, (std::vector<uint64_t>{0, 7}));
  EXPECT_CONTAINS(error_of<FormatError>("P\xe9\n.", o), "PERSID argument '\\xe9' is not ASCII");
  // Without a loader: a format error.
  EXPECT_CONTAINS(error_of<FormatError>(P().binint1(1).binpersid().stop()),
                  "offset 0x2: persistent id found but no storage loader");
  // Loader errors keep their own context; type errors become format errors.
  o.persistent_load = [](const Value& pid, uint64_t off) -> Value {
    if (pid.is_int()) throw FormatError("bad storage", ErrorContext{"t.pkl", "data/0", off});
    return Value(pid.as_string());
  };
  EXPECT_EQ(error_of<FormatError>(P().binint1(1).binpersid().stop(), o), "t.pkl: record 'data/0': offset 0x2: bad storage");
  EXPECT_CONTAINS(error_of<FormatError>(P().none().binpersid().stop(), o), "offset 0x1: ");
  // What the loader returns is not the VM's to change.
  o.persistent_load = [](const Value&, uint64_t) { return Value::list(); };
  EXPECT_CONTAINS(error_of<FormatError>(P().none().binpersid().none().append().stop(), o),
                  "APPEND onto a value returned by the persistent loader");
}

// ---------------------------------------------------------------- torch checkpoints

struct TorchVersion {
  const char* tag;
  const std::string* linear;
  const std::string* sequential;
  const std::string* parameter;
  const std::string* views;
  const std::string* leaves;
  const std::string* with_attr;
  const std::string* sparse;
  const std::string* quantized;
};
const TorchVersion kTorch[] = {
    {"torch 1.13", &kLinearSD_torch113, &kSequentialSD_torch113, &kParameter_torch113, &kViews_torch113,
     &kLeaves_torch113, &kTensorWithAttr_torch113, &kSparse_torch113, &kQuantized_torch113},
    {"torch 2.x", &kLinearSD_torch2, &kSequentialSD_torch2, &kParameter_torch2, &kViews_torch2, &kLeaves_torch2,
     &kTensorWithAttr_torch2, &kSparse_torch2, &kQuantized_torch2},
};

TEST(UnpicklerTorch, LinearStateDict) {
  for (const auto& tv : kTorch) {
    SCOPED_TRACE(tv.tag);
    StorageLoader loader;
    Recorder r;
    Value v = load_torch(*tv.linear, loader, GlobalPolicy::weights_only, &r);
    ASSERT_TRUE(v.is_dict());
    EXPECT_TRUE(v.as_dict().ordered);
    EXPECT_EQ(v.repr(), "OrderedDict({'weight': tensor(float32, [2, 2]), 'bias': tensor(float32, [2])})");
    EXPECT_EQ(v.as_dict().attributes.repr(), "{'_metadata': OrderedDict({'': {'version': 1}})}");
    EXPECT_EQ(loader.pids, (std::vector<std::string>{"('storage', <global torch.FloatStorage>, '0', 'cpu', 4)",
                                                     "('storage', <global torch.FloatStorage>, '1', 'cpu', 2)"}));
    const Tensor& w = v.as_dict().at(Value("weight")).as_tensor();
    EXPECT_EQ(w.strides(), (std::vector<int64_t>{2, 1}));
    EXPECT_FALSE(w.requires_grad());
    EXPECT_FALSE(w.is_parameter());
    EXPECT_EQ(w.device(), "cpu");
    // What the observer saw: every global and call, all on the allow-list.
    EXPECT_EQ(r.kinds(),
              "global:collections.OrderedDict reduce:collections.OrderedDict "
              "global:torch._utils._rebuild_tensor_v2 global:torch.FloatStorage persid "
              "reduce:collections.OrderedDict reduce:torch._utils._rebuild_tensor_v2 "
              "persid reduce:collections.OrderedDict reduce:torch._utils._rebuild_tensor_v2 "
              "reduce:collections.OrderedDict build:collections.OrderedDict");
  }
}

TEST(UnpicklerTorch, SequentialStateDictWithBatchNorm) {
  for (const auto& tv : kTorch) {
    SCOPED_TRACE(tv.tag);
    StorageLoader loader;
    Value v = load_torch(*tv.sequential, loader);
    EXPECT_EQ(v.repr(),
              "OrderedDict({'0.weight': tensor(float32, [2, 3]), '0.bias': tensor(float32, [2]), "
              "'1.weight': tensor(float32, [2]), '1.bias': tensor(float32, [2]), "
              "'1.running_mean': tensor(float32, [2]), '1.running_var': tensor(float32, [2]), "
              "'1.num_batches_tracked': tensor(int64, [])})");
    EXPECT_EQ(v.as_dict().attributes.repr(),
              "{'_metadata': OrderedDict({'': {'version': 1}, '0': {'version': 1}, '1': {'version': 2}})}");
  }
}

TEST(UnpicklerTorch, ParametersViewsAndLeaves) {
  for (const auto& tv : kTorch) {
    SCOPED_TRACE(tv.tag);
    StorageLoader loader;  // one per pickle: storage keys are per checkpoint
    Value p = load_torch(*tv.parameter, loader);
    EXPECT_EQ(p.repr(), "tensor(float32, [2, 3], parameter, requires_grad)");

    loader = {};
    Value views = load_torch(*tv.views, loader);
    EXPECT_EQ(views.repr(), "{'t': tensor(float32, [3, 4], requires_grad), 'v': tensor(float32, [3, 3]), "
                            "'i': tensor(int64, [5])}");
    const Tensor& v = views.as_dict().at(Value("v")).as_tensor();
    EXPECT_EQ(v.strides(), (std::vector<int64_t>{1, 4}));
    EXPECT_EQ(v.storage_offset(), 1);
    // 't' and 'v' share one storage: the loader saw key '0' twice.
    EXPECT_EQ(views.as_dict().at(Value("t")).as_tensor().storage().id(), v.storage().id());

    loader = {};
    Value leaves = load_torch(*tv.leaves, loader);
    EXPECT_EQ(leaves.repr(), "{'size': torch.Size([2, 3]), 'dev': device('cuda:0'), 'cpu': device('cpu'), "
                             "'dt': torch.bfloat16, 'b': b'xy'}");

    loader = {};
    Value attr = load_torch(*tv.with_attr, loader);
    EXPECT_EQ(attr.repr(), "tensor(float32, [2])");

    // Sparse tensors stay the inert call torch wrote (ckpt/sparse.hpp); quantized ones
    // are tensors with their quantizer parameters.
    loader = {};
    auto sparse = as_sparse(load_torch(*tv.sparse, loader));
    ASSERT_TRUE(sparse);
    EXPECT_EQ(sparse->layout, "sparse_coo");
    loader = {};
    Value q = load_torch(*tv.quantized, loader);
    ASSERT_TRUE(q.is_tensor());
    ASSERT_NE(q.as_tensor().quantization(), nullptr);
    EXPECT_TRUE(info(q.as_tensor().dtype()).is_quantized);
  }
}

TEST(UnpicklerTorch, Torch2Specifics) {
  StorageLoader loader;  // one per pickle: storage keys are per checkpoint
  EXPECT_EQ(load_torch(kParameterWithState_torch2, loader).repr(), "tensor(float32, [2], parameter, requires_grad)");
  loader = {};
  Value f8 = load_torch(kFloat8_torch2, loader);
  EXPECT_EQ(f8.repr(), "tensor(float8_e4m3fn, [3])");
  loader = {};
  Value u16 = load_torch(kUint16View_torch2, loader);
  ASSERT_TRUE(u16.is_tensor());
  EXPECT_EQ(u16.as_tensor().dtype(), DType::uint16);
  EXPECT_EQ(u16.as_tensor().sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(u16.as_tensor().strides(), (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(u16.as_tensor().storage_offset(), 1);
  loader = {};
  EXPECT_EQ(load_torch(kUntypedStorage_torch2, loader).repr(), "storage(uint8, 12 bytes)");
  EXPECT_EQ(loader.pids.back(), "('storage', <global torch.storage.UntypedStorage>, '0', 'cpu', 12)");
}

TEST(UnpicklerTorch, RebuildTensorV2FromHandWrittenPickle) {
  StorageLoader loader;
  Value t = load_torch(P(rebuild_v2_pickle(1, 6)).reduce().stop(), loader);
  ASSERT_TRUE(t.is_tensor());
  EXPECT_EQ(t.as_tensor().sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(t.as_tensor().storage_offset(), 1);
  // A storage too small for the view: a format error at the REDUCE.
  P small = rebuild_v2_pickle(1, 4);
  const size_t reduce_at = small.size();
  small.reduce().stop();
  StorageLoader l2;
  pickle::Options o = opts();
  o.persistent_load = [&](const Value& pid, uint64_t off) { return l2(pid, off); };
  EXPECT_EQ(error_offset<FormatError>(small, o), reduce_at);
  // Too many dims.
  pickle::Options few = o;
  few.limits.max_tensor_dims = 1;
  EXPECT_CONTAINS(error_of<FormatError>(P(rebuild_v2_pickle()).reduce().stop(), few),
                  "_rebuild_tensor_v2: size has 2 dimensions (limit 1)");
}

TEST(UnpicklerTorch, RebuildParameterAndV3ByHand) {
  StorageLoader loader;
  // _rebuild_parameter(_rebuild_tensor_v2(...), True, OrderedDict())
  P p;
  p.proto(2).global("torch._utils", "_rebuild_parameter").mark().raw(rebuild_v2_pickle().str().substr(2)).reduce();
  p.op(0x88).global("collections", "OrderedDict").empty_tuple().reduce().tuple().reduce().stop();
  EXPECT_EQ(load_torch(p, loader).repr(), "tensor(float32, [2, 2], parameter, requires_grad)");
  // _rebuild_tensor_v3(untyped storage of 8 bytes, 1, (3,), (1,), False, OrderedDict(), torch.bfloat16)
  P v3;
  v3.proto(2).global("torch._utils", "_rebuild_tensor_v3").mark();
  v3.mark().binunicode("storage").global("torch", "UntypedStorage").binunicode("k").binunicode("cuda:1").binint1(8);
  v3.tuple().binpersid().binint1(1).binint1(3).tuple1().binint1(1).tuple1().op(0x89);
  v3.global("collections", "OrderedDict").empty_tuple().reduce().global("torch", "bfloat16").tuple().reduce().stop();
  Value t = load_torch(v3, loader);
  EXPECT_EQ(t.repr(), "tensor(bfloat16, [3], device='cuda:1')");
  EXPECT_EQ(t.as_tensor().storage_offset(), 1);
  // A dtype torch allows but ckpt does not model.
  std::string int3 = v3.str();
  int3.replace(int3.find("bfloat16"), 8, "int3");  // a GLOBAL line: text, no length to fix
  EXPECT_CONTAINS(error_of<UnsupportedError>(int3, [&] {
                    pickle::Options o = opts();
                    o.persistent_load = [&](const Value& pid, uint64_t off) { return loader(pid, off); };
                    return o;
                  }()),
                  "tensors of dtype torch.int3 are not supported");
}

// ---------------------------------------------------------------- refusing what is not weights

struct Malicious {
  const char* name;
  std::string pickle;
  std::string global;  // what the error must name
  uint64_t offset;     // where the refused global is
};

std::vector<Malicious> malicious() {
  std::vector<Malicious> m;
  auto add = [&](const char* name, const P& p, const char* global) { m.push_back({name, p, global, p.last_global()}); };
  {
    P p;
    p.proto(2).global("os", "system").binunicode("touch x").tuple1().reduce().stop();
    add("os.system via GLOBAL+REDUCE", p, "os.system");
  }
  m.push_back({"posix.system (CPython, protocol 0)", kPosixSystemP0, "posix.system", 0});
  m.push_back({"posix.system (CPython, protocol 2)", kPosixSystemP2, "posix.system", 2});
  m.push_back({"posix.system (CPython, protocol 4, STACK_GLOBAL)", kPosixSystemP4, "posix.system", 28});
  m.push_back({"subprocess.Popen (CPython writes commands.Popen)", kPopenP2, "commands.Popen", 2});
  m.push_back({"builtins.eval (CPython, __builtin__)", kEvalP2, "builtins.eval", 2});
  m.push_back({"builtins.eval (CPython, protocol 0)", kEvalP0, "builtins.eval", 0});
  {
    P p;
    p.global("builtins", "exec").mark().raw("S'1'\n").tuple().reduce().stop();
    add("builtins.exec", p, "builtins.exec");
  }
  {
    P p;
    p.global("nt", "system").mark().raw("S'x'\n").tuple().reduce().stop();
    add("nt.system", p, "nt.system");
  }
  {
    P p;
    p.global("sys", "modules").stop();
    add("sys.modules", p, "sys.modules");
  }
  {
    P p;
    p.global("__builtin__", "getattr").mark().global("__builtin__", "object").raw("S'__subclasses__'\n").tuple();
    p.reduce().empty_tuple().reduce().stop();
    m.push_back({"builtins.getattr chain", p, "builtins.getattr", 0});
  }
  {
    P p;
    p.mark().raw("S'touch x'\n").raw("ios\nsystem\n").stop();
    m.push_back({"INST os system", p, "os.system", 12});
  }
  {
    P p;
    p.mark().global("os", "system").raw("S'touch x'\n").op('o').stop();
    add("OBJ", p, "os.system");
  }
  {
    P p;
    p.proto(4).short_binunicode("subprocess").short_binunicode("Popen").stack_global();
    p.empty_tuple().empty_dict().op(0x92).stop();
    add("NEWOBJ_EX", p, "subprocess.Popen");
  }
  {
    // Module and name come out of the memo, not from a GLOBAL line.
    P q;
    q.proto(4).short_binunicode("os").op(0x94).short_binunicode("system").op(0x94).op('0').op('0');
    q.op('h').op(0).op('h').op(1).stack_global().short_binunicode("x").tuple1().reduce().stop();
    add("STACK_GLOBAL with memo-computed strings", q, "os.system");
  }
  {
    P p;
    p.global("__builtin__", "intern").stop();  // mapped to sys.intern: blocked
    add("__builtin__.intern", p, "sys.intern");
  }
  {
    P p;
    p.proto(2).global("copy_reg", "_reconstructor").mark().global("__main__", "Evil").global("__builtin__", "object");
    p.none().tuple().reduce().stop();
    m.push_back({"copy_reg._reconstructor", p, "copyreg._reconstructor", 2});
  }
  {
    P p;
    p.proto(2).global("numpy.core.multiarray", "_reconstruct").empty_tuple().reduce().stop();
    add("numpy _reconstruct", p, "numpy.core.multiarray._reconstruct");
  }
  {
    P p;
    p.proto(2).global("torch", "load").binunicode("x").tuple1().reduce().stop();
    add("torch.load", p, "torch.load");
  }
  {
    P p;
    p.global("runpy", "_run_code").mark().raw("S'x'\n").tuple().reduce().stop();
    add("runpy._run_code", p, "runpy._run_code");
  }
  {
    P p;
    p.proto(2).global("collections", "OrderedDict").empty_tuple().reduce().binunicode("x").global("os", "system");
    p.setitem().stop();
    add("a bad global among good ones", p, "os.system");
  }
  return m;
}

TEST(UnpicklerMalicious, RefusedInWeightsOnlyNamingTheGlobalAndOffset) {
  for (const auto& m : malicious()) {
    SCOPED_TRACE(m.name);
    try {
      load(m.pickle);
      ADD_FAILURE() << "loaded";
    } catch (const UnsafeError& e) {
      if (m.global.starts_with("numpy."))
        EXPECT_EQ(e.message(), "global '" + m.global +
                                   "' (numpy) is not allowed when loading weights; numpy arrays and scalars are "
                                   "decoded, never executed, with LoadOptions::numpy (ckpt CLI: --numpy)");
      else
        EXPECT_EQ(e.message(), "global '" + m.global +
                                   "' is not allowed when loading weights (use 'ckpt scan' to inspect the file, or "
                                   "load with weights_only=false (ckpt CLI: --objects) to see it as an inert object)");
      EXPECT_EQ(e.context().file, "t.pkl");
      EXPECT_EQ(e.context().record, "data.pkl");
      EXPECT_EQ(e.context().offset, m.offset);
    }
  }
}

TEST(UnpicklerMalicious, ExactMessage) {
  EXPECT_EQ(error_of<UnsafeError>(P().proto(2).global("os", "system").binunicode("x").tuple1().reduce().stop()),
            "t.pkl: record 'data.pkl': offset 0x2: global 'os.system' is not allowed when loading weights (use "
            "'ckpt scan' to inspect the file, or load with weights_only=false (ckpt CLI: --objects) to see it as an inert object)");
}

TEST(UnpicklerMalicious, InspectModeKeepsThemInertAndReportsThem) {
  for (const auto& m : malicious()) {
    SCOPED_TRACE(m.name);
    Recorder r;
    pickle::Options o = opts(GlobalPolicy::inspect);
    o.observer = &r;
    Value v = load(m.pickle, o);
    bool flagged = false;
    for (const auto& e : r.events)
      if (e.kind == pickle::Event::Kind::global && e.module + "." + e.name == m.global) {
        flagged = true;
        EXPECT_FALSE(e.allowed);
        EXPECT_EQ(e.offset, m.offset);
      }
    EXPECT_TRUE(flagged) << r.kinds();
  }
}

TEST(UnpicklerMalicious, InertObjectsRecordHowTheyWereMade) {
  Recorder r;
  pickle::Options o = opts(GlobalPolicy::inspect);
  o.observer = &r;
  Value v = load(P().proto(2).global("os", "system").binunicode("touch x").tuple1().reduce().stop(), o);
  ASSERT_TRUE(v.is_object());
  const Object& obj = v.as_object();
  EXPECT_EQ(obj.qualified(), "os.system");
  EXPECT_EQ(obj.how, "REDUCE");
  EXPECT_EQ(obj.args.repr(), "('touch x',)");
  EXPECT_TRUE(obj.kwargs.is_none());
  EXPECT_EQ(r.kinds(), "global:os.system! reduce:os.system!");
  EXPECT_EQ(r.events[1].offset, 26u);

  // NEWOBJ_EX keeps its kwargs; BUILD sets the state; APPENDS/SETITEMS go to the object.
  P p;
  p.proto(4).short_binunicode("m").short_binunicode("C").stack_global().binint1(1).tuple1();
  p.empty_dict().short_binunicode("k").binint1(2).setitem().op(0x92);
  p.mark().binint1(3).appends().mark().short_binunicode("x").binint1(4).setitems();
  p.empty_dict().short_binunicode("s").binint1(5).setitem().build().stop();
  Value c = inspect(p);
  ASSERT_TRUE(c.is_object());
  EXPECT_EQ(c.as_object().how, "NEWOBJ_EX");
  EXPECT_EQ(c.as_object().args.repr(), "(1,)");
  EXPECT_EQ(c.as_object().kwargs.repr(), "{'k': 2}");
  EXPECT_EQ(c.as_object().state.repr(), "{'s': 5}");
  EXPECT_EQ(Value::list(c.as_object().list_items).repr(), "[3]");
  ASSERT_EQ(c.as_object().dict_items.size(), 1u);
  EXPECT_EQ(c.as_object().dict_items[0].first.as_string(), "x");
  // INST and OBJ.
  EXPECT_EQ(inspect(P().mark().binint1(1).raw("imod\nK\n").stop()).as_object().how, "INST");
  EXPECT_EQ(inspect(P().mark().global("mod", "K").binint1(1).op('o').stop()).repr(), "mod.K(1)");
  // Weights-only refuses NEWOBJ_EX on anything that is not inert.
  EXPECT_CONTAINS(error_of<UnsupportedError>(P().proto(4).global("collections", "OrderedDict").empty_tuple().empty_dict()
                                                 .short_binunicode("a").binint1(1).setitem().op(0x92).stop()),
                  "NEWOBJ_EX of 'collections.OrderedDict' with keyword arguments is not supported");
}

TEST(UnpicklerMalicious, AcceptInertMakesFormatClassesInertEvenInWeightsOnly) {
  pickle::Options o = opts();
  o.accept_inert = [](std::string_view module, std::string_view) { return module.starts_with("__torch__"); };
  Value v = load(P().proto(2).global("__torch__.M", "M").empty_tuple().op(0x81).empty_dict().build().stop(), o);
  ASSERT_TRUE(v.is_object());
  EXPECT_EQ(v.as_object().qualified(), "__torch__.M.M");
  EXPECT_EQ(v.as_object().how, "NEWOBJ");
  // ... but never for the blocked modules.
  o.accept_inert = [](std::string_view, std::string_view) { return true; };
  EXPECT_CONTAINS(error_of<UnsafeError>(P().global("os", "system").stop(), o), "'os.system' is not allowed");
  EXPECT_NO_THROW(load(P().global("mod", "x").stop(), o));
}

TEST(UnpicklerMalicious, AllowListMatchesTorch) {
  using pickle::is_allowed_global;
  for (auto [m, n] : std::vector<std::pair<const char*, const char*>>{
           {"collections", "OrderedDict"}, {"collections", "Counter"}, {"torch.nn.parameter", "Parameter"},
           {"torch.serialization", "_get_layout"}, {"torch", "Size"}, {"torch", "Tensor"}, {"torch", "device"},
           {"_codecs", "encode"}, {"builtins", "bytearray"}, {"builtins", "set"}, {"builtins", "complex"},
           {"torch", "float32"}, {"torch", "bfloat16"}, {"torch", "float8_e4m3fn"}, {"torch", "bool"},
           {"torch", "quint4x2"}, {"torch", "bits16"}, {"torch", "uint3"}, {"torch", "int7"}, {"torch", "float"},
           {"torch", "FloatTensor"}, {"torch.cuda", "HalfTensor"}, {"torch.sparse", "FloatTensor"},
           {"torch.cuda.sparse", "LongTensor"}, {"torch", "FloatStorage"}, {"torch", "BFloat16Storage"},
           {"torch.cuda", "FloatStorage"}, {"torch", "QUInt8Storage"}, {"torch", "UntypedStorage"},
           {"torch.storage", "UntypedStorage"}, {"torch.storage", "TypedStorage"}, {"torch", "per_tensor_affine"},
           {"torch", "per_channel_affine_float_qparams"}, {"torch._utils", "_rebuild_tensor"},
           {"torch._utils", "_rebuild_tensor_v2"}, {"torch._utils", "_rebuild_tensor_v3"},
           {"torch._utils", "_rebuild_parameter"}, {"torch._utils", "_rebuild_parameter_with_state"},
           {"torch._utils", "_rebuild_qtensor"}, {"torch._utils", "_rebuild_sparse_tensor"},
           {"torch._utils", "_rebuild_nested_tensor"}, {"torch._utils", "_rebuild_meta_tensor_no_storage"},
           {"torch._utils", "_rebuild_wrapper_subclass"}, {"torch._utils", "_rebuild_device_tensor_from_numpy"},
           {"torch._utils", "_rebuild_device_tensor_from_cpu_tensor"}, {"torch._tensor", "_rebuild_from_type_v2"}}) {
    EXPECT_TRUE(is_allowed_global(m, n)) << m << "." << n;
  }
  for (auto [m, n] : std::vector<std::pair<const char*, const char*>>{
           {"os", "system"}, {"posix", "system"}, {"nt", "system"}, {"sys", "modules"}, {"builtins", "getattr"},
           {"builtins", "eval"}, {"builtins", "bytes"}, {"builtins", "frozenset"}, {"collections", "defaultdict"},
           {"numpy.core.multiarray", "_reconstruct"}, {"torch", "load"}, {"torch", "FakeTensor"},
           {"torch.sparse", "BoolTensor"}, {"torch", "FakeStorage"}, {"torch.foo", "FloatStorage"},
           {"torch", "torch.float32"}, {"torch", "int8x"}, {"torch._utils", "_rebuild_xla_tensor"},
           {"torch._tensor", "_rebuild_from_type"}, {"__builtin__", "set"}, {"torch.tensor", "_rebuild_from_type_v2"}}) {
    EXPECT_FALSE(is_allowed_global(m, n)) << m << "." << n;
  }
}

TEST(UnpicklerMalicious, Python2NamesAreMapped) {
  // __builtin__ -> builtins (GLOBAL names, before the allow-list check).
  EXPECT_EQ(load(P().global("__builtin__", "set").empty_list().tuple1().reduce().stop()).repr(), "set()");
  EXPECT_EQ(inspect(P().global("__builtin__", "unicode").stop()).repr(), "<global builtins.str>");
  EXPECT_EQ(inspect(P().global("copy_reg", "_reconstructor").stop()).repr(), "<global copyreg._reconstructor>");
  EXPECT_EQ(inspect(P().global("torch.tensor", "_rebuild_from_type_v2").stop()).repr(),
            "<global torch._tensor._rebuild_from_type_v2>");
}

// ---------------------------------------------------------------- limits and hostile structure

// ---------------------------------------------------------------- the memo plan

// What loading `p` gives, as text: the value's repr() or the error's what(),
// with the plan of memo reads on or off.
std::string outcome(const std::string& p, bool plan, GlobalPolicy policy = GlobalPolicy::inspect) {
  StorageLoader loader;
  pickle::Options o = opts(policy);
  o.persistent_load = [&](const Value& pid, uint64_t off) { return loader(pid, off); };
  o.memo_plan = plan;
  try {
    return "value: " + load(p, o).repr();
  } catch (const std::exception& e) {
    return std::string("error: ") + e.what();
  }
}

std::vector<std::string> memo_cases() {
  std::vector<std::string> all = {
      kNestedP0, kNestedP1, kNestedP2, kNestedP3, kNestedP4, kNestedP5, kFrozensetP4, kFrozensetP2,
      kOrderedDictMetaP0, kOrderedDictMetaP2, kOrderedDictMetaP4, kPosixSystemP0, kPosixSystemP2, kEvalP0,
      kLinearSD_torch113, kSequentialSD_torch113, kParameter_torch113, kViews_torch113, kLeaves_torch113,
      kTensorWithAttr_torch113, kSparse_torch113, kQuantized_torch113, kLinearSD_torch2, kSequentialSD_torch2,
      kParameter_torch2, kViews_torch2, kLeaves_torch2, kTensorWithAttr_torch2, kSparse_torch2, kQuantized_torch2,
      kParameterWithState_torch2, kFloat8_torch2, kUint16View_torch2, kUntypedStorage_torch2,
      // protocol 0 PUT / GET with the text forms CPython accepts
      "(lp 7\nI1\nag 7\n.", "(lp+7\nI1\nag7_0\n.", "I5\np 3\n0g3\n.",
      // MEMOIZE numbers entries by how many are stored; PUT may skip or reuse numbers
      P().proto(4).none().op(0x94).binint1(1).op(0x94).binget(0).binget(1).tuple2().stop(),
      P().proto(4).none().binput(5).binint1(1).op(0x94).binget(1).binget(5).tuple2().stop(),
      P().proto(4).none().binput(5).op('0').binint1(1).op(0x94).op('0').binget(1).binget(5).tuple2().stop(),
      P().proto(4).none().binput(0).binint1(1).binput(0).op(0x94).binget(0).binget(1).tuple2().stop(),
      // read before stored, stored again, read of a number never stored
      P().proto(2).binget(0).stop(), P().proto(2).none().binput(0).binint1(2).binput(0).binget(0).stop(),
      P().proto(2).none().binput(0).binget(1).stop(),
      // a memo index too far apart for a plan: every entry stored, as before
      P().proto(2).none().op('r').u32(0xfffffff0).op('0').op('j').u32(0xfffffff0).stop(),
      // a GET after an opcode the run fails on, a GET after a truncated argument
      P().proto(2).none().binput(0).op(0xff).binget(0).stop(), P().proto(2).none().binput(0).op('X').u32(100),
  };
  return all;
}

TEST(UnpicklerMemoPlan, SameValuesAndErrorsWithAndWithoutThePlan) {
  for (const std::string& p : memo_cases()) {
    for (GlobalPolicy policy : {GlobalPolicy::inspect, GlobalPolicy::weights_only}) {
      EXPECT_EQ(outcome(p, true, policy), outcome(p, false, policy)) << "pickle: " << testing::PrintToString(p);
      // And every prefix: the same error at the same offset.
      for (size_t n = 0; n < p.size(); n += 1 + p.size() / 64)
        EXPECT_EQ(outcome(p.substr(0, n), true, policy), outcome(p.substr(0, n), false, policy));
    }
  }
  EXPECT_EQ(outcome(P().proto(4).none().binput(5).op('0').binint1(1).op(0x94).op('0').binget(1).binget(5).tuple2().stop(),
                    true),
            "value: (1, None)");
  EXPECT_CONTAINS(outcome(P().proto(2).none().binput(0).binget(1).stop(), true),
                  "offset 0x5: memo entry 1 is read before it is stored");
}

// Found by fuzz_unpickler's comparison of the two ways: without a plan, an
// index stored while it was far past the others (in the map) was lost once
// the dense entries grew past it, and a later GET failed where Python reads it.
TEST(UnpicklerMemoPlan, AnEntryStoredFarAheadIsFoundAfterTheOthersCatchUp) {
  P p;
  p.proto(2).binint1(7).binput(200).op('0');
  for (int i = 0; i <= 210; ++i) p.none().binput(static_cast<uint8_t>(i == 200 ? 201 : i)).op('0');
  p.binget(200).stop();
  for (bool plan : {true, false}) {
    pickle::Options o = opts();
    o.memo_plan = plan;
    EXPECT_EQ(load(p, o).repr(), "7") << "plan " << plan;
  }
}

TEST(UnpicklerMemoPlan, TheMemoLimitCountsEntriesStoredEvenWhenNoneIsRead) {
  pickle::Options o = opts();
  o.limits.max_memo = 2;
  for (bool plan : {true, false}) {
    o.memo_plan = plan;
    EXPECT_CONTAINS(error_of<LimitError>(P().none().binput(0).binput(1).binput(2).stop(), o),
                    "offset 0x5: pickle memo passes 2 entries");
    EXPECT_NO_THROW(load(P().none().binput(0).binput(1).binput(1).binput(0).stop(), o));
    EXPECT_CONTAINS(error_of<LimitError>(P().proto(4).none().op(0x94).op(0x94).binput(7).stop(), o),
                    "pickle memo passes 2 entries");
  }
}

// Tuples the arena does not hold, and empty dicts a call returned: a cycle
// through them, deep chains of them, garbage made of them.
TEST(UnpicklerMemoPlan, LooseTuplesAndDictsNeverLeakOrRecurseDeeply) {
  // d = OrderedDict(); d['k'] = (d,): the dict is held from the SETITEM on.
  P cyc;
  cyc.proto(2).global("collections", "OrderedDict").empty_tuple().reduce().binput(0).short_binunicode("k")
      .binget(0).tuple1().setitem();
  EXPECT_CONTAINS(error_of<FormatError>(P(cyc).stop()), "recursive structure");
  EXPECT_TRUE(load(P(cyc).op('0').none().stop()).is_none());  // as garbage: emptied, not leaked
  // (OrderedDict(),) nested 200,000 deep, popped, and as the result.
  P deep;
  deep.proto(2).global("collections", "OrderedDict").empty_tuple().reduce();
  for (int i = 0; i < 200000; ++i) deep.tuple1();
  EXPECT_TRUE(load(P(deep).op('0').none().stop()).is_none());
  EXPECT_CONTAINS(error_of<LimitError>(P(deep).stop()), "nesting deeper than 1000 levels");
  // A tuple holding an empty dict that is filled later still reads as filled.
  P later;
  later.proto(2).global("collections", "OrderedDict").empty_tuple().reduce().binput(0).tuple1().binget(0)
      .short_binunicode("a").binint1(1).setitem().op('0').stop();
  EXPECT_EQ(load(later).repr(), "(OrderedDict({'a': 1}),)");
}

TEST(UnpicklerLimits, HugeMemoIndexDoesNotAllocate) {
  EXPECT_EQ(load(P().proto(2).none().op('r').u32(0xffffffff).op('0').op('j').u32(0xffffffff).stop()).repr(), "None");
  // Past Py_ssize_t CPython raises OverflowError before storing anything.
  EXPECT_CONTAINS(error_of<FormatError>("Np18446744073709551615\n."), "PUT index '18446744073709551615' is out of range");
  pickle::Options o = opts();
  o.limits.max_memo = 2;
  EXPECT_CONTAINS(error_of<LimitError>(P().none().binput(0).binput(1).binput(2).stop(), o),
                  "offset 0x5: pickle memo passes 2 entries");
  EXPECT_NO_THROW(load(P().none().binput(0).binput(1).binput(1).binput(0).stop(), o));
}

TEST(UnpicklerLimits, LengthsAreCheckedAgainstTheBytesPresent) {
  EXPECT_EQ(error_of<FormatError>(P().proto(2).op('X').u32(0xffffffff).raw("0123456789").stop()),
            "t.pkl: record 'data.pkl': offset 0x2: pickle is truncated: BINUNICODE of 4294967295 bytes, but only 11 "
            "remain");
  EXPECT_CONTAINS(error_of<FormatError>(P().op(0x8e).u64(~uint64_t{0}).stop()), "BINBYTES8 of 18446744073709551615");
  EXPECT_CONTAINS(error_of<FormatError>(P().op(0x8d).u64(uint64_t{1} << 62).stop()), "BINUNICODE8 of");
  EXPECT_CONTAINS(error_of<FormatError>(P().op(0x96).u64(100).stop()), "BYTEARRAY8 of 100 bytes, but only 1 remain");
  EXPECT_CONTAINS(error_of<FormatError>(P().op('J').raw("ab")), "BININT needs 4 bytes, only 2 remain");
  pickle::Options o = opts();
  o.limits.max_string = 4;
  EXPECT_CONTAINS(error_of<LimitError>(P().binunicode("hello").stop(), o),
                  "BINUNICODE of 5 bytes passes the limit of 4 bytes");
  EXPECT_CONTAINS(error_of<LimitError>("Vhello\n.", o), "UNICODE text argument passes the limit of 4 bytes");
  EXPECT_CONTAINS(error_of<FormatError>("Vhello"), "no newline ends the UNICODE argument");
}

TEST(UnpicklerLimits, StackLimit) {
  pickle::Options o = opts();
  o.limits.max_stack = 3;
  EXPECT_NO_THROW(load(P().mark().none().none().op('l').stop(), o));
  EXPECT_CONTAINS(error_of<LimitError>(P().none().none().none().none().stop(), o), "offset 0x3: pickle stack passes 3 entries");
  EXPECT_CONTAINS(error_of<LimitError>(P().mark().mark().mark().mark().stop(), o), "pickle stack passes 3 entries");
}

TEST(UnpicklerLimits, Cycles) {
  // A list containing itself: EMPTY_LIST BINPUT 0 BINGET 0 APPEND.
  EXPECT_EQ(error_of<FormatError>(P().proto(2).empty_list().binput(0).binget(0).append().stop()),
            "t.pkl: record 'data.pkl': offset 0x8: recursive structure: a container holds itself (directly or "
            "through others), which ckpt does not load");
  // Through a dict and a tuple.
  EXPECT_CONTAINS(error_of<FormatError>(P().empty_dict().binput(0).binunicode("a").binget(0).tuple1().setitem().stop()),
                  "recursive structure");
  // Through an OrderedDict's attributes.
  P attrs;
  attrs.proto(2).global("collections", "OrderedDict").empty_tuple().reduce().binput(0);
  attrs.empty_dict().binunicode("self").binget(0).setitem().build().stop();
  EXPECT_CONTAINS(error_of<FormatError>(attrs), "recursive structure");
  // Through an inert object's state (inspection).
  P obj;
  obj.proto(2).global("m", "C").empty_tuple().reduce().binput(0).empty_dict().binunicode("me").binget(0).setitem();
  obj.build().stop();
  EXPECT_CONTAINS(error_of<FormatError>(obj, opts(GlobalPolicy::inspect)), "recursive structure");
  // A cycle that is garbage (popped) does not matter, and does not leak.
  EXPECT_TRUE(load(P().empty_list().binput(0).binget(0).append().op('0').none().stop()).is_none());
  // Sharing without a cycle is fine.
  Value d = load(P().empty_list().empty_list().binput(0).append().binget(0).append().stop());
  EXPECT_EQ(d.repr(), "[[], []]");
}

std::string nested_lists(size_t depth) {
  std::string p = "\x80\x02";
  p.append(depth, '(');
  p.append(depth, 'l');
  return p + ".";
}

TEST(UnpicklerLimits, DepthIsCheckedExactly) {
  pickle::Options o = opts();
  o.limits.max_depth = 10;
  EXPECT_NO_THROW(load(nested_lists(10), o));
  EXPECT_EQ(error_of<LimitError>(nested_lists(11), o),
            "t.pkl: record 'data.pkl': offset 0x18: nesting deeper than 10 levels (lists, tuples, dicts, sets and "
            "objects inside each other)");
  EXPECT_NO_THROW(load(nested_lists(1000)));  // the default limit
  EXPECT_THROW(load(nested_lists(1001)), LimitError);
}

TEST(UnpicklerLimits, DepthThroughSharedSubtreesIsCounted) {
  // chain = 8 nested lists, kept in the memo; wrap = 4 lists around chain.
  // Both (chain, wrap) and (wrap, chain) are 1 + 4 + 8 = 13 deep, whichever
  // way the DFS meets the shared chain first.
  P first;  // (chain, wrap)
  first.proto(2).mark();
  for (int i = 0; i < 8; ++i) first.mark();
  for (int i = 0; i < 8; ++i) first.op('l');
  first.binput(0);
  for (int i = 0; i < 4; ++i) first.mark();
  first.binget(0);
  for (int i = 0; i < 4; ++i) first.op('l');
  first.tuple().stop();
  P second;  // (wrap, chain)
  second.proto(2).mark();
  for (int i = 0; i < 4 + 8; ++i) second.mark();
  for (int i = 0; i < 8; ++i) second.op('l');
  second.binput(0);
  for (int i = 0; i < 4; ++i) second.op('l');
  second.binget(0).tuple().stop();
  for (const P* p : {&first, &second}) {
    pickle::Options o = opts();
    o.limits.max_depth = 12;
    EXPECT_CONTAINS(error_of<LimitError>(*p, o), "nesting deeper than 12 levels");
    o.limits.max_depth = 13;
    EXPECT_NO_THROW(load(*p, o));
  }
}

TEST(UnpicklerLimits, DeepNestingFailsCleanlyWithoutRecursion) {
  // 100,000 nested lists (MARK ... LIST) and 100,000 nested tuples (TUPLE1).
  EXPECT_CONTAINS(error_of<LimitError>(nested_lists(100000)), "nesting deeper than 1000 levels");
  std::string tuples = "\x80\x02N";
  tuples.append(100000, '\x85');
  EXPECT_CONTAINS(error_of<LimitError>(tuples + "."), "nesting deeper than 1000 levels");
  // 100,000 nested lists built by APPEND through the memo: L0 = [L1], L1 = [L2], ...
  P appended;
  appended.proto(2).empty_list().op('r').u32(0);
  for (uint32_t i = 1; i <= 100000; ++i) appended.empty_list().op('r').u32(i).append().op('0').op('j').u32(i);
  appended.op('0').op('j').u32(0).stop();
  EXPECT_CONTAINS(error_of<LimitError>(appended), "nesting deeper than 1000 levels");
  // Deep garbage (popped before STOP) is freed without recursion too.
  std::string garbage = nested_lists(100000);
  garbage.back() = '0';
  EXPECT_TRUE(load(garbage + "N.").is_none());
  // A deep tuple used as a dict key is refused before anything hashes it.
  EXPECT_CONTAINS(error_of<LimitError>(std::string("\x80\x02}N", 4) + std::string(100000, '\x85') + "Ns."),
                  "nesting deeper than 1000 levels");
  // An error half-way through a deep structure unwinds without recursion.
  std::string broken = nested_lists(100000);
  broken.back() = 'a';  // APPEND onto a tuple... of nothing: stack underflow
  EXPECT_THROW(load(broken + "."), FormatError);
}

TEST(UnpicklerLimits, ExponentialKeysAreRefused) {
  // t0 = (); t_{k+1} = (t_k, t_k): 60 levels is 2^60 values to hash.
  P p;
  p.proto(2).empty_dict().empty_tuple();
  for (int i = 0; i < 60; ++i) p.op('2').tuple2();
  p.none().setitem().stop();
  const auto start = std::chrono::steady_clock::now();
  EXPECT_CONTAINS(error_of<LimitError>(p), "dict keys and set items are too large to hash");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

// Every prefix of a valid pickle is a FormatError, never a crash.
TEST(UnpicklerLimits, TruncationAtEveryByte) {
  std::vector<const std::string*> all = {&kNestedP0, &kNestedP1, &kNestedP2, &kNestedP3, &kNestedP4, &kNestedP5,
                                         &kOrderedDictMetaP0, &kOrderedDictMetaP2, &kOrderedDictMetaP4,
                                         &kLinearSD_torch113, &kLinearSD_torch2, &kViews_torch2, &kFloat8_torch2};
  for (const std::string* full : all) {
    StorageLoader loader;
    pickle::Options o = opts();
    o.persistent_load = [&](const Value& pid, uint64_t off) { return loader(pid, off); };
    ASSERT_NO_THROW(load(*full, o));
    for (size_t n = 0; n < full->size(); ++n) {
      try {
        load(full->substr(0, n), o);
        ADD_FAILURE() << "prefix of " << n << " bytes loaded";
      } catch (const FormatError&) {
      } catch (const std::exception& e) {
        ADD_FAILURE() << "prefix of " << n << " bytes: " << e.what();
      }
    }
  }
}

// Every byte of valid pickles replaced by a few values: an ckpt::Error or a
// value, never a crash (run under ASan/UBSan in the sanitizer build).
TEST(UnpicklerLimits, CorruptionNeverCrashes) {
  struct Case {
    const std::string* pickle;
    std::vector<GlobalPolicy> policies;
  };
  const std::vector<Case> cases = {
      {&kNestedP0, {GlobalPolicy::inspect}},
      {&kNestedP4, {GlobalPolicy::weights_only, GlobalPolicy::inspect}},
      {&kLinearSD_torch2, {GlobalPolicy::weights_only, GlobalPolicy::inspect}},
      {&kPosixSystemP4, {GlobalPolicy::weights_only, GlobalPolicy::inspect}},
  };
  for (const auto& c : cases) {
    for (GlobalPolicy policy : c.policies) {
      pickle::Options o = opts(policy);
      o.persistent_load = [](const Value&, uint64_t) {
        return Value(StorageValue{Storage::allocate(64), DType::float32, "cpu"});
      };
      for (size_t i = 0; i < c.pickle->size(); ++i) {
        for (uint8_t b : {0x00, 0x28, 0x80, 0xff}) {
          std::string bad = *c.pickle;
          bad[i] = static_cast<char>(b);
          try {
            (void)load(bad, o);
          } catch (const Error&) {
          } catch (const std::exception& e) {
            ADD_FAILURE() << "byte " << i << " = " << int(b) << ": " << e.what();
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------- performance

TEST(UnpicklerPerformance, StateDictWith100kEntries) {
  // OrderedDict of 100,000 'layer.N.weight' -> _rebuild_tensor_v2(...) in SETITEMS batches of 1000,
  // memoized as torch writes it (globals fetched from the memo).
  const int n = 100000;
  P p;
  p.proto(2).global("collections", "OrderedDict").binput(0).empty_tuple().reduce().binput(1);
  p.global("torch._utils", "_rebuild_tensor_v2").binput(2).op('0').global("torch", "FloatStorage").binput(3).op('0');
  p.global("collections", "OrderedDict").binput(4).op('0');
  for (int i = 0; i < n; ++i) {
    if (i % 1000 == 0) p.mark();
    p.binunicode("layer." + std::to_string(i) + ".weight");
    p.binget(2).mark().mark().binunicode("storage").binget(3).binunicode(std::to_string(i)).binunicode("cpu");
    p.binint1(4).tuple().binpersid().binint1(0).binint1(4).tuple1().binint1(1).tuple1().op(0x89);
    p.binget(4).empty_tuple().reduce().tuple().reduce();
    if (i % 1000 == 999) p.setitems();
  }
  p.stop();
  pickle::Options o = opts();
  Storage s = Storage::allocate(16);
  o.persistent_load = [&](const Value&, uint64_t) { return Value(StorageValue{s, DType::float32, "cpu"}); };
  const auto start = std::chrono::steady_clock::now();
  Value v = load(p, o);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
  ASSERT_EQ(v.as_dict().size(), static_cast<size_t>(n));
  EXPECT_EQ(v.as_dict().at(Value("layer.99999.weight")).repr(), "tensor(float32, [4])");
  EXPECT_LT(ms.count(), 60000) << "100k entries took " << ms.count() << " ms";
  std::printf("[ info ] 100k-entry state dict (%zu bytes) unpickled in %lld ms\n", p.size(),
              static_cast<long long>(ms.count()));
}

}  // namespace
