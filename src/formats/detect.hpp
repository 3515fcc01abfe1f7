// Private: the loader core. Which format a file holds, decided from its
// bytes the way torch.load decides, and its object tree loaded by the
// format's reader. Every load of a single file (ckpt::load, ckpt::open, a
// shard of an index, a record of a distributed checkpoint) comes here.
#pragma once

#include <memory>
#include <string>

#include "ckpt/options.hpp"
#include "ckpt/value.hpp"
#include "io/file.hpp"
#include "pickle/unpickler.hpp"

namespace ckpt::formats {

// The format, from the file's first bytes and, for a zip archive, its
// record names (torch.save archive or TorchScript).
Format detect(const std::shared_ptr<io::RandomAccessFile>& file);
// From the first bytes alone: a zip archive is reported as Format::torch_zip
// without reading its central directory (TorchScript archives included), so
// the answer is exact for every other format and costs one small read.
Format detect_head(const std::shared_ptr<io::RandomAccessFile>& file);
// The file opened as a load reads it: mapped (zero-copy views), or with
// the kernel told it will be read whole (io::open_file_to_read_whole).
std::shared_ptr<io::RandomAccessFile> open_for_load(const std::string& path, bool mmap);
// Loads any single-file format ckpt reads; `format_out` (may be null) gets
// the detected format, `observer` (may be null) the pickle's events. With
// weights_only, a refusal names every global outside the allow-list.
// Errors carry the file's name.
Value load_any(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options, Format* format_out,
               pickle::Observer* observer);

}  // namespace ckpt::formats
