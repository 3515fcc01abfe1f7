// Private: the globals a weights-only load may reference, and what calling
// them means. Nothing here executes anything: each allowed function is
// reimplemented natively (a tensor rebuild, an OrderedDict, a torch.Size...).
#pragma once

#include <string_view>

#include "ckpt/value.hpp"
#include "pickle/unpickler.hpp"

namespace ckpt::pickle {

// Modules refused in every mode, as torch's weights-only unpickler does.
bool is_blocked_module(std::string_view module);

// Calls the allowed function or class `g` with `args`. Throws
// ckpt::UnsupportedError for allowed tensor kinds ckpt does not model yet
// (quantized, sparse, nested, meta, subclasses) and ckpt::FormatError for
// malformed arguments.
Value call_torch_global(const Global& g, const List& args, const Limits& limits);

}  // namespace ckpt::pickle
