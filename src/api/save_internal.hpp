// Private: the save path with its file system exposed, for tests (fault
// injection, ZIP64 on small files) and for the checkpoint manager.
#pragma once

#include <cstdint>
#include <string>

#include "ckpt/save.hpp"
#include "io/file.hpp"

namespace ckpt::detail {

// ckpt::save through `env` (with options.progress, through a progress_env
// over it). `zip64_threshold` lowers the ZIP64 limit so tests can exercise
// ZIP64 on small files.
void save(io::Env& env, const std::string& path, const Value& value, const SaveOptions& options,
          uint64_t zip64_threshold = 0xFFFFFFFFull);

// The bytes ckpt::save writes for a file named `path` (the archive's folder
// from its name unless options.archive_name says), appended to `out`: for
// writers that put them into a file of their own (the checkpoint manager).
void write_torch_save(io::WritableFile& out, const std::string& path, const Value& value,
                      const SaveOptions& options);

// `body` writes `path` atomically (io::write_atomically) through `env`, with
// options.fsync and options.progress; errors gain `path` as context. Every
// saver writes its files through this.
void write_file(io::Env& env, const std::string& path, const SaveOptions& options,
                const std::function<void(io::WritableFile&)>& body);

}  // namespace ckpt::detail
