// Private: ckpt::open's reading of a Hugging Face shard index, for
// ckpt::load (which hands it the target it resolved, so the index is not
// resolved and read a second time).
#pragma once

#include "api/resolve.hpp"
#include "ckpt/load.hpp"
#include "ckpt/value.hpp"

namespace ckpt::detail {

// The index's tensors as a state dict (copies unless options.mmap; the key
// is not applied), with the report filled (format of the first shard, the
// shards in index order, their sizes summed).
Value load_shard_index(const Target& target, const LoadOptions& options, LoadReport& report);

}  // namespace ckpt::detail
