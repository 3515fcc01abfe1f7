// Private: the object tree of a training checkpoint as JSON, so that a whole
// checkpoint (model, optimizer state, epoch, ...) fits a safetensors file.
//
// The tree is stored in `__metadata__["ckpt.tree"]`. JSON null, booleans,
// strings, arrays (Python lists) and numbers (ints stay ints, floats keep a
// decimal point) stand for themselves; an object whose keys are plain strings
// (not starting with '$') is a dict. Everything else is an object whose first
// key is a tag:
//   {"$tensor": NAME, "requires_grad": true, "parameter": true, "device": "cuda:0"}
//   {"$dict": [[KEY, VALUE], ...], "ordered": true, "attributes": {...}}  (non-string keys, OrderedDict, _metadata)
//   {"$tuple": [...]}  {"$set": [...]}  {"$int": "123456789012345678901234"}
//   {"$float": "nan" | "inf" | "-inf"}  {"$complex": [RE, IM]}
//   {"$bytes": BASE64}  {"$bytearray": BASE64}  {"$dtype": "bfloat16"}
//   {"$device": "cuda:0"}  {"$size": [2, 3]}
// Tensors are named by their '/'-joined path in the tree (the first path that
// reaches them); a second reference to the same view (tied weights) refers to
// the same name, so it is stored once.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "ckpt/options.hpp"
#include "ckpt/tensor.hpp"
#include "ckpt/value.hpp"

namespace ckpt::formats {

inline constexpr const char* kTreeMetadataKey = "ckpt.tree";

struct TreeEncoding {
  std::string tree;                                    // the JSON text
  std::vector<std::pair<std::string, Tensor>> tensors;  // to write, each once
  size_t aliases = 0;                                  // references to an already-named tensor
};

// Throws ckpt::UnsupportedError for values JSON cannot hold (inert objects,
// globals, storages), ckpt::LimitError past 1000 levels.
TreeEncoding encode_tree(const Value& root);
// Throws ckpt::FormatError for malformed trees or names the file lacks.
Value decode_tree(const std::string& tree_json, const std::vector<std::pair<std::string, Tensor>>& tensors,
                  const LoadOptions& options);

}  // namespace ckpt::formats
