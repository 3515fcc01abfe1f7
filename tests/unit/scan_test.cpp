// ckpt::scan_file / scan_paths: verdicts per attack class, where findings
// are reported, directory walks and the JSON document.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ckpt/scan.hpp"

namespace {

using ckpt::ScanCategory;
using ckpt::ScanVerdict;
using namespace std::string_literals;

std::string valid(const std::string& rel) { return std::string(CKPT_TEST_DATA_DIR) + "/valid/" + rel; }
std::string hostile(const std::string& name) { return std::string(CKPT_SOURCE_DIR) + "/tests/hostile/corpus/" + name; }

std::vector<std::byte> bytes(std::string_view s) {
  std::vector<std::byte> b(s.size());
  for (size_t i = 0; i < s.size(); ++i) b[i] = static_cast<std::byte>(s[i]);
  return b;
}

ckpt::ScanReport scan(std::string_view pickle) {
  auto b = bytes(pickle);
  return ckpt::scan_bytes(b, "mem.pkl");
}

const ckpt::ScanFinding* find(const ckpt::ScanReport& r, const std::string& op, const std::string& qualified) {
  for (const auto& f : r.findings)
    if (f.op == op && f.module + "." + f.name == qualified) return &f;
  return nullptr;
}

TEST(Scan, ClassifiesGlobals) {
  EXPECT_EQ(ckpt::classify_global("torch._utils", "_rebuild_tensor_v2"), ScanCategory::allowed);
  EXPECT_EQ(ckpt::classify_global("collections", "OrderedDict"), ScanCategory::allowed);
  EXPECT_EQ(ckpt::classify_global("numpy.core.multiarray", "_reconstruct"), ScanCategory::known);
  EXPECT_EQ(ckpt::classify_global("numpy", "dtype"), ScanCategory::known);
  EXPECT_EQ(ckpt::classify_global("argparse", "Namespace"), ScanCategory::known);
  EXPECT_EQ(ckpt::classify_global("collections", "defaultdict"), ScanCategory::known);
  EXPECT_EQ(ckpt::classify_global("__torch__.my.Module", "Net"), ScanCategory::known);
  EXPECT_EQ(ckpt::classify_global("pytorch_lightning.utilities.parsing", "AttributeDict"), ScanCategory::known);
  EXPECT_EQ(ckpt::classify_global("omegaconf.dictconfig", "DictConfig"), ScanCategory::known);
  EXPECT_EQ(ckpt::classify_global("os", "system"), ScanCategory::dangerous);
  EXPECT_EQ(ckpt::classify_global("posix", "system"), ScanCategory::dangerous);
  EXPECT_EQ(ckpt::classify_global("os.path", "join"), ScanCategory::dangerous);  // a submodule of a denied module
  EXPECT_EQ(ckpt::classify_global("subprocess", "Popen"), ScanCategory::dangerous);
  EXPECT_EQ(ckpt::classify_global("builtins", "eval"), ScanCategory::dangerous);
  EXPECT_EQ(ckpt::classify_global("__builtin__", "eval"), ScanCategory::dangerous);  // Python 2 name
  EXPECT_EQ(ckpt::classify_global("builtins", "getattr"), ScanCategory::dangerous);
  EXPECT_EQ(ckpt::classify_global("builtins", "eval.__call__"), ScanCategory::dangerous);  // dotted attribute
  EXPECT_EQ(ckpt::classify_global("collections", "OrderedDict.__init__"), ScanCategory::unknown);
  EXPECT_EQ(ckpt::classify_global("_pickle", "loads"), ScanCategory::dangerous);
  EXPECT_EQ(ckpt::classify_global("torch", "load"), ScanCategory::dangerous);
  EXPECT_EQ(ckpt::classify_global("torch._C", "_anything"), ScanCategory::dangerous);
  EXPECT_EQ(ckpt::classify_global("numpy.testing._private.utils", "runstring"), ScanCategory::dangerous);
  EXPECT_EQ(ckpt::classify_global("evil_plugin", "run"), ScanCategory::unknown);
  // Framework modules: their classes are inert, their functions are not listed.
  EXPECT_EQ(ckpt::classify_global("transformers.utils.hub", "cached_file"), ScanCategory::unknown);
  EXPECT_EQ(ckpt::scan_category_name(ScanCategory::known), "known");
  EXPECT_EQ(ckpt::scan_verdict_name(ScanVerdict::unsafe_but_known), "unsafe-but-known");
}

TEST(Scan, RealCheckpointsAreSafe) {
  for (const char* f : {"torch2/checkpoint.pt", "torch2/checkpoint_legacy.pt", "torch113/old_tar.pt",
                        "torch113/net_state_dict.pt", "safetensors/all_dtypes.safetensors"}) {
    ckpt::ScanReport r = ckpt::scan_file(valid(f));
    EXPECT_EQ(r.verdict, ScanVerdict::safe) << f;
    EXPECT_TRUE(r.errors.empty()) << f << ": " << (r.errors.empty() ? "" : r.errors[0]);
    EXPECT_TRUE(r.findings.empty()) << f;  // allowed findings are left out by default
  }
  ckpt::ScanReport all = ckpt::scan_file(valid("torch2/net_state_dict.pt"), {.include_allowed = true});
  EXPECT_EQ(all.verdict, ScanVerdict::safe);
  ASSERT_NE(find(all, "reduce", "torch._utils._rebuild_tensor_v2"), nullptr);
  EXPECT_EQ(find(all, "reduce", "torch._utils._rebuild_tensor_v2")->category, ScanCategory::allowed);
  EXPECT_EQ(all.format, ckpt::Format::torch_zip);
}

TEST(Scan, TorchScriptIsUnsafeButKnown) {
  ckpt::ScanReport r = ckpt::scan_file(valid("torch2/scripted.pt"));
  EXPECT_EQ(r.verdict, ScanVerdict::unsafe_but_known);
  EXPECT_EQ(r.format, ckpt::Format::torchscript);
  EXPECT_TRUE(r.errors.empty());
  ASSERT_FALSE(r.findings.empty());
  for (const auto& f : r.findings) EXPECT_EQ(f.category, ScanCategory::known) << f.module << "." << f.name;
  // constants.pkl and the .debug_pkl records are scanned too, not only data.pkl
  EXPECT_GT(r.pickles.size(), 2u);
}

TEST(Scan, ReportsRecordAndOffset) {
  // GLOBAL at offset 2 (after PROTO 2), REDUCE after the argument tuple.
  static constexpr char kEvil[] = "\x80\x02" "cos\nsystem\n(X\x01\x00\x00\x00xtR.";
  ckpt::ScanReport r = scan(std::string_view(kEvil, sizeof kEvil - 1));
  EXPECT_EQ(r.verdict, ScanVerdict::dangerous);
  EXPECT_TRUE(r.bare_pickle);
  const ckpt::ScanFinding* g = find(r, "global", "os.system");
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->offset, 2u);
  EXPECT_EQ(g->record, "");
  EXPECT_EQ(g->category, ScanCategory::dangerous);
  const ckpt::ScanFinding* call = find(r, "reduce", "os.system");
  ASSERT_NE(call, nullptr);
  EXPECT_EQ(call->offset, 21u);

