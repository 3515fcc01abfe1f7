#include "ckpt/torch_comm.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cstring>

namespace ckpt::torch {

namespace {

at::Tensor byte_tensor(const std::string& s, int64_t size) {
  at::Tensor t = at::zeros({size}, at::kByte);
  if (!s.empty()) std::memcpy(t.data_ptr(), s.data(), s.size());
  return t;
}

std::string to_string(const at::Tensor& t, int64_t n) {
  return std::string(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(n));
}

}  // namespace

ProcessGroupComm::ProcessGroupComm(c10::intrusive_ptr<::c10d::ProcessGroup> pg) : pg_(std::move(pg)) {}

int ProcessGroupComm::rank() const { return pg_->getRank(); }
int ProcessGroupComm::size() const { return pg_->getSize(); }

void ProcessGroupComm::barrier() { pg_->barrier()->wait(); }

void ProcessGroupComm::broadcast(std::string& bytes, int root) {
  std::vector<at::Tensor> n = {at::full({1}, static_cast<int64_t>(bytes.size()), at::kLong)};
  ::c10d::BroadcastOptions o;
  o.rootRank = root;
  pg_->broadcast(n, o)->wait();
  const int64_t len = n[0].item<int64_t>();
  std::vector<at::Tensor> data = {byte_tensor(rank() == root ? bytes : std::string(), std::max<int64_t>(len, 1))};
  pg_->broadcast(data, o)->wait();
  bytes = to_string(data[0], len);
}

std::vector<std::string> ProcessGroupComm::allgather(const std::string& bytes) {
  const auto world = static_cast<size_t>(size());
  // Lengths first; then every rank's bytes padded to the longest.
  std::vector<at::Tensor> in = {at::full({1}, static_cast<int64_t>(bytes.size()), at::kLong)};
  std::vector<std::vector<at::Tensor>> out(1);
  for (size_t r = 0; r < world; ++r) out[0].push_back(at::zeros({1}, at::kLong));
  pg_->allgather(out, in)->wait();
  std::vector<int64_t> lens;
  int64_t longest = 1;
  for (const auto& t : out[0]) {
    lens.push_back(t.item<int64_t>());
    longest = std::max(longest, lens.back());
  }
  std::vector<at::Tensor> data_in = {byte_tensor(bytes, longest)};
  std::vector<std::vector<at::Tensor>> data_out(1);
  for (size_t r = 0; r < world; ++r) data_out[0].push_back(at::zeros({longest}, at::kByte));
  pg_->allgather(data_out, data_in)->wait();
  std::vector<std::string> all;
  for (size_t r = 0; r < world; ++r) all.push_back(to_string(data_out[0][r], lens[r]));
  return all;
}

std::vector<std::string> ProcessGroupComm::gather(const std::string& bytes, int root) {
  // gloo's gather is rooted too, but an allgather keeps one code path; the
  // results only matter at the root (the plans and write results are small).
  std::vector<std::string> all = allgather(bytes);
  return rank() == root ? all : std::vector<std::string>{};
}

bool ProcessGroupComm::all_true(bool ok) {
  std::vector<at::Tensor> t = {at::full({1}, ok ? 1 : 0, at::kInt)};
  ::c10d::AllreduceOptions o;
  o.reduceOp = ::c10d::ReduceOp::MIN;
  pg_->allreduce(t, o)->wait();
  return t[0].item<int32_t>() != 0;
}

}  // namespace ckpt::torch
