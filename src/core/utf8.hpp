// Private: strict UTF-8 decoding, validation and encoding (the pickle VM,
// safetensors headers and names).
//
// Strict (the default) means what Python's "utf-8" codec accepts with errors='strict': no
// overlong forms, no surrogates (U+D800..U+DFFF), nothing above U+10FFFF.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ckpt::utf8 {

// Decodes the code point starting at s[i] and advances i past it. Returns
// false (leaving i unchanged) when the bytes there are not strict UTF-8.
inline bool next(std::string_view s, size_t& i, uint32_t& cp, bool allow_surrogates = false) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = byte(i);
  if (c < 0x80) {
    cp = c;
    i += 1;
    return true;
  }
  size_t n;
  uint32_t min;
  if ((c & 0xE0) == 0xC0) {
    n = 2, cp = c & 0x1Fu, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3, cp = c & 0x0Fu, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4, cp = c & 0x07u, min = 0x10000;
  } else {
    return false;
  }
  if (n > s.size() - i) return false;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return false;
    cp = (cp << 6) | (byte(i + k) & 0x3Fu);
  }
  if (cp < min || cp > 0x10FFFF || (!allow_surrogates && cp >= 0xD800 && cp <= 0xDFFF)) return false;
  i += n;
  return true;
}

// allow_surrogates: also accept encoded U+D800..U+DFFF, as Python's
// BINUNICODE loader does (it decodes with errors='surrogatepass').
inline bool valid(std::string_view s, bool allow_surrogates = false) {
  size_t i = 0;
  uint32_t cp = 0;
  while (i < s.size())
    if (!next(s, i, cp, allow_surrogates)) return false;
  return true;
}

// Offset of the first byte of the first sequence that is not strict UTF-8,
// or npos when all of `s` is.
inline size_t invalid_at(std::string_view s) {
  size_t i = 0;
  uint32_t cp = 0;
  while (i < s.size())
    if (!next(s, i, cp)) return i;
  return std::string_view::npos;
}

// Appends the UTF-8 form of `cp`, which must be a Unicode scalar value.
inline void append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace ckpt::utf8
