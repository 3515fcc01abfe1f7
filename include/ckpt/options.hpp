// ckpt/options.hpp — the shared option and format types: what a load or a
// save is asked to do. Core-level: implemented in src/core/options.cpp, so the
// format readers and writers below the api use them without depending on it.
// ckpt/load.hpp and ckpt/save.hpp include this header, so code that names
// these types through them keeps compiling.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/storage.hpp"

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

// The Storage huge-page policy a load with these options uses.
inline Storage::HugePages huge_pages(const LoadOptions& options) noexcept {
  return options.huge_pages ? Storage::HugePages::on : Storage::HugePages::off;
}

struct SaveOptions {
  // The folder inside the archive. Empty: as torch.save does, the file name
  // without its last extension ("model.pt" -> "model"), "archive" for buffers.
  std::string archive_name;
  // Payload alignment of every record (torch writes 64).
  uint32_t alignment = 64;
  // fsync the file and its directory (turn off only for scratch files).
  bool fsync = true;
  // Called on the saving thread after each write with the bytes just
  // written (a progress bar: the calls add up to the file's size). An
  // exception it throws aborts the save, leaving any previous file as it was.
  std::function<void(uint64_t bytes)> progress;
};

// What refresh_onnx_weights (ckpt/onnx.hpp) did.
struct OnnxRefreshResult {
  std::vector<std::string> replaced;  // initializer names whose data was replaced, graph order
  std::vector<std::string> unused;    // keys of `weights` that name no initializer
  std::vector<std::string> written;   // files written: the external data file (if any), then out_path
};

}  // namespace ckpt
