// Distributed checkpoints over a LibTorch c10d ProcessGroupGloo (ckpt::torch::ProcessGroupComm),
// run as WORLD processes by tests/torch/run_c10d_dcp.sh:
//
//   c10d_dcp_test save|load DIR RANK WORLD STORE_FILE
//
// save: every rank saves its shards (tests/unit/dcp_fixture.hpp); load: every
// rank reads its own layout and checks it bit for bit. Exit 0 / 1 (differences) / 2 (error).
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <cstdio>
#include <string>

#include "ckpt/torch_comm.hpp"
#include "unit/dcp_fixture.hpp"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: c10d_dcp_test save|load DIR RANK WORLD STORE_FILE\n");
    return 2;
  }
  const std::string mode = argv[1], dir = argv[2];
  const int rank = std::stoi(argv[3]), world = std::stoi(argv[4]);
  try {
    auto store = c10::make_intrusive<::c10d::FileStore>(argv[5], world);
    auto opts = ::c10d::ProcessGroupGloo::Options::create();
    opts->devices.push_back(::c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    auto pg = c10::make_intrusive<::c10d::ProcessGroupGloo>(store, rank, world, opts);
    ckpt::torch::ProcessGroupComm comm(pg);
    if (mode == "save") {
      ckpt::save_distributed(dir, ckpt::dcp_fixture::rank_state(rank, world), comm);
      if (rank == 0) std::printf("saved %s with %d gloo rank(s)\n", dir.c_str(), world);
      return 0;
    }
    ckpt::DistributedReader r(dir, comm);
    auto bad = ckpt::dcp_fixture::check_load(r, rank, world, ckpt::dcp_fixture::full_state());
    for (const auto& b : bad) std::fprintf(stderr, "rank %d/%d: %s\n", rank, world, b.c_str());
    const bool ok = comm.all_true(bad.empty());
    if (rank == 0) std::printf("%s: %d gloo rank(s) read %s\n", ok ? "ok" : "FAIL", world, dir.c_str());
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: error: %s\n", rank, e.what());
    return 2;
  }
}
