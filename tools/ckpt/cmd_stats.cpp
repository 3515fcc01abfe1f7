// ckpt stats FILE [--filter REGEX] [--json] — per-tensor statistics.
#include <cmath>
#include <limits>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>

#include "ckpt/elements.hpp"
#include "ckpt/error.hpp"
#include "ckpt/inspect.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "progress.hpp"

namespace ckpt::cli {
namespace {

struct StatsArgs {
  std::vector<std::string> files;
  std::string filter;
  bool json = false;
  ReadFlags read;
};

// Statistics over the finite elements (complex: over |z|), with Welford's
// running mean and variance in double.
struct Stats {
  uint64_t numel = 0;
  uint64_t finite = 0;
  uint64_t nan = 0;
  uint64_t inf = 0;
  uint64_t zeros = 0;
  double min = 0, max = 0, mean = 0, m2 = 0;
  bool numeric = true;  // false for raw (bitsN / packed) dtypes

  void add(double x) {
    ++numel;
    if (std::isnan(x)) {
      ++nan;
      return;
    }
    if (std::isinf(x)) {
      ++inf;
      return;
    }
    if (x == 0) ++zeros;
    if (finite == 0 || x < min) min = x;
    if (finite == 0 || x > max) max = x;
    ++finite;
    const double delta = x - mean;
    mean += delta / static_cast<double>(finite);
    m2 += delta * (x - mean);
  }
  // torch.std's default: the unbiased estimator (correction 1); NaN for one element.
  double std() const {
    return finite < 2 ? std::numeric_limits<double>::quiet_NaN() : std::sqrt(m2 / static_cast<double>(finite - 1));
  }
};

Stats compute(const Tensor& t) {
  Stats s;
  const DType d = t.dtype();
  switch (element_class(d)) {
    case ElementClass::raw:
      s.numeric = false;
      s.numel = static_cast<uint64_t>(t.numel());
      break;
    case ElementClass::complex:
      for_each_element(t, [&](const std::byte* p) {
        const auto z = read_complex(p, d);
        s.add(std::abs(z));
      });
      break;
    default: for_each_element(t, [&](const std::byte* p) { s.add(read_double(p, d)); }); break;
  }
  return s;
}

nlohmann::ordered_json num(double v, bool present) {
  if (!present || !std::isfinite(v)) return nullptr;
  return v;
}

int run_stats_file(const StatsArgs& a, const std::string& path, nlohmann::ordered_json* json_out, bool header) {
  const std::optional<std::regex> filter = compile_filter(a.filter);  // before the (long) load
  const Loaded l = load_checkpoint(path, a.read);
  const std::vector<TensorRef> tensors = select_tensors(l.root, filter);
  const uint64_t total = total_nbytes(tensors);
  std::vector<Stats> stats;
  {
    Progress bar("stats", total, Progress::Unit::bytes);
    for (const auto& r : tensors) {
      bar.set_detail(r.path);
      stats.push_back(compute(*r.tensor));
      bar.advance(r.tensor->nbytes());
    }
    bar.finish();
  }

  if (json_out) {
    nlohmann::ordered_json out;
    out["file"] = path;
    out["format"] = std::string(format_name(l.format));
    auto& list = out["tensors"] = nlohmann::ordered_json::array();
    for (size_t i = 0; i < tensors.size(); ++i) {
      const Stats& s = stats[i];
      const bool have = s.numeric && s.finite > 0;
      nlohmann::ordered_json j;
      j["path"] = tensors[i].path;
      j["dtype"] = std::string(name(tensors[i].tensor->dtype()));
      j["shape"] = tensors[i].tensor->sizes();
      j["numel"] = s.numel;
      j["min"] = num(s.min, have);
      j["max"] = num(s.max, have);
      j["mean"] = num(s.mean, have);
      j["std"] = num(s.std(), have);
      j["nan"] = s.nan;
      j["inf"] = s.inf;
      j["zero_fraction"] = num(s.numel ? static_cast<double>(s.zeros) / static_cast<double>(s.numel) : 0.0,
                               s.numeric && s.numel > 0);
      list.push_back(std::move(j));
    }
    *json_out = std::move(out);
    return kExitOk;
  }

  if (header) std::printf("%s:\n", path.c_str());
  const bool color = use_color(stdout);
  const TensorColumns c = tensor_columns(tensors);
  std::printf("%-*s  %-*s  %-*s  %12s  %12s  %12s  %12s  %6s  %6s  %6s\n", c.path_width, "PATH", c.dtype_width,
              "DTYPE", c.shape_width, "SHAPE", "MIN", "MAX", "MEAN", "STD", "NAN", "INF", "ZERO%");
  uint64_t bad_tensors = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Stats& s = stats[i];
    const bool have = s.numeric && s.finite > 0;
    auto f = [&](double v) { return have ? format_number(v) : std::string("-"); };
    char zero[16] = "-";
    if (s.numeric && s.numel) std::snprintf(zero, sizeof zero, "%.1f", 100.0 * static_cast<double>(s.zeros) / static_cast<double>(s.numel));
    char nan_s[24], inf_s[24];
    std::snprintf(nan_s, sizeof nan_s, "%6s", thousands(s.nan).c_str());
    std::snprintf(inf_s, sizeof inf_s, "%6s", thousands(s.inf).c_str());
    if (s.nan || s.inf) ++bad_tensors;
    std::printf("%-*s  %-*s  %-*s  %12s  %12s  %12s  %12s  %s  %s  %6s\n", c.path_width, c.paths[i].c_str(),
                c.dtype_width, std::string(name(tensors[i].tensor->dtype())).c_str(), c.shape_width,
                c.shapes[i].c_str(), f(s.min).c_str(), f(s.max).c_str(), f(s.mean).c_str(),
                (have && s.finite > 1) ? format_number(s.std()).c_str() : "-",
                paint(nan_s, "31", color && s.nan).c_str(), paint(inf_s, "31", color && s.inf).c_str(), zero);
  }
  std::printf("%s tensors, %s; %s with NaN or Inf\n", thousands(tensors.size()).c_str(), human_bytes(total).c_str(),
              thousands(bad_tensors).c_str());
  return kExitOk;
}

int run_stats(const StatsArgs& a) {
  return report_files(a.files, a.json, [&](const std::string& f, nlohmann::ordered_json* j) {
    return run_stats_file(a, f, j, a.files.size() > 1);
  });
}

}  // namespace

void register_stats(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<StatsArgs>();
  CLI::App* cmd = app.add_subcommand("stats", "Per-tensor min, max, mean, std, NaN/Inf counts and zero fraction");
  cmd->add_option("FILE", args->files, "Checkpoint files")->required();
  cmd->add_option("--filter", args->filter, "Only tensors whose path matches this regular expression");
  cmd->add_flag("--json", args->json, "Machine-readable output");
  add_read_flags(cmd, args->read);
  cmd->callback([args, exit_code] { *exit_code = run_stats(*args); });
}

}  // namespace ckpt::cli
