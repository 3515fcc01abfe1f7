#include "ckpt/error.hpp"

#include <cstdint>
#include <cstdio>
#include <string_view>

#include "core/hex.hpp"
#include "core/utf8.hpp"

namespace ckpt {

namespace {

// Error messages quote what a file holds (record names, keys, strings), so a
// message is made printable, valid UTF-8 once, here: bytes that are not UTF-8
// become \xNN, control characters (C0 but newline and tab, DEL, C1) become
// \xNN / \u00NN. Terminals, JSON writers and Python's str() can take what()
// as it is.
std::string printable(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t end = i;
    uint32_t cp = 0;
    const size_t n = utf8::next(s, end, cp) ? end - i : 0;
    if (n == 0 || (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
      out += "\\x";
      append_hex_byte(out, c);
      i += 1;
    } else if (n == 2 && c == 0xC2 && static_cast<uint8_t>(s[i + 1]) <= 0x9F) {
      out += "\\u00";
      append_hex_byte(out, static_cast<uint8_t>(s[i + 1]));
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
