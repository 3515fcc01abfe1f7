// Shared pieces of the ckpt command-line tool.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

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

// --filter PATTERN: the regular expression (ECMAScript), or nothing when
// `pattern` is empty. Throws ckpt::Error naming --filter when it does not compile.
std::optional<std::regex> compile_filter(const std::string& pattern);

// The tensors of `root`, in for_each_tensor's order, whose path `filter`
// matches (std::regex_search); all of them without a filter.
std::vector<TensorRef> select_tensors(const Value& root, const std::optional<std::regex>& filter);

// The sum of the tensors' nbytes().
uint64_t total_nbytes(const std::vector<TensorRef>& tensors);

// The PATH, DTYPE and SHAPE columns of a table of tensors: each tensor's
// printable() path and format_shape(), and each column's width (at least
// that of its heading).
struct TensorColumns {
  std::vector<std::string> paths;
  std::vector<std::string> shapes;
  int path_width = 4;   // "PATH"
  int dtype_width = 5;  // "DTYPE"
  int shape_width = 5;  // "SHAPE"
};
TensorColumns tensor_columns(const std::vector<TensorRef>& tensors);

// 1536 -> "1.5 KiB"
std::string human_bytes(uint64_t n);
// 1234567 -> "1,234,567"
std::string thousands(uint64_t n);

// `text` safe to print on a terminal: control characters (bytes below 0x20,
// 0x7f, and the C1 controls U+0080..U+009F) become \t, \n, \r, \xNN or
// \u00NN, and a backslash becomes "\\" when anything was escaped; other
// UTF-8 is kept. Tensor names come from the file: a name must not be able to
// move the cursor or change the terminal's state. JSON output is escaped by
// JSON itself and does not use this.
std::string printable(const std::string& text);

// How a command reads checkpoints: --objects (weights_only = false) and
// --numpy (LoadOptions::numpy), worded the same everywhere.
struct ReadFlags {
  bool objects = false;
  bool numpy = false;
};
void add_read_flags(CLI::App* cmd, ReadFlags& flags);
void add_numpy_flag(CLI::App* cmd, bool& numpy);

// "ckpt: error: ..." on stderr.
void print_error(const std::string& message);

// Whether to colour what goes to `stream`: a terminal, and NO_COLOR unset
// (https://no-color.org).
bool use_color(std::FILE* stream);
// `text` wrapped in the SGR sequence `sgr` ("31" red, "32" green, "1" bold) when `on`.
std::string paint(const std::string& text, const char* sgr, bool on);

// A number for people: %.6g, "nan", "inf", "-inf".
std::string format_number(double v);

// A checkpoint loaded for inspection (mmap, weights-only unless --objects).
struct Loaded {
  Value root;
  Format format = Format::unknown;
  uint64_t file_bytes = 0;
};
Loaded load_checkpoint(const std::string& path, const ReadFlags& flags);

// Runs fn on each file in turn. An exception from one file is printed as
// "ckpt: error: ..." and counts as exit 2; the others still run. Returns the
// largest exit code.
int for_each_file(const std::vector<std::string>& files, const std::function<int(const std::string&)>& fn);

// A command's report over FILE...: runs report(file, json) on each file, as
// for_each_file does. With `json`, report fills the document it is given and
// prints nothing; the documents are printed at the end, a single file's alone,
// several files' as an array (of the files that succeeded). Without, report
// gets nullptr and prints its own report, reports separated by a blank line.
int report_files(const std::vector<std::string>& files, bool json,
                 const std::function<int(const std::string&, nlohmann::ordered_json*)>& report);

}  // namespace ckpt::cli
