// ckpt/inspect.hpp — walking a checkpoint's object tree.
//
// for_each_tensor visits every tensor in the order the tree holds it (a
// depth-first walk: dict insertion order, list/tuple index order, inert
// objects through their state) with its '/'-joined path: string keys as they
// are, integer keys and indices in decimal, other keys as Python's repr. This
// is the order and naming `ckpt ls` prints. Pure functions; thread-safe.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "ckpt/tensor.hpp"
#include "ckpt/value.hpp"

namespace ckpt {

void for_each_tensor(const Value& root,
                     const std::function<void(const std::string& path, const Tensor& tensor)>& fn);

// One path component for a dict key.
std::string path_component(const Value& key);

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
