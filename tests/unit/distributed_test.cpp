// Distributed checkpoints (ckpt/distributed.hpp): torch.distributed.checkpoint
// directories read and written; ranks simulated by threads (dcp_fixture.hpp).
#include <gtest/gtest.h>

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "ckpt/distributed.hpp"
#include "ckpt/error.hpp"
#include "api/distributed_internal.hpp"
#include "ckpt/load.hpp"
#include "formats/dcp.hpp"
#include "io/fault_env.hpp"
#include "pickle/pickler.hpp"
#include "pickle/unpickler.hpp"
#include "unit/dcp_fixture.hpp"
#include "unit/test_util.hpp"

namespace fs = std::filesystem;
using namespace ckpt;
using namespace ckpt::dcp_fixture;
using ckpt::testing::data_path;
using ckpt::testing::slurp;
using ckpt::testing::TempDir;
using ckpt::testing::write_file;

namespace {

// Runs fn(rank, comm) on `world` threads; rethrows the first failure.
template <class Fn>
void run_ranks(int world, Fn fn) {
  ThreadGroup group(world);
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      ThreadComm comm(group, r);
      try {
        fn(r, comm);
      } catch (...) {
        errors[static_cast<size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// A directory torch 2.x wrote with 2 gloo ranks (tests/data/dcp/make_dcp_fixture.py):
// consolidated, it is what torch's own dcp_to_torch_save wrote beside it.
TEST(Distributed, ReadsTorchDirectoryAsDcpToTorchSave) {
  const std::string dir = data_path("dcp/torch2_w2");
  ASSERT_TRUE(is_distributed_checkpoint(dir));
  EXPECT_EQ(detect_format(data_path("dcp/torch2_w2.pt")), Format::torch_zip);
  Value got = load(dir);
  Value want = load(data_path("dcp/torch2_w2.pt"));
  EXPECT_TRUE(got == want) << got.repr() << "\n" << want.repr();
  DistributedReader r(dir);
  const auto& row = r.item("row");
  EXPECT_TRUE(row.is_tensor);
  EXPECT_EQ(row.chunks, 2u);
  // A region inside one chunk reads only that chunk's record; the whole tensor both.
  formats::dcp::Metadata md = formats::dcp::parse_metadata(
      std::as_bytes(std::span<const char>(slurp(dir + "/.metadata"))), dir + "/.metadata");
  ASSERT_EQ(md.entries[0].fqn, "row");
  const auto& chunks = md.entries[0].chunks;
  ASSERT_EQ(chunks.size(), 2u);
  ASSERT_EQ(chunks[0].offsets, (std::vector<int64_t>{0, 0}));
  Tensor part = r.read("row", {0, 0}, {2, row.shape[1]});
  EXPECT_EQ(r.bytes_read(), chunks[0].storage.length);
  EXPECT_TRUE(part.equal(region(want.as_dict().at(Value("row")).as_tensor(), {0, 0}, {2, row.shape[1]})));
  (void)r.read("row");
  EXPECT_EQ(r.bytes_read(), 2 * chunks[0].storage.length + chunks[1].storage.length);
  // the .metadata file itself names the checkpoint too
  EXPECT_TRUE(load(dir + "/.metadata") == want);
}

TEST(Distributed, SaveNLoadMThreads) {
  for (int n = 1; n <= 4; ++n) {
    TempDir tmp;
    const std::string dir = tmp.path() + "/ckpt";
    run_ranks(n, [&](int rank, Comm& comm) { save_distributed(dir, rank_state(rank, n), comm); });
    ASSERT_TRUE(is_distributed_checkpoint(dir)) << n;
    // replicated items are written once, by one rank: every record appears once
    formats::dcp::Metadata md = formats::dcp::parse_metadata(
        std::as_bytes(std::span<const char>(slurp(dir + "/.metadata"))), dir + "/.metadata");
    size_t records = 0;
    for (const auto& e : md.entries) records += e.is_tensor ? e.chunks.size() : 1;
    // row, col and grid in n chunks each (grid in 2x2 blocks for 4), 7 whole items once
    EXPECT_EQ(records, 7u + 3u * static_cast<size_t>(n)) << n;
    for (int m = 1; m <= 4; ++m)
      run_ranks(m, [&](int rank, Comm& comm) {
        DistributedReader r(dir, comm);
        auto bad = check_load(r, rank, m, full_state());
        EXPECT_TRUE(bad.empty()) << "saved by " << n << ", rank " << rank << " of " << m << ": " << bad.front();
      });
    // consolidated: nested as saved
    Value all = load(dir);
    EXPECT_TRUE(all.as_dict().at(Value("opt")).as_dict().at(Value("betas")) ==
                Value::tuple({Value(0.9), Value(0.999)}));
    EXPECT_TRUE(all.as_dict().at(Value("grid")).as_tensor().equal(full_state()[2].second.as_tensor()));
  }
}

TEST(Distributed, ReplicatedItemsBalancedAcrossRanks) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/ckpt";
  run_ranks(3, [&](int, Comm& comm) {
    DistributedState st;
    for (int i = 0; i < 6; ++i) st.add("w" + std::to_string(i), Value(pattern(DType::float32, {64}, 10 + i)));
    save_distributed(dir, st, comm);
  });
  // six equal replicated tensors over three ranks: two files each
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(fs::exists(dir + "/__" + std::to_string(r) + "_0.distcp")) << r;
  DistributedReader reader(dir);
  for (int i = 0; i < 6; ++i)
    EXPECT_TRUE(reader.read("w" + std::to_string(i)).equal(pattern(DType::float32, {64}, 10 + i)));
}

TEST(Distributed, ShardsThatDoNotTileAreRefusedBeforeWriting) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/ckpt";
  std::string msg;
  run_ranks(2, [&](int rank, Comm& comm) {
    DistributedState st;
    // both ranks claim rows 0..2 of a 4-row tensor
    st.add_shard("w", pattern(DType::float32, {2, 3}, 1), {4, 3}, {rank == 0 ? 0 : 1, 0});
    std::string m = error_of([&] { save_distributed(dir, st, comm); });
    if (rank == 0) msg = m;
  });
  EXPECT_NE(msg.find("do not tile"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dir + "/.metadata"));
  EXPECT_FALSE(fs::exists(dir + "/__0_0.distcp"));
}

TEST(Distributed, OneRankFailingLeavesNoMetadata) {
  TempDir tmp;
  const std::string prev = tmp.path() + "/step_1", next = tmp.path() + "/step_2";
  run_ranks(3, [&](int rank, Comm& comm) { save_distributed(prev, rank_state(rank, 3), comm); });
  // rank 1 cannot write its data file (the disk is full)
  io::FaultInjectionEnv full(io::Env::posix());
  full.fail_at = 0;
  full.sticky = true;
  std::vector<std::string> msgs(3);
  run_ranks(3, [&](int rank, Comm& comm) {
    io::Env& env = rank == 1 ? static_cast<io::Env&>(full) : io::Env::posix();
    msgs[static_cast<size_t>(rank)] =
        error_of([&] { detail::save_distributed(env, next, rank_state(rank, 3), comm, {}); });
  });
  for (int r = 0; r < 3; ++r) EXPECT_FALSE(msgs[static_cast<size_t>(r)].empty()) << "rank " << r << " did not throw";
  EXPECT_NE(msgs[1].find("rank 1"), std::string::npos) << msgs[1];
  EXPECT_FALSE(fs::exists(next + "/.metadata"));
  EXPECT_TRUE(fs::is_empty(next)) << "the other ranks' data files are removed";
  EXPECT_FALSE(is_distributed_checkpoint(next));
  EXPECT_TRUE(is_distributed_checkpoint(prev));
  EXPECT_THROW(load(next), Error);
}

// ---------------------------------------------------------------- overwriting a checkpoint

namespace {

// The state of training step `step` as rank `rank` of `world` holds it: a
// row-sharded tensor, a replicated one and the step, all derived from `step`.
DistributedState step_state(int64_t step, int rank, int world) {
  DistributedState st;
  const Tensor full = pattern(DType::float32, {12, 5}, static_cast<uint64_t>(step));
  auto [r0, n] = split(12, world, rank);
  st.add_shard("w", region(full, {r0, 0}, {n, 5}), {12, 5}, {r0, 0});
  st.add("b", Value(pattern(DType::int64, {7}, static_cast<uint64_t>(step) + 1000)));
  st.add("step", Value(step));
  return st;
}

// The step whose state `dir` holds, after checking every byte of it against
// step_state; throws when the directory is not a complete checkpoint.
int64_t loaded_step(const std::string& dir) {
  DistributedReader r(dir);
  (void)r.verify();  // every record intact
  const Value v = load(dir);
  const int64_t step = v.as_dict().at(Value("step")).as_int();
  if (!v.as_dict().at(Value("w")).as_tensor().equal(pattern(DType::float32, {12, 5}, static_cast<uint64_t>(step))) ||
      !v.as_dict().at(Value("b")).as_tensor().equal(pattern(DType::int64, {7}, static_cast<uint64_t>(step) + 1000)))
    throw Error("the tensors of step " + std::to_string(step) + " differ from what was saved");
  return step;
}

// The entries of `dir` other than `.metadata` and the data files it names.
std::vector<std::string> extra_files(const std::string& dir) {
  std::set<std::string> named;
  const auto md = formats::dcp::parse_metadata(std::as_bytes(std::span<const char>(slurp(dir + "/.metadata"))), "m");
  for (const auto& e : md.entries) {
    if (!e.is_tensor) named.insert(e.bytes.relative_path);
    for (const auto& c : e.chunks) named.insert(c.storage.relative_path);
  }
  std::vector<std::string> extra;
  for (const auto& f : fs::directory_iterator(dir)) {
    const std::string name = f.path().filename().string();
    if (name != ".metadata" && !named.count(name)) extra.push_back(name);
  }
  std::sort(extra.begin(), extra.end());
  return extra;
}

std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& f : fs::directory_iterator(dir)) names.push_back(f.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

// Issue #19.1: a save refused for shards that do not cover a tensor must not
// touch the checkpoint already in the directory (it used to remove .metadata first).
TEST(Distributed, RefusedSaveKeepsTheCheckpointInPlace) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/d1";
  Value sd = Value::dict();
  sd.as_dict().set(Value("w"), Value(pattern(DType::float32, {10, 3}, 1)));
  sd.as_dict().set(Value("step"), Value(int64_t{7}));
  save_distributed(dir, sd);  // what `ckpt convert model.pt d1 --to dcp` does
  const std::vector<std::string> before = listing(dir);
  const std::string metadata = slurp(dir + "/.metadata");
  // One process: a {4,3} shard of a {10,3} tensor.
  DistributedState one;
  one.add_shard("w", pattern(DType::float32, {4, 3}, 2), {10, 3}, {0, 0});
  std::string e = error_of([&] { save_distributed(dir, one); });
  EXPECT_NE(e.find("cover 12 of the tensor's 30 elements"), std::string::npos) << e;
  // Two ranks whose shards overlap, and two that disagree on the global shape.
  for (int variant = 0; variant < 2; ++variant) {
    std::vector<std::string> msgs(2);
    run_ranks(2, [&](int rank, Comm& comm) {
      DistributedState st;
      if (variant == 0)
        st.add_shard("w", pattern(DType::float32, {6, 3}, 3), {10, 3}, {rank == 0 ? 0 : 4, 0});
      else
        st.add_shard("w", pattern(DType::float32, {5, 3}, 3), {rank == 0 ? 10 : 11, 3}, {rank == 0 ? 0 : 5, 0});
      msgs[static_cast<size_t>(rank)] = error_of([&] { save_distributed(dir, st, comm); });
    });
    EXPECT_NE(msgs[0].find(variant == 0 ? "overlap" : "differs between ranks"), std::string::npos) << msgs[0];
    EXPECT_FALSE(msgs[1].empty());
  }
  EXPECT_EQ(listing(dir), before);
  EXPECT_EQ(slurp(dir + "/.metadata"), metadata);
  EXPECT_TRUE(load(dir) == sd);
}

// Overwriting writes new data files under names the old checkpoint does not
// use, commits with .metadata, then removes the old checkpoint's files, stale
// DCP files and temporaries -- and nothing else.
TEST(Distributed, OverwriteReplacesTheCheckpointAndItsFiles) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/d";
  run_ranks(3, [&](int rank, Comm& comm) { save_distributed(dir, step_state(1, rank, 3), comm); });
  EXPECT_EQ(listing(dir), (std::vector<std::string>{".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp"}));
  EXPECT_EQ(loaded_step(dir), 1);
  // debris of a killed save, and files that are not DCP's
  write_file(dir + "/__7_3.distcp", "stale");
  write_file(dir + "/.__1_4.distcp.tmp.123.0.456", "temporary");
  write_file(dir + "/..metadata.tmp.123.1.789", "temporary");
  write_file(dir + "/notes.txt", "mine");
  write_file(dir + "/__x_0.distcp", "not a DCP name");
  write_file(dir + "/__0_0.distcp.bak", "mine too");
  run_ranks(2, [&](int rank, Comm& comm) { save_distributed(dir, step_state(2, rank, 2), comm); });
  EXPECT_EQ(loaded_step(dir), 2);
  EXPECT_EQ(listing(dir), (std::vector<std::string>{".metadata", "__0_0.distcp.bak", "__0_5.distcp", "__1_5.distcp",
                                                    "__x_0.distcp", "notes.txt"}));
  EXPECT_EQ(extra_files(dir), (std::vector<std::string>{"__0_0.distcp.bak", "__x_0.distcp", "notes.txt"}));
  save_distributed(dir, step_state(3, 0, 1));
  EXPECT_EQ(loaded_step(dir), 3);
  EXPECT_TRUE(fs::exists(dir + "/__0_6.distcp"));
  EXPECT_EQ(extra_files(dir), (std::vector<std::string>{"__0_0.distcp.bak", "__x_0.distcp", "notes.txt"}));
}

TEST(Distributed, DataFileNames) {
  using detail::dcp_data_file_number;
  EXPECT_EQ(dcp_data_file_number("__0_0.distcp"), 0u);
  EXPECT_EQ(dcp_data_file_number("__12_345.distcp"), 345u);
  for (const char* bad : {"__0.distcp", "__0_.distcp", "___0.distcp", "__a_0.distcp", "__0_0.distcpx", "_0_0.distcp",
                          "__0_0", "__0_-1.distcp", ".metadata", "__0_0.distcp.tmp"})
    EXPECT_FALSE(dcp_data_file_number(bad).has_value()) << bad;
}

// ---------------------------------------------------------------- faults and kills

namespace {

// For each file-system call of rank `victim`'s part of a save over a
// checkpoint, fail it (once, or from then on) and check: every rank throws
// or none does; after a throw the old checkpoint loads completely, after a
// return the new one; and no temporary or orphan file is left.
void inject_distributed_faults(int world, int err, bool sticky) {
  for (int victim = 0; victim < world; ++victim) {
    int64_t n = 0;
    for (;; ++n) {
      SCOPED_TRACE("rank " + std::to_string(victim) + " of " + std::to_string(world) + ", fault at call " +
                   std::to_string(n) + (sticky ? " onwards" : " only"));
      TempDir tmp;
      const std::string dir = tmp.path() + "/d";
      run_ranks(world, [&](int rank, Comm& comm) { save_distributed(dir, step_state(1, rank, world), comm); });
      io::FaultInjectionEnv env(io::Env::posix());
      env.fail_at = n;
      env.error = err;
      env.sticky = sticky;
      std::vector<std::string> msgs(static_cast<size_t>(world));
      run_ranks(world, [&](int rank, Comm& comm) {
        io::Env& mine = rank == victim ? static_cast<io::Env&>(env) : io::Env::posix();
        msgs[static_cast<size_t>(rank)] =
            error_of([&] { detail::save_distributed(mine, dir, step_state(2, rank, world), comm, {}); });
      });
      const bool threw = !msgs[0].empty();
      for (const auto& m : msgs) EXPECT_EQ(!m.empty(), threw) << "the ranks disagree: " << m;
      const bool in_place = threw && msgs[0].find("new checkpoint is in place") != std::string::npos;
      if (threw && !in_place) {
        const std::string& m = msgs[static_cast<size_t>(victim)];
        EXPECT_NE(m.find(std::strerror(err)), std::string::npos) << m;
      }
      int64_t step = 0;
      EXPECT_NO_THROW(step = loaded_step(dir));
      EXPECT_EQ(step, threw && !in_place ? 1 : 2) << msgs[0];
      if (!in_place) {
        EXPECT_TRUE(extra_files(dir).empty()) << ::testing::PrintToString(extra_files(dir));
      }
      if (!env.fired()) {
        EXPECT_FALSE(threw) << msgs[0];
        break;
      }
    }
    // create, write x records, fsync, close, rename, fsync dir (+ .metadata's six, + cleanup's fsync on rank 0)
    EXPECT_GE(n, victim == 0 ? 12 : 6) << "rank " << victim;
  }
}

}  // namespace

TEST(DistributedFault, EnospcAtEveryCallOnceOneProcess) { inject_distributed_faults(1, ENOSPC, false); }
TEST(DistributedFault, EioAtEveryCallOnwardsOneProcess) { inject_distributed_faults(1, EIO, true); }
TEST(DistributedFault, EnospcAtEveryCallOnceThreeRanks) { inject_distributed_faults(3, ENOSPC, false); }
TEST(DistributedFault, EioAtEveryCallOnwardsThreeRanks) { inject_distributed_faults(3, EIO, true); }

namespace {

// The child: saves steps into `dir` until killed, 2 and 3 ranks (threads) in
// turn, telling the parent over `fd` which step it begins (+step) and which
// has returned (-step).
[[noreturn]] void dcp_kill_child(const std::string& dir, int fd, int64_t first) {
  try {
    for (int64_t step = first;; ++step) {
      if (::write(fd, &step, sizeof step) != sizeof step) ::_exit(3);
      const int world = step % 2 == 0 ? 2 : 3;
      run_ranks(world, [&](int rank, Comm& comm) { save_distributed(dir, step_state(step, rank, world), comm); });
      const int64_t done = -step;
      if (::write(fd, &done, sizeof done) != sizeof done) ::_exit(3);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dcp kill child: %s\n", e.what());
    ::_exit(2);
  }
}

}  // namespace

// SIGKILL at random moments while a job overwrites the same directory step
// after step: the directory always holds a complete checkpoint, never older
// than the last save that returned nor newer than the last one begun; the
// next save clears what the killed one left.
TEST(DistributedKill, OverwriteSurvivesSigkillAtRandomMoments) {
  int rounds = 60;
  if (const char* s = std::getenv("CKPT_KILL_ROUNDS")) rounds = std::max(1, std::atoi(s));
  unsigned seed = std::random_device{}();
  if (const char* s = std::getenv("CKPT_KILL_SEED")) seed = static_cast<unsigned>(std::atoll(s));
  std::mt19937 rng(seed);
  SCOPED_TRACE("CKPT_KILL_SEED=" + std::to_string(seed));
  TempDir tmp;
  const std::string dir = tmp.path() + "/d";
  save_distributed(dir, step_state(1, 0, 1));
  int64_t done_max = 1, begun_max = 1;
  double save_secs = 0.01;  // running estimate of one save here
  int debris = 0, after_commit = 0, mid_save = 0;
  using Clock = std::chrono::steady_clock;
  for (int round = 0; round < rounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      dcp_kill_child(dir, fds[1], begun_max + 1);
    }
    ::close(fds[1]);
    std::optional<Clock::time_point> begun_at;
    bool completed = false;  // a save returned in this round
    auto take = [&](int64_t m) {
      if (m > 0) {
        begun_max = std::max(begun_max, m);
        begun_at = Clock::now();
      } else {
        if (begun_at && -m == begun_max) save_secs = 0.8 * save_secs + 0.2 * std::chrono::duration<double>(Clock::now() - *begun_at).count();
        done_max = std::max(done_max, -m);
        completed = true;
      }
    };
    int64_t msg = 0;
    auto read_one = [&](int timeout_ms) {
      pollfd p{fds[0], POLLIN, 0};
      if (::poll(&p, 1, timeout_ms) != 1 || ::read(fds[0], &msg, sizeof msg) != sizeof msg) return false;
      take(msg);
      return true;
    };
    read_one(10000);  // the first save has begun
    const double window = std::clamp(3.0 * save_secs, 0.002, 0.2);
    const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                                              std::uniform_real_distribution<double>(0, window)(rng)));
    for (auto now = Clock::now(); now < deadline; now = Clock::now()) {
      const auto left_us = std::chrono::duration_cast<std::chrono::microseconds>(deadline - now).count();
      if (!read_one(static_cast<int>((left_us + 999) / 1000))) break;
    }
    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the child ended on its own (status " << status << ")";
    while (::read(fds[0], &msg, sizeof msg) == sizeof msg) take(msg);
    ::close(fds[0]);
    if (!completed) save_secs = std::min(save_secs * 1.25, 0.1);  // saves take longer here: kill later
    ++(completed ? after_commit : mid_save);
    int64_t step = 0;
    ASSERT_NO_THROW(step = loaded_step(dir)) << "no complete checkpoint after the kill";
    EXPECT_GE(step, done_max);
    EXPECT_LE(step, begun_max);
    done_max = std::max(done_max, step);
    debris += !extra_files(dir).empty();
  }
  // One more save, not killed: it removes whatever the killed ones left.
  save_distributed(dir, step_state(begun_max + 1, 0, 1));
  EXPECT_EQ(loaded_step(dir), begun_max + 1);
  EXPECT_TRUE(extra_files(dir).empty()) << ::testing::PrintToString(extra_files(dir));
  std::printf("[ dcp kill ] %d rounds: %lld saves begun, %.1f ms a save, %d rounds completed a save, %d killed "
              "the first save, %d kills left debris\n",
              rounds, static_cast<long long>(begun_max), save_secs * 1000, after_commit, mid_save, debris);
  EXPECT_GT(begun_max, rounds) << "no save ever completed";
}

