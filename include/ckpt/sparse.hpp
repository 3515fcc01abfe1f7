// ckpt/sparse.hpp — sparse tensors in checkpoints.
//
// torch pickles a sparse tensor as torch._utils._rebuild_sparse_tensor(layout,
// data): for torch.sparse_coo, data is (indices, values, size[, is_coalesced]);
// for the compressed layouts (sparse_csr, sparse_csc, sparse_bsr, sparse_bsc)
// it is (compressed_indices, plain_indices, values, size) (parts first, in
// that order). ckpt keeps such a
// tensor as an inert ckpt::Object holding exactly that call (so saving it
// again writes what torch wrote, and torch.load(weights_only=True) reads it),
// and as_sparse() gives its parts. Dense data is never materialised.
// for_each_tensor (and `ckpt ls`) lists the parts as PATH/indices,
// PATH/values, PATH/crow_indices, ... Thread-safe, pure functions.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "ckpt/tensor.hpp"
#include "ckpt/value.hpp"

namespace ckpt {

struct SparseTensor {
  std::string layout;          // "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc"
  std::vector<int64_t> sizes;  // the dense shape
  // The parts, in torch's order and with torch's accessor names: indices,
  // values (COO); crow_indices, col_indices, values (CSR, BSR); ccol_indices,
  // row_indices, values (CSC, BSC).
  std::vector<std::pair<std::string, Tensor>> parts;
  bool is_coalesced = false;  // COO only, when recorded (torch 2.x)
};

// The sparse tensor `v` stands for, or nullopt when `v` is not one.
std::optional<SparseTensor> as_sparse(const Value& v);

}  // namespace ckpt