  // A pickle hidden in an extra zip record, while data.pkl itself is damaged.
  ckpt::ScanReport z = ckpt::scan_file(hostile("zip_extra_pkl.pt"));
  EXPECT_EQ(z.verdict, ScanVerdict::dangerous);
  const ckpt::ScanFinding* hidden = find(z, "global", "os.system");
  ASSERT_NE(hidden, nullptr);
  EXPECT_EQ(hidden->record, "archive/extra.pkl");
  EXPECT_EQ(hidden->offset, 2u);
  ASSERT_EQ(z.errors.size(), 1u);
  EXPECT_NE(z.errors[0].find("archive/data.pkl"), std::string::npos) << z.errors[0];
}

TEST(Scan, VerdictPerAttackClass) {
  struct Case {
    const char* file;
    ScanVerdict verdict;
    const char* expect;  // a finding "op module.name" that must be there ("" for none)
  };
  const Case cases[] = {
      {"reduce_os_system.pt", ScanVerdict::dangerous, "reduce os.system"},
      {"reduce_proto0_os_system.pkl", ScanVerdict::dangerous, "reduce os.system"},
      {"reduce_unknown_module.pt", ScanVerdict::dangerous, "reduce evil_plugin.loader.run"},
      {"getattr_builtins_eval.pkl", ScanVerdict::dangerous, "reduce builtins.getattr"},
      {"inst_os_system.pkl", ScanVerdict::dangerous, "inst os.system"},
      {"obj_os_system.pkl", ScanVerdict::dangerous, "obj os.system"},
      {"newobj_subprocess_popen.pkl", ScanVerdict::dangerous, "newobj subprocess.Popen"},
      {"newobj_ex_popen_shell.pkl", ScanVerdict::dangerous, "newobj_ex subprocess.Popen"},
      {"build_setstate_unknown.pkl", ScanVerdict::dangerous, "build evil_plugin.Gadget"},
      {"stack_global_memo_names.pkl", ScanVerdict::dangerous, "global os.system"},
      {"stack_global_names_in_list.pkl", ScanVerdict::dangerous, "global subprocess.getoutput"},
      {"global_odd_chars.pkl", ScanVerdict::dangerous, "global os.sys\x7ftem\t"},
      {"memo_overwrite_slot.pkl", ScanVerdict::dangerous, "reduce os.system"},
      {"ext2_code.pkl", ScanVerdict::dangerous, "ext copyreg.ext.4660"},
      {"nested_pickle_loads.pt", ScanVerdict::dangerous, "reduce pickle.loads"},
      {"zip_storage_record_is_pickle.pt", ScanVerdict::dangerous, "global os.system"},
      {"zip_proto0_record.pt", ScanVerdict::dangerous, "reduce os.system"},
      {"zip_bomb_data_pkl.pt", ScanVerdict::dangerous, "global os.system"},
      {"legacy_keys_evil.pt", ScanVerdict::dangerous, "reduce os.system"},
      {"tar_pickle_evil.pt", ScanVerdict::dangerous, "reduce os.system"},
      {"ts_constants_evil.pt", ScanVerdict::dangerous, "reduce os.system"},
      {"ts_code_dir_pickle.pt", ScanVerdict::dangerous, "reduce os.system"},
      {"persid_type_is_os_system.pt", ScanVerdict::dangerous, "global os.system"},
      {"persid_huge_numel.pt", ScanVerdict::error, ""},
      {"zip_duplicate_data_pkl.pt", ScanVerdict::error, ""},
      {"absurd_binunicode8.pt", ScanVerdict::error, ""},
      {"absurd_long4.pkl", ScanVerdict::error, ""},
      {"absurd_nesting.pt", ScanVerdict::error, ""},
      {"trunc_00_at_1.pt", ScanVerdict::error, ""},
  };
  for (const Case& c : cases) {
    ckpt::ScanReport r = ckpt::scan_file(hostile(c.file));
    EXPECT_EQ(r.verdict, c.verdict) << c.file;
    if (c.verdict == ScanVerdict::error) {
      EXPECT_FALSE(r.errors.empty()) << c.file;
    }
    std::string expect = c.expect;
    if (expect.empty()) continue;
    size_t sp = expect.find(' ');
    EXPECT_NE(find(r, expect.substr(0, sp), expect.substr(sp + 1)), nullptr) << c.file << ": no " << expect;
  }
}

