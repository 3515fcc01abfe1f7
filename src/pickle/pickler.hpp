// Private: writing a Value as torch.save pickles it (protocol 2).
//
// The output follows CPython's C pickler (protocol 2) opcode for opcode —
// BINPUT / LONG_BINPUT for every memoizable object, BINGET when an object is
// pickled again, BININT1 / BININT2 / BININT / LONG1 / LONG4, BINFLOAT,
// tuples, batched APPENDS / SETITEMS of 1000 — plus torch's reductions:
// tensors as _rebuild_tensor_v2 (or _rebuild_tensor_v3 with an UntypedStorage
// for dtypes that have no typed storage class), Parameters as
// _rebuild_parameter, storages as persistent ids
// ('storage', <class>, key, location, numel). For a state dict the bytes
// equal what torch 2.x writes (tests/unit/save_test.cpp checks this against
// files torch wrote).
//
// Python memoizes by object identity; ckpt's containers have identity
// (Value::container_id()) but strings are values. The pickler models the
// string objects torch.save produces (see pickler.cpp, "String identity").
//
// Not thread-safe; use one TorchPickler per dump.
#pragma once

#include <string>
#include <vector>

#include "ckpt/value.hpp"

namespace ckpt::pickle {

struct StorageRecord {
  std::string key;  // "0", "1", ... in first-encounter order
  Storage storage;
  DType dtype;      // of the first tensor (or bare storage) that referenced it
};

class TorchPickler {
 public:
  TorchPickler() = default;
  // With `write_objects`, inert Globals are written as GLOBAL and Objects as
  // the calls that made them (class, args, NEWOBJ or REDUCE, then SETITEMS /
  // APPENDS and BUILD with their state): a plain pickle.load rebuilds them.
  // Used for pickles that are not torch.load'ed (the DCP `.metadata`).
  explicit TorchPickler(bool write_objects) : write_objects_(write_objects) {}

  // Pickles `value`. Throws ckpt::Error for values torch.load cannot read
  // back: inert objects and globals (unless write_objects), storages viewed as two element types,
  // quantized tensors, invalid UTF-8 strings, containers nested deeper than
  // kMaxDepth.
  std::string dump(const Value& value);
  // The storages `value` references, each once, in key order.
  const std::vector<StorageRecord>& storages() const noexcept { return storages_; }

  // Containers along one path from the root (both ends included) the pickler
  // accepts: ckpt's unpickler refuses deeper trees (pickle::Limits::max_depth)
  // and CPython's pickler stops at its recursion limit (1000) too.
  static constexpr size_t kMaxDepth = 1000;

 private:
  struct Impl;
  std::vector<StorageRecord> storages_;
  bool write_objects_ = false;
};

}  // namespace ckpt::pickle
