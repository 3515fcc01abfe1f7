#include "common.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <vector>

#include "api/open_internal.hpp"
#include "ckpt/error.hpp"

namespace ckpt::cli {

std::string human_bytes(uint64_t n) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (n < 1024) return std::to_string(n) + " B";
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, v < 10 ? "%.2f %s" : v < 100 ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

std::string thousands(uint64_t n) {
  const std::string digits = std::to_string(n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

void print_error(const std::string& message) { std::fprintf(stderr, "ckpt: error: %s\n", message.c_str()); }

bool use_color(std::FILE* stream) {
  const char* no_color = std::getenv("NO_COLOR");
  if (no_color != nullptr && no_color[0] != '\0') return false;
  return isatty(fileno(stream)) == 1;
}

std::string paint(const std::string& text, const char* sgr, bool on) {
  if (!on) return text;
  return std::string("\x1b[") + sgr + "m" + text + "\x1b[0m";
}

std::string format_number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

Loaded load_checkpoint(const std::string& path, bool objects) {
  auto file = detail::open_for_load(path, true);
  LoadOptions opts;
  opts.mmap = true;  // inspection needs no copy of the data
  opts.weights_only = !objects;
  Loaded out;
  out.file_bytes = file->size();
  out.root = detail::load_file(file, opts, &out.format, nullptr);
  return out;
}

int for_each_file(const std::vector<std::string>& files, const std::function<int(const std::string&)>& fn) {
  int worst = kExitOk;
  for (const auto& f : files) {
    int rc = kExitError;
    try {
      rc = fn(f);
    } catch (const std::bad_alloc&) {
      print_error(f + ": out of memory");
    } catch (const std::exception& e) {
      print_error(e.what());
    }
    worst = std::max(worst, rc);
  }
  return worst;
}

}  // namespace ckpt::cli
