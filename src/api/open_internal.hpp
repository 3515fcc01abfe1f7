// Private: the load pipeline shared by the public API and the CLI.
#pragma once

#include <memory>
#include <string>

#include "ckpt/load.hpp"
#include "io/file.hpp"
#include "pickle/unpickler.hpp"

namespace ckpt::detail {

Format detect(const std::shared_ptr<io::RandomAccessFile>& file);
// From the first bytes alone: a zip archive is reported as Format::torch_zip
// without reading its central directory (TorchScript archives included), so
// the answer is exact for every other format and costs one small read.
Format detect_head(const std::shared_ptr<io::RandomAccessFile>& file);
std::shared_ptr<io::RandomAccessFile> open_for_load(const std::string& path, bool mmap);
// Loads any supported format; reports the detected format and pickle events.
Value load_file(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options,
                Format* format_out, pickle::Observer* observer);
// The directory of a torch.distributed.checkpoint when `path` is one (or is
// its `.metadata` file), decided from the `.metadata` bytes; "" otherwise.
std::string distributed_checkpoint_dir(const std::string& path);
// load_file for a path, which may also be a Hugging Face shard index or a
// directory holding one checkpoint or one index (the set loads as one state
// dict, copied unless options.mmap), or a torch.distributed.checkpoint
// directory (consolidated). `report`, when given, says what was read.
Value load_path(const std::string& path, const LoadOptions& options, LoadReport* report,
                pickle::Observer* observer);

}  // namespace ckpt::detail
