// CheckpointManager (issue 9): policies, recovery, locking, async saves, and
// fault tests — ENOSPC/EIO at every write/fsync/rename, a real full tmpfs,
// damaged files, and a child process killed with SIGKILL at random moments.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "ckpt/ckpt.hpp"
#include "ckpt/manager.hpp"
#include "container/zip.hpp"
#include "io/file.hpp"
#include "manager/filename_template.hpp"
#include "manager/manager_internal.hpp"
#include "manager/staging.hpp"

using namespace ckpt;
namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------- helpers

class ManagerDir {
 public:
  ManagerDir() {
    static std::atomic<int> counter{0};
    path_ = (fs::temp_directory_path() /
             ("ckpt_mgr_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
                .string();
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~ManagerDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  ManagerDir(const ManagerDir&) = delete;
  ManagerDir& operator=(const ManagerDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

  // Names in the directory (regular files), sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_))
      if (e.is_regular_file()) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
  std::vector<std::string> temporaries() const {
    std::vector<std::string> out;
    for (const auto& n : names())
      if (n[0] == '.' && n.find(".tmp.") != std::string::npos) out.push_back(n);
    return out;
  }

 private:
  std::string path_;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

constexpr int64_t kWeightElems = 16384;  // 64 KiB of float32: small, but a write takes a while

// A training state whose every byte depends on `step`.
Value make_state(int64_t step, int64_t weight_elems = 256) {
  Tensor w = Tensor::empty(DType::float32, {weight_elems});
  auto* wp = reinterpret_cast<float*>(w.mutable_data());
  for (int64_t i = 0; i < weight_elems; ++i) wp[i] = static_cast<float>((step * 31 + i) % 1000) * 0.5f;
  Tensor b = Tensor::empty(DType::int64, {8});
  auto* bp = reinterpret_cast<int64_t*>(b.mutable_data());
  for (int64_t i = 0; i < 8; ++i) bp[i] = step * 8 + i;
  Value model = Value::ordered_dict();
  model.as_dict().set(Value("weight"), Value(w));
  model.as_dict().set(Value("bias"), Value(b));
  Value root = Value::dict();
  root.as_dict().set(Value("model"), model);
  root.as_dict().set(Value("step"), Value(step));
  root.as_dict().set(Value("note"), Value("step " + std::to_string(step)));
  return root;
}

// Whether `v` is exactly make_state(step, weight_elems).
::testing::AssertionResult is_state(const Value& v, int64_t step, int64_t weight_elems = 256) {
  if (!(v == make_state(step, weight_elems)))
    return ::testing::AssertionFailure() << "checkpoint content is not the state of step " << step << ": "
                                         << v.repr();
  return ::testing::AssertionSuccess();
}

struct LogCapture {
  std::shared_ptr<std::vector<std::string>> lines = std::make_shared<std::vector<std::string>>();
  std::shared_ptr<std::mutex> mu = std::make_shared<std::mutex>();
  std::function<void(const std::string&)> fn() {
    auto l = lines;
    auto m = mu;
    return [l, m](const std::string& s) {
      std::lock_guard lk(*m);
      l->push_back(s);
    };
  }
  bool contains(const std::string& needle) const {
    std::lock_guard lk(*mu);
    for (const auto& s : *lines)
      if (s.find(needle) != std::string::npos) return true;
    return false;
  }
  std::string all() const {
    std::lock_guard lk(*mu);
    std::string out;
    for (const auto& s : *lines) out += s + "\n";
    return out;
  }
};

std::vector<int64_t> steps_of(const CheckpointManager& m) {
  std::vector<int64_t> out;
  for (const auto& e : m.list()) out.push_back(e.step);
  return out;
}

ManagerOptions quiet(ManagerOptions o, LogCapture* log = nullptr) {
  o.log = log ? log->fn() : [](const std::string&) {};
  return o;
}

// An io::Env that fails the Nth file-system call (counting every create,
// append, fsync, close, rename and directory fsync) with a chosen errno, once
// or from then on; it can also make every file creation slow.
class FailingEnv final : public io::Env {
 public:
  explicit FailingEnv(io::Env& base = io::Env::posix()) : base_(base) {}

  void fail_at(int64_t n, int err, bool sticky) {
    fail_at_ = n;
    errno_ = err;
    sticky_ = sticky;
  }
  void set_create_delay(std::chrono::milliseconds d) { delay_ = d; }
  int64_t calls() const { return calls_; }
  bool triggered() const { return triggered_; }

  std::unique_ptr<io::WritableFile> new_writable_file(const std::string& path) override {
    check("cannot create", path);
    if (delay_.count() > 0) std::this_thread::sleep_for(delay_);
    return std::make_unique<File>(*this, base_.new_writable_file(path), path);
  }
  void rename_file(const std::string& from, const std::string& to) override {
    check("cannot rename " + from + " to", to);
    base_.rename_file(from, to);
  }
  void remove_file(const std::string& path) override { base_.remove_file(path); }
  void sync_dir(const std::string& dir) override {
    check("cannot fsync directory", dir);
    base_.sync_dir(dir);
  }
  bool file_exists(const std::string& path) override { return base_.file_exists(path); }

 private:
  class File final : public io::WritableFile {
   public:
    File(FailingEnv& env, std::unique_ptr<io::WritableFile> inner, std::string path)
        : env_(env), inner_(std::move(inner)), path_(std::move(path)) {}
    void append(std::span<const std::byte> data) override {
      env_.check("write failed", path_);
      inner_->append(data);
    }
    void sync() override {
      env_.check("fsync failed", path_);
      inner_->sync();
    }
    void close() override {
      env_.check("close failed", path_);
      inner_->close();
    }
    uint64_t size() const override { return inner_->size(); }

   private:
    FailingEnv& env_;
    std::unique_ptr<io::WritableFile> inner_;
    std::string path_;
  };

  void check(const std::string& what, const std::string& path) {
    int64_t n = calls_++;
    if (fail_at_ < 0) return;
    if (n == fail_at_ || (sticky_ && n > fail_at_)) {
      triggered_ = true;
      throw IoError(what + ": " + std::strerror(errno_), errno_, ErrorContext{path});
    }
  }

  io::Env& base_;
  std::atomic<int64_t> calls_{0};
  std::atomic<int64_t> fail_at_{-1};
  std::atomic<int> errno_{0};
  std::atomic<bool> sticky_{false};
  std::atomic<bool> triggered_{false};
  std::chrono::milliseconds delay_{0};
};

}  // namespace

// ================================================================ file names

TEST(ManagerTemplate, DefaultNamesByStep) {
  manager::FilenameTemplate t("step={step:08d}.pt");
  EXPECT_EQ(t.format(42, {}), "step=00000042.pt");
  EXPECT_EQ(t.format(123456789, {}), "step=123456789.pt");
  auto p = t.parse("step=00000042.pt");
  ASSERT_TRUE(p && p->step);
  EXPECT_EQ(*p->step, 42);
  EXPECT_FALSE(t.parse("step=abc.pt"));
  EXPECT_FALSE(t.parse("notes.txt"));
  EXPECT_TRUE(t.has_step());
}

TEST(ManagerTemplate, MetricsIntegerAndFixed) {
  manager::FilenameTemplate t("epoch={epoch:03d}-val_loss={val_loss:.4f}.pt");
  EXPECT_EQ(t.format(7, {{"epoch", 3}, {"val_loss", 0.123456}}), "epoch=003-val_loss=0.1235.pt");
  EXPECT_EQ(t.format(7, {{"epoch", 12}, {"val_loss", -2.5}}), "epoch=012-val_loss=-2.5000.pt");
  auto p = t.parse("epoch=003-val_loss=0.1235.pt");
  ASSERT_TRUE(p);
  EXPECT_FALSE(p->step);
  EXPECT_FALSE(t.has_step());
  EXPECT_EQ(p->metrics.at("epoch"), 3);
  EXPECT_DOUBLE_EQ(p->metrics.at("val_loss"), 0.1235);
}

TEST(ManagerTemplate, PlainFieldsBracesAndWidths) {
  manager::FilenameTemplate t("{{run}}-{step}-{acc}-{lr:8.2f}-{epoch:4d}.ckpt");
  EXPECT_EQ(t.format(12, {{"acc", 0.5}, {"lr", 0.125}, {"epoch", 3}}), "{run}-12-0.5-    0.12-   3.ckpt");
  EXPECT_EQ(t.format(-1, {{"acc", 3}, {"lr", 1}, {"epoch", 0}}), "{run}--1-3-    1.00-   0.ckpt");
  auto p = t.parse("{run}-12-0.5-    0.12-   3.ckpt");
  ASSERT_TRUE(p && p->step);
  EXPECT_EQ(*p->step, 12);
  EXPECT_EQ(p->metrics.at("acc"), 0.5);
  EXPECT_EQ(p->metrics.at("epoch"), 3);
  manager::FilenameTemplate nan_t("loss={loss:.2f}.pt");
  EXPECT_EQ(nan_t.format(0, {{"loss", std::nan("")}}), "loss=nan.pt");
  auto q = nan_t.parse("loss=nan.pt");
  ASSERT_TRUE(q);
  EXPECT_TRUE(std::isnan(q->metrics.at("loss")));
}

TEST(ManagerTemplate, BadTemplatesAreRefusedUpFront) {
  for (const char* bad : {"{step:x}.pt", "{step", "a}.pt", "{}.pt", "../{step}.pt", "sub/{step}.pt",
                          ".hidden{step}", "{step:.2f}", "{loss:.f}", "{loss:0}", ""}) {
    SCOPED_TRACE(bad);
    EXPECT_THROW(manager::FilenameTemplate{bad}, Error);
  }
  try {
    manager::FilenameTemplate t("{step:q}.pt");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'q'"), std::string::npos) << e.what();
  }
}

TEST(ManagerTemplate, MissingOrNonIntegerMetricIsAClearError) {
  manager::FilenameTemplate t("epoch={epoch:03d}-val_loss={val_loss:.4f}.pt");
  try {
    (void)t.format(1, {{"epoch", 1}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs metric 'val_loss'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("epoch"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)t.format(1, {{"epoch", 1.5}, {"val_loss", 1}}), Error);
}

TEST(ManagerTemplate, VersionSuffixGoesBeforeTheExtension) {
  manager::FilenameTemplate t("step={step:08d}.pt");
  EXPECT_EQ(t.with_version("step=00000001.pt", 1), "step=00000001-v1.pt");
  auto p = t.parse("step=00000001-v12.pt");
  ASSERT_TRUE(p && p->step);
  EXPECT_EQ(*p->step, 1);
  manager::FilenameTemplate noext("loss={loss:.3f}");
  EXPECT_EQ(noext.with_version("loss=0.500", 2), "loss=0.500-v2");
  EXPECT_TRUE(noext.parse("loss=0.500-v2"));
}

// ================================================================ policies

TEST(ManagerPolicy, SaveEveryAndForce) {
  ManagerDir dir;
  CheckpointManager m(dir.path(), quiet({.save_every = 10}));
  EXPECT_FALSE(m.should_save(5));
  EXPECT_TRUE(m.should_save(20));
  EXPECT_FALSE(m.save(5, make_state(5)));
  EXPECT_TRUE(m.save(10, make_state(10)));
  EXPECT_FALSE(m.save(15, make_state(15)));
  EXPECT_TRUE(m.save(15, make_state(15), {}, SaveTrigger::force));
  EXPECT_FALSE(m.save_async(25, make_state(25)));
  EXPECT_TRUE(m.save_async(30, make_state(30)));
  m.wait();
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{10, 15, 30}));
}

TEST(ManagerPolicy, KeepLastN) {
  ManagerDir dir;
  {
    CheckpointManager m(dir.path(), quiet({.keep_last = 3}));
    for (int64_t s = 1; s <= 10; ++s) ASSERT_TRUE(m.save(s, make_state(s)));
    EXPECT_EQ(steps_of(m), (std::vector<int64_t>{8, 9, 10}));
    EXPECT_EQ(m.latest()->step, 10);
  }
  EXPECT_EQ(dir.names(), (std::vector<std::string>{".lock", "last", "manifest.json", "step=00000008.pt",
                                                   "step=00000009.pt", "step=00000010.pt"}));
  EXPECT_EQ(slurp(dir.file("last")), "step=00000010.pt\n");
}

TEST(ManagerPolicy, RetentionOffKeepsEverything) {
  ManagerDir dir;
  CheckpointManager m(dir.path(), quiet({}));
  for (int64_t s = 1; s <= 5; ++s) m.save(s, make_state(s));
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{1, 2, 3, 4, 5}));
}

TEST(ManagerPolicy, KeepBestMin) {
  ManagerDir dir;
  CheckpointManager m(dir.path(), quiet({.keep_last = 1, .keep_best = 2, .metric = "val_loss"}));
  const double losses[] = {5, 3, 4, 1, 2, 6};
  for (int64_t s = 1; s <= 6; ++s) m.save(s, make_state(s), {{"val_loss", losses[s - 1]}});
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{4, 5, 6}));  // best two (1, 2) + the last
  ASSERT_TRUE(m.best());
  EXPECT_EQ(m.best()->step, 4);
  EXPECT_EQ(m.best()->metrics.at("val_loss"), 1);
  EXPECT_TRUE(is_state(m.load_best(), 4));
  EXPECT_TRUE(is_state(m.load_latest(), 6));
}

