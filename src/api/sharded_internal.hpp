// Private: reading Hugging Face shard indexes.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace ckpt::detail {

struct ShardIndex {
  std::vector<std::pair<std::string, std::string>> weight_map;  // tensor -> shard file, in file order
  std::vector<std::string> shards;                              // distinct shards, first-appearance order
  std::map<std::string, std::string> metadata;                  // "metadata" entries as text
};

// Whether the file is a JSON object with a "weight_map" (decided from its
// bytes, not its name; false for unreadable or non-JSON files).
bool is_shard_index(const std::string& path);
// Parses and validates an index: shard names must be plain file names (no
// directories, no "..": a hostile index must not reach outside its folder).
ShardIndex read_shard_index(const std::string& path);
// In a directory: the single *.index.json, else the single checkpoint file
// (model.safetensors, pytorch_model.bin, *.safetensors, *.pt, *.pth, *.bin,
// *.ckpt). Throws ckpt::IoError naming what was found when ambiguous or empty.
std::string find_checkpoint_in_dir(const std::string& dir);

}  // namespace ckpt::detail
