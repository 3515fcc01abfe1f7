// A distributed-checkpoint workload shared by the unit tests (threads as
// ranks) and the MPI test (tests/mpi): a deterministic unsharded state, the
// shards rank r of N saves, and the region rank r of M loads and checks.
#pragma once

#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "ckpt/distributed.hpp"

namespace ckpt::dcp_fixture {

// Deterministic bytes (xorshift), so every rank builds the same full tensors.
inline Tensor pattern(DType dtype, std::vector<int64_t> sizes, uint64_t seed) {
  Tensor t = Tensor::empty(dtype, std::move(sizes));
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  std::byte* p = t.mutable_data();
  for (size_t i = 0; i < t.nbytes(); ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = static_cast<std::byte>(x >> 24);
  }
  if (dtype == DType::bool_)  // only 0 and 1 are bools
    for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<std::byte>(static_cast<unsigned>(p[i]) & 1u);
  return t;
}

// The part [start, start + len) of `n` that part `i` of `parts` gets, as torch.chunk splits.
inline std::pair<int64_t, int64_t> split(int64_t n, int parts, int i) {
  const int64_t chunk = (n + parts - 1) / parts;
  const int64_t start = std::min<int64_t>(chunk * i, n);
  return {start, std::min<int64_t>(chunk, n - start)};
}

// A contiguous copy of box [offsets, offsets + sizes) of `full`.
inline Tensor region(const Tensor& full, const std::vector<int64_t>& offsets, const std::vector<int64_t>& sizes) {
  Tensor out = Tensor::empty(full.dtype(), sizes);
  const Tensor src = full.contiguous();
  const auto ss = Tensor::contiguous_strides(full.sizes());
  const auto ds = Tensor::contiguous_strides(sizes);
  const size_t item = full.itemsize();
  for (int64_t i = 0; i < out.numel(); ++i) {
    int64_t rem = i, so = 0;
    for (size_t d = 0; d < sizes.size(); ++d) {
      const int64_t idx = rem / ds[d];
      rem %= ds[d];
      so += (idx + offsets[d]) * ss[d];
    }
    std::memcpy(out.mutable_data() + i * static_cast<int64_t>(item), src.data() + so * static_cast<int64_t>(item), item);
  }
  return out;
}

// The unsharded state, flattened as save_distributed flattens it.
inline std::vector<std::pair<std::string, Value>> full_state() {
  std::vector<std::pair<std::string, Value>> s;
  s.emplace_back("row", Value(pattern(DType::float32, {11, 5}, 1)));
  s.emplace_back("col", Value(pattern(DType::bfloat16, {4, 10}, 2)));
  s.emplace_back("grid", Value(pattern(DType::int32, {6, 6}, 3)));
  s.emplace_back("rep", Value(pattern(DType::int64, {5}, 4)));
  s.emplace_back("mask", Value(pattern(DType::bool_, {3}, 5)));
  s.emplace_back("scalar", Value(pattern(DType::float64, {}, 6)));
  s.emplace_back("step", Value(int64_t{1200}));
  s.emplace_back("lr", Value(0.125));
  s.emplace_back("name", Value("run-7"));
  s.emplace_back("opt.betas", Value::tuple({Value(0.9), Value(0.999)}));
  return s;
}

// How rank `rank` of `world` holds each tensor when saving: row and grid
// split along dim 0 (grid in 2x2 blocks for 4 ranks, ranks in reverse
// order otherwise), col along dim 1; the rest replicated.
inline DistributedState rank_state(int rank, int world) {
  DistributedState st;
  for (const auto& [name, v] : full_state()) {
    if (!v.is_tensor() || (name != "row" && name != "col" && name != "grid")) {
      if (name == "opt.betas") {
        Value opt = Value::dict();
        opt.as_dict().set(Value("betas"), v);
        st.add("opt", opt);
      } else {
        st.add(name, v);
      }
      continue;
    }
    const Tensor& full = v.as_tensor();
    std::vector<int64_t> off(2, 0), size = full.sizes();
    if (name == "grid" && world == 4) {
      auto [r0, rn] = split(full.sizes()[0], 2, rank / 2);
      auto [c0, cn] = split(full.sizes()[1], 2, rank % 2);
      off = {r0, c0};
      size = {rn, cn};
    } else {
      const size_t dim = name == "col" ? 1 : 0;
      auto [s0, n] = split(full.sizes()[dim], world, name == "grid" ? world - 1 - rank : rank);
      off[dim] = s0;
      size[dim] = n;
    }
    st.add_shard(name, region(full, off, size), full.sizes(), off);
  }
  return st;
}

// Rank `rank` of `world` reads its own layout (row split along dim 1, the
// others along dim 0, uneven) and every value; returns what differs from
// `expected` (name -> full value, flattened names).
inline std::vector<std::string> check_load(const DistributedReader& r, int rank, int world,
                                           const std::vector<std::pair<std::string, Value>>& expected) {
  std::vector<std::string> bad;
  std::map<std::string, Value> want(expected.begin(), expected.end());
  if (r.items().size() != want.size())
    bad.push_back("the checkpoint has " + std::to_string(r.items().size()) + " items, expected " +
                  std::to_string(want.size()));
  for (const auto& item : r.items()) {
    auto it = want.find(item.name);
    if (it == want.end()) {
      bad.push_back("unexpected item " + item.name);
      continue;
    }
    if (!item.is_tensor || item.shape.empty()) {
      if (!(r.read_value(item.name) == it->second)) bad.push_back(item.name + " differs");
      continue;
    }
    const Tensor& full = it->second.as_tensor();
    const size_t dim = item.name == "row" && item.shape.size() > 1 ? 1 : 0;
    std::vector<int64_t> off(item.shape.size(), 0), size = item.shape;
    auto [s0, n] = split(item.shape[dim], world, rank);
    off[dim] = s0;
    size[dim] = n;
    if (!r.read(item.name, off, size).equal(region(full, off, size)))
      bad.push_back(item.name + " differs in rank " + std::to_string(rank) + "'s region");
  }
  return bad;
}

// Ranks as threads of one process (for unit tests): every collective is an
// exchange of every rank's bytes.
class ThreadGroup {
 public:
  explicit ThreadGroup(int n) : n_(n), slots_(static_cast<size_t>(n)) {}
  std::vector<std::string> exchange(int rank, std::string bytes) {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = gen_;
    slots_[static_cast<size_t>(rank)] = std::move(bytes);
    if (++arrived_ == n_) {
      result_ = slots_;
      arrived_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen_ != gen; });
    }
    return result_;
  }
  int size() const { return n_; }

 private:
  int n_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> slots_, result_;
  int arrived_ = 0;
  uint64_t gen_ = 0;
};

class ThreadComm final : public Comm {
 public:
  ThreadComm(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.size(); }
  void barrier() override { g_.exchange(rank_, ""); }
  void broadcast(std::string& bytes, int root) override {
    bytes = g_.exchange(rank_, bytes)[static_cast<size_t>(root)];
  }
  std::vector<std::string> gather(const std::string& bytes, int root) override {
    auto all = g_.exchange(rank_, bytes);
    return rank_ == root ? all : std::vector<std::string>{};
  }
  std::vector<std::string> allgather(const std::string& bytes) override { return g_.exchange(rank_, bytes); }
  bool all_true(bool ok) override {
    for (const auto& s : g_.exchange(rank_, ok ? "1" : "0"))
      if (s != "1") return false;
    return true;
  }

 private:
  ThreadGroup& g_;
  int rank_;
};

}  // namespace ckpt::dcp_fixture