TEST(ManagerPolicy, PruneAppliesAStricterPolicyOnDemand) {
  ManagerDir dir;
  const double losses[] = {5, 1, 4, 3};
  {
    CheckpointManager m(dir.path(), quiet({}));  // retention off: all four kept
    for (int64_t s = 1; s <= 4; ++s) m.save(s, make_state(s), {{"val_loss", losses[s - 1]}});
    EXPECT_TRUE(m.prune().empty());  // no policy, nothing to do
  }
  const ManagerOptions policy = quiet({.keep_last = 1, .keep_best = 1, .metric = "val_loss"});
  {
    ManagerOptions ro = policy;
    ro.read_only = true;
    CheckpointManager reader(dir.path(), ro);
    std::vector<int64_t> would;
    for (const auto& c : reader.prune({.dry_run = true})) would.push_back(c.step);
    EXPECT_EQ(would, (std::vector<int64_t>{1, 3}));
    EXPECT_EQ(steps_of(reader), (std::vector<int64_t>{1, 2, 3, 4}));  // nothing deleted
    EXPECT_THROW(reader.prune(), Error);  // a reader never deletes
  }
  CheckpointManager m(dir.path(), policy);
  std::vector<int64_t> deleted;
  for (const auto& c : m.prune()) deleted.push_back(c.step);
  EXPECT_EQ(deleted, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{2, 4}));  // the best (loss 1) and the last
  EXPECT_FALSE(fs::exists(dir.file("step=00000001.pt")));
  EXPECT_FALSE(fs::exists(dir.file("step=00000003.pt")));
  CheckpointManager again(dir.path(), quiet({.read_only = true}));  // the manifest agrees
  EXPECT_EQ(steps_of(again), (std::vector<int64_t>{2, 4}));
}

