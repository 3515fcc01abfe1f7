// ckpt/sharded.hpp — Hugging Face sharded checkpoints.
//
//   ckpt::save_sharded("out/", sd, {.max_shard_size = ckpt::parse_size("5GB")});
//   // out/model-00001-of-00003.safetensors ... + out/model.safetensors.index.json
//   ckpt::Reader r = ckpt::open("out/");      // the set as one lazy state dict
//
// The layout is transformers' save_pretrained: tensors are taken in order
// and packed greedily into shards of at most max_shard_size bytes (a tensor
// larger than that gets a shard of its own); shards are named
// PREFIX-00001-of-0000N.EXT and an index PREFIX.EXT.index.json maps every
// tensor to its shard:
//   {"metadata": {"total_size": BYTES}, "weight_map": {"name": "shard", ...}}
// (keys sorted, two-space indent, as transformers writes it). A state dict
// that fits one shard is written as a single PREFIX.EXT without an index.
// Every file is written atomically and the index last, so a reader that
// finds the index finds complete shards.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/state_dict.hpp"

namespace ckpt {

enum class ShardFormat { safetensors, torch };

struct ShardOptions {
  uint64_t max_shard_size = 5'000'000'000;  // transformers' default, "5GB"
  ShardFormat format = ShardFormat::safetensors;
  // File name stem; empty: "model" for safetensors, "pytorch_model" for torch.
  std::string prefix;
  // safetensors only: each shard's `__metadata__` (transformers writes
  // {"format": "pt"}).
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  // As SaveOptions::progress, over every shard and the index in turn.
  std::function<void(uint64_t bytes)> progress;
};

struct ShardedFiles {
  std::string index;               // path of the index, empty for a single file
  std::vector<std::string> files;  // shard paths, in order
  uint64_t total_size = 0;         // bytes of tensor data (shared storage counted once)
};

// Writes `state_dict` into directory `dir` (created if missing). safetensors
// shards refuse tensors sharing memory as save_safetensors does; remove
// aliases first (ckpt::remove_shared_tensors). Throws ckpt::IoError,
// ckpt::UnsupportedError (dtype without a safetensors code).
ShardedFiles save_sharded(const std::string& dir, const StateDict& state_dict, const ShardOptions& options = {});

// "5GB" -> 5e9, "500MB", "10GiB" -> 10 * 2^30, "1.5GB", "123" (bytes): the
// spellings transformers' max_shard_size accepts. Throws ckpt::TypeError.
uint64_t parse_size(std::string_view text);

}  // namespace ckpt
