// Private: lower-case hexadecimal digits for bytes (digests, magic-byte
// prefixes in messages, JSON \u00xx escapes, CRC-32s). The one hex table of
// the library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace ckpt {

// Appends the two lower-case hex digits of `byte` to `out`.
inline void append_hex_byte(std::string& out, unsigned char byte) {
  static constexpr char digits[] = "0123456789abcdef";
  out += digits[byte >> 4];
  out += digits[byte & 15];
}

// The bytes as lower-case hex, two digits each, no separator.
inline std::string to_hex(std::span<const unsigned char> bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) append_hex_byte(out, b);
  return out;
}

// A 32-bit value (a CRC-32) as eight lower-case hex digits, most significant
// first: the form manifests store and messages print.
inline std::string hex32(uint32_t v) {
  std::string out;
  out.reserve(8);
  for (int shift = 24; shift >= 0; shift -= 8) append_hex_byte(out, static_cast<unsigned char>(v >> shift));
  return out;
}

}  // namespace ckpt
