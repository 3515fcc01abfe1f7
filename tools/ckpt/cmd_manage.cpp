// ckpt manage DIR [--verify] [--json] [--prune --keep-last N --keep-best K --metric M --mode min|max [--dry-run]]
// — a CheckpointManager directory: list it, check it, apply a retention policy.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "ckpt/error.hpp"
#include "ckpt/manager.hpp"
#include "commands.hpp"
#include "common.hpp"
#include "progress.hpp"

namespace ckpt::cli {
namespace {

struct ManageArgs {
  std::string dir;
  bool json = false;
  bool verify = false;
  bool prune = false;
  bool dry_run = false;
  size_t keep_last = 0;
  size_t keep_best = 0;
  std::string metric;
  std::string mode = "min";
};

std::string metrics_text(const Metrics& m) {
  std::string s;
  for (const auto& [k, v] : m) s += (s.empty() ? "" : " ") + k + "=" + format_number(v);
  return s.empty() ? "-" : s;
}

nlohmann::ordered_json info_json(const CheckpointInfo& c) {
  nlohmann::ordered_json j;
  j["step"] = c.step;
  j["file"] = c.file;
  auto& m = j["metrics"] = nlohmann::ordered_json::object();
  for (const auto& [k, v] : c.metrics) m[k] = std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(format_number(v));
  j["size"] = c.size;
  j["crc32"] = crc32_hex(c.crc32);
  j["pinned"] = c.pinned;
  j["valid"] = c.valid;
  if (!c.valid) j["problem"] = c.problem;
  return j;
}

int run_manage(const ManageArgs& a) {
  if (a.mode != "min" && a.mode != "max") throw Error("--mode must be 'min' or 'max', not '" + a.mode + "'");
  if (a.keep_best > 0 && a.metric.empty()) throw Error("--keep-best needs --metric NAME");
  if (a.prune && a.keep_last == 0 && a.keep_best == 0)
    throw Error("--prune needs a policy: --keep-last N and/or --keep-best K --metric NAME");
  if (a.dry_run && !a.prune) throw Error("--dry-run goes with --prune");
  if (!std::filesystem::is_directory(a.dir))
    throw IoError("'" + a.dir + "' is not a directory (ckpt manage reads a CheckpointManager directory)", ENOTDIR,
                  ErrorContext{a.dir});
  // A manager directory has a manifest once something was saved; one that a
  // CheckpointManager opened but never saved to holds only its lock file.
  const std::filesystem::path dir(a.dir);
  if (!std::filesystem::exists(dir / "manifest.json") && !std::filesystem::exists(dir / ".lock"))
    throw Error("'" + a.dir + "' has no manifest.json: not a CheckpointManager directory");

  ManagerOptions opts;
  opts.keep_last = a.keep_last;
  opts.keep_best = a.keep_best;
  opts.metric = a.metric;
  opts.mode = a.mode == "max" ? MetricMode::max : MetricMode::min;
  opts.read_only = !a.prune || a.dry_run;
  opts.log = [&](const std::string& line) { std::fprintf(stderr, "ckpt: %s: %s\n", a.dir.c_str(), line.c_str()); };
  CheckpointManager mgr(a.dir, opts);

  std::vector<CheckpointInfo> pruned;
  if (a.prune) pruned = mgr.prune({.dry_run = a.dry_run});
  std::vector<CheckpointInfo> list = mgr.list();
  if (a.verify) {
    uint64_t total = 0;
    for (const auto& c : list) total += c.valid ? c.size : 0;
    Progress bar("verify", total, Progress::Unit::bytes);
    list = mgr.verify([&](const CheckpointInfo& c, uint64_t bytes) {
      bar.set_detail(c.file);
      bar.advance(bytes);
    });
    bar.finish();
  }
  const auto latest = mgr.latest();
  std::optional<CheckpointInfo> best;
  if (!a.metric.empty()) best = mgr.best();
  uint64_t total = 0, invalid = 0;
  for (const auto& c : list) {
    total += c.size;
    invalid += !c.valid;
  }

  if (a.json) {
    nlohmann::ordered_json out;
    out["directory"] = a.dir;
    auto& arr = out["checkpoints"] = nlohmann::ordered_json::array();
    for (const auto& c : list) arr.push_back(info_json(c));
    out["total_bytes"] = total;
    out["latest"] = latest ? nlohmann::ordered_json(latest->file) : nlohmann::ordered_json(nullptr);
    if (!a.metric.empty()) out["best"] = best ? nlohmann::ordered_json(best->file) : nlohmann::ordered_json(nullptr);
    if (a.prune) {
      auto& p = out[a.dry_run ? "would_delete" : "deleted"] = nlohmann::ordered_json::array();
      for (const auto& c : pruned) p.push_back(info_json(c));
    }
    std::printf("%s\n", out.dump(2).c_str());
    return invalid && a.verify ? kExitNegative : kExitOk;
  }

  if (list.empty() && pruned.empty()) {  // opened by a CheckpointManager, never saved to: valid, and empty
    std::printf("0 checkpoints (nothing saved yet)\n");
    return kExitOk;
  }
  const bool color = use_color(stdout);
  for (const auto& c : pruned)
    std::printf("%s %s (step %lld, %s)\n", a.dry_run ? "would delete" : "deleted", c.file.c_str(),
                static_cast<long long>(c.step), human_bytes(c.size).c_str());
  size_t w_file = 4;
  for (const auto& c : list) w_file = std::max(w_file, c.file.size());
  std::printf("%10s  %-*s  %10s  %-5s  %s\n", "STEP", static_cast<int>(w_file), "FILE", "SIZE", "VALID", "METRICS");
  for (const auto& c : list) {
    std::string notes;
    if (latest && latest->file == c.file) notes += " (latest)";
    if (best && best->file == c.file) notes += " (best " + a.metric + ")";
    if (c.pinned) notes += " (pinned)";
    std::printf("%10lld  %-*s  %10s  %-5s  %s%s\n", static_cast<long long>(c.step), static_cast<int>(w_file),
                printable(c.file).c_str(), human_bytes(c.size).c_str(), c.valid ? "yes" : paint("NO", "31", color).c_str(),
                metrics_text(c.metrics).c_str(), notes.c_str());
    if (!c.valid) std::printf("%10s  %s\n", "", paint("problem: " + printable(c.problem), "31", color).c_str());
  }
  std::printf("%s checkpoints, %s%s%s\n", thousands(list.size()).c_str(), human_bytes(total).c_str(),
              invalid ? (", " + thousands(invalid) + " invalid").c_str() : "",
              a.verify ? (invalid ? "" : ", all CRCs match") : "");
  return invalid && a.verify ? kExitNegative : kExitOk;
}

}  // namespace

void register_manage(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<ManageArgs>();
  CLI::App* cmd = app.add_subcommand("manage", "List a CheckpointManager directory; prune it by a retention policy");
  cmd->add_option("DIR", args->dir, "Directory written by ckpt::CheckpointManager")->required();
  cmd->add_flag("--verify", args->verify, "Read every checkpoint and check its size and CRC-32 (exit 1 if one is damaged)");
  cmd->add_flag("--prune", args->prune, "Delete the checkpoints the policy below retires");
  cmd->add_flag("--dry-run", args->dry_run, "With --prune: list what would be deleted, delete nothing");
  cmd->add_option("--keep-last", args->keep_last, "Keep the N most recently saved checkpoints");
  cmd->add_option("--keep-best", args->keep_best, "Keep the K best checkpoints by --metric");
  cmd->add_option("--metric", args->metric, "Metric that --keep-best ranks by (and that marks the best)");
  cmd->add_option("--mode", args->mode, "min (lower is better, default) or max");
  cmd->add_flag("--json", args->json, "Machine-readable output");
  cmd->callback([args, exit_code] { *exit_code = run_manage(*args); });
}

}  // namespace ckpt::cli
