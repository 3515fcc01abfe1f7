// Private: what a path names, decided once for every public entry point
// (load, load_state_dict, open): a single checkpoint file, a Hugging Face
// shard index, or a torch.distributed.checkpoint directory. A directory
// holding exactly one index or one checkpoint file names that file.
//
// The path goes to the file system once for each thing learned about it
// (its status; a directory's listing; the file, opened once): what was
// opened and read comes back in the Target, so that no loader goes back to
// the path and the file decided on is the file loaded.
#pragma once

#include <memory>
#include <string>

#include "formats/dcp_reader.hpp"
#include "io/file.hpp"

namespace ckpt::detail {

struct Target {
  enum class Kind { file, shard_index, dcp };
  Kind kind = Kind::file;
  // The file, the index file, or the DCP directory.
  std::string path;
  // file, shard_index: the file, opened as the load reads it (mapped, or
  // to be read whole).
  std::shared_ptr<io::RandomAccessFile> file;
  // shard_index: the index's text.
  std::string index_text;
  // dcp: the directory, its `.metadata` bytes and its files.
  formats::dcp::CheckpointDir dcp;
};

// In this order: a DCP directory (or its `.metadata` file), decided from the
// `.metadata` bytes; a directory, resolved to the single *.index.json in it,
// else its single checkpoint file (model.safetensors, pytorch_model.bin,
// *.safetensors, *.pt, *.pth, *.bin, *.ckpt; IoError naming what was found
// when ambiguous or empty); a shard index, decided from the file's bytes;
// otherwise a file. A file is opened mapped when `mmap`, else to be read
// whole (io::open_file_to_read_whole); a path that cannot be opened gets
// the opener's IoError.
Target resolve(const std::string& path, bool mmap);

// resolve's first question alone: the DCP directory `path` names (itself, or
// the parent of its `.metadata` file), or "" (ckpt::verify checks the file
// it is given and asks nothing else).
std::string dcp_dir(const std::string& path);

}  // namespace ckpt::detail
