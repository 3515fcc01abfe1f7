// Private: Hugging Face shard indexes (`model.safetensors.index.json`,
// `pytorch_model.bin.index.json`): a JSON object whose "weight_map" maps each
// tensor name to the shard file holding it, with optional "metadata".
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "io/file.hpp"

namespace ckpt::formats {

struct ShardIndex {
  std::vector<std::pair<std::string, std::string>> weight_map;  // tensor -> shard file, in file order
  std::vector<std::string> shards;                              // distinct shards, first-appearance order
  std::map<std::string, std::string> metadata;                  // "metadata" entries as text
};

// The file's text when it is a JSON object with a "weight_map" (decided
// from its bytes, not its name), else nullopt. Read errors propagate.
std::optional<std::string> shard_index_text(const io::RandomAccessFile& file);
// Parses and validates an index read from `path` (named in errors): shard
// names must be plain file names (no directories, no "..": a hostile index
// must not reach outside its folder).
ShardIndex parse_shard_index(const std::string& text, const std::string& path);

}  // namespace ckpt::formats
