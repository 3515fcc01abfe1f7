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

#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>

#include "ckpt/state_dict.hpp"
#include "ckpt/value.hpp"

namespace ckpt {

enum class Format {
  unknown,
  torch_zip,     // torch.save, PyTorch 1.6+ (and torch::pickle_save)
  torch_legacy,  // torch.save before 1.6 / _use_new_zipfile_serialization=False
  torch_tar,     // PyTorch 0.1.x tar files
  torchscript,   // torch.jit.save / LibTorch torch::save archives
  safetensors,
  dcp,           // a torch.distributed.checkpoint directory (ckpt/distributed.hpp)
  onnx,          // an ONNX model: its main graph's initializers (ckpt/onnx.hpp)
};
std::string_view format_name(Format f) noexcept;

// Detects the format of a file or buffer from its first bytes (and, for zip
// archives, their record names). Throws ckpt::IoError when unreadable.
Format detect_format(const std::string& path);
Format detect_format(std::span<const std::byte> bytes);

// torch.load's map_location: where each saved device string goes. The
// default keeps the saved device. Tensor data is always in host memory in
// this library; the device string is metadata that the LibTorch adapter uses.
class MapLocation {
 public:
  MapLocation() = default;
  MapLocation(std::string device);  // every tensor -> device ("cpu")
  MapLocation(const char* device) : MapLocation(std::string(device)) {}
  MapLocation(std::map<std::string, std::string> mapping);  // {"cuda:1": "cuda:0"}
  MapLocation(std::function<std::string(const std::string&)> fn);
  std::string apply(const std::string& saved_device) const;
  bool is_identity() const noexcept { return !fn_; }

 private:
  std::function<std::string(const std::string&)> fn_;
};

struct LoadOptions {
  MapLocation map_location;
  // torch.load(weights_only=True): refuse anything outside the allow-list.
  bool weights_only = true;
  // numpy arrays, scalars and dtypes in the pickle, which torch.load admits
  // once numpy's reconstruct functions are in torch.serialization's safe
  // globals: arrays become tensors (numpy's strides kept, data made
  // little-endian), scalars the Python number they equal (np.float32(0.5) ->
  // 0.5, np.int64(3) -> 3), a dtype on its own stays an inert Object. Nothing
  // from numpy is executed. Object, string and structured arrays are refused
  // with UnsupportedError. Off: numpy globals are refused like any other
  // (under weights_only) or kept as inert objects (weights_only = false).
  bool numpy = false;
  // Tensor data as read-only views into a memory mapping instead of copies.
  // Needs a file whose records are aligned (torch zip 1.6+, safetensors).
  bool mmap = false;
  // Copying loads put large storages (Storage::kHugePageThreshold bytes and
  // up) on transparent huge pages, which fills them several times faster than
  // 4 KiB pages (docs/benchmarks.md). Off: ordinary pages. The environment
  // variable CKPT_HUGE_PAGES=0 turns them off for the whole process.
  bool huge_pages = true;
  // load_state_dict only: where the state dict lives inside a checkpoint
  // dict, as a '/'-separated path ("model", "state_dict", "model/encoder").
  // Empty: the top-level object itself must be a state dict.
  std::string key;
};

// The object tree of a checkpoint file or buffer. A directory holding a
// torch.distributed.checkpoint (its `.metadata`) loads consolidated: every
// tensor assembled from its chunks, nested as the saved state dict was.
inline Storage::HugePages huge_pages(const LoadOptions& options) noexcept {
  return options.huge_pages ? Storage::HugePages::on : Storage::HugePages::off;
}

Value load(const std::string& path, const LoadOptions& options = {});
Value load(std::span<const std::byte> bytes, const LoadOptions& options = {});

// A state dict (a dict of tensors). Throws ckpt::TypeError saying what the
// file holds instead (e.g. a dict with keys 'model', 'optimizer', 'epoch')
// and which `key` would select a state dict inside it.
StateDict load_state_dict(const std::string& path, const LoadOptions& options = {});
StateDict load_state_dict(std::span<const std::byte> bytes, const LoadOptions& options = {});

// Follows a '/'-separated path ("optimizer/state/0") through dicts (string or
// integer keys), lists and tuples. Throws ckpt::TypeError naming the missing part.
const Value& lookup(const Value& root, std::string_view path);

}  // namespace ckpt
