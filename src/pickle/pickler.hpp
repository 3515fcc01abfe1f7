// Private: writing a Value as torch.save pickles it (protocol 2).
//
// The output follows CPython's protocol-2 pickler opcode for opcode — memo
// (BINPUT / BINGET) for every container, tuple, string and global, batched
// APPENDS / SETITEMS of 1000 — and torch's reductions: tensors as
// _rebuild_tensor_v2 (or _rebuild_tensor_v3 with an UntypedStorage for
// dtypes that have no typed storage class), Parameters as _rebuild_parameter,
// storages as persistent ids ('storage', <class>, key, location, numel).
// For a state dict the bytes equal what torch 2.x writes. Strings are
// memoized by value (Python memoizes by object identity; the two agree for
// the trees torch and ckpt build).
#pragma once

#include <string>
#include <vector>

#include "ckpt/value.hpp"

namespace ckpt::pickle {

struct StorageRecord {
  std::string key;  // "0", "1", ... in first-encounter order
  Storage storage;
  DType dtype;
};

class TorchPickler {
 public:
  // Pickles `value`; throws ckpt::Error for values torch.save cannot write
  // (inert objects, storages viewed as two dtypes).
  std::string dump(const Value& value);
  // The storages `value` references, each once, in key order.
  const std::vector<StorageRecord>& storages() const noexcept { return storages_; }

 private:
  struct Impl;
  std::vector<StorageRecord> storages_;
};

}  // namespace ckpt::pickle