TEST(Scan, NestedPicklesAreDecodedInTurn) {
  // pickle.loads(b'<a pickle of os.system(...)>') in data.pkl: the inner
  // os.system is reported under the record of the outer pickle.
  ckpt::ScanReport r = ckpt::scan_file(hostile("nested_pickle_loads.pt"));
  EXPECT_EQ(r.verdict, ScanVerdict::dangerous);
  const ckpt::ScanFinding* inner = find(r, "reduce", "os.system");
  ASSERT_NE(inner, nullptr);
  EXPECT_EQ(inner->record, "archive/data.pkl > pickle.loads");
  EXPECT_EQ(inner->offset, 0x2fu);  // inside the nested pickle, as for archive/extra.pkl
  ckpt::ScanReport bare = ckpt::scan_file(hostile("nested_cpickle_loads.pkl"));
  ASSERT_NE(find(bare, "global", "os.system"), nullptr);
  EXPECT_EQ(find(bare, "global", "os.system")->record, "pickle.loads");
}

TEST(Scan, DamagedPickleKeepsWhatWasSeenBeforeTheDamage) {
  // os.system, then an unknown opcode 0xff.
  ckpt::ScanReport r = scan("\x80\x02" "cos\nsystem\n\xff");
  EXPECT_EQ(r.verdict, ScanVerdict::dangerous);
  EXPECT_NE(find(r, "global", "os.system"), nullptr);
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].find("mem.pkl"), std::string::npos) << r.errors[0];

  ckpt::ScanReport clean = scan("\x80\x02]");  // a list, no STOP
  EXPECT_EQ(clean.verdict, ScanVerdict::error);
  EXPECT_TRUE(clean.findings.empty());

  ckpt::ScanReport junk = scan("\x01\x02\x03 not a checkpoint");
  EXPECT_EQ(junk.verdict, ScanVerdict::error);
  EXPECT_EQ(ckpt::scan_exit_code({junk}), 2);
}

