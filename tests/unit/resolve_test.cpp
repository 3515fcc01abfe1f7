// What a path names is decided once (src/api/resolve.cpp): each thing the
// loaders learn about the path (its status, a directory's listing, the file
// itself) is asked of the file system once, and the file decided on is the
// file loaded. Counted through an io::Env that records every read-side call.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <string>

#include "ckpt/ckpt.hpp"
#include "io/file.hpp"
#include "test_util.hpp"

namespace ckpt {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

class CountingEnv final : public io::Env {
 public:
  std::shared_ptr<io::RandomAccessFile> open_for_read(const std::string& path, io::ReadMode mode) override {
    count("open " + name(path));
    return base_.open_for_read(path, mode);
  }
  io::FileStatus status(const std::string& path) override {
    count("status " + name(path));
    return base_.status(path);
  }
  std::vector<io::DirEntry> list_dir(const std::string& dir) override {
    count("list " + name(dir));
    return base_.list_dir(dir);
  }
  std::unique_ptr<io::WritableFile> new_writable_file(const std::string& path) override {
    return base_.new_writable_file(path);
  }
  void rename_file(const std::string& from, const std::string& to) override { base_.rename_file(from, to); }
  void remove_file(const std::string& path) override { base_.remove_file(path); }
  void sync_dir(const std::string& dir) override { base_.sync_dir(dir); }
  bool file_exists(const std::string& path) override { return base_.file_exists(path); }

  explicit CountingEnv(std::string root) : root_(std::move(root)) {}
  std::map<std::string, int> calls() const {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  std::string name(const std::string& path) const {
    std::string rel = fs::path(path).lexically_relative(root_).string();
    return rel.empty() ? path : rel;
  }
  void count(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu_);
    ++calls_[what];
  }
  io::Env& base_ = io::Env::posix();
  std::string root_;
  mutable std::mutex mu_;
  std::map<std::string, int> calls_;
};

StateDict model() {
  StateDict sd;
  sd.set("a", Tensor::empty(DType::float32, {4, 4}));
  sd.set("b", Tensor::empty(DType::int64, {3}));
  return sd;
}

std::map<std::string, int> calls_of(const std::string& root, const std::function<void()>& f) {
  CountingEnv env(root);
  io::ScopedDefaultEnv scope(env);
  f();
  return env.calls();
}

using Calls = std::map<std::string, int>;

TEST(Resolve, AFileIsExaminedOnceAndOpenedOnce) {
  TempDir dir;
  save(dir.path() + "/m.pt", model().to_value());
  for (bool mmap : {false, true}) {
    LoadOptions o;
    o.mmap = mmap;
    EXPECT_EQ(calls_of(dir.path(), [&] { (void)load(dir.path() + "/m.pt", o); }),
              (Calls{{"status m.pt", 1}, {"open m.pt", 1}}))
        << "mmap " << mmap;
  }
  EXPECT_EQ(calls_of(dir.path(), [&] { (void)open(dir.path() + "/m.pt"); }),
            (Calls{{"status m.pt", 1}, {"open m.pt", 1}}));
}

TEST(Resolve, ADirectoryIsListedOnceAndItsFileOpenedOnce) {
  TempDir dir;
  save_safetensors(dir.path() + "/model.safetensors", model());
  EXPECT_EQ(calls_of(dir.path(), [&] { (void)load_state_dict(dir.path()); }),
            (Calls{{"status .", 1}, {"list .", 1}, {"open model.safetensors", 1}}));
}

TEST(Resolve, AShardIndexIsReadOnceAndEachShardOpenedOnce) {
  TempDir dir;
  ShardOptions opts;
  opts.max_shard_size = 64;  // one tensor per shard
  save_sharded(dir.path(), model(), opts);
  const Calls calls = calls_of(dir.path(), [&] { (void)load_state_dict(dir.path()); });
  int index_opens = 0, shard_opens = 0;
  for (const auto& [what, n] : calls) {
    EXPECT_EQ(n, 1) << what;
    if (what.starts_with("open") && what.ends_with(".index.json")) index_opens += n;
    else if (what.starts_with("open")) shard_opens += n;
  }
  EXPECT_EQ(index_opens, 1);
  EXPECT_EQ(shard_opens, 2);
  EXPECT_EQ(calls.at("status ."), 1);
  EXPECT_EQ(calls.at("list ."), 1);
}

TEST(Resolve, ADistributedCheckpointIsListedOnceAndItsMetadataReadOnce) {
  TempDir dir;
  save_distributed(dir.path(), model().to_value());
  for (const std::string& path : {dir.path(), dir.path() + "/.metadata"}) {
    LoadReport report;
    const Calls calls = calls_of(dir.path(), [&] { (void)load(path, {}, report); });
    EXPECT_EQ(report.format, Format::dcp);
    EXPECT_EQ(calls.at("list ."), 1) << path;
    EXPECT_EQ(calls.at("open .metadata"), 1) << path;
    for (const auto& [what, n] : calls) EXPECT_EQ(n, 1) << what << " for " << path;
    uint64_t bytes = 0;
    for (const auto& f : report.files) bytes += fs::file_size(f);
    EXPECT_EQ(report.file_bytes, bytes);
  }
}

}  // namespace
}  // namespace ckpt
