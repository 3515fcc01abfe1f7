// ckpt/torch_comm.hpp — distributed checkpoints over a LibTorch c10d ProcessGroup
// (part of the LibTorch adapter, target ckpt::torch).
//
//   auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
//   ckpt::torch::ProcessGroupComm comm(pg);       // the group a DDP job already has
//   ckpt::save_distributed("ckpt/step_100", state, comm);
//
// Every collective goes through the process group (gloo, or any backend with
// broadcast, allgather, allreduce and barrier on CPU tensors): byte strings
// travel as uint8 tensors, allgathers of unequal lengths are padded to the
// longest. A failed collective throws what LibTorch throws (c10::Error).
#pragma once

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include "ckpt/distributed.hpp"

namespace ckpt::torch {

class ProcessGroupComm final : public Comm {
 public:
  explicit ProcessGroupComm(c10::intrusive_ptr<::c10d::ProcessGroup> pg);
  int rank() const override;
  int size() const override;
  void barrier() override;
  void broadcast(std::string& bytes, int root) override;
  std::vector<std::string> gather(const std::string& bytes, int root) override;
  std::vector<std::string> allgather(const std::string& bytes) override;
  bool all_true(bool ok) override;

 private:
  c10::intrusive_ptr<::c10d::ProcessGroup> pg_;
};

}  // namespace ckpt::torch
