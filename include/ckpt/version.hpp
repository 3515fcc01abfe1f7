// ckpt/version.hpp — the library version, defined once.
#pragma once

#define CKPT_VERSION_MAJOR 0
#define CKPT_VERSION_MINOR 1
#define CKPT_VERSION_PATCH 0

namespace ckpt {
// "0.1.0", as compiled into the library (may differ from the headers in use).
const char* version() noexcept;
}  // namespace ckpt
