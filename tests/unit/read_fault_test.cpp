// Read faults: every read-side call of a load (opening or mapping a file,
// each positioned read, listing a directory, taking the manager's lock) fails
// in turn through io::FaultInjectionEnv, with EIO, ENOENT and a short read
// (the file ends halfway through the read). Each must end in a ckpt::Error
// that names the file (and, for a short read, the offset), never in a crash
// or in a load that returns different tensors.
#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>

#include "ckpt/ckpt.hpp"
#include "io/fault_env.hpp"
#include "test_util.hpp"

namespace ckpt {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

Tensor filled(DType dtype, std::vector<int64_t> sizes, uint32_t seed) {
  Tensor t = Tensor::empty(dtype, std::move(sizes));
  std::byte* p = t.mutable_data();
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < t.nbytes(); ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    p[i] = static_cast<std::byte>(x);
  }
  return t;
}

StateDict small_model() {
  StateDict sd;
  sd.set("embed.weight", filled(DType::float32, {64, 32}, 1));
  sd.set("layer.0.weight", filled(DType::bfloat16, {32, 32}, 2));
  sd.set("layer.0.bias", filled(DType::float32, {32}, 3));
  sd.set("norm.weight", filled(DType::float16, {32}, 4));
  sd.set("step", filled(DType::int64, {}, 5));
  return sd;
}

// What a load returned, as bytes: two loads are equal when these are.
std::string digest(const Value& v) { return save_to_buffer(v); }
std::string digest(const StateDict& sd) { return save_to_buffer(sd.to_value()); }

struct Fault {
  const char* name;
  int error;
  bool short_read;
};
constexpr Fault kFaults[] = {{"EIO", EIO, false}, {"ENOENT", ENOENT, false}, {"short read", EIO, true}};

// Runs `load` (which reads through io::default_env() and returns a digest of
// what it loaded) once clean, counting its read calls, then once per call and
// fault kind with that call failing. `may_recover`: the load may succeed
// after a fault (it must then return what the clean load returned).
// Returns the number of read calls of the clean load.
int64_t expect_read_faults_reported(const std::function<std::string()>& load, bool may_recover = false) {
  std::string clean;
  int64_t total = 0;
  {
    io::FaultInjectionEnv env(io::Env::posix());
    io::ScopedDefaultEnv scope(env);
    clean = load();
    total = env.read_calls();
  }
  EXPECT_GT(total, 0) << "the load made no read call through the Env";
  for (const Fault& f : kFaults) {
    for (int64_t n = 0; n < total; ++n) {
      SCOPED_TRACE(std::string(f.name) + " at read call " + std::to_string(n) + " of " + std::to_string(total));
      io::FaultInjectionEnv env(io::Env::posix());
      env.read_fail_at = n;
      env.read_error = f.error;
      env.short_read = f.short_read;
      io::ScopedDefaultEnv scope(env);
      try {
        const std::string got = load();
        EXPECT_TRUE(env.read_fired());
        if (!may_recover) ADD_FAILURE() << "the load did not report the failure";
        EXPECT_TRUE(got == clean) << "the load returned different data after a failed read";
      } catch (const IoError& e) {
        EXPECT_TRUE(env.read_fired());
        EXPECT_EQ(e.code(), f.error) << e.what();
        EXPECT_FALSE(e.context().file.empty()) << "no file named: " << e.what();
        EXPECT_NE(std::string(e.what()).find(e.context().file), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("injected"), std::string::npos) << e.what();
      } catch (const FormatError& e) {
        EXPECT_TRUE(env.read_fired());
        EXPECT_TRUE(f.short_read) << "a format error from an I/O error: " << e.what();
        EXPECT_FALSE(e.context().file.empty()) << "no file named: " << e.what();
        EXPECT_TRUE(e.context().offset.has_value()) << "no offset: " << e.what();
        EXPECT_NE(std::string(e.what()).find("shrank"), std::string::npos) << e.what();
      } catch (const Error& e) {
        ADD_FAILURE() << "an unexpected kind of ckpt::Error: " << e.what();
      } catch (const std::exception& e) {
        ADD_FAILURE() << "not a ckpt::Error: " << e.what();
      }
    }
  }
  return total;
}

TEST(ReadFault, TorchZip) {
  TempDir dir;
  const std::string path = dir / "model.pt";
  StateDict sd = small_model();
  // 10 MiB: read in parallel pieces (io::read_at_parallel), faults on any thread.
  sd.set("big", filled(DType::float32, {10, 256, 1024}, 6));
  save_state_dict(path, sd);
  const std::string want = digest(sd);
  const int64_t calls = expect_read_faults_reported([&] {
    std::string d = digest(load_state_dict(path));
    EXPECT_TRUE(d == want);
    return d;
  });
  EXPECT_GT(calls, 6);
}

