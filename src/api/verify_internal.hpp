// Private: ckpt::verify's check of one archive, for the checkpoint manager
// (which reads through its own io::Env).
#pragma once

#include <memory>

#include "io/file.hpp"

namespace ckpt::detail {

// Throws ckpt::FormatError naming the record when `file` is not a complete,
// undamaged torch zip archive (its structure and every record's CRC-32):
// what ckpt::verify checks for one.
void verify_torch_archive(const std::shared_ptr<io::RandomAccessFile>& file);

}  // namespace ckpt::detail
