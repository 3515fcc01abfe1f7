// How long does a training loop stop for a checkpoint? CheckpointManager::save
// (serialise + write + fsync, all in the caller) against save_async (copy the
// tensors into the staging pool; a background thread does the rest), for a
// state dict of 1 GiB by default.
//
//   manager_async [--gib N] [--rounds N] [--tensors N] [--dir PATH]
//
// Prints one line per measurement and a summary with the blocking-time ratio.
// The directory (default: a new one under $TMPDIR or /tmp) is removed at the end.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "ckpt/ckpt.hpp"
#include "ckpt/manager.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Stats {
  std::vector<double> v;
  double min() const { return *std::min_element(v.begin(), v.end()); }
  double mean() const {
    double s = 0;
    for (double x : v) s += x;
    return s / static_cast<double>(v.size());
  }
};

// One step of "training": change every tensor a little, as an optimizer would.
void train(ckpt::StateDict& sd, int step) {
  for (auto& [name, t] : sd) {
    auto* p = reinterpret_cast<float*>(t.mutable_data());
    for (int64_t i = 0; i < t.numel(); i += 4096) p[i] = static_cast<float>(step);
  }
}

[[noreturn]] void usage() {
  std::fprintf(stderr, "usage: manager_async [--gib N] [--rounds N] [--tensors N] [--dir PATH]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  double gib = 1;
  int rounds = 3;
  int tensors = 16;
  std::string dir;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) usage();
    if (a == "--gib") gib = std::atof(argv[++i]);
    else if (a == "--rounds") rounds = std::atoi(argv[++i]);
    else if (a == "--tensors") tensors = std::atoi(argv[++i]);
    else if (a == "--dir") dir = argv[++i];
    else usage();
  }
  if (gib <= 0 || rounds < 1 || tensors < 1) usage();
  if (dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    dir = std::string(tmp ? tmp : "/tmp") + "/ckpt_bench_manager_" + std::to_string(::getpid());
  }
  std::filesystem::remove_all(dir);

  const size_t total = static_cast<size_t>(gib * 1024 * 1024 * 1024);
  const int64_t per_tensor = static_cast<int64_t>(total / static_cast<size_t>(tensors) / 4);
  ckpt::StateDict sd;
  for (int i = 0; i < tensors; ++i) {
    ckpt::Tensor t = ckpt::Tensor::empty(ckpt::DType::float32, {per_tensor});
    std::memset(t.mutable_data(), i, t.nbytes());
    sd.set("layer" + std::to_string(i) + ".weight", t);
  }
  const ckpt::Value state = sd.to_value();
  const double mib = static_cast<double>(sd.nbytes()) / (1024.0 * 1024.0);
  std::printf("state: %d tensors, %.0f MiB; directory %s\n", tensors, mib, dir.c_str());

  Stats sync, async_block, async_total;
  double cold_block = 0;
  {
    ckpt::CheckpointManager mgr(dir, {.keep_last = 2});
    int step = 0;
    auto async_save = [&](bool cold) {
      train(sd, ++step);
      auto t0 = Clock::now();
      mgr.save_async(step, state);
      double blocked = since(t0);
      train(sd, step);  // the caller goes on at once, changing its tensors
      mgr.wait();
      double done = since(t0);
      std::printf("save_async  step %2d: blocked %7.3f s, file complete after %7.3f s%s\n", step, blocked, done,
                  cold ? "  (cold staging pool)" : "");
      if (cold) {
        cold_block = blocked;
      } else {
        async_block.v.push_back(blocked);
        async_total.v.push_back(done);
      }
    };
    async_save(true);  // the first one allocates the staging pool
    // Alternate the two, so that both see the same disk and page-cache state.
    for (int r = 0; r < rounds; ++r) {
      train(sd, ++step);
      auto t0 = Clock::now();
      mgr.save(step, state);
      sync.v.push_back(since(t0));
      std::printf("save        step %2d: blocked %7.3f s\n", step, sync.v.back());
      async_save(false);
    }
    auto latest = mgr.latest();
    if (!latest || latest->step != step) {
      std::fprintf(stderr, "manager_async: the last checkpoint is missing\n");
      return 1;
    }
  }
  std::filesystem::remove_all(dir);

  std::printf("\nsummary (%.0f MiB, %d rounds)\n", mib, rounds);
  std::printf("  save():       blocks %.3f s mean, %.3f s min (%.2f GB/s)\n", sync.mean(), sync.min(),
              mib / 1024.0 * 1.073741824 / sync.mean());
  std::printf("  save_async(): blocks %.3f s mean, %.3f s min (first call, cold pool: %.3f s); "
              "file complete after %.3f s mean\n",
              async_block.mean(), async_block.min(), cold_block, async_total.mean());
  std::printf("  blocking-time ratio save / save_async: %.1fx (mean), %.1fx (cold pool)\n",
              sync.mean() / async_block.mean(), sync.mean() / cold_block);
  return 0;
}