TEST(Scan, StackGlobalOfCallResultsIsDangerous) {
  // module = str('os') built by a call, name 'getcwd', then called: CPython
  // imports os.getcwd and calls it (checked with pickle.loads in both
  // Pythons). A value built by a call may be any str at run time, so the
  // verdict is dangerous (exit 1), never an error (exit 2), even when the
  // call itself is not flagged.
  std::string p = "\x80\x04" "cbuiltins\nstr\n" "(X\x02\x00\x00\x00ostR" "X\x06\x00\x00\x00getcwd" "\x93)R."s;
  ckpt::ScanReport r = scan(p);
  EXPECT_EQ(r.verdict, ScanVerdict::dangerous);
  EXPECT_TRUE(r.errors.empty()) << r.errors[0];
  EXPECT_NE(find(r, "global", "<built by a call>.getcwd"), nullptr);
  EXPECT_EQ(ckpt::scan_exit_code({r}), 1);
  // Literal operands that are not str: CPython raises "STACK_GLOBAL requires
  // str" before importing anything, so that stays an error.
  ckpt::ScanReport bad = scan("\x80\x04K\x01X\x01\x00\x00\x00x\x93."s);
  EXPECT_EQ(bad.verdict, ScanVerdict::error);
  EXPECT_EQ(ckpt::scan_exit_code({bad}), 2);
}

TEST(Scan, ProtocolZeroMemoIndicesAsPythonReadsThem) {
  // "p 7" / "g1_0" are valid memo indices for CPython: this file calls
  // os.system, so it must be dangerous, not an error.
  ckpt::ScanReport r = scan("cos\nsystem\np 7\n0g7\n(S'true'\ntR.");
  EXPECT_EQ(r.verdict, ScanVerdict::dangerous);
  EXPECT_TRUE(r.errors.empty()) << r.errors[0];
  ckpt::ScanReport r2 = scan("cos\nsystem\np1_0\n0g 10 \n(S'true'\ntR.");
  EXPECT_EQ(r2.verdict, ScanVerdict::dangerous);
  EXPECT_TRUE(r2.errors.empty()) << r2.errors[0];
}

