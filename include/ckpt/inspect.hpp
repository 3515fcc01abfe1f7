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

}  // namespace ckpt