TEST(ManagerPolicy, KeepBestMaxIgnoresCheckpointsWithoutTheMetric) {
  ManagerDir dir;
  CheckpointManager m(dir.path(),
                      quiet({.keep_best = 2, .metric = "acc", .mode = MetricMode::max}));
  m.save(1, make_state(1), {{"acc", 0.5}});
  m.save(2, make_state(2), {{"acc", 0.9}});
  m.save(3, make_state(3), {{"acc", 0.7}});
  m.save(4, make_state(4), {{"loss", 1.0}});  // no acc: kept only as the pointer target
  m.save(5, make_state(5), {{"acc", std::nan("")}});
  m.save(6, make_state(6), {{"acc", 0.6}});
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{2, 3, 6}));
  EXPECT_EQ(m.best()->step, 2);
  // Ties go to the newer one.
  m.save(7, make_state(7), {{"acc", 0.9}});
  EXPECT_EQ(m.best()->step, 7);
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{2, 7}));
}

TEST(ManagerPolicy, KeepEveryMForever) {
  ManagerDir dir;
  CheckpointManager m(dir.path(), quiet({.keep_last = 2, .keep_every = 4}));
  for (int64_t s = 1; s <= 10; ++s) m.save(s, make_state(s));
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{4, 8, 9, 10}));
  for (const auto& e : m.list()) EXPECT_EQ(e.pinned, e.step % 4 == 0) << e.step;
}

TEST(ManagerPolicy, PointerTargetIsNeverDeleted) {
  ManagerDir dir;
  CheckpointManager m(dir.path(), quiet({.keep_best = 1, .metric = "loss"}));
  m.save(1, make_state(1), {{"loss", 1}});
  m.save(2, make_state(2), {{"loss", 5}});  // worse, but `last` names it
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(slurp(dir.file("last")), "step=00000002.pt\n");
  m.save(3, make_state(3), {{"loss", 0.5}});  // best and last
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{3}));
  EXPECT_EQ(slurp(dir.file("last")), "step=00000003.pt\n");
}

TEST(ManagerPolicy, OnlyValidCheckpointsCountForRetention) {
  // keep_last = 2 with the newest file damaged: the two kept are the new one
  // and the newest *valid* older one, so a valid fallback always remains.
  ManagerDir dir;
  {
    CheckpointManager m(dir.path(), quiet({.keep_last = 2}));
    m.save(1, make_state(1));
    m.save(2, make_state(2));
  }
  fs::resize_file(dir.file("step=00000002.pt"), 100);
  LogCapture log;
  CheckpointManager m(dir.path(), quiet({.keep_last = 2}, &log));
  EXPECT_TRUE(log.contains("is damaged")) << log.all();
  EXPECT_EQ(m.latest()->step, 1);
  m.save(3, make_state(3));
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{1, 3}));
  EXPECT_FALSE(fs::exists(dir.file("step=00000002.pt")));
  // With keep_last = 1 and nothing else, the newest valid one stays.
  EXPECT_EQ(m.latest()->step, 3);
}

TEST(ManagerPolicy, SameNameTwiceGetsAVersionSuffix) {
  ManagerDir dir;
  CheckpointManager m(dir.path(), quiet({}));
  m.save(5, make_state(5));
  m.save(5, make_state(5), {}, SaveTrigger::force);
  auto l = m.list();
  ASSERT_EQ(l.size(), 2u);
  EXPECT_EQ(l[0].file, "step=00000005.pt");
  EXPECT_EQ(l[1].file, "step=00000005-v1.pt");
  // A file that is not ours but has the name is not overwritten either.
  spit(dir.file("step=00000006.pt"), "user data");
  m.save(6, make_state(6));
  EXPECT_EQ(m.latest()->file, "step=00000006-v1.pt");
  EXPECT_EQ(slurp(dir.file("step=00000006.pt")), "user data");
}

TEST(ManagerPolicy, TemplateWithMetricsNamesFiles) {
  ManagerDir dir;
  CheckpointManager m(dir.path(), quiet({.filename = "epoch={epoch:03d}-val_loss={val_loss:.4f}.pt"}));
  m.save(100, make_state(100), {{"epoch", 2}, {"val_loss", 0.31415926}});
  EXPECT_TRUE(fs::exists(dir.file("epoch=002-val_loss=0.3142.pt")));
  EXPECT_THROW(m.save(101, make_state(101), {{"epoch", 2}}), Error);        // missing val_loss
  EXPECT_THROW(m.save_async(102, make_state(102), {{"epoch", 2}}), Error);  // refused before queuing
  EXPECT_THROW(m.save(103, make_state(103), {{"step", 1}, {"epoch", 1}, {"val_loss", 1}}), Error);
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{100}));
}

TEST(ManagerPolicy, ManifestRecordsStepMetricsSizeAndCrc) {
  ManagerDir dir;
  {
    CheckpointManager m(dir.path(), quiet({}));
    m.save(7, make_state(7), {{"loss", 0.25}, {"weird", std::nan("")}, {"big", INFINITY}});
  }
  auto j = nlohmann::json::parse(slurp(dir.file("manifest.json")));
  EXPECT_EQ(j["format"], "ckpt-manager-manifest");
  EXPECT_EQ(j["version"], 1);
  ASSERT_EQ(j["checkpoints"].size(), 1u);
  const auto& e = j["checkpoints"][0];
  EXPECT_EQ(e["file"], "step=00000007.pt");
  EXPECT_EQ(e["step"], 7);
  EXPECT_EQ(e["metrics"]["loss"], 0.25);
  EXPECT_EQ(e["metrics"]["weird"], "nan");
  EXPECT_EQ(e["metrics"]["big"], "inf");
  std::string bytes = slurp(dir.file("step=00000007.pt"));
  EXPECT_EQ(e["size"], bytes.size());
  char crc[9];
  std::snprintf(crc, sizeof crc, "%08x", zip::crc32(std::as_bytes(std::span(bytes.data(), bytes.size()))));
  EXPECT_EQ(e["crc32"], crc);
  EXPECT_EQ(e["crc32"], crc32_hex(crc32(std::as_bytes(std::span(bytes.data(), bytes.size())))));

  CheckpointManager again(dir.path(), quiet({}));
  auto l = again.list();
  ASSERT_EQ(l.size(), 1u);
  EXPECT_EQ(l[0].metrics.at("loss"), 0.25);
  EXPECT_TRUE(std::isnan(l[0].metrics.at("weird")));
  EXPECT_EQ(l[0].metrics.at("big"), INFINITY);
  EXPECT_EQ(l[0].size, bytes.size());
  EXPECT_EQ(l[0].path, dir.file("step=00000007.pt"));
  EXPECT_TRUE(l[0].valid);
  // What torch.load sees: the state, in a torch zip archive.
  EXPECT_EQ(detect_format(l[0].path), Format::torch_zip);
  EXPECT_TRUE(is_state(load(l[0].path), 7));
}

TEST(ManagerPolicy, BadOptionsAreRefused) {
  ManagerDir dir;
  EXPECT_THROW(CheckpointManager(dir.path(), quiet({.keep_best = 2})), Error);  // no metric
  EXPECT_THROW(CheckpointManager(dir.path(), quiet({.filename = "{step:z}"})), Error);
  EXPECT_THROW(CheckpointManager(dir.path(), quiet({.save_every = -1})), Error);
  CheckpointManager m(dir.path(), quiet({.filename = "manifest.json"}));
  EXPECT_THROW(m.save(1, make_state(1)), Error);
}