TEST(Scan, DirectoryOfSymlinksLikeHuggingFaceCache) {
  namespace fs = std::filesystem;
  fs::path root = fs::temp_directory_path() / ("ckpt_scan_hf_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
                                               "_" + std::to_string(reinterpret_cast<uintptr_t>(&root)));
  fs::remove_all(root);
  fs::path repo = root / "models--org--net";
  fs::create_directories(repo / "blobs");
  fs::create_directories(repo / "snapshots" / "abc123" / "sub");
  fs::create_directories(repo / "refs");
  auto write = [](const fs::path& p, std::string_view s) { std::ofstream(p, std::ios::binary) << s; };
  write(repo / "refs" / "main", "abc123");
  write(repo / "blobs" / "1111", "\x80\x02}q\x00."s);                        // a clean pickle
  write(repo / "blobs" / "2222", "\x80\x02" "cos\nsystem\n(S'true'\ntR."); // a malicious one
  write(repo / "blobs" / "3333", "{\"model_type\": \"x\"}");                  // config.json
  fs::create_symlink("../../blobs/1111", repo / "snapshots" / "abc123" / "pytorch_model.bin");
  fs::create_symlink("../../../blobs/2222", repo / "snapshots" / "abc123" / "sub" / "evil.pt");
  fs::create_symlink("../../blobs/3333", repo / "snapshots" / "abc123" / "config.json");
  fs::create_symlink("../..", repo / "snapshots" / "abc123" / "loop");  // a cycle
  fs::create_symlink("missing", repo / "snapshots" / "abc123" / "dangling");

  // The snapshot alone: only links, every checkpoint is scanned.
  auto snap = ckpt::scan_paths({(repo / "snapshots").string()});
  ASSERT_EQ(snap.size(), 2u);
  EXPECT_EQ(snap[0].path, (repo / "snapshots" / "abc123" / "pytorch_model.bin").string());
  EXPECT_EQ(snap[0].verdict, ScanVerdict::safe);
  EXPECT_EQ(snap[1].path, (repo / "snapshots" / "abc123" / "sub" / "evil.pt").string());
  EXPECT_EQ(snap[1].verdict, ScanVerdict::dangerous);
  EXPECT_EQ(ckpt::scan_exit_code(snap), 1);

  // The whole cache: each real file once, under its snapshot name.
  auto all = ckpt::scan_paths({root.string()});
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].path, (repo / "snapshots" / "abc123" / "pytorch_model.bin").string());
  EXPECT_EQ(all[1].path, (repo / "snapshots" / "abc123" / "sub" / "evil.pt").string());

  // A directory with no checkpoint at all is an error (exit 2), not "0 files".
  fs::create_directories(root / "empty");
  write(root / "empty" / "README.md", "hello");
  auto none = ckpt::scan_paths({(root / "empty").string()});
  ASSERT_EQ(none.size(), 1u);
  EXPECT_EQ(none[0].verdict, ScanVerdict::error);
  ASSERT_EQ(none[0].errors.size(), 1u);
  EXPECT_NE(none[0].errors[0].find("no checkpoint or pickle found"), std::string::npos) << none[0].errors[0];
  EXPECT_EQ(ckpt::scan_exit_code(none), 2);
  fs::remove_all(root);
}

TEST(Scan, KnownClassesGiveUnsafeButKnown) {
  // argparse.Namespace() then NEWOBJ-free BUILD-free: GLOBAL + EMPTY_TUPLE + REDUCE
  ckpt::ScanReport r = scan("\x80\x02" "cargparse\nNamespace\n)R.");
  EXPECT_EQ(r.verdict, ScanVerdict::unsafe_but_known);
  EXPECT_EQ(ckpt::scan_exit_code({r}), 0);
  ASSERT_NE(find(r, "reduce", "argparse.Namespace"), nullptr);
  EXPECT_EQ(find(r, "reduce", "argparse.Namespace")->category, ScanCategory::known);
}

class ScanDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("ckpt_scan_test_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            std::to_string(reinterpret_cast<uintptr_t>(this)));
    std::filesystem::create_directories(dir_ / "b" / "deeper");
    std::filesystem::create_directories(dir_ / "a");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void write(const std::filesystem::path& rel, std::string_view content) {
    std::ofstream(dir_ / rel, std::ios::binary).write(content.data(), static_cast<std::streamsize>(content.size()));
  }
  std::filesystem::path dir_;
};

