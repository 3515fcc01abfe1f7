#include "ckpt/error.hpp"

#include <cstdio>

namespace ckpt {

Error::Error(const std::string& message, ErrorContext context)
    : std::runtime_error(message), message_(message), context_(std::move(context)) {
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
  if (!context_.file.empty()) out += context_.file + ": ";
  if (!context_.record.empty()) out += "record '" + context_.record + "': ";
  if (context_.offset) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "offset 0x%llx: ", static_cast<unsigned long long>(*context_.offset));
    out += buf;
  }
  rendered_ = out + message_;
}

}  // namespace ckpt
