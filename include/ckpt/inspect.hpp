// ckpt/inspect.hpp — looking inside checkpoints: tensor digests and the
// records that tell which writer made an archive. Walking the object tree
// (for_each_tensor, path_component, lookup) is in ckpt/tree.hpp, included
// here. Thread-safe.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "ckpt/tensor.hpp"
#include "ckpt/tree.hpp"  // for_each_tensor, path_component (walking the tree)
#include "ckpt/value.hpp"

namespace ckpt {

// Hex SHA-256 of the tensor's elements in row-major order, little-endian:
// the bytes of t.contiguous().
std::string tensor_sha256(const Tensor& t);

// The small records of a torch zip archive (TorchScript archives included)
// that tell which writer made it, those present in this order: `version`,
// `byteorder`, `.format_version`, `.storage_alignment`,
// `.data/serialization_id`, `.data/version`; each without trailing newlines,
// records over 256 bytes left out. Throws ckpt::IoError when the file cannot
// be read, ckpt::FormatError when it is not a zip archive.
std::vector<std::pair<std::string, std::string>> archive_records(const std::string& path);

}  // namespace ckpt