TEST_F(ScanDir, WalksRecursivelyInSortedOrderFollowingLinksOnce) {
  write("b/deeper/evil.pkl", "cos\nsystem\n(S'x'\ntR.");
  write("a/clean.pkl", "\x80\x02].");
  write("z_broken.pt", "PK\x03\x04 a damaged zip");
  write("config.json", "{\"not\": \"a checkpoint\"}");  // not a checkpoint: left out of a walk
  write("empty.bin", "");
  std::filesystem::copy_file(valid("torch2/net_state_dict.pt"), dir_ / "a" / "model.pt");
  std::filesystem::create_symlink(dir_ / "b" / "deeper" / "evil.pkl", dir_ / "a" / "link.pkl");
  std::filesystem::create_directory_symlink(dir_ / "b", dir_ / "a" / "linkdir");

  auto reports = ckpt::scan_paths({dir_.string()});
  std::vector<std::string> names;
  for (const auto& r : reports) names.push_back(std::filesystem::path(r.path).lexically_relative(dir_).string());
  // evil.pkl is scanned once, under its link's name; b/ is entered once
  // (first as a/linkdir, where sorted order meets it first).
  EXPECT_EQ(names, (std::vector<std::string>{"a/clean.pkl", "a/link.pkl", "a/model.pt", "z_broken.pt"}));
  ASSERT_EQ(reports.size(), 4u);
  EXPECT_EQ(reports[0].verdict, ScanVerdict::safe);
  EXPECT_EQ(reports[1].verdict, ScanVerdict::dangerous);
  EXPECT_EQ(reports[2].verdict, ScanVerdict::safe);
  EXPECT_EQ(reports[3].verdict, ScanVerdict::error);  // a per-file error does not stop the walk
  EXPECT_EQ(ckpt::scan_exit_code(reports), 1);

  // A link named explicitly is scanned; a missing path is an error report.
  // A file that is no checkpoint is an error when named explicitly.
  auto explicit_link = ckpt::scan_paths({(dir_ / "a" / "link.pkl").string(), (dir_ / "nope").string(),
                                         (dir_ / "config.json").string()});
  ASSERT_EQ(explicit_link.size(), 3u);
  EXPECT_EQ(explicit_link[2].verdict, ScanVerdict::error);
  EXPECT_TRUE(explicit_link[2].unrecognized);
  EXPECT_EQ(explicit_link[0].verdict, ScanVerdict::dangerous);
  EXPECT_EQ(explicit_link[1].verdict, ScanVerdict::error);
  EXPECT_EQ(ckpt::scan_exit_code({explicit_link[1]}), 2);
}

TEST(Scan, JsonSchema) {
  std::vector<ckpt::ScanReport> reports = {ckpt::scan_file(hostile("zip_extra_pkl.pt")),
                                           ckpt::scan_file(valid("torch2/scripted.pt")),
                                           ckpt::scan_file(valid("torch2/checkpoint.pt"))};
  auto doc = nlohmann::json::parse(ckpt::scan_reports_json(reports));
  EXPECT_EQ(doc["schema"], "ckpt-scan/1");
  EXPECT_EQ(doc["exit_code"], 1);
  EXPECT_EQ(doc["summary"]["files"], 3);
  EXPECT_EQ(doc["summary"]["dangerous"], 1);
  EXPECT_EQ(doc["summary"]["unsafe-but-known"], 1);
  EXPECT_EQ(doc["summary"]["safe"], 1);
  EXPECT_EQ(doc["summary"]["error"], 0);
  ASSERT_EQ(doc["files"].size(), 3u);
  for (const auto& f : doc["files"]) {
    for (const char* key : {"path", "format", "verdict", "pickles", "findings", "findings_omitted", "errors"})
      EXPECT_TRUE(f.contains(key)) << key;
    for (const auto& x : f["findings"]) {
      EXPECT_TRUE(x["record"].is_string());
      EXPECT_TRUE(x["offset"].is_number_unsigned());
      EXPECT_TRUE(x["op"].is_string());
      EXPECT_TRUE(x["module"].is_string());
      EXPECT_TRUE(x["name"].is_string());
      EXPECT_TRUE(x["category"].is_string());
    }
  }
  const auto& evil = doc["files"][0];
  EXPECT_EQ(evil["verdict"], "dangerous");
  EXPECT_EQ(evil["format"], "torch_zip");
  EXPECT_EQ(evil["findings"][0]["record"], "archive/extra.pkl");
  EXPECT_EQ(evil["findings"][0]["module"], "os");
  EXPECT_EQ(evil["findings"][0]["name"], "system");
  EXPECT_EQ(evil["findings"][0]["category"], "dangerous");
  EXPECT_EQ(evil["errors"].size(), 1u);
  EXPECT_EQ(doc["files"][1]["format"], "torchscript");
  EXPECT_EQ(doc["files"][1]["verdict"], "unsafe-but-known");
}

}  // namespace
