// ckpt/mpi.hpp — the MPI communicator for distributed checkpoints (target ckpt::mpi).
//
//   MPI_Init(&argc, &argv);
//   ckpt::MpiComm comm;                           // MPI_COMM_WORLD
//   ckpt::save_distributed("ckpt/step_100", state, comm);
//
// Built when CMake finds MPI (-DCKPT_WITH_MPI=ON, the default; Debian:
// libopenmpi-dev). The caller initialises and finalises MPI; the communicator
// is used, never freed. Collectives are the MPI ones (no networking of
// ckpt's own). An MPI call that returns an error throws ckpt::Error naming
// it; under MPI's default handler (MPI_ERRORS_ARE_FATAL) the job aborts first.
#pragma once

#include <mpi.h>

#include "ckpt/distributed.hpp"

namespace ckpt {

class MpiComm final : public Comm {
 public:
  explicit MpiComm(MPI_Comm comm = MPI_COMM_WORLD);
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void barrier() override;
  void broadcast(std::string& bytes, int root) override;
  std::vector<std::string> gather(const std::string& bytes, int root) override;
  std::vector<std::string> allgather(const std::string& bytes) override;
  bool all_true(bool ok) override;

 private:
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace ckpt