TEST(ReadFault, TorchZipMapped) {
  TempDir dir;
  const std::string path = dir / "model.pt";
  save_state_dict(path, small_model());
  // The bytes of a mapping are read by touching memory: only the opening is a call.
  expect_read_faults_reported([&] { return digest(load_state_dict(path, LoadOptions{.mmap = true})); });
}

TEST(ReadFault, TorchLegacy) {
  const std::string path = testing::data_path("valid/torch2/net_state_dict_legacy.pt");
  expect_read_faults_reported([&] { return digest(load(path)); });
}

TEST(ReadFault, Safetensors) {
  TempDir dir;
  const std::string path = dir / "model.safetensors";
  save_safetensors(path, small_model());
  expect_read_faults_reported([&] { return digest(load_state_dict(path)); });
  expect_read_faults_reported([&] { return digest(load_safetensors(path)); });
}

TEST(ReadFault, HuggingFaceShards) {
  TempDir dir;
  ShardOptions opts;
  opts.max_shard_size = 4096;  // several shards
  save_sharded(dir.path(), small_model(), opts);
  // The directory: listed to find the index, then the index and each shard.
  const int64_t calls = expect_read_faults_reported([&] { return digest(load_state_dict(dir.path())); });
  EXPECT_GT(calls, 4);
}

TEST(ReadFault, DistributedCheckpoint) {
  TempDir dir;
  save_distributed(dir.path(), small_model().to_value());
  expect_read_faults_reported([&] { return digest(load(dir.path())); });
}

// The manager: lock, listing, manifest, pointer and resume's load. A damaged
// newest checkpoint is skipped by design (resume() returns the newest one that
// verifies), so a fault may end in an older checkpoint: then it must be the
// older checkpoint's bytes, and the directory must be left as it was (a read
// fault must never make the manager delete or forget a good checkpoint).
TEST(ReadFault, ManagerOpenAndResume) {
  TempDir pristine;
  const auto state = [](int64_t step) {
    StateDict sd = small_model();
    sd.set("marker", filled(DType::int32, {4}, static_cast<uint32_t>(step)));
    return sd.to_value();
  };
  {
    CheckpointManager mgr(pristine.path());
    mgr.save(1, state(1));
    mgr.save(2, state(2));
  }
  const auto resume_in = [&](const std::string& d) -> std::string {
    ManagerOptions quiet;
    quiet.log = [](const std::string&) {};  // "manifest is unreadable; rebuilding it" is expected here
    CheckpointManager mgr(d, quiet);
    auto r = mgr.resume();
    if (!r) return "none";
    const std::string got = digest(r->value);
    EXPECT_TRUE(got == digest(state(r->info.step))) << "step " << r->info.step << " came back with other bytes";
    return std::to_string(r->info.step) + ":" + got;
  };
  TempDir work_root;
  int run = 0;
  std::string current;
  auto fresh_copy = [&] {
    current = work_root / ("run" + std::to_string(run++));
    fs::copy(pristine.path(), current, fs::copy_options::recursive);
  };
  const std::string clean_step2 = [&] {
    fresh_copy();
    return resume_in(current);
  }();
  ASSERT_EQ(clean_step2.substr(0, 2), "2:");

  // Each run gets its own copy of the directory; after the fault, a clean
  // open of that copy must still resume step 2.
  std::string clean;
  int64_t total = 0;
  {
    fresh_copy();
    io::FaultInjectionEnv env(io::Env::posix());
    io::ScopedDefaultEnv scope(env);
    clean = resume_in(current);
    total = env.read_calls();
  }
  ASSERT_EQ(clean, clean_step2);
  ASSERT_GT(total, 4);
  for (const Fault& f : kFaults) {
    for (int64_t n = 0; n < total; ++n) {
      SCOPED_TRACE(std::string(f.name) + " at read call " + std::to_string(n) + " of " + std::to_string(total));
      fresh_copy();
      {
        io::FaultInjectionEnv env(io::Env::posix());
        env.read_fail_at = n;
        env.read_error = f.error;
        env.short_read = f.short_read;
        io::ScopedDefaultEnv scope(env);
        try {
          const std::string got = resume_in(current);  // checks the bytes of whatever step it returns
          EXPECT_TRUE(env.read_fired());
          EXPECT_NE(got, "none") << "a read fault made resume() find nothing";
        } catch (const Error& e) {
          EXPECT_TRUE(env.read_fired());
          EXPECT_FALSE(e.context().file.empty() && std::string(e.what()).find(current) == std::string::npos)
              << "no file named: " << e.what();
        } catch (const std::exception& e) {
          ADD_FAILURE() << "not a ckpt::Error: " << e.what();
        }
      }
      EXPECT_EQ(resume_in(current), clean_step2) << "a read fault left the directory changed";
    }
  }
}