TEST(ManagerPolicy, EmptyDirectory) {
  ManagerDir dir;
  CheckpointManager m(dir.path() + "/new/sub", quiet({}));
  EXPECT_FALSE(m.latest());
  EXPECT_FALSE(m.best());
  EXPECT_FALSE(m.resume());
  EXPECT_TRUE(m.list().empty());
  EXPECT_THROW(m.load_latest(), Error);
  EXPECT_THROW(m.load_best(), Error);
  m.wait();
}

// ================================================================ recovery on open

TEST(ManagerRecovery, OrphanedTemporariesAreRemoved) {
  ManagerDir dir;
  {
    CheckpointManager m(dir.path(), quiet({}));
    m.save(1, make_state(1));
  }
  spit(dir.file(".step=00000002.pt.tmp.123.0.456"), "half a checkpoint");
  spit(dir.file(".manifest.json.tmp.123.1.789"), "{");
  spit(dir.file(".notes.tmp.txt"), "not ours");   // hidden, but not a temporary of ours
  spit(dir.file(".x.tmp.1.2"), "not ours");
  LogCapture log;
  CheckpointManager m(dir.path(), quiet({}, &log));
  EXPECT_EQ(dir.temporaries(), (std::vector<std::string>{".notes.tmp.txt", ".x.tmp.1.2"}));
  EXPECT_TRUE(log.contains("removed '.step=00000002.pt.tmp.123.0.456'")) << log.all();
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{1}));
}

TEST(ManagerRecovery, MissingFilesAreDroppedFromTheManifest) {
  ManagerDir dir;
  {
    CheckpointManager m(dir.path(), quiet({}));
    for (int64_t s = 1; s <= 3; ++s) m.save(s, make_state(s));
  }
  fs::remove(dir.file("step=00000002.pt"));
  LogCapture log;
  {
    CheckpointManager m(dir.path(), quiet({}, &log));
    EXPECT_EQ(steps_of(m), (std::vector<int64_t>{1, 3}));
    EXPECT_TRUE(log.contains("'step=00000002.pt' (step 2) is in the manifest but not in the directory"))
        << log.all();
  }
  auto j = nlohmann::json::parse(slurp(dir.file("manifest.json")));
  EXPECT_EQ(j["checkpoints"].size(), 2u);
}

TEST(ManagerRecovery, UnknownCheckpointsAreVerifiedAndAdopted) {
  ManagerDir dir;
  {
    CheckpointManager m(dir.path(), quiet({}));
    for (int64_t s = 1; s <= 3; ++s) m.save(s, make_state(s), {{"loss", 1.0 / static_cast<double>(s)}});
  }
  fs::remove(dir.file("manifest.json"));
  spit(dir.file("step=00000009.pt"), "not a checkpoint at all");
  spit(dir.file("notes.txt"), "mine");
  LogCapture log;
  CheckpointManager m(dir.path(), quiet({}, &log));
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_TRUE(log.contains("adopted 'step=00000003.pt' (step 3)")) << log.all();
  EXPECT_TRUE(log.contains("not adopting 'step=00000009.pt'")) << log.all();
  EXPECT_TRUE(fs::exists(dir.file("step=00000009.pt")));  // never deletes what it did not write
  EXPECT_TRUE(fs::exists(dir.file("notes.txt")));
  auto r = m.resume();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->info.step, 3);
  EXPECT_TRUE(is_state(r->value, 3));
  EXPECT_TRUE(fs::exists(dir.file("manifest.json")));
}

TEST(ManagerRecovery, AdoptionNeedsStepInTheTemplate) {
  ManagerDir dir;
  const ManagerOptions o{.filename = "loss={loss:.3f}.pt"};
  {
    CheckpointManager m(dir.path(), quiet(o));
    m.save(1, make_state(1), {{"loss", 0.5}});
  }
  fs::remove(dir.file("manifest.json"));
  LogCapture log;
  CheckpointManager m(dir.path(), quiet(o, &log));
  EXPECT_TRUE(m.list().empty());
  EXPECT_TRUE(log.contains("has no {step}")) << log.all();
  EXPECT_TRUE(fs::exists(dir.file("loss=0.500.pt")));
}

TEST(ManagerRecovery, DamagedManifestIsRebuilt) {
  ManagerDir dir;
  {
    CheckpointManager m(dir.path(), quiet({}));
    m.save(1, make_state(1));
    m.save(2, make_state(2));
  }
  spit(dir.file("manifest.json"), "{\"format\": \"ckpt-manager-manif");
  LogCapture log;
  CheckpointManager m(dir.path(), quiet({}, &log));
  EXPECT_TRUE(log.contains("manifest is unreadable")) << log.all();
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{1, 2}));
}

TEST(ManagerRecovery, HostileManifestNamesAreNeverTouched) {
  ManagerDir dir;
  ManagerDir outside;
  spit(outside.file("victim.pt"), "precious");
  const std::string rel = "../" + fs::path(outside.path()).filename().string() + "/victim.pt";
  nlohmann::json j = {{"format", "ckpt-manager-manifest"},
                      {"version", 1},
                      {"checkpoints",
                       {{{"file", rel}, {"step", 1}, {"size", 8}, {"crc32", "00000000"}},
                        {{"file", outside.file("victim.pt")}, {"step", 2}, {"size", 8}, {"crc32", "00000000"}},
                        {{"file", ".lock"}, {"step", 3}, {"size", 0}, {"crc32", "00000000"}},
                        {{"file", "step=1.pt"}, {"step", "one"}}}}};
  spit(dir.file("manifest.json"), j.dump());
  LogCapture log;
  {
    CheckpointManager m(dir.path(), quiet({.keep_last = 1}, &log));
    EXPECT_TRUE(m.list().empty());
    m.save(10, make_state(10));
    m.save(11, make_state(11));
  }
  EXPECT_TRUE(log.contains("unsafe")) << log.all();
  EXPECT_EQ(slurp(outside.file("victim.pt")), "precious");
}

TEST(ManagerRecovery, NewerManifestVersionIsNotOverwritten) {
  ManagerDir dir;
  const std::string text = R"({"format": "ckpt-manager-manifest", "version": 99, "checkpoints": []})";
  spit(dir.file("manifest.json"), text);
  EXPECT_THROW(CheckpointManager(dir.path(), quiet({})), UnsupportedError);
  EXPECT_EQ(slurp(dir.file("manifest.json")), text);
}

TEST(ManagerRecovery, StalePointerIsRepaired) {
  ManagerDir dir;
  {
    CheckpointManager m(dir.path(), quiet({}));
    m.save(1, make_state(1));
    m.save(2, make_state(2));
  }
  spit(dir.file("last"), "nonsense.pt\n");
  LogCapture log;
  CheckpointManager m(dir.path(), quiet({}, &log));
  EXPECT_EQ(slurp(dir.file("last")), "step=00000002.pt\n");
  EXPECT_TRUE(log.contains("'last' named 'nonsense.pt'")) << log.all();
}

// ================================================================ damaged files and resume

