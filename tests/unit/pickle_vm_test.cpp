// The safe pickle VM on hand-written and CPython-written pickles.
#include <gtest/gtest.h>

#include <string>

#include "ckpt/error.hpp"
#include "pickle/unpickler.hpp"

using namespace ckpt;
using ckpt::pickle::GlobalPolicy;

namespace {

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

Value load(const std::string& p, GlobalPolicy policy = GlobalPolicy::weights_only,
           pickle::Observer* observer = nullptr) {
  pickle::Options o;
  o.policy = policy;
  o.observer = observer;
  o.file = "t.pkl";
  o.record = "data.pkl";
  return pickle::unpickle(bytes_of(p), o);
}

std::string error_of(const std::string& p, GlobalPolicy policy = GlobalPolicy::weights_only) {
  try {
    load(p, policy);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

struct Recorder : pickle::Observer {
  std::vector<std::string> seen;
  void on_event(const pickle::Event& e) override {
    seen.push_back(std::to_string(static_cast<int>(e.kind)) + ":" + e.module + "." + e.name + (e.allowed ? "" : "!"));
  }
};

// CPython pickle.dumps outputs (protocols 0-5) of
// {'a': [1, -2, 2**40, 2**100, -2**70], 'b': (1.5, 'é', b'\x00\xff', None, True), 3: {7}}
// made with /usr/bin/python3 (3.11).
const std::string kP0("(dp0\x0aVa\x0ap1\x0a(lp2\x0aI1\x0a" "aI-2\x0a" "aL1099511627776L\x0a" "aL1267650600228229401496703205376L\x0a" "aL-1180591620717411303424L\x0a" "asVb\x0ap3\x0a(F1.5\x0aV\xe9\x0ap4\x0a" "c_codecs\x0a" "encode\x0ap5\x0a(V\x5cu0000\xff\x0ap6\x0aVlatin1\x0ap7\x0atp8\x0aRp9\x0aNI01\x0atp10\x0asI3\x0a" "c__builtin__\x0aset\x0ap11\x0a((lp12\x0aI7\x0a" "atp13\x0aRp14\x0as.", 232);
const std::string kP2("\x80\x02}q\x00(X\x01\x00\x00\x00" "aq\x01]q\x02(K\x01J\xfe\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x0d\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\xc0" "eX\x01\x00\x00\x00" "bq\x03(G\x3f\xf8\x00\x00\x00\x00\x00\x00X\x02\x00\x00\x00\xc3\xa9q\x04" "c_codecs\x0a" "encode\x0aq\x05X\x03\x00\x00\x00\x00\xc3\xbfq\x06X\x06\x00\x00\x00latin1q\x07\x86q\x08Rq\x09N\x88tq\x0aK\x03" "c__builtin__\x0aset\x0aq\x0b]q\x0cK\x07" "a\x85q\x0dRq\x0eu.", 174);
const std::string kP4("\x80\x04\x95Z\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01" "a\x94]\x94(K\x01J\xfe\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x0d\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x10\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\xc0" "e\x8c\x01" "b\x94(G\x3f\xf8\x00\x00\x00\x00\x00\x00\x8c\x02\xc3\xa9\x94" "C\x02\x00\xff\x94N\x88t\x94K\x03\x8f\x94(K\x07\x90u.", 101);

const char* kExpected = "{'a': [1, -2, 1099511627776, 1267650600228229401496703205376, -1180591620717411303424], "
                        "'b': (1.5, '\xc3\xa9', b'\\x00\\xff', None, True), 3: {7}}";

TEST(PickleVM, DecodesEveryProtocolTheSame) {
  for (const std::string* p : {&kP0, &kP2, &kP4}) EXPECT_EQ(load(*p).repr(), kExpected);
}

TEST(PickleVM, MemoKeepsIdentity) {
  // x = []; pickle.dumps([x, x], 2)
  std::string p("\x80\x02]q\x00(]q\x01h\x01" "e.", 13);
  Value v = load(p);
  ASSERT_EQ(v.as_list().size(), 2u);
  EXPECT_EQ(v.as_list()[0].container_id(), v.as_list()[1].container_id());
}

TEST(PickleVM, OrderedDictWithMetadataBuild) {
  // OrderedDict([('w', 1)]) with __dict__ {'_metadata': {'': {'version': 1}}}, protocol 2
  std::string p("\x80\x02" "ccollections\x0aOrderedDict\x0aq\x00)Rq\x01X\x01\x00\x00\x00wq\x02K\x01s}q\x03X\x09\x00\x00\x00_metadataq\x04}q\x05X\x00\x00\x00\x00q\x06}q\x07X\x07\x00\x00\x00versionq\x08K\x01sssb.", 97);
  Value v = load(p);
  ASSERT_TRUE(v.is_dict());
  EXPECT_TRUE(v.as_dict().ordered);
  EXPECT_EQ(v.as_dict().at(Value("w")).as_int(), 1);
  EXPECT_EQ(v.as_dict().attributes.repr(), "{'_metadata': {'': {'version': 1}}}");
}

TEST(PickleVM, RebuildsTensorsThroughPersistentLoad) {
  // _rebuild_tensor_v2(pid('storage', FloatStorage, '0', 'cpu', 6), 1, (2, 2), (2, 1), True, OrderedDict())
  std::string p("\x80\x02" "ctorch._utils\x0a_rebuild_tensor_v2\x0aq\x00((X\x07\x00\x00\x00storageq\x01" "ctorch\x0a" "FloatStorage\x0aq\x02X\x01\x00\x00\x00" "0q\x03X\x03\x00\x00\x00" "cpuq\x04K\x06tq\x05QK\x01K\x02K\x02\x86q\x06K\x02K\x01\x86q\x07\x88" "ccollections\x0aOrderedDict\x0aq\x08)Rq\x09tq\x0aRq\x0b.", 154);
  pickle::Options o;
  int calls = 0;
  o.persistent_load = [&](const Value& pid, uint64_t) {
    ++calls;
    EXPECT_EQ(pid.repr(), "('storage', <global torch.FloatStorage>, '0', 'cpu', 6)");
    return Value(StorageValue{Storage::allocate(24), DType::float32, "cuda:0"});
  };
  Value v = pickle::unpickle(bytes_of(p), o);
  ASSERT_TRUE(v.is_tensor());
  const Tensor& t = v.as_tensor();
  EXPECT_EQ(t.sizes(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(t.storage_offset(), 1);
  EXPECT_TRUE(t.requires_grad());
  EXPECT_EQ(t.device(), "cuda:0");
  EXPECT_EQ(calls, 1);
  // The same pickle with a storage too small for the view is refused.
  o.persistent_load = [](const Value&, uint64_t) { return Value(StorageValue{Storage::allocate(8), DType::float32}); };
  EXPECT_THROW(pickle::unpickle(bytes_of(p), o), FormatError);
}

struct Malicious {
  const char* name;
  std::string pickle;
  const char* global;  // what the error must name
};

std::vector<Malicious> malicious() {
  return {
      {"os.system via GLOBAL+REDUCE", std::string("\x80\x02" "cos\x0asystem\x0aX\x07\x00\x00\x00touch x\x85R.", 28), "os.system"},
      {"posix.system", std::string("cposix\x0asystem\x0a(S'touch x'\x0atR.", 29), "posix.system"},
      {"builtins.eval", std::string("c__builtin__\x0a" "eval\x0a(S'1'\x0atR.", 27), "builtins.eval"},
      {"builtins.exec", std::string("cbuiltins\x0a" "exec\x0a(S'1'\x0atR.", 24), "builtins.exec"},
      {"subprocess.Popen", std::string("csubprocess\x0aPopen\x0a((S'touch'\x0altR.", 33), "subprocess.Popen"},
      {"getattr chain", std::string("cbuiltins\x0agetattr\x0a(cbuiltins\x0aobject\x0aS'__subclasses__'\x0atR.", 57), "builtins.getattr"},
      {"INST opcode", std::string("(S'touch x'\x0aios\x0asystem\x0a.", 24), "os.system"},
      {"OBJ opcode", std::string("(cos\x0asystem\x0aS'touch x'\x0ao.", 25), "os.system"},
      {"STACK_GLOBAL", std::string("\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x01x\x85R.", 21), "os.system"},
      {"STACK_GLOBAL via memo", std::string("\x80\x04\x8c\x02os\x94\x8c\x06system\x94" "00h\x00h\x01\x93.", 24), "os.system"},
      {"NEWOBJ_EX", std::string("\x80\x04\x8c\x0asubprocess\x8c\x05Popen\x93)}\x92.", 26), "subprocess.Popen"},
      {"runpy", std::string("crunpy\x0a_run_code\x0a(S'x'\x0atR.", 26), "runpy._run_code"},
      {"torch.load nested", std::string("ctorch\x0aload\x0a(S'x'\x0atR.", 21), "torch.load"},
  };
}

TEST(PickleVM, RefusesDangerousGlobalsNamingThemAndTheOffset) {
  for (const auto& m : malicious()) {
    SCOPED_TRACE(m.name);
    try {
      load(m.pickle);
      ADD_FAILURE() << "loaded";
    } catch (const UnsafeError& e) {
      std::string msg = e.what();
      EXPECT_NE(msg.find(std::string("'") + m.global + "'"), std::string::npos) << msg;
      EXPECT_NE(msg.find("t.pkl: record 'data.pkl': offset 0x"), std::string::npos) << msg;
    }
  }
}

TEST(PickleVM, InspectModeKeepsThemInertAndReportsThem) {
  for (const auto& m : malicious()) {
    SCOPED_TRACE(m.name);
    Recorder r;
    Value v = load(m.pickle, GlobalPolicy::inspect, &r);
    EXPECT_FALSE(r.seen.empty());
    bool flagged = false;
    for (const auto& s : r.seen) flagged = flagged || s.back() == '!';
    EXPECT_TRUE(flagged);
    EXPECT_TRUE(v.is_object() || v.kind() == Value::Kind::Global) << v.repr();
  }
}

TEST(PickleVM, ExtensionCodesAreRefused) {
  EXPECT_NE(error_of(std::string("\x80\x02\x82\x01.", 4)).find("extension registry"), std::string::npos);
}

TEST(PickleVM, LimitsAndMalformedInputAreErrors) {
  // LONG_BINPUT with a huge index and little data
  EXPECT_NO_THROW(load(std::string("\x80\x02N\x72\xff\xff\xff\xff.", 9)));
  // BINUNICODE claiming 4 GB with 3 bytes present
  EXPECT_NE(error_of(std::string("\x80\x02X\xff\xff\xff\xff" "abc.", 11)).find("BINUNICODE of 4294967295 bytes"), std::string::npos);
  // GET of a missing memo entry
  EXPECT_NE(error_of(std::string("\x80\x02h\x05.", 5)).find("memo entry 5"), std::string::npos);
  // A list containing itself
  EXPECT_NE(error_of(std::string("\x80\x02]q\x00h\x00" "a.", 9)).find("recursive"), std::string::npos);
  // Unknown opcode, stack underflow, STOP with extra values, no STOP at all
  EXPECT_NE(error_of(std::string("\x80\x02\xff.", 4)).find("unknown pickle opcode 0xff"), std::string::npos);
  EXPECT_NE(error_of("a."), "");
  EXPECT_NE(error_of("NN."), "");
  EXPECT_NE(error_of("N").find("truncated"), std::string::npos);
  // Unhashable dict key
  EXPECT_NE(error_of(std::string("\x80\x02}]K\x01s.", 7)).find("unhashable"), std::string::npos);
}

TEST(PickleVM, DeepNestingFailsCleanlyWithoutRecursion) {
  // 200,000 nested lists: EMPTY_LIST then (EMPTY_LIST, APPEND into the previous
  // one via memo) — built as [[[[...]]]] with MARK/LIST to avoid memo.
  std::string p = "\x80\x02";
  const int depth = 200000;
  for (int i = 0; i < depth; ++i) p += '(';
  for (int i = 0; i < depth; ++i) p += 'l';
  p += '.';
  EXPECT_NE(error_of(p).find("nest deeper than"), std::string::npos);
}

TEST(PickleVM, TruncationAtEveryByteNeverCrashes) {
  for (const std::string* full : {&kP0, &kP2, &kP4}) {
    for (size_t n = 0; n < full->size(); ++n) EXPECT_THROW(load(full->substr(0, n)), Error) << n;
  }
}

TEST(PickleVM, AllowListMatchesTorch) {
  EXPECT_TRUE(pickle::is_allowed_global("torch._utils", "_rebuild_tensor_v2"));
  EXPECT_TRUE(pickle::is_allowed_global("torch", "BFloat16Storage"));
  EXPECT_TRUE(pickle::is_allowed_global("torch.cuda", "FloatTensor"));
  EXPECT_TRUE(pickle::is_allowed_global("torch", "float8_e4m3fn"));
  EXPECT_TRUE(pickle::is_allowed_global("torch", "uint3"));
  EXPECT_FALSE(pickle::is_allowed_global("torch", "float"));  // aliases are not globals torch writes
  EXPECT_FALSE(pickle::is_allowed_global("os", "system"));
  EXPECT_FALSE(pickle::is_allowed_global("builtins", "getattr"));
  EXPECT_FALSE(pickle::is_allowed_global("numpy.core.multiarray", "_reconstruct"));
}

}  // namespace
