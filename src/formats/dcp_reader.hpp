// Private: reading torch.distributed.checkpoint directories (FileSystemWriter
// layout, dcp.hpp has the format). Each item's records are torch.save blobs
// inside the data files, loaded through the loader core (detect.hpp) as
// files of their own (io::slice_file), so errors name the data file, the item
// and the byte where its record starts. The public DistributedReader
// (api/distributed.cpp) is a face over this class.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/options.hpp"
#include "ckpt/tensor.hpp"
#include "ckpt/value.hpp"
#include "formats/dcp.hpp"
#include "io/file.hpp"

namespace ckpt::formats::dcp {

// `dir`/.metadata.
std::string metadata_path(const std::string& dir);
// The bytes of `dir`/.metadata (IoError naming it when unreadable, LimitError past 1 GiB).
std::string read_metadata_bytes(const std::string& dir);
// Whether `dir` is a directory whose `.metadata` decodes as DCP Metadata.
// An error reading `.metadata` propagates (an unreadable checkpoint must not
// pass for a directory without one).
bool is_checkpoint_dir(const std::string& dir);
// A directory that holds a distributed checkpoint, as its listing and
// `.metadata` showed it.
struct CheckpointDir {
  std::string dir;
  std::string metadata_bytes;        // of `dir`/.metadata, checked by is_metadata
  std::vector<std::string> files;    // its regular files (`.metadata`, the data files, the rest), as paths, sorted
  uint64_t file_bytes = 0;           // their sizes summed
};
// `dir` as a distributed checkpoint, decided from `listing` (its entries:
// io::list_dir) and, when the listing holds a regular `.metadata`, from that
// file's bytes; nullopt when it is none. An error reading `.metadata`
// propagates (an unreadable checkpoint must not pass for a directory
// without one).
std::optional<CheckpointDir> checkpoint_dir(const std::string& dir, const std::vector<io::DirEntry>& listing);

class Reader {
 public:
  // `metadata_bytes`: those of `dir`/.metadata (the caller reads them: under
  // MPI one rank reads and broadcasts). Validates them (parse_metadata).
  // `options`: weights_only and mmap as for ckpt::load.
  Reader(std::string dir, const LoadOptions& options, std::string_view metadata_bytes);

  const std::string& dir() const noexcept { return dir_; }
  const Metadata& metadata() const noexcept { return md_; }
  // The entry named `name`; TypeError when there is none.
  const Entry& entry(const std::string& name) const;
  // A region of a tensor item assembled from the chunks it meets (TypeError
  // when outside the tensor or the item is no tensor).
  Tensor read_region(const Entry& e, const std::vector<int64_t>& offsets, const std::vector<int64_t>& sizes) const;
  // A tensor item whole, or a non-tensor item's value (its record as bytes
  // when it is no torch.save blob).
  Value read_value(const Entry& e) const;
  // Every item, nested as the saved state dict was (torch's set_element over
  // the planner_data paths).
  Value consolidate() const;
  // Checks every record's archive structure and CRCs and decodes it;
  // returns the number of records. Throws on the first damage.
  size_t verify() const;
  // Record bytes read so far (all threads).
  uint64_t bytes_read() const noexcept;

 private:
  std::shared_ptr<io::RandomAccessFile> record_file(const Entry& e, const StorageInfo& s) const;
  Value load_record(const Entry& e, const StorageInfo& s, bool raw_ok, const LoadOptions& opts) const;
  void verify_record(const Entry& e, const StorageInfo& s) const;
  Tensor load_chunk(const Entry& e, const Chunk& c) const;

  std::string dir_;
  LoadOptions options_;
  Metadata md_;
  std::map<std::string, size_t> by_name_;
  mutable std::mutex mu_;
  mutable std::map<std::string, std::shared_ptr<io::RandomAccessFile>> files_;
  mutable uint64_t bytes_read_ = 0;
};

}  // namespace ckpt::formats::dcp
