// Private: replacing inert objects in a decoded object tree.
//
// Some inert objects stand for plain values: TorchScript's typed-container
// wrappers (identity functions) and, when asked for, numpy arrays and scalars.
// rewrite_objects() replaces them after the pickle VM is done, so the VM
// itself never calls anything.
#pragma once

#include <functional>

#include "ckpt/value.hpp"

namespace ckpt::pickle {

// Walks `root` and replaces every inert Object by what `replace` returns for
// it (the object itself to keep it). An object's contents (args, kwargs,
// state, items) are rewritten before `replace` sees it. Containers are changed
// in place; a container or object the pickle shares (memo) is rewritten once
// and the result reused, so a DAG costs its size, not the number of paths
// through it (which can be 2^depth). Dict keys are rewritten too (the dict is
// re-indexed when one changes). Throws FormatError past `max_depth` nesting.
Value rewrite_objects(const Value& root, const std::function<Value(const Value& object)>& replace,
                      int max_depth = 2000);

}  // namespace ckpt::pickle
