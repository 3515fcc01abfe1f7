// Private: the save path with its dependencies exposed, for tests and for
// the checkpoint manager.
#pragma once

#include <string>

#include "ckpt/save.hpp"
#include "io/file.hpp"

namespace ckpt::detail {

// ckpt::save through `env` (fault injection). `zip64_threshold` lowers the
// ZIP64 limit so tests can exercise ZIP64 on small files.
void save(io::Env& env, const std::string& path, const Value& value, const SaveOptions& options,
          uint64_t zip64_threshold = 0xFFFFFFFFull);

}  // namespace ckpt::detail
