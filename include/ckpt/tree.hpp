// ckpt/tree.hpp — walking a checkpoint's object tree: paths and tensors.
//
// A path names a node by its '/'-joined components: string keys as they
// are, integer keys and list/tuple indices in decimal, other keys as
// Python's repr ("optimizer/state/0/exp_avg"). for_each_tensor visits every
// tensor in the order the tree holds it (a depth-first walk: dict insertion
// order, list/tuple index order, inert objects through their state) with
// that path: the order and naming `ckpt ls` prints. Pure functions over the
// value; thread-safe.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "ckpt/tensor.hpp"
#include "ckpt/value.hpp"

namespace ckpt {

void for_each_tensor(const Value& root,
                     const std::function<void(const std::string& path, const Tensor& tensor)>& fn);
// The same walk with each tensor writable, e.g. to move it out of a tree the
// caller is done with. A tensor another Value shares is copied first (copy on
// write), so nothing outside `root` changes.
void for_each_mutable_tensor(Value& root, const std::function<void(const std::string& path, Tensor& tensor)>& fn);

// One path component for a dict key.
std::string path_component(const Value& key);

// Follows a '/'-separated path ("optimizer/state/0") through dicts (string or
// integer keys), lists and tuples. Throws ckpt::TypeError naming the missing part.
const Value& lookup(const Value& root, std::string_view path);

// A short description of what a value is, for messages: "a list", or
// "a dict with keys 'model', 'optimizer', ..." (the first eight keys).
std::string describe(const Value& v);

}  // namespace ckpt
