// Distributed checkpoints over MPI ranks (run by tests/mpi/run_dcp_mpi.sh under mpirun).
//
//   dcp_mpi_test save DIR                  every rank saves its shards (tests/unit/dcp_fixture.hpp)
//   dcp_mpi_test load DIR [--expected F]   every rank reads its own layout and checks it bit for bit
//                                          against the fixture state, or against F (a .pt of the
//                                          unsharded state, e.g. torch's dcp_to_torch_save)
//   dcp_mpi_test crash DIR RANK            save, but rank RANK dies (SIGKILL) after writing its data
//                                          file, before the collective success check
//   dcp_mpi_test overlap DIR               save shards that overlap (ranks 0 and 1 both claim rows 4 and 5):
//                                          every rank must throw, DIR must keep its checkpoint
//   dcp_mpi_test expected OUT.pt           (one process) the unsharded fixture state as a .pt
//   dcp_mpi_test latest ROOT               (one process) prints the newest complete checkpoint in ROOT
//
// Exit status 0 when every rank succeeded, 1 when a check failed, 2 on errors.
#include <mpi.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "ckpt/distributed.hpp"
#include "ckpt/error.hpp"
#include "ckpt/load.hpp"
#include "ckpt/mpi.hpp"
#include "ckpt/save.hpp"
#include "unit/dcp_fixture.hpp"

using namespace ckpt;

namespace {

// Forwards to MPI; rank `victim` kills itself when the save reaches its
// collective success check (the second all_true: the data files are written).
class DyingComm final : public Comm {
 public:
  DyingComm(Comm& base, int victim) : base_(base), victim_(victim) {}
  int rank() const override { return base_.rank(); }
  int size() const override { return base_.size(); }
  void barrier() override { base_.barrier(); }
  void broadcast(std::string& b, int root) override { base_.broadcast(b, root); }
  std::vector<std::string> gather(const std::string& b, int root) override { return base_.gather(b, root); }
  std::vector<std::string> allgather(const std::string& b) override { return base_.allgather(b); }
  bool all_true(bool ok) override {
    if (++calls_ == 2 && rank() == victim_) {
      std::fprintf(stderr, "rank %d: killing myself mid-save (data file written, no success check)\n", rank());
      std::fflush(stderr);
      std::raise(SIGKILL);
    }
    return base_.all_true(ok);
  }

 private:
  Comm& base_;
  int victim_;
  int calls_ = 0;
};

std::vector<std::pair<std::string, Value>> flatten(const Value& root) {
  DistributedState st;
  for (const auto& [k, v] : root.as_dict()) st.add(k.as_string(), v);
  std::vector<std::pair<std::string, Value>> out;
  for (const auto& e : st.entries()) out.emplace_back(e.name, e.value);
  return out;
}

Value nested_fixture() {
  Value root = Value::dict();
  for (const auto& [name, v] : dcp_fixture::full_state()) {
    if (name == "opt.betas") {
      Value opt = Value::dict();
      opt.as_dict().set(Value("betas"), v);
      root.as_dict().set(Value("opt"), opt);
    } else {
      root.as_dict().set(Value(name), v);
    }
  }
  return root;
}

int run(int argc, char** argv, Comm& comm) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const std::string path = argc > 2 ? argv[2] : "";
  const int rank = comm.rank(), world = comm.size();
  if (mode == "save") {
    save_distributed(path, dcp_fixture::rank_state(rank, world), comm);
    if (rank == 0) std::printf("saved %s with %d rank(s)\n", path.c_str(), world);
    return 0;
  }
  if (mode == "crash" && argc > 3) {
    DyingComm dying(comm, std::stoi(argv[3]));
    save_distributed(path, dcp_fixture::rank_state(rank, world), dying);
    return 0;  // not reached: the job dies with its victim
  }
  if (mode == "overlap") {
    DistributedState st = dcp_fixture::rank_state(rank, world);
    st.add_shard("extra", dcp_fixture::pattern(DType::float32, {6, 3}, 9), {10, 3}, {rank == 0 ? 0 : 4, 0});
    std::string error;
    try {
      save_distributed(path, st, comm);
    } catch (const Error& e) {
      error = e.what();
    }
    std::fprintf(stderr, "rank %d: %s\n", rank, error.empty() ? "the save went through" : error.c_str());
    return error.empty() ? 1 : 0;  // every rank must refuse
  }
  if (mode == "load") {
    auto expected = dcp_fixture::full_state();
    if (argc > 4 && std::string(argv[3]) == "--expected") expected = flatten(load(argv[4]));
    DistributedReader r(path, comm);
    auto bad = dcp_fixture::check_load(r, rank, world, expected);
    for (const auto& b : bad) std::fprintf(stderr, "rank %d/%d: %s\n", rank, world, b.c_str());
    const bool ok = comm.all_true(bad.empty());
    if (rank == 0)
      std::printf("%s: %d rank(s) read %s: %s\n", ok ? "ok" : "FAIL", world, path.c_str(),
                  ok ? "every region bit-exact" : "differences");
    return ok ? 0 : 1;
  }
  if (mode == "expected") {
    if (rank == 0) save(path, nested_fixture());
    return 0;
  }
  if (mode == "latest") {
    std::vector<std::string> dirs;
    for (const auto& d : std::filesystem::directory_iterator(path))
      if (is_distributed_checkpoint(d.path().string())) dirs.push_back(d.path().filename().string());
    std::sort(dirs.begin(), dirs.end());
    if (rank == 0) std::printf("%s\n", dirs.empty() ? "" : dirs.back().c_str());
    return dirs.empty() ? 1 : 0;
  }
  std::fprintf(stderr, "usage: dcp_mpi_test save|load|crash|overlap|expected|latest PATH ...\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 2;
  {
    MpiComm comm;
    try {
      rc = run(argc, argv, comm);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "rank %d: error: %s\n", comm.rank(), e.what());
      // The other ranks may wait in a collective this rank will not reach.
      if (comm.size() > 1) MPI_Abort(MPI_COMM_WORLD, 2);
    }
  }
  MPI_Finalize();
  return rc;
}
