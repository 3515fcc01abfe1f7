// Shared pieces of the ckpt command-line tool.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ckpt/load.hpp"
#include "ckpt/value.hpp"

namespace ckpt::cli {

// Exit codes (docs/cli.md).
inline constexpr int kExitOk = 0;
inline constexpr int kExitNegative = 1;  // verify: damaged; diff: different; scan: dangerous
inline constexpr int kExitError = 2;     // bad usage, unreadable or invalid input

// A tensor reached while walking a checkpoint, with its '/'-joined path.
struct TensorRef {
  std::string path;
  const Tensor* tensor;
};

// 1536 -> "1.5 KiB"
std::string human_bytes(uint64_t n);
// 1234567 -> "1,234,567"
std::string thousands(uint64_t n);

// "ckpt: error: ..." on stderr.
void print_error(const std::string& message);

}  // namespace ckpt::cli