TEST(Distributed, SingleProcessSaveOfAStateDict) {
  TempDir tmp;
  Value sd = Value::dict();
  sd.as_dict().set(Value("a"), Value(pattern(DType::float16, {3, 2}, 7)));
  Value layers = Value::list({Value(pattern(DType::uint8, {4}, 8)), Value(pattern(DType::int16, {2}, 9))});
  sd.as_dict().set(Value("layers"), layers);
  sd.as_dict().set(Value("epoch"), Value(int64_t{3}));
  save_distributed(tmp.path() + "/d", sd);
  EXPECT_TRUE(fs::exists(tmp.path() + "/d/__0_0.distcp"));
  size_t files = 0;
  for (const auto& f : fs::directory_iterator(tmp.path() + "/d")) files += f.is_regular_file() ? 1 : 0;
  EXPECT_EQ(files, 2u);  // .metadata + one data file; no temporaries
  DistributedReader r(tmp.path() + "/d");
  std::vector<std::string> names;
  for (const auto& i : r.items()) names.push_back(i.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a", "layers.0", "layers.1", "epoch"}));
  EXPECT_TRUE(load(tmp.path() + "/d") == sd);
}

// ---------------------------------------------------------------- hostile directories

namespace {

// A one-tensor checkpoint whose metadata the test then edits.
struct Crafted {
  TempDir tmp;
  std::string dir = tmp.path();
  formats::dcp::Metadata md;
  Crafted() {
    Value sd = Value::dict();
    sd.as_dict().set(Value("w"), Value(pattern(DType::float32, {4, 3}, 1)));
    save_distributed(dir, sd);
    md = formats::dcp::parse_metadata(std::as_bytes(std::span<const char>(slurp(dir + "/.metadata"))), "m");
  }
  void rewrite() { write_file(dir + "/.metadata", formats::dcp::write_metadata(md, dir)); }
  std::string load_error() { return error_of([&] { (void)load(dir); }); }
};

}  // namespace

TEST(DistributedHostile, RecordPastTheEndOfItsFile) {
  Crafted c;
  c.md.entries[0].chunks[0].storage.offset = 1u << 20;
  c.rewrite();
  std::string e = c.load_error();
  EXPECT_NE(e.find("__0_0.distcp"), std::string::npos) << e;
  EXPECT_NE(e.find("'w'"), std::string::npos) << e;
  EXPECT_NE(e.find("1048576"), std::string::npos) << e;
}

TEST(DistributedHostile, ChunksThatOverlapOrLeaveGaps) {
  Crafted c;
  auto chunk = c.md.entries[0].chunks[0];
  chunk.sizes = {2, 3};
  c.md.entries[0].chunks = {chunk, chunk};  // the same rows twice, rows 2..3 missing
  c.md.entries[0].chunks[1].offsets = {1, 0};
  c.rewrite();
  std::string e = c.load_error();
  EXPECT_NE(e.find("overlap"), std::string::npos) << e;
  EXPECT_NE(e.find(".metadata"), std::string::npos) << e;
  c.md.entries[0].chunks.resize(1);
  c.rewrite();
  e = c.load_error();
  EXPECT_NE(e.find("cover 6 of the tensor's 12"), std::string::npos) << e;
  c.md.entries[0].chunks[0].offsets = {3, 0};
  c.rewrite();
  e = c.load_error();
  EXPECT_NE(e.find("outside the tensor"), std::string::npos) << e;
}

TEST(DistributedHostile, DataFileOutsideTheDirectory) {
  for (const char* name : {"../x.distcp", "/etc/passwd", "..", "a/b"}) {
    Crafted c;
    c.md.entries[0].chunks[0].storage.relative_path = name;
    c.rewrite();
    std::string e = c.load_error();
    EXPECT_NE(e.find("not a plain file name"), std::string::npos) << name << ": " << e;
  }
}

TEST(DistributedHostile, ChunkRecordOfAnotherShapeOrType) {
  Crafted c;
  c.md.entries[0].dtype = DType::int32;
  c.rewrite();
  std::string e = c.load_error();
  EXPECT_NE(e.find("float32 tensor of shape [4, 3], .metadata says int32"), std::string::npos) << e;
}

TEST(DistributedHostile, VerifyFindsAFlippedDataByte) {
  Crafted c;
  DistributedReader good(c.dir);
  EXPECT_EQ(good.verify(), 1u);
  std::string data = slurp(c.dir + "/__0_0.distcp");
  const Tensor t = pattern(DType::float32, {4, 3}, 1);
  const size_t at = data.find(std::string(reinterpret_cast<const char*>(t.data()), t.nbytes()));
  ASSERT_NE(at, std::string::npos);
  data[at + 5] = static_cast<char>(data[at + 5] ^ 0x10);
  write_file(c.dir + "/__0_0.distcp", data);
  DistributedReader r(c.dir);
  std::string e = error_of([&] { r.verify(); });
  EXPECT_NE(e.find("CRC"), std::string::npos) << e;
  EXPECT_NE(e.find("__0_0.distcp"), std::string::npos) << e;
  EXPECT_NE(e.find("'w'"), std::string::npos) << e;
}

TEST(DistributedHostile, MetadataThatIsNotDcp) {
  TempDir tmp;
  pickle::TorchPickler p;
  write_file(tmp.path() + "/.metadata", p.dump(Value(int64_t{5})));
  EXPECT_FALSE(is_distributed_checkpoint(tmp.path()));
  write_file(tmp.path() + "/.metadata", "\x80\x02garbage");
  EXPECT_FALSE(is_distributed_checkpoint(tmp.path()));
  EXPECT_THROW(DistributedReader r(tmp.path()), FormatError);
}

TEST(DistributedHostile, EveryTruncationOfMetadataIsAnError) {
  Crafted c;
  const std::string full = slurp(c.dir + "/.metadata");
  for (size_t n = 0; n < full.size(); n += 7) {
    write_file(c.dir + "/.metadata", full.substr(0, n));
    EXPECT_THROW(DistributedReader r(c.dir), Error) << n;
  }
}

// The pickler writes inert objects as the calls that made them, and they decode back.
TEST(Distributed, PicklerWritesObjects) {
  auto o = std::make_shared<Object>();
  o->module = "m";
  o->name = "C";
  o->how = "NEWOBJ";
  o->args = Value::tuple();
  Value state = Value::dict();
  state.as_dict().set(Value("x"), Value(int64_t{1}));
  o->state = state;
  Value v = Value::list({Value(o), Value(o), Value(Global{"builtins", "getattr"})});
  pickle::TorchPickler plain;
  EXPECT_THROW(plain.dump(v), Error);
  pickle::TorchPickler p(true);
  std::string bytes = p.dump(v);
  pickle::Options opt;
  opt.policy = pickle::GlobalPolicy::inspect;
  Value back = pickle::unpickle(std::as_bytes(std::span<const char>(bytes)), opt);
  ASSERT_TRUE(back.is_list());
  EXPECT_EQ(back.as_list()[0].container_id(), back.as_list()[1].container_id());  // memoized once
  EXPECT_EQ(back.as_list()[0].as_object().qualified(), "m.C");
  EXPECT_TRUE(back.as_list()[0].as_object().state == state);
}
