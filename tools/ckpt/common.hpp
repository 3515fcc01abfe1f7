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

// Depth-first walk in the order the object tree holds things: dict
// insertion order, list/tuple index order; inert objects through their
// state. Keys: strings as-is, ints in decimal, others as Python repr.
void walk_tensors(const Value& root, const std::function<void(const TensorRef&)>& fn);
std::string key_to_path_part(const Value& key);

// sha256 of a tensor's elements in row-major order (little-endian).
std::string sha256_hex(const Tensor& t);

// 1536 -> "1.5 KiB"
std::string human_bytes(uint64_t n);
// 1234567 -> "1,234,567"
std::string thousands(uint64_t n);

// "ckpt: error: ..." on stderr.
void print_error(const std::string& message);

}  // namespace ckpt::cli
