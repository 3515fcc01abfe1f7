// Private: the save path with its dependencies exposed, for tests and for
// the checkpoint manager.
#pragma once

#include <string>

#include <map>

#include "ckpt/save.hpp"
#include "ckpt/sharded.hpp"
#include "ckpt/state_dict.hpp"
#include "io/file.hpp"

namespace ckpt::detail {

// ckpt::save through `env` (fault injection). `zip64_threshold` lowers the
// ZIP64 limit so tests can exercise ZIP64 on small files.
void save(io::Env& env, const std::string& path, const Value& value, const SaveOptions& options,
          uint64_t zip64_threshold = 0xFFFFFFFFull);

// The public savers with the file system as a parameter (fault injection,
// progress reporting).
void save_safetensors(io::Env& env, const std::string& path, const StateDict& state_dict,
                      const std::map<std::string, std::string>& metadata);
size_t save_safetensors_checkpoint(io::Env& env, const std::string& path, const Value& checkpoint,
                                   const std::map<std::string, std::string>& metadata);
ShardedFiles save_sharded(io::Env& env, const std::string& dir, const StateDict& state_dict,
                          const ShardOptions& options);

}  // namespace ckpt::detail