TEST(ManagerResume, TruncatedCheckpointIsSkipped) {
  ManagerDir dir;
  LogCapture log;
  CheckpointManager m(dir.path(), quiet({}, &log));
  for (int64_t s = 1; s <= 3; ++s) m.save(s, make_state(s));
  auto size = fs::file_size(dir.file("step=00000003.pt"));
  fs::resize_file(dir.file("step=00000003.pt"), size / 2);
  auto r = m.resume();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->info.step, 2);
  EXPECT_TRUE(is_state(r->value, 2));
  EXPECT_TRUE(log.contains("resume: skipping 'step=00000003.pt' (step 3)")) << log.all();
  // Marked invalid: latest() moves back, list() says why.
  EXPECT_EQ(m.latest()->step, 2);
  EXPECT_FALSE(m.list().back().valid);
  EXPECT_NE(m.list().back().problem.find("bytes"), std::string::npos) << m.list().back().problem;

  // The same after reopening: the size mismatch is found on open.
  CheckpointManager ro(dir.path(), quiet({.read_only = true}));
  EXPECT_EQ(ro.latest()->step, 2);
  EXPECT_EQ(ro.resume()->info.step, 2);
}

TEST(ManagerResume, BitFlippedCheckpointIsSkipped) {
  ManagerDir dir;
  LogCapture log;
  CheckpointManager m(dir.path(), quiet({}, &log));
  for (int64_t s = 1; s <= 3; ++s) m.save(s, make_state(s, 4096));
  for (const char* victim : {"step=00000003.pt", "step=00000002.pt"}) {
    std::string bytes = slurp(dir.file(victim));
    bytes[bytes.size() / 2] ^= 0x10;  // inside the weight record: the zip itself still parses
    spit(dir.file(victim), bytes);
  }
  // load_latest() refuses the damaged one and says so.
  try {
    (void)m.load_latest();
    FAIL() << "load_latest() loaded a damaged checkpoint";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("CRC-32"), std::string::npos) << e.what();
  }
  auto r = m.resume();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->info.step, 1);
  EXPECT_TRUE(is_state(r->value, 1, 4096));
  EXPECT_TRUE(log.contains("skipping 'step=00000002.pt' (step 2)")) << log.all();
  EXPECT_TRUE(is_state(m.load_latest(), 1, 4096));
}

TEST(ManagerVerify, MarksTheDamagedOnesAndReportsProgress) {
  ManagerDir dir;
  CheckpointManager m(dir.path(), quiet({}));
  for (int64_t s = 1; s <= 3; ++s) m.save(s, make_state(s, 4096));
  std::string bytes = slurp(dir.file("step=00000002.pt"));
  bytes[bytes.size() / 2] ^= 0x10;
  spit(dir.file("step=00000002.pt"), bytes);

  CheckpointManager ro(dir.path(), quiet({.read_only = true}));
  uint64_t total = 0, expected = 0;
  std::set<std::string> seen;
  for (const auto& c : ro.list()) expected += c.size;
  const auto list = ro.verify([&](const CheckpointInfo& c, uint64_t n) {
    seen.insert(c.file);
    total += n;
  });
  EXPECT_EQ(total, expected);
  EXPECT_EQ(seen.size(), 3u);
  ASSERT_EQ(list.size(), 3u);
  EXPECT_TRUE(list[0].valid);
  EXPECT_FALSE(list[1].valid);
  EXPECT_EQ(list[1].problem.rfind("its CRC-32 is ", 0), 0u) << list[1].problem;
  EXPECT_NE(list[1].problem.find(", the manifest says "), std::string::npos) << list[1].problem;
  EXPECT_TRUE(list[2].valid);
  EXPECT_FALSE(ro.list()[1].valid);  // the mark stays for this manager
  EXPECT_EQ(ro.best() ? ro.best()->step : 0, 0);  // no metric: no best

  // A file gone since opening is unreadable: invalid, with the read error.
  fs::remove(dir.file("step=00000003.pt"));
  const auto after = ro.verify();
  EXPECT_FALSE(after[2].valid);
  EXPECT_FALSE(after[2].problem.empty());
  EXPECT_EQ(ro.latest()->step, 1);
}

TEST(ManagerResume, NothingValidMeansAFreshStart) {
  ManagerDir dir;
  CheckpointManager m(dir.path(), quiet({}));
  m.save(1, make_state(1));
  spit(dir.file("step=00000001.pt"), std::string(fs::file_size(dir.file("step=00000001.pt")), 'x'));
  EXPECT_FALSE(m.resume());
  EXPECT_FALSE(m.latest());
}

TEST(ManagerResume, LoadOptionsArePassedThrough) {
  ManagerDir dir;
  CheckpointManager m(dir.path(), quiet({}));
  m.save(1, make_state(1));
  LoadOptions o;
  o.mmap = true;
  auto r = m.resume(o);
  ASSERT_TRUE(r);
  EXPECT_EQ(lookup(r->value, "model/weight").as_tensor().storage().backing(), Storage::Backing::mapped);
}

// ================================================================ locking and readers

TEST(ManagerLock, SecondWriterInThisProcessIsRefused) {
  ManagerDir dir;
  auto first = std::make_unique<CheckpointManager>(dir.path(), quiet({}));
  try {
    CheckpointManager second(dir.path(), quiet({}));
    FAIL() << "two writers opened one directory";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find(dir.path()), std::string::npos) << what;
    EXPECT_NE(what.find("already open for writing"), std::string::npos) << what;
    EXPECT_NE(what.find("pid " + std::to_string(::getpid())), std::string::npos) << what;
  }
  EXPECT_NO_THROW(CheckpointManager(dir.path(), quiet({.read_only = true})));
  first.reset();
  EXPECT_NO_THROW(CheckpointManager(dir.path(), quiet({})));
}

TEST(ManagerLock, SecondWriterInAnotherProcessIsRefused) {
  ManagerDir dir;
  int to_parent[2], to_child[2];
  ASSERT_EQ(::pipe(to_parent), 0);
  ASSERT_EQ(::pipe(to_child), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(to_parent[0]);
    ::close(to_child[1]);
    int rc = 0;
    try {
      CheckpointManager m(dir.path(), quiet({}));
      m.save(1, make_state(1));
      char c = 'k';
      if (::write(to_parent[1], &c, 1) != 1) rc = 2;
      if (::read(to_child[0], &c, 1) < 0) rc = 3;  // hold the directory until told
    } catch (...) {
      rc = 1;
    }
    ::_exit(rc);
  }
  ::close(to_parent[1]);
  ::close(to_child[0]);
  char c = 0;
  ASSERT_EQ(::read(to_parent[0], &c, 1), 1);
  try {
    CheckpointManager second(dir.path(), quiet({}));
    ADD_FAILURE() << "a second process opened the directory for writing";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("pid " + std::to_string(pid)), std::string::npos) << e.what();
  }
  // A reader sees the writer's complete checkpoint.
  CheckpointManager reader(dir.path(), quiet({.read_only = true}));
  auto r = reader.resume();
  ASSERT_TRUE(r);
  EXPECT_TRUE(is_state(r->value, 1));
  ::close(to_child[1]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  ::close(to_parent[0]);
  EXPECT_NO_THROW(CheckpointManager(dir.path(), quiet({})));
}

TEST(ManagerLock, ReadOnlyManagerReadsAndRefreshes) {
  ManagerDir dir;
  CheckpointManager writer(dir.path(), quiet({.keep_last = 2}));
  writer.save(1, make_state(1));
  CheckpointManager reader(dir.path(), quiet({.read_only = true}));
  EXPECT_EQ(steps_of(reader), (std::vector<int64_t>{1}));
  writer.save(2, make_state(2));
  writer.save(3, make_state(3));
  EXPECT_EQ(steps_of(reader), (std::vector<int64_t>{1}));  // a snapshot until refresh()
  reader.refresh();
  EXPECT_EQ(steps_of(reader), (std::vector<int64_t>{2, 3}));
  EXPECT_TRUE(is_state(reader.load_latest(), 3));
  EXPECT_THROW(reader.save(4, make_state(4)), Error);
  EXPECT_THROW(reader.save_async(4, make_state(4)), Error);
  EXPECT_THROW(CheckpointManager(dir.path() + "/missing", quiet({.read_only = true})), IoError);
}

