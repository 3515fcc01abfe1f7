// Private: ckpt::open's reading of a Hugging Face shard index, for
// ckpt::load (which hands it the target it resolved, so the index is not
// resolved and read a second time).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "api/resolve.hpp"
#include "ckpt/options.hpp"
#include "ckpt/value.hpp"

namespace ckpt::detail {

struct ShardIndexLoad {
  Value state_dict;                // copies unless options.mmap; the key is not applied
  Format format = Format::unknown;  // of the first shard
  std::vector<std::string> files;  // the shards, in index order
  uint64_t file_bytes = 0;         // their sizes summed
};
ShardIndexLoad load_shard_index(const Target& target, const LoadOptions& options);

}  // namespace ckpt::detail