TEST(ReadFault, ManagerLockAndListingNameTheirPaths) {
  TempDir dir;
  {
    CheckpointManager mgr(dir.path());
    mgr.save(1, small_model().to_value());
  }
  {  // a writer's first call: the lock
    io::FaultInjectionEnv env(io::Env::posix());
    env.read_fail_at = 0;
    io::ScopedDefaultEnv scope(env);
    try {
      CheckpointManager mgr(dir.path());
      ADD_FAILURE() << "opened despite a failing lock";
    } catch (const IoError& e) {
      EXPECT_EQ(e.code(), EIO);
      EXPECT_EQ(e.context().file, dir / ".lock") << e.what();
    }
  }
  fs::remove(dir / "manifest.json");
  {  // a reader without a manifest: the listing comes first
    io::FaultInjectionEnv env(io::Env::posix());
    env.read_fail_at = 0;
    io::ScopedDefaultEnv scope(env);
    try {
      CheckpointManager mgr(dir.path(), ManagerOptions{.read_only = true});
      ADD_FAILURE() << "opened despite a failing listing";
    } catch (const IoError& e) {
      EXPECT_EQ(e.code(), EIO);
      EXPECT_EQ(e.context().file, dir.path()) << e.what();
    }
  }
}

TEST(ReadFault, MissingFileIsAnIoErrorNamingIt) {
  TempDir dir;
  const std::string path = dir / "absent.pt";
  try {
    load(path);
    ADD_FAILURE() << "loaded a missing file";
  } catch (const IoError& e) {
    EXPECT_EQ(e.code(), ENOENT);
    EXPECT_EQ(e.context().file, path);
  }
}

// The default Env is the POSIX one; a ScopedDefaultEnv replaces it for its
// lifetime only, and nests.
TEST(ReadFault, ScopedDefaultEnvNests) {
  EXPECT_EQ(&io::default_env(), &io::Env::posix());
  io::FaultInjectionEnv a(io::Env::posix()), b(io::Env::posix());
  {
    io::ScopedDefaultEnv sa(a);
    EXPECT_EQ(&io::default_env(), &a);
    {
      io::ScopedDefaultEnv sb(b);
      EXPECT_EQ(&io::default_env(), &b);
    }
    EXPECT_EQ(&io::default_env(), &a);
  }
  EXPECT_EQ(&io::default_env(), &io::Env::posix());
}

// ckpt scan walks directories through the Env: a listing that fails is a
// per-directory error in the report, not an exception, and EACCES (a folder
// that is not ours to read) is skipped as find(1) skips it.
TEST(ReadFault, ScanDirectoryListingGoesThroughTheEnv) {
  TempDir dir;
  fs::create_directories(dir / "sub");
  save(dir / "sub/a.pt", small_model().to_value());
  {
    io::FaultInjectionEnv env(io::Env::posix());
    env.read_fail_at = 0;  // the first read-side call: listing the top folder
    io::ScopedDefaultEnv scope(env);
    auto reports = scan_paths({dir.path()});
    ASSERT_EQ(reports.size(), 1u);
    EXPECT_EQ(reports[0].verdict, ScanVerdict::error);
    ASSERT_EQ(reports[0].errors.size(), 1u);
    EXPECT_NE(reports[0].errors[0].find(dir.path() + ": cannot list directory"), std::string::npos)
        << reports[0].errors[0];
  }
  {
    io::FaultInjectionEnv env(io::Env::posix());
    env.read_fail_at = 0;
    env.read_error = EACCES;
    io::ScopedDefaultEnv scope(env);
    auto reports = scan_paths({dir.path()});  // skipped: no listing error, nothing found in it
    ASSERT_EQ(reports.size(), 1u);
    ASSERT_EQ(reports[0].errors.size(), 1u);
    EXPECT_NE(reports[0].errors[0].find("no checkpoint or pickle found"), std::string::npos) << reports[0].errors[0];
  }
  auto reports = scan_paths({dir.path()});  // without faults: the file in the subfolder
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].path, dir / "sub/a.pt");
}

}  // namespace
}  // namespace ckpt

