// Overflow-checked arithmetic for sizes read from files.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "ckpt/error.hpp"

namespace ckpt {

// Non-throwing forms for callers whose error names the file, key and offset:
// store a * b (a + b) in `out` and return true when it does not fit in T.
template <class T>
[[nodiscard]] inline bool mul_overflows(T a, T b, T& out) {
  return __builtin_mul_overflow(a, b, &out);
}

template <class T>
[[nodiscard]] inline bool add_overflows(T a, T b, T& out) {
  return __builtin_add_overflow(a, b, &out);
}

inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (mul_overflows(a, b, r)) throw FormatError(std::string(what) + " overflows 64 bits");
  return r;
}

inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (add_overflows(a, b, r)) throw FormatError(std::string(what) + " overflows 64 bits");
  return r;
}

inline size_t checked_mul_size(size_t a, size_t b, const char* what) {
  size_t r;
  if (mul_overflows(a, b, r)) throw FormatError(std::string(what) + " overflows 64 bits");
  return r;
}

inline uint64_t checked_add_u64(uint64_t a, uint64_t b, const char* what) {
  uint64_t r;
  if (add_overflows(a, b, r)) throw FormatError(std::string(what) + " overflows 64 bits");
  return r;
}

}  // namespace ckpt
