// ckpt scan PATH... [--json] [--all] — what the pickles in checkpoints would
// import and call, with a verdict per file (docs/security.md).
#include <cstdio>
#include <string>
#include <vector>

#include "ckpt/scan.hpp"
#include "commands.hpp"
#include "common.hpp"

namespace ckpt::cli {
namespace {

struct ScanArgs {
  std::vector<std::string> paths;
  bool json = false;
  bool all = false;
};

// Names are shown exactly but never raw: control characters, backslashes and
// every non-ASCII byte (homoglyphs) as \xNN.
std::string escaped(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c >= 0x7f || c == '\\') {
      out += "\\x";
      out += digits[c >> 4];
      out += digits[c & 15];
    } else {
      out += ch;
    }
  }
  return out;
}

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

void print_text(const std::vector<ScanReport>& reports) {
  size_t counts[4] = {0, 0, 0, 0};
  for (const auto& r : reports) {
    ++counts[static_cast<int>(r.verdict)];
    std::string format = r.bare_pickle ? "pickle" : std::string(format_name(r.format));
    std::printf("%s: %s (%s", escaped(r.path).c_str(), std::string(scan_verdict_name(r.verdict)).c_str(),
                format.c_str());
    if (!r.pickles.empty()) std::printf(", %zu pickle%s", r.pickles.size(), r.pickles.size() == 1 ? "" : "s");
    std::printf(")\n");
    for (const auto& f : r.findings) {
      std::string where = f.record.empty() ? "" : escaped(f.record);
      std::string what = f.module.empty() ? "<" + escaped(f.name) + ">" : escaped(f.module) + "." + escaped(f.name);
      std::printf("  %s @%s  %-9s  %-10s %s\n", where.c_str(), hex(f.offset).c_str(), f.op.c_str(),
                  std::string(scan_category_name(f.category)).c_str(), what.c_str());
    }
    if (r.findings_omitted > 0) std::printf("  ... %llu more findings\n", static_cast<unsigned long long>(r.findings_omitted));
    for (const auto& e : r.errors) std::printf("  error: %s\n", escaped(e).c_str());
  }
  std::printf("%zu file%s: %zu safe, %zu unsafe-but-known, %zu dangerous, %zu error\n", reports.size(),
              reports.size() == 1 ? "" : "s", counts[0], counts[1], counts[2], counts[3]);
}

int run_scan(const ScanArgs& a) {
  ScanOptions options;
  options.include_allowed = a.all;
  std::vector<ScanReport> reports = scan_paths(a.paths, options);
  if (a.json) std::printf("%s\n", scan_reports_json(reports).c_str());
  else print_text(reports);
  return scan_exit_code(reports);
}

}  // namespace

void register_scan(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<ScanArgs>();
  CLI::App* cmd = app.add_subcommand(
      "scan", "List the globals and calls in checkpoints' pickles, with a verdict per file (exit 0 clean, 1 dangerous, 2 error)");
  cmd->add_option("PATH", args->paths, "Files or directories (walked recursively, following links; each real file once)")->required();
  cmd->add_flag("--json", args->json, "Machine-readable output (schema ckpt-scan/1, docs/security.md)");
  cmd->add_flag("--all", args->all, "Also list the globals and calls the weights-only allow-list accepts");
  cmd->callback([args, exit_code] { *exit_code = run_scan(*args); });
}

}  // namespace ckpt::cli
