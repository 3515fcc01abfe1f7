// Private: what a path names, decided once for every public entry point
// (load, load_state_dict, open, verify): a single checkpoint file, a Hugging
// Face shard index, or a torch.distributed.checkpoint directory. A directory
// holding exactly one index or one checkpoint file names that file.
#pragma once

#include <string>

namespace ckpt::detail {

struct Target {
  enum class Kind { file, shard_index, dcp };
  Kind kind = Kind::file;
  // The file, the index file, or the DCP directory.
  std::string path;
};

// In this order: a DCP directory (or its `.metadata` file), decided from the
// `.metadata` bytes; a directory, resolved to the single *.index.json in it,
// else its single checkpoint file (model.safetensors, pytorch_model.bin,
// *.safetensors, *.pt, *.pth, *.bin, *.ckpt; IoError naming what was found
// when ambiguous or empty); a shard index, decided from the file's bytes;
// otherwise a file (which may not exist: opening it reports that).
Target resolve(const std::string& path);

// resolve's first question alone: the DCP directory `path` names (itself, or
// the parent of its `.metadata` file), or "" (ckpt::verify checks the file
// it is given and asks nothing else).
std::string dcp_dir(const std::string& path);

}  // namespace ckpt::detail