TEST(ManagerLock, ReaderRacingAWriterNeverSeesAPartialCheckpoint) {
  ManagerDir dir;
  std::atomic<bool> done{false};
  {
    CheckpointManager writer(dir.path(), quiet({.keep_last = 2}));
    writer.save(0, make_state(0, kWeightElems));
    std::thread t([&] {
      for (int64_t s = 1; s <= 40; ++s) writer.save(s, make_state(s, kWeightElems));
      done = true;
    });
    int reads = 0;
    do {
      CheckpointManager reader(dir.path(), quiet({.read_only = true}));
      auto r = reader.resume();  // the file may be retired under it: then an older one
      if (r) {
        EXPECT_TRUE(is_state(r->value, r->info.step, kWeightElems));
        ++reads;
      }
    } while (!done);
    t.join();
    EXPECT_GT(reads, 0);
  }
}

// ================================================================ async

TEST(ManagerAsync, MutatingTensorsAfterSaveAsyncDoesNotChangeTheFile) {
  ManagerDir dir;
  FailingEnv env;
  env.set_create_delay(std::chrono::milliseconds(50));  // keep the write in flight meanwhile
  CheckpointManager m = ManagerAccess::open(dir.path(), quiet({}), env);
  Value state = make_state(1, kWeightElems);
  // A view sharing the weight's storage, and a scalar in a nested list.
  Tensor w = lookup(state, "model/weight").as_tensor();
  Tensor view(w.storage(), DType::float32, {16}, {2}, 4);
  state.as_dict().set(Value("view"), Value(view));
  Value extra = Value::list({Value(int64_t{7})});
  state.as_dict().set(Value("extra"), extra);
  Value expected = make_state(1, kWeightElems);
  expected.as_dict().set(Value("view"), Value(Tensor(lookup(expected, "model/weight").as_tensor().storage(),
                                                     DType::float32, {16}, {2}, 4)));
  expected.as_dict().set(Value("extra"), Value::list({Value(int64_t{7})}));

  ASSERT_TRUE(m.save_async(1, state));
  std::memset(w.mutable_data(), 0xff, w.nbytes());
  extra.as_list()[0] = Value(int64_t{8});
  state.as_dict().set(Value("step"), Value(int64_t{999}));
  m.wait();
  Value loaded = m.load_latest();
  EXPECT_TRUE(loaded == expected) << loaded.repr();
  // Tied storage stays tied in the file.
  EXPECT_EQ(lookup(loaded, "model/weight").as_tensor().storage(), lookup(loaded, "view").as_tensor().storage());
}

TEST(ManagerAsync, ErrorSurfacesOnWait) {
  ManagerDir dir;
  FailingEnv env;
  CheckpointManager m = ManagerAccess::open(dir.path(), quiet({}), env);
  m.save(1, make_state(1));
  env.fail_at(env.calls(), ENOSPC, /*sticky=*/true);
  EXPECT_TRUE(m.save_async(2, make_state(2)));
  try {
    m.wait();
    FAIL() << "wait() did not report the background failure";
  } catch (const IoError& e) {
    EXPECT_EQ(e.code(), ENOSPC);
    EXPECT_NE(std::string(e.what()).find("cannot save step 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No space left on device"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(m.wait());  // reported once
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{1}));
  EXPECT_TRUE(dir.temporaries().empty());
}

TEST(ManagerAsync, ErrorSurfacesOnTheNextSave) {
  ManagerDir dir;
  FailingEnv env;
  CheckpointManager m = ManagerAccess::open(dir.path(), quiet({}), env);
  env.fail_at(0, EIO, /*sticky=*/false);
  EXPECT_TRUE(m.save_async(1, make_state(1)));
  EXPECT_THROW(m.save_async(2, make_state(2)), IoError);  // step 2 is not queued
  EXPECT_TRUE(m.save_async(3, make_state(3)));
  m.wait();
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{3}));
}

TEST(ManagerAsync, DestructorWaitsAndLogsErrors) {
  ManagerDir dir;
  LogCapture log;
  {
    FailingEnv env;
    env.set_create_delay(std::chrono::milliseconds(20));
    CheckpointManager m = ManagerAccess::open(dir.path(), quiet({}, &log), env);
    m.save_async(1, make_state(1));
  }
  {
    CheckpointManager m(dir.path(), quiet({}));
    EXPECT_EQ(steps_of(m), (std::vector<int64_t>{1}));
  }
  {
    FailingEnv env;
    CheckpointManager m = ManagerAccess::open(dir.path(), quiet({}, &log), env);
    env.fail_at(env.calls(), EIO, true);
    m.save_async(2, make_state(2));
  }  // must not throw
  EXPECT_TRUE(log.contains("background save failed")) << log.all();
}

TEST(ManagerAsync, WaitPolicySavesEveryStep) {
  ManagerDir dir;
  FailingEnv env;
  env.set_create_delay(std::chrono::milliseconds(10));
  CheckpointManager m = ManagerAccess::open(dir.path(), quiet({.async_policy = AsyncPolicy::wait}), env);
  for (int64_t s = 1; s <= 4; ++s) m.save_async(s, make_state(s));
  m.wait();
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{1, 2, 3, 4}));
}

TEST(ManagerAsync, CoalescePolicyReplacesAQueuedSave) {
  ManagerDir dir;
  FailingEnv env;
  env.set_create_delay(std::chrono::milliseconds(100));  // a save creates 3 files: 300+ ms
  LogCapture log;
  CheckpointManager m =
      ManagerAccess::open(dir.path(), quiet({.async_policy = AsyncPolicy::coalesce}, &log), env);
  m.save_async(1, make_state(1));
  while (env.calls() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // 1 is being written
  auto t0 = std::chrono::steady_clock::now();
  m.save_async(2, make_state(2));  // queued
  m.save_async(3, make_state(3));  // replaces 2
  auto blocked = std::chrono::steady_clock::now() - t0;
  EXPECT_LT(blocked, std::chrono::milliseconds(250));  // neither waited for the write of 1
  m.wait();
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{1, 3}));
  EXPECT_TRUE(log.contains("step 2 had not started; step 3 replaces it")) << log.all();
  EXPECT_TRUE(is_state(m.load_latest(), 3));
}

TEST(ManagerAsync, StateLargerThanTheStagingLimitIsRefused) {
  ManagerDir dir;
  CheckpointManager m(dir.path(), quiet({.staging_limit = 1000}));
  try {
    m.save_async(1, make_state(1, kWeightElems));
    FAIL();
  } catch (const LimitError& e) {
    EXPECT_NE(std::string(e.what()).find("staging limit of 1000 bytes"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(m.list().empty());
  EXPECT_TRUE(m.save(1, make_state(1, kWeightElems)));  // the synchronous path still works
  EXPECT_TRUE(m.save_async(2, make_state(2, 16)));       // and small states go async
  m.wait();
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{1, 2}));
}

TEST(ManagerAsync, ConcurrentCallersAreSerialised) {
  ManagerDir dir;
  CheckpointManager m(dir.path(), quiet({.keep_last = 5, .async_policy = AsyncPolicy::coalesce}));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int64_t i = 0; i < 10; ++i) {
        int64_t s = t * 100 + i;
        if (i % 2) m.save(s, make_state(s));
        else m.save_async(s, make_state(s));
        (void)m.list();
        (void)m.latest();
      }
    });
  for (auto& th : threads) th.join();
  m.wait();
  auto l = m.list();
  EXPECT_LE(l.size(), 5u);
  for (const auto& e : l) EXPECT_TRUE(is_state(load(e.path), e.step));
}

