// Private: torch.distributed.checkpoint (DCP) directories, FileSystemWriter layout.
//
// A checkpoint is a directory holding `.metadata` (a pickle of
// torch.distributed.checkpoint.metadata.Metadata) and data files
// `__<rank>_<n>.distcp`. Each item of the state dict is one record in a data
// file at the offset and length `.metadata` gives: a torch.save blob (a
// torch zip) of one tensor chunk, or of a non-tensor value (BYTE_IO items).
// docs/distributed.md has the byte-level notes.
//
// This module turns the pickle into a validated Metadata (and back); the
// reader and writer live in src/api/distributed.cpp.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "ckpt/dtype.hpp"
#include "ckpt/value.hpp"

namespace ckpt::formats::dcp {

inline constexpr const char* kMetadataFile = ".metadata";
inline constexpr const char* kVersion = "1.0.0";  // filesystem.CURRENT_DCP_VERSION
inline constexpr const char* kMetadataModule = "torch.distributed.checkpoint.metadata";

// _StorageInfo: where an item's bytes are.
struct StorageInfo {
  std::string relative_path;  // a plain file name inside the checkpoint directory
  uint64_t offset = 0;
  uint64_t length = 0;
};

// ChunkStorageMetadata plus its record.
struct Chunk {
  std::vector<int64_t> offsets;
  std::vector<int64_t> sizes;
  StorageInfo storage;
};

struct Entry {
  std::string fqn;          // flattened name ("model.layer.weight")
  bool is_tensor = false;   // TensorStorageMetadata; else BytesStorageMetadata
  DType dtype = DType::float32;
  std::vector<int64_t> size;   // global shape
  std::vector<Chunk> chunks;   // tensors: chunks that tile `size`
  StorageInfo bytes;           // non-tensors: the record
  // planner_data: the path of the item in the original nested state dict
  // (str keys and int list indexes); empty when the checkpoint has none.
  std::vector<Value> path;
};

struct Metadata {
  std::vector<Entry> entries;  // state_dict_metadata order
  std::string version;         // "" for checkpoints older than the field
};

// Whether `bytes` is a pickle of a DCP Metadata object (decided by decoding
// it in inspection mode; nothing is executed). False for anything else.
bool is_metadata(std::span<const std::byte> bytes);

// Decodes and validates `.metadata`: every entry's record is present, names
// a plain file, chunks lie inside the tensor, do not overlap and cover it.
// Throws ckpt::FormatError naming `file` and the entry.
Metadata parse_metadata(std::span<const std::byte> bytes, const std::string& file);

// The pickle torch's FileSystemWriter.finish writes for `metadata`
// (protocol 2; pickle.load / dcp.load rebuild the dataclasses).
std::string write_metadata(const Metadata& metadata, const std::string& checkpoint_id);

// Checks that `chunks` tile a tensor of shape `size` exactly (in bounds, no
// overlap, full coverage). Returns "" or what is wrong.
std::string check_tiling(const std::vector<int64_t>& size, const std::vector<Chunk>& chunks);

}  // namespace ckpt::formats::dcp
