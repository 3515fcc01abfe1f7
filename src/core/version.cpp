#include "ckpt/version.hpp"

namespace ckpt {
const char* version() noexcept { return CKPT_VERSION_STRING; }
}  // namespace ckpt
