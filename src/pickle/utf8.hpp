// Private: the pickle VM's UTF-8 helpers live in core/utf8.hpp.
#pragma once

#include "core/utf8.hpp"

namespace ckpt::pickle {
namespace utf8 = ckpt::utf8;
}  // namespace ckpt::pickle
