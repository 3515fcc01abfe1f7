#include "ckpt/error.hpp"

#include <cstdint>
#include <cstdio>
#include <string_view>

namespace ckpt {

namespace {

// Length of the well-formed UTF-8 sequence at s[i] (1-4), or 0 when the bytes
// there are not strict UTF-8 (overlong, surrogate, above U+10FFFF, truncated).
size_t utf8_length(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(i);
  if (c < 0x80) return 1;
  size_t n;
  uint32_t cp, min;
  if ((c & 0xE0) == 0xC0) n = 2, cp = c & 0x1Fu, min = 0x80;
  else if ((c & 0xF0) == 0xE0) n = 3, cp = c & 0x0Fu, min = 0x800;
  else if ((c & 0xF8) == 0xF0) n = 4, cp = c & 0x07u, min = 0x10000;
  else return 0;
  if (n > s.size() - i) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3Fu);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

// Error messages quote what a file holds (record names, keys, strings), so a
// message is made printable, valid UTF-8 once, here: bytes that are not UTF-8
// become \xNN, control characters (C0 but newline and tab, DEL, C1) become
// \xNN / \u00NN. Terminals, JSON writers and Python's str() can take what()
// as it is.
std::string printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  char buf[8];
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<uint8_t>(s[i]);
    const size_t n = utf8_length(s, i);
    if (n == 0 || (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
      i += 1;
    } else if (n == 2 && c == 0xC2 && static_cast<uint8_t>(s[i + 1]) <= 0x9F) {
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<uint8_t>(s[i + 1]));
      out += buf;
      i += 2;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

}  // namespace

Error::Error(const std::string& message, ErrorContext context)
    : std::runtime_error(""), message_(printable(message)), context_(std::move(context)) {
  render();
}

void Error::add_context(const ErrorContext& outer) {
  if (context_.file.empty()) context_.file = outer.file;
  if (context_.record.empty()) context_.record = outer.record;
  if (!context_.offset) context_.offset = outer.offset;
  render();
}

void Error::render() {
  std::string out;
  if (!context_.file.empty()) out += printable(context_.file) + ": ";
  if (!context_.record.empty()) out += "record '" + printable(context_.record) + "': ";
  if (context_.offset) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "offset 0x%llx: ", static_cast<unsigned long long>(*context_.offset));
    out += buf;
  }
  rendered_ = out + message_;
}

}  // namespace ckpt
