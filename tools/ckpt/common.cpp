#include "common.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <vector>

#include "ckpt/error.hpp"
#include "ckpt/inspect.hpp"
#include "ckpt/open.hpp"

namespace ckpt::cli {

std::optional<std::regex> compile_filter(const std::string& pattern) {
  std::optional<std::regex> filter;
  if (pattern.empty()) return filter;
  try {
    filter.emplace(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw Error("--filter: invalid regular expression '" + pattern + "': " + e.what());
  }
  return filter;
}

std::vector<TensorRef> select_tensors(const Value& root, const std::optional<std::regex>& filter) {
  std::vector<TensorRef> tensors;
  for_each_tensor(root, [&](const std::string& p, const Tensor& t) {
    if (!filter || std::regex_search(p, *filter)) tensors.push_back({p, &t});
  });
  return tensors;
}

uint64_t total_nbytes(const std::vector<TensorRef>& tensors) {
  uint64_t total = 0;
  for (const auto& r : tensors) total += r.tensor->nbytes();
  return total;
}

TensorColumns tensor_columns(const std::vector<TensorRef>& tensors) {
  TensorColumns c;
  for (const auto& r : tensors) {
    c.shapes.push_back(format_shape(r.tensor->sizes()));
    c.paths.push_back(printable(r.path));
    c.path_width = std::max(c.path_width, static_cast<int>(c.paths.back().size()));
    c.dtype_width = std::max(c.dtype_width, static_cast<int>(name(r.tensor->dtype()).size()));
    c.shape_width = std::max(c.shape_width, static_cast<int>(c.shapes.back().size()));
  }
  return c;
}

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

std::string printable(const std::string& text) {
  // C0 controls, DEL, and the C1 controls U+0080..U+009F (UTF-8 C2 80..C2 9F:
  // some terminals act on U+009B as a CSI).
  auto control_at = [&](size_t i) -> size_t {  // length of the control sequence at i, or 0
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) return 1;
    if (c == 0xc2 && i + 1 < text.size()) {
      const auto d = static_cast<unsigned char>(text[i + 1]);
      if (d >= 0x80 && d <= 0x9f) return 2;
    }
    return 0;
  };
  bool plain = true;
  for (size_t i = 0; i < text.size() && plain; ++i) plain = control_at(i) == 0;
  if (plain) return text;
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const size_t n = control_at(i);
    if (c == '\t') out += "\\t";
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\\') out += "\\\\";
    else if (n == 0) out += c;
    else {
      char buf[16];
      if (n == 1) std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(c));
      else std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned char>(text[i + 1]));
      out += buf;
      i += n - 1;
    }
  }
  return out;
}

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

Loaded load_checkpoint(const std::string& path, const ReadFlags& flags) {
  LoadOptions opts;
  opts.mmap = true;  // inspection needs no copy of the data
  opts.weights_only = !flags.objects;
  opts.numpy = flags.numpy;
  LoadReport report;
  Loaded out;
  out.root = load(path, opts, report);
  out.format = report.format;
  out.file_bytes = report.file_bytes;
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
    } catch (const ckpt::FormatError& e) {
      // What the file holds is at fault: the error names the file, even when
      // it was thrown past the loader (a digest or object-tree walk limit).
      ckpt::Error named = e;
      named.add_context(ErrorContext{f});
      print_error(named.what());
    } catch (const std::exception& e) {
      print_error(e.what());
    }
    worst = std::max(worst, rc);
  }
  return worst;
}

int report_files(const std::vector<std::string>& files, bool json,
                 const std::function<int(const std::string&, nlohmann::ordered_json*)>& report) {
  if (json) {
    std::vector<nlohmann::ordered_json> docs;
    int rc = for_each_file(files, [&](const std::string& f) {
      nlohmann::ordered_json j;
      int r = report(f, &j);
      docs.push_back(std::move(j));
      return r;
    });
    if (files.size() == 1 && docs.size() == 1) std::printf("%s\n", docs[0].dump(2).c_str());
    else if (files.size() > 1) std::printf("%s\n", nlohmann::ordered_json(docs).dump(2).c_str());
    return rc;
  }
  bool first = true;
  return for_each_file(files, [&](const std::string& f) {
    if (!first) std::printf("\n");
    first = false;
    return report(f, nullptr);
  });
}

void add_read_flags(CLI::App* cmd, ReadFlags& flags) {
  cmd->add_flag("--objects", flags.objects,
                "Admit classes outside the weights-only allow-list as inert objects (nothing is executed)");
  add_numpy_flag(cmd, flags.numpy);
}

void add_numpy_flag(CLI::App* cmd, bool& numpy) {
  cmd->add_flag("--numpy", numpy, "Decode numpy arrays (as tensors) and scalars (as numbers); nothing is executed");
}

}  // namespace ckpt::cli
