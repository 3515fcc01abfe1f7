// ckpt info FILE [--json] — what a checkpoint is and holds.
#include <filesystem>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "ckpt/error.hpp"
#include "ckpt/inspect.hpp"
#include "ckpt/safetensors.hpp"
#include "commands.hpp"
#include "common.hpp"

namespace ckpt::cli {
namespace {

struct InfoArgs {
  std::vector<std::string> files;
  bool json = false;
  bool numpy = false;
};

// What the records say about the writer.
std::string writer_guess(Format format, const nlohmann::ordered_json& records) {
  if (format == Format::torch_legacy) return "torch < 1.6, or _use_new_zipfile_serialization=False";
  if (format == Format::torch_tar) return "torch 0.1.x";
  if (format == Format::torchscript) return "torch.jit.save / LibTorch";
  if (format == Format::torch_zip) {
    if (records.contains(".format_version")) return "torch >= 2.4 (no exact version is recorded)";
    if (records.contains(".data/serialization_id")) return "torch >= 2.2 (no exact version is recorded)";
    return "torch >= 1.6 (no exact version is recorded)";
  }
  return "";
}

// Keys training scripts use for bookkeeping values worth showing.
bool is_metadata_key(const std::string& k) {
  static const char* keys[] = {"epoch", "step", "global_step", "iteration", "best_val", "best_acc", "best_loss",
                               "val_loss", "loss", "accuracy", "lr", "pytorch-lightning_version", "version"};
  for (const char* m : keys)
    if (k == m) return true;
  return k.rfind("best", 0) == 0;
}

std::string type_summary(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Dict: return (v.as_dict().ordered ? "OrderedDict(" : "dict(") + thousands(v.as_dict().size()) + " keys)";
    case Value::Kind::List: return "list(" + thousands(v.as_list().size()) + ")";
    case Value::Kind::Tuple: return "tuple(" + thousands(v.as_tuple().size()) + ")";
    case Value::Kind::Tensor: return "Tensor " + std::string(name(v.as_tensor().dtype())) + " " + format_shape(v.as_tensor().sizes());
    case Value::Kind::Object: return "object " + v.as_object().qualified();
    default: return std::string(v.kind_name());
  }
}

int run_info_file(const InfoArgs& a, const std::string& path, nlohmann::ordered_json* json_out) {
  // A directory (a torch.distributed.checkpoint: consolidated; or one holding a checkpoint
  // or a shard index) reports the bytes of every file read.
  LoadOptions opts;
  opts.mmap = true;
  opts.weights_only = true;
  opts.numpy = a.numpy;
  std::string unsafe_reason;
  LoadReport report;
  Value root;
  try {
    root = load(path, opts, report);
  } catch (const UnsafeError& e) {
    unsafe_reason = e.message();
    opts.weights_only = false;  // inspect: unknown classes become inert objects
    root = load(path, opts, report);
  }
  const Format format = report.format;
  const uint64_t file_bytes = report.file_bytes;

  uint64_t count = 0, total = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> by_dtype;  // dtype -> (tensors, bytes)
  std::map<const void*, bool> storages;
  uint64_t storage_bytes = 0;
  for_each_tensor(root, [&](const std::string&, const Tensor& t) {
    ++count;
    total += t.nbytes();
    auto& h = by_dtype[std::string(name(t.dtype()))];
    ++h.first;
    h.second += t.nbytes();
    if (storages.emplace(t.storage().id(), true).second) storage_bytes += t.storage().nbytes();
  });

  nlohmann::ordered_json out;
  out["file"] = path;
  out["format"] = std::string(format_name(format));
  nlohmann::ordered_json records = nlohmann::ordered_json::object();
  if (format == Format::torch_zip || format == Format::torchscript)
    for (auto& [k, v] : archive_records(report.files.front())) records[k] = std::move(v);
  if (!records.empty()) out["records"] = records;
  if (const std::string w = writer_guess(format, records); !w.empty()) out["writer"] = w;
  if (format == Format::safetensors) out["safetensors_metadata"] = safetensors_metadata(path);
  out["file_bytes"] = file_bytes;
  out["tensors"] = count;
  out["tensor_bytes"] = total;
  out["storages"] = storages.size();
  out["storage_bytes"] = storage_bytes;
  auto& hist = out["dtypes"] = nlohmann::ordered_json::object();
  for (const auto& [d, h] : by_dtype) hist[d] = {{"tensors", h.first}, {"bytes", h.second}};
  auto& keys = out["top_level"] = nlohmann::ordered_json::array();
  auto& meta = out["metadata"] = nlohmann::ordered_json::object();
  if (root.is_dict()) {
    for (const auto& [k, v] : root.as_dict()) {
      keys.push_back({{"key", path_component(k)}, {"type", type_summary(v)}});
      if (k.is_string() && is_metadata_key(k.as_string())) {
        if (v.is_int() || v.is_bool()) meta[k.as_string()] = v.as_int();
        else if (v.is_float()) meta[k.as_string()] = v.as_float();
        else if (v.is_string()) meta[k.as_string()] = v.as_string();
      }
    }
  } else {
    keys.push_back({{"key", ""}, {"type", type_summary(root)}});
  }
  out["weights_only_safe"] = unsafe_reason.empty();
  if (!unsafe_reason.empty()) out["unsafe_reason"] = unsafe_reason;

  if (a.json) {
    *json_out = std::move(out);
    return kExitOk;
  }
  std::printf("file:        %s (%s bytes)\n", path.c_str(), thousands(file_bytes).c_str());
  std::printf("format:      %s\n", std::string(format_name(format)).c_str());
  if (out.contains("writer")) std::printf("writer:      %s\n", out["writer"].get<std::string>().c_str());
  if (!records.empty()) {
    std::string r;
    for (const auto& [k, v] : records.items()) r += (r.empty() ? "" : ", ") + k + "=" + v.get<std::string>();
    std::printf("records:     %s\n", r.c_str());
  }
  if (out.contains("safetensors_metadata")) {
    std::printf("metadata (safetensors header):\n");
    for (const auto& [k, v] : out["safetensors_metadata"].items())
      std::printf("  %-30s %s\n", nlohmann::json(k).dump().c_str(), v.dump().c_str());
  }
  std::printf("tensors:     %s, %s (%s storages, %s)\n", thousands(count).c_str(), human_bytes(total).c_str(),
              thousands(storages.size()).c_str(), human_bytes(storage_bytes).c_str());
  for (const auto& [d, h] : by_dtype)
    std::printf("  %-16s %10s tensors  %12s\n", d.c_str(), thousands(h.first).c_str(), human_bytes(h.second).c_str());
  std::printf("top level:\n");
  for (const auto& k : keys)
    std::printf("  %-30s %s\n", printable(k["key"].get<std::string>()).c_str(),
                printable(k["type"].get<std::string>()).c_str());
  if (!meta.empty()) {
    std::printf("metadata:\n");
    for (const auto& [k, v] : meta.items()) std::printf("  %-30s %s\n", printable(k).c_str(), v.dump().c_str());
  }
  std::printf("weights-only safe: %s\n", unsafe_reason.empty() ? "yes" : ("no: " + unsafe_reason).c_str());
  return kExitOk;
}

int run_info(const InfoArgs& a) {
  return report_files(a.files, a.json,
                      [&](const std::string& f, nlohmann::ordered_json* j) { return run_info_file(a, f, j); });
}

}  // namespace

void register_info(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<InfoArgs>();
  CLI::App* cmd = app.add_subcommand("info", "Format, size, dtypes, top-level keys and safety of a checkpoint");
  cmd->add_option("FILE", args->files, "Checkpoint files")->required();
  cmd->add_flag("--json", args->json, "Machine-readable output");
  add_numpy_flag(cmd, args->numpy);
  cmd->callback([args, exit_code] { *exit_code = run_info(*args); });
}

}  // namespace ckpt::cli
