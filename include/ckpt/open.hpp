// ckpt/open.hpp — lazy, zero-copy access to a checkpoint or a sharded set.
//
//   ckpt::Reader r = ckpt::open("model.safetensors");    // or .pt, or an index
//   for (const auto& t : r.tensors()) std::cout << t.name << ' ' << t.nbytes << '\n';
//   ckpt::Tensor w = r.get("fc.weight");                 // a view into the mapping
//
// open() maps the file read-only and reads only its structure: the
// safetensors header, or a torch zip's central directory and data.pkl. The
// cost is O(number of tensors), independent of how many bytes they hold;
// no tensor byte is touched until it is used. get() returns read-only views
// into the mapping (safetensors data is aligned to the element size when
// the writer padded the header, torch zip records to 64 bytes); copy() an
// owned, writable copy. The mapping stays alive while any tensor refers to
// it, even after the Reader is gone.
//
// Accepted paths:
//  - a single checkpoint in any format ckpt reads (torch zip, TorchScript,
//    legacy and tar — whose data are read at open, as their layout puts the
//    object tree before the bytes —, safetensors, ONNX models: the main
//    graph's initializers, external data mapped too);
//  - a Hugging Face sharded set: its index file
//    (`model.safetensors.index.json`, `pytorch_model.bin.index.json`), or a
//    directory holding exactly one such index or exactly one checkpoint file
//    (`model.safetensors`, `pytorch_model.bin`). Its tensors come out as one
//    state dict in weight_map order; every shard is opened (headers only)
//    and checked against the index: a tensor the index names but its shard
//    lacks, or a shard tensor missing from the index, is a FormatError;
//  - a torch.distributed.checkpoint directory (or its `.metadata`): read at
//    open and consolidated, each tensor assembled from its chunks (copied
//    where a tensor has several); format() is Format::dcp and each
//    TensorInfo's file the directory.
//
// A Reader is cheap to copy (shared state) and safe to use from several
// threads at once.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/options.hpp"
#include "ckpt/state_dict.hpp"
#include "ckpt/tensor.hpp"

namespace ckpt {

struct TensorInfo {
  std::string name;  // state-dict name, or the '/'-joined path inside a checkpoint
  DType dtype = DType::float32;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // in elements
  int64_t storage_offset = 0;    // in elements
  std::string device;            // after map_location
  std::string file;              // the file holding the bytes (the shard, for sets)
  // Byte offset in `file` of the tensor's first element (element
  // storage_offset of its storage), when the bytes lie in the file as
  // they are (safetensors, torch zip, TorchScript, ONNX raw_data); -1 when
  // the reader had to copy them at open (legacy and tar files, deflated zip
  // records, ONNX typed fields or unaligned raw_data) and for ONNX external
  // data (its bytes lie in the external file, not in `file`).
  int64_t file_offset = -1;
  uint64_t nbytes = 0;  // numel * itemsize
  bool contiguous = true;
};

// open() takes LoadOptions (one options struct for every read; OpenOptions
// is its old name). Reads are always memory-mapped, so `mmap` and
// `huge_pages` do not apply; `key` is the '/'-separated path of the state
// dict inside a single checkpoint file ("model", "state_dict"); empty: every
// tensor of the file, named by its path.
using OpenOptions = LoadOptions;

class Reader {
 public:
  Format format() const;  // of the (first) file; Format::safetensors / torch_zip for sets
  const std::string& path() const;
  bool sharded() const;                      // opened through an index
  const std::vector<std::string>& files() const;  // every file read (shards in index order)
  // Every tensor, in the file's order (state-dict order for torch files,
  // data order for safetensors, weight_map order for sharded sets).
  const std::vector<TensorInfo>& tensors() const;
  std::vector<std::string> keys() const;
  size_t size() const;  // number of tensors
  uint64_t nbytes() const;  // sum of every tensor's nbytes (shared bytes counted per tensor)
  bool contains(std::string_view name) const;
  // Throws ckpt::TypeError ("no tensor named 'x' in FILE") when absent.
  const TensorInfo& info(std::string_view name) const;
  // A read-only view into the mapping (or the copy made at open).
  Tensor get(std::string_view name) const;
  // An owned, writable, contiguous copy.
  Tensor copy(std::string_view name) const;
  // All tensors as views (or copies), in tensors() order.
  StateDict state_dict(bool copy = false) const;

  // Loading into memory that already exists (a model's parameters, a
  // caller's buffers wrapped with Storage::external): writes tensor `name`
  // into `dst`, whose shape must equal the tensor's (ckpt::TypeError naming
  // both otherwise; ckpt::Error when dst is read-only). When the dtypes are
  // equal, both sides are contiguous and the bytes lie in the file as they
  // are (file_offset >= 0), they are read from the file straight into dst's
  // memory — positioned reads, parallel for large tensors, no intermediate
  // buffer and no page of the mapping touched — and true is returned.
  // Otherwise the tensor is converted (Tensor::to) and copied into dst's
  // layout, and false is returned.
  bool read_into(std::string_view name, const Tensor& dst) const;
  // The same for every tensor of `dst` (by name; every name must be in the
  // file: ckpt::TypeError listing the missing ones, before anything is
  // written). Tensors of the file that `dst` lacks are left alone. Returns
  // how many went the direct way.
  size_t read_into(const StateDict& dst) const;
  // safetensors `__metadata__`, or an index's "metadata" entries rendered as
  // strings (e.g. total_size); empty for torch files.
  const std::map<std::string, std::string>& metadata() const;

  struct Impl;

 private:
  friend Reader open(const std::string& path, const OpenOptions& options);
  explicit Reader(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Throws ckpt::IoError (unreadable), ckpt::FormatError (damaged file, index
// inconsistent with its shards), ckpt::UnsafeError (weights_only refusal).
Reader open(const std::string& path, const OpenOptions& options = {});

}  // namespace ckpt
