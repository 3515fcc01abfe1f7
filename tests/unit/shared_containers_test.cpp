// Regressions for pickles that share containers through the memo so that
// the paths through them number W^depth while the pickle stays a few hundred
// bytes: every walk over such a tree must cost its size or be bounded.
//
// TorchScript (found by reading the code while writing fuzz_torchscript,
// confirmed with a crafted input, now tests/fuzz/regressions/torchscript/;
// the fuzzer itself had not reached it): modules each holding the next level
// twice. The reader walked every path twice (unwrapping TorchScript's
// container wrappers and building module.state_dict()), so a 1.4 KB file with
// 40 levels hung ckpt::load. Unwrapping now visits each shared container
// once; the state dict walk, which must follow every path as torch does, is
// bounded.
//
// Value::repr (found the same way; it is in error messages, e.g. a bad
// persistent id): 20 items per list and 12 levels, its per-container limits,
// still allowed 20^12 items; a 300-byte pickle made a 262 MB message at 6
// levels. The output is now bounded too.
#include <gtest/gtest.h>

#include <string>

#include "ckpt/ckpt.hpp"
#include "container/zip.hpp"
#include "io/file.hpp"

using namespace ckpt;
using namespace std::string_literals;

namespace {

std::string short_unicode(const std::string& s) {  // BINUNICODE
  std::string out = "X";
  uint32_t n = static_cast<uint32_t>(s.size());
  for (int i = 0; i < 4; ++i) out += static_cast<char>((n >> (8 * i)) & 0xff);
  return out + s;
}

// Module objects __torch__.M, level i's state {'a': level i-1, 'b': level i-1}
// (memo references), `levels` levels in all.
std::string shared_module_pickle(int levels) {
  std::string p = "\x80\x02"s;
  p += "c__torch__\nM\n"s;
  p += "q\x00" "0"s;                  // memo[0] = the class; pop
  p += "h\x00)\x81}b" "q\x01" "0"s;   // memo[1] = M() with state {}; pop
  const auto get = [](int i) { return "h"s + static_cast<char>(i); };  // BINGET i
  for (int i = 2; i <= levels; ++i) {
    p += "h\x00)\x81}("s;             // M(), a dict, mark
    p += short_unicode("a") + get(i - 1);
    p += short_unicode("b") + get(i - 1);
    p += "ub";                        // SETITEMS, BUILD
    p += "q";
    p += static_cast<char>(i);
    if (i < levels) p += "0";
  }
  return p + ".";
}

std::string torchscript_archive(const std::string& data_pkl) {
  std::string out;
  auto w = io::string_writer(out);
  zip::ZipWriter z(*w);
  auto add = [&](const std::string& name, const std::string& bytes) {
    z.add(name, std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
  };
  add("archive/data.pkl", data_pkl);
  add("archive/constants.pkl", "\x80\x02)."s);
  add("archive/version", "1");
  z.finish();
  w->close();
  return out;
}

Value load_bytes(const std::string& bytes, bool weights_only) {
  LoadOptions o;
  o.weights_only = weights_only;
  return load(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())), o);
}

}  // namespace

TEST(TorchScriptSharedModules, SharedSubmodulesBelowTheBoundLoad) {
  // 2^15 paths: every one is walked, as module.state_dict() would.
  std::string file = torchscript_archive(shared_module_pickle(16));
  Value v = load_bytes(file, /*weights_only=*/false);
  ASSERT_TRUE(v.is_dict());
  const Value& module = lookup(v, "module");
  ASSERT_TRUE(module.is_object());
  EXPECT_EQ(module.as_object().qualified(), "__torch__.M");
  // The shared child is one object, reached twice.
  const Dict& attrs = module.as_object().state.as_dict();
  EXPECT_EQ(attrs.find(Value("a"))->container_id(), attrs.find(Value("b"))->container_id());
}

TEST(SharedContainers, ReprOfAWideSharedTreeIsBounded) {
  // [x] * 20 where x is [y] * 20 ..., 12 levels: one list per level.
  Value level = Value::list();
  for (int i = 0; i < 12; ++i) level = Value::list(List(20, level));
  std::string r = level.repr();
  EXPECT_LE(r.size(), size_t{80} << 10);
  EXPECT_EQ(r.substr(0, 5), "[[[[[");
  EXPECT_NE(r.find("... (cut at 65536 characters)"), std::string::npos);
  // Small values are untouched.
  EXPECT_EQ(Value::list(List(3, Value::list())).repr(), "[[], [], []]");
}

TEST(SharedContainers, BadPersistentIdWithAWideSharedTreeFailsQuickly) {
  // torch zip data.pkl: BINPERSID on ('x', <the tree above, 6 levels>).
  std::string p = "\x80\x02]q\x00" "0"s;
  for (int i = 1; i <= 6; ++i) {
    p += "]("s;
    for (int k = 0; k < 20; ++k) p += "h"s + static_cast<char>(i - 1);
    p += "eq"s + static_cast<char>(i) + "0";
  }
  p += short_unicode("x") + "h"s + static_cast<char>(6) + "\x86Q."s;
  std::string out;
  auto w = io::string_writer(out);
  zip::ZipWriter z(*w);
  z.add("archive/data.pkl", std::as_bytes(std::span<const char>(p.data(), p.size())));
  z.add("archive/version", std::as_bytes(std::span<const char>("3", 1)));
  z.finish();
  w->close();
  try {
    load(std::as_bytes(std::span<const char>(out.data(), out.size())));
    FAIL() << "loaded a file whose persistent id is not a storage";
  } catch (const FormatError& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("is not a storage reference"), std::string::npos) << what.substr(0, 200);
    EXPECT_LE(what.size(), size_t{80} << 10);
  }
}

TEST(TorchScriptSharedModules, TwoToTheFortyPathsAreRefusedNotWalked) {
  std::string file = torchscript_archive(shared_module_pickle(40));
  for (bool weights_only : {true, false}) {
    try {
      load_bytes(file, weights_only);
      FAIL() << "loaded a module tree with 2^39 paths";
    } catch (const LimitError& e) {
      EXPECT_NE(std::string(e.what()).find("shared submodules"), std::string::npos) << e.what();
    }
  }
}
