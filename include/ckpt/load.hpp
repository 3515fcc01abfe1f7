// ckpt/load.hpp — reading checkpoints, the way torch.load does.
//
//   auto sd = ckpt::load_state_dict("model.pt");          // name -> tensor
//   ckpt::Value ckpt = ckpt::load("checkpoint.pt");       // any object tree
//
// The format is detected from the bytes, never from the file name. Loading
// never executes code from the file: with weights_only (the default, as in
// torch 2.6+) anything outside torch's weights-only allow-list is refused
// with ckpt::UnsafeError; with weights_only = false unknown classes become
// inert ckpt::Object values. Tensor data arrives in host memory, copied into
// owned storage, or (mmap = true) as read-only views into a memory mapping
// that stays alive as long as any tensor refers to it. All functions are
// thread-safe; separate calls share nothing.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/options.hpp"
#include "ckpt/state_dict.hpp"
#include "ckpt/tree.hpp"  // lookup(root, "optimizer/state/0")
#include "ckpt/value.hpp"

namespace ckpt {

// Detects the format of a file or buffer from its first bytes (and, for zip
// archives, their record names). Throws ckpt::IoError when unreadable.
Format detect_format(const std::string& path);
Format detect_format(std::span<const std::byte> bytes);

// The object tree of a checkpoint file or buffer. A directory holding a
// torch.distributed.checkpoint (its `.metadata`) loads consolidated: every
// tensor assembled from its chunks, nested as the saved state dict was.
Value load(const std::string& path, const LoadOptions& options = {});
Value load(std::span<const std::byte> bytes, const LoadOptions& options = {});

// What a load of a path read, for tools that report it (the CLI's ls, info,
// stats, convert): the format it detected and the files its data came from.
struct LoadReport {
  Format format = Format::unknown;
  // The file itself; every shard a Hugging Face index names, in its order;
  // every regular file of a torch.distributed.checkpoint directory, sorted.
  std::vector<std::string> files;
  uint64_t file_bytes = 0;  // the sizes of `files`, summed
};
// load(path, options), also filling `report` (overwritten, even on failure).
Value load(const std::string& path, const LoadOptions& options, LoadReport& report);

// A state dict (a dict of tensors). Throws ckpt::TypeError saying what the
// file holds instead (e.g. a dict with keys 'model', 'optimizer', 'epoch')
// and which `key` would select a state dict inside it.
StateDict load_state_dict(const std::string& path, const LoadOptions& options = {});
StateDict load_state_dict(std::span<const std::byte> bytes, const LoadOptions& options = {});

}  // namespace ckpt
