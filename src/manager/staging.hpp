// Private: the staging pool behind CheckpointManager::save_async.
//
// snapshot() deep-copies a Value: containers are rebuilt (sharing between
// them kept), and every storage a tensor views is copied once into a buffer
// from the pool, so tied weights and views stay shared in the copy exactly as
// in the original. Read-only mapped storages (a checkpoint loaded with
// mmap = true) cannot change under the caller and are shared, not copied.
//
// The pool keeps buffers between snapshots for reuse (training saves the
// same shapes every time, so after the first save nothing is allocated) and
// never holds more than `limit` bytes in buffers. A snapshot's buffers go
// back to the pool when the last tensor of the snapshot is destroyed (the
// background writer drops it). Acquiring all buffers of a snapshot is one
// step: it waits while other snapshots hold the memory it needs, and never
// holds part of a snapshot while waiting, so it cannot deadlock.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "ckpt/storage.hpp"
#include "ckpt/value.hpp"

namespace ckpt::manager {

class StagingPool {
 public:
  explicit StagingPool(size_t limit) : state_(std::make_shared<State>()) { state_->limit = limit; }

  // Bytes snapshot() would take from the pool for `value` (each distinct
  // copied storage once).
  static size_t staged_bytes(const Value& value);

  // Throws ckpt::LimitError when a snapshot of `bytes` could never fit.
  void check_fits(size_t bytes) const;

  // Deep copy of `value` with tensor bytes in pool buffers. Throws
  // ckpt::LimitError when the copy alone is larger than the limit.
  Value snapshot(const Value& value);

  size_t limit() const { return state_->limit; }
  // Bytes in buffers (free or in use) and in use by live snapshots.
  size_t allocated_bytes() const;
  size_t in_use_bytes() const;

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    size_t limit = 0;  // 0: unlimited
    size_t allocated = 0;
    size_t in_use = 0;
    std::multimap<size_t, Storage> free;  // capacity -> owned buffer
  };
  // One buffer per size in `sizes`, all at once (see the header comment).
  std::vector<Storage> acquire_all(const std::vector<size_t>& sizes);
  static Storage lend(const std::shared_ptr<State>& state, Storage buffer, size_t nbytes);
  std::shared_ptr<State> state_;
};

}  // namespace ckpt::manager