// The pool itself: reuse, the bound, and waiting for buffers in use.
TEST(ManagerStaging, BuffersAreReusedAndBounded) {
  Value a = make_state(1, kWeightElems);
  const size_t bytes = manager::StagingPool::staged_bytes(a);
  EXPECT_EQ(bytes, static_cast<size_t>(kWeightElems * 4 + 8 * 8));
  manager::StagingPool pool(bytes + bytes / 2);
  {
    Value s1 = pool.snapshot(a);
    EXPECT_TRUE(s1 == a);
    EXPECT_NE(lookup(s1, "model/weight").as_tensor().storage(), lookup(a, "model/weight").as_tensor().storage());
    EXPECT_EQ(pool.in_use_bytes(), bytes);
  }
  EXPECT_EQ(pool.in_use_bytes(), 0u);
  EXPECT_EQ(pool.allocated_bytes(), bytes);
  for (int i = 0; i < 3; ++i) {
    Value s = pool.snapshot(make_state(i, kWeightElems));
    EXPECT_TRUE(is_state(s, i, kWeightElems));
  }
  EXPECT_EQ(pool.allocated_bytes(), bytes);  // reused, never grown

  // A second snapshot does not fit beside the first: it waits until the
  // first one's buffers come back.
  auto held = std::make_unique<Value>(pool.snapshot(a));
  std::atomic<bool> got{false};
  std::thread t([&] {
    Value s2 = pool.snapshot(make_state(2, kWeightElems));
    got = true;
    EXPECT_TRUE(is_state(s2, 2, kWeightElems));
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(got);
  held.reset();
  t.join();
  EXPECT_TRUE(got);
  EXPECT_LE(pool.allocated_bytes(), pool.limit());
}

TEST(ManagerStaging, MappedStoragesAreSharedNotCopied) {
  ManagerDir dir;
  {
    CheckpointManager m(dir.path(), quiet({}));
    m.save(1, make_state(1, kWeightElems));
  }
  LoadOptions o;
  o.mmap = true;
  Value mapped = load(dir.file("step=00000001.pt"), o);
  EXPECT_EQ(manager::StagingPool::staged_bytes(mapped), 0u);
  manager::StagingPool pool(0);
  Value s = pool.snapshot(mapped);
  EXPECT_EQ(lookup(s, "model/weight").as_tensor().storage(), lookup(mapped, "model/weight").as_tensor().storage());
  EXPECT_EQ(pool.allocated_bytes(), 0u);
}

// ================================================================ injected faults

namespace {

// For each file-system call a save makes, fail it (once, or from then on)
// with `err` and check: the error is clear, no temporary is left, and the
// directory resumes to the previous checkpoint (or the new one, when the
// failure came after the commit and was only logged).
void inject_at_every_call(int err, bool sticky) {
  int64_t n = 0;
  int failures = 0;
  for (;; ++n) {
    SCOPED_TRACE("fault at call " + std::to_string(n) + (sticky ? " onwards" : " only"));
    ManagerDir dir;
    const ManagerOptions opts{.keep_last = 2};
    {
      CheckpointManager m(dir.path(), quiet(opts));
      m.save(1, make_state(1));
      m.save(2, make_state(2));  // the next save retires step 1: retention runs too
    }
    FailingEnv env;
    bool threw = false;
    {
      LogCapture log;
      CheckpointManager m = ManagerAccess::open(dir.path(), quiet(opts, &log), env);
      env.fail_at(env.calls() + n, err, sticky);
      try {
        EXPECT_TRUE(m.save(3, make_state(3)));
      } catch (const IoError& e) {
        threw = true;
        EXPECT_EQ(e.code(), err) << e.what();
        EXPECT_NE(std::string(e.what()).find("cannot save step 3"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find(std::strerror(err)), std::string::npos) << e.what();
        EXPECT_EQ(m.latest()->step, 2);
      }
      EXPECT_TRUE(dir.temporaries().empty()) << ::testing::PrintToString(dir.temporaries());
      if (!env.triggered()) break;  // every call has had its turn
      ++failures;
    }
    EXPECT_TRUE(dir.temporaries().empty());
    // Reopen with the real file system: the previous checkpoint is intact.
    CheckpointManager again(dir.path(), quiet({.keep_last = 2}));
    auto r = again.resume();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->info.step, threw ? 2 : 3);
    EXPECT_TRUE(is_state(r->value, r->info.step));
    if (threw) {
      EXPECT_EQ(steps_of(again), (std::vector<int64_t>{1, 2}));
    }
    for (const auto& e : again.list()) EXPECT_TRUE(is_state(load(e.path), e.step)) << e.file;
  }
  EXPECT_GE(n, 15) << "a save should make at least 15 file-system calls";
  EXPECT_EQ(failures, n);
}

}  // namespace

TEST(ManagerFault, EnospcAtEveryCallOnce) { inject_at_every_call(ENOSPC, false); }
TEST(ManagerFault, EnospcAtEveryCallOnwards) { inject_at_every_call(ENOSPC, true); }
TEST(ManagerFault, EioAtEveryCallOnce) { inject_at_every_call(EIO, false); }
TEST(ManagerFault, EioAtEveryCallOnwards) { inject_at_every_call(EIO, true); }

TEST(ManagerFault, OpeningOnAFullDiskStillResumes) {
  ManagerDir dir;
  {
    CheckpointManager m(dir.path(), quiet({}));
    for (int64_t s = 1; s <= 3; ++s) m.save(s, make_state(s));
  }
  fs::remove(dir.file("step=00000002.pt"));  // the manifest needs rewriting on open
  FailingEnv env;
  env.fail_at(0, ENOSPC, /*sticky=*/true);
  LogCapture log;
  CheckpointManager m = ManagerAccess::open(dir.path(), quiet({}, &log), env);
  EXPECT_TRUE(env.triggered());
  EXPECT_TRUE(log.contains("cannot update the manifest")) << log.all();
  auto r = m.resume();
  ASSERT_TRUE(r);
  EXPECT_TRUE(is_state(r->value, 3));
  EXPECT_THROW(m.save(4, make_state(4)), IoError);
  EXPECT_TRUE(dir.temporaries().empty());
}

TEST(ManagerFault, FullTmpfsMidSave) {
  ManagerDir dir;
  const std::string mnt = dir.file("small");
  fs::create_directories(mnt);
  if (::geteuid() != 0 || ::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=512k") != 0)
    GTEST_SKIP() << "cannot mount a small tmpfs here (" << std::strerror(errno)
                 << "); needs root and mount permission";
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};

  const int64_t elems = 300 * 1024 / 4;  // 300 KiB: one fits, two do not
  CheckpointManager m(mnt, quiet({.keep_last = 1}));
  ASSERT_TRUE(m.save(1, make_state(1, elems)));
  try {
    m.save(2, make_state(2, elems));
    FAIL() << "a second 300 KiB checkpoint fitted in 512 KiB";
  } catch (const IoError& e) {
    EXPECT_EQ(e.code(), ENOSPC) << e.what();
    EXPECT_NE(std::string(e.what()).find("No space left on device"), std::string::npos) << e.what();
  }
  std::vector<std::string> temps;
  for (const auto& e : fs::directory_iterator(mnt))
    if (e.path().filename().string().find(".tmp.") != std::string::npos) temps.push_back(e.path().string());
  EXPECT_TRUE(temps.empty()) << ::testing::PrintToString(temps);
  auto r = m.resume();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->info.step, 1);
  EXPECT_TRUE(is_state(r->value, 1, elems));
  // After the failure the manager still works: a smaller state fits.
  EXPECT_TRUE(m.save(3, make_state(3, 1024)));
  EXPECT_EQ(steps_of(m), (std::vector<int64_t>{3}));
  // The async path reports the same error on wait().
  m.save_async(4, make_state(4, 2 * elems));
  EXPECT_THROW(m.wait(), IoError);
  EXPECT_EQ(m.latest()->step, 3);
}

// ================================================================ SIGKILL

namespace {

// The child: resumes, then saves steps in a loop until killed, telling the
// parent over `fd` which step it begins and which is durable.
// Messages: int64 step, positive = "begun", negative - 1 = "durable".
[[noreturn]] void kill_child(const std::string& dir, int fd, bool async) {
  try {
    CheckpointManager m(dir, quiet({.keep_last = 3, .keep_every = 100}));
    auto r = m.resume();
    int64_t step = r ? r->info.step + 1 : 1;
    Value state = make_state(step, kWeightElems);
    for (;; ++step) {
      // Refill the same tensors in place, as training does.
      Value fresh = make_state(step, kWeightElems);
      std::memcpy(lookup(state, "model/weight").as_tensor().mutable_data(),
                  lookup(fresh, "model/weight").as_tensor().data(), kWeightElems * 4);
      std::memcpy(lookup(state, "model/bias").as_tensor().mutable_data(),
                  lookup(fresh, "model/bias").as_tensor().data(), 64);
      state.as_dict().set(Value("step"), Value(step));
      state.as_dict().set(Value("note"), Value("step " + std::to_string(step)));
      int64_t begun = step;
      if (::write(fd, &begun, sizeof begun) != sizeof begun) ::_exit(3);
      if (async) {
        m.save_async(step, state);
        // The caller trains on: scribble over the tensors while the write runs.
        std::memset(lookup(state, "model/weight").as_tensor().mutable_data(), 0x5a, 1024);
        if (step % 2 == 0) {
          m.wait();
          int64_t durable = -step - 1;
          if (::write(fd, &durable, sizeof durable) != sizeof durable) ::_exit(3);
        }
      } else {
        m.save(step, state);
        int64_t durable = -step - 1;
        if (::write(fd, &durable, sizeof durable) != sizeof durable) ::_exit(3);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kill child: %s\n", e.what());
    ::_exit(2);
  }
}

int kill_rounds() {
  if (const char* s = std::getenv("CKPT_KILL_ROUNDS")) return std::max(1, std::atoi(s));
  return 200;
}

}  // namespace

TEST(ManagerKill, ResumeAfterSigkillAtRandomMoments) {
  const int rounds = kill_rounds();
  unsigned seed = std::random_device{}();
  if (const char* s = std::getenv("CKPT_KILL_SEED")) seed = static_cast<unsigned>(std::atoll(s));
  std::mt19937 rng(seed);
  SCOPED_TRACE("CKPT_KILL_SEED=" + std::to_string(seed));
  ManagerDir dir;
  int64_t durable_max = 0;  // newest step reported durable across all rounds
  int cleaned = 0, ahead = 0, killed_before_first = 0;
  double save_secs = 0.01;  // how long one save takes here (running estimate)
  auto t0 = std::chrono::steady_clock::now();
  for (int round = 0; round < rounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const bool async = round % 2 == 1;
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      kill_child(dir.path(), fds[1], async);
    }
    ::close(fds[1]);
    // One round in four, the kill comes at any time from the fork (while the
    // child opens the directory and reconciles it, too); otherwise it comes
    // after the child begins its first save, at a random point within about
    // two saves (their duration is measured as the test runs, so slow disks
    // get later kills).
    using Clock = std::chrono::steady_clock;
    int64_t begun_max = 0, msg = 0;
    bool any = false;
    std::optional<Clock::time_point> begun_at;  // when the child began step begun_max
    bool completed = false;                      // a save finished in this round
    auto take = [&](int64_t m) {
      any = true;
      if (m > 0) {
        begun_max = std::max(begun_max, m);
        begun_at = Clock::now();
      } else {
        durable_max = std::max(durable_max, -m - 1);
        completed = true;
        if (begun_at && -m - 1 == begun_max && !async)  // a whole synchronous save
          save_secs = 0.8 * save_secs + 0.2 * std::chrono::duration<double>(Clock::now() - *begun_at).count();
      }
    };
    auto read_one = [&](int timeout_ms) {
      pollfd p{fds[0], POLLIN, 0};
      if (::poll(&p, 1, timeout_ms) != 1) return false;
      if (::read(fds[0], &msg, sizeof msg) != sizeof msg) return false;
      take(msg);
      return true;
    };
    if (std::uniform_int_distribution<int>(0, 3)(rng) != 0) read_one(10000);
    const double window = std::clamp(2.5 * save_secs, 0.005, 0.1);
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                                              std::uniform_real_distribution<double>(0, window)(rng)));
    for (auto now = Clock::now(); now < deadline; now = Clock::now()) {
      auto left_us = std::chrono::duration_cast<std::chrono::microseconds>(deadline - now).count();
      if (!read_one(static_cast<int>((left_us + 999) / 1000))) {
        if (Clock::now() < deadline) std::this_thread::sleep_until(deadline);  // EOF: the child died
        break;
      }
    }
    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "the child ended on its own (status " << status << ")";
    while (::read(fds[0], &msg, sizeof msg) == sizeof msg) take(msg);
    ::close(fds[0]);
    if (begun_max > 0 && !completed) save_secs = std::min(save_secs * 1.25, 0.1);  // saves take longer here
    if (!any) ++killed_before_first;

    bool had_temps = !dir.temporaries().empty();
    CheckpointManager m(dir.path(), quiet({.keep_last = 3, .keep_every = 100}));
    EXPECT_TRUE(dir.temporaries().empty());
    cleaned += had_temps;
    auto r = m.resume();
    if (durable_max == 0 && !r) continue;  // nothing was saved yet
    ASSERT_TRUE(r) << "no checkpoint after step " << durable_max << " was reported durable";
    // Never older than what a returned save() promised, never newer than what was begun.
    EXPECT_GE(r->info.step, durable_max);
    if (begun_max > 0) {
      EXPECT_LE(r->info.step, begun_max);
    }
    ahead += r->info.step > durable_max;
    ASSERT_TRUE(is_state(r->value, r->info.step, kWeightElems));
    for (const auto& e : m.list()) ASSERT_TRUE(e.valid) << e.file << ": " << e.problem;
    durable_max = std::max(durable_max, r->info.step);
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ kill test ] %d rounds in %.1f s: %lld steps saved (%.1f ms a save); %d kills left temporaries "
              "(mid-write), %d landed after a commit the child had not reported, %d before the first save began\n",
              rounds, secs, static_cast<long long>(durable_max), save_secs * 1000, cleaned, ahead,
              killed_before_first);
  EXPECT_GT(durable_max, 0);
}

TEST(Manager, Crc32HexIsTheManifestForm) {
  EXPECT_EQ(crc32_hex(0), "00000000");
  EXPECT_EQ(crc32_hex(0xbeef), "0000beef");
  EXPECT_EQ(crc32_hex(0xDEADBEEFu), "deadbeef");
  EXPECT_EQ(crc32_hex(0xffffffffu), "ffffffff");
  EXPECT_EQ(crc32_hex(0x01234567u), "01234567");
}
