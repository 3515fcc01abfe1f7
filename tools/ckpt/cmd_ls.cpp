// ckpt ls FILE [--json] [--digest] — list the tensors of a checkpoint.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "ckpt/error.hpp"
#include "ckpt/inspect.hpp"
#include "commands.hpp"
#include "common.hpp"

namespace ckpt::cli {
namespace {

struct LsArgs {
  std::vector<std::string> files;
  bool json = false;
  bool digest = false;
  ReadFlags read;
  bool tree = false;
  std::string filter;
};

// Prints paths as an indented tree of their '/' and '.' components.
void print_tree(const std::vector<TensorRef>& tensors) {
  std::vector<std::string> open;  // components of the previous path
  for (const auto& r : tensors) {
    std::vector<std::string> parts;
    std::string cur;
    for (char c : r.path) {
      if (c == '/' || c == '.') {
        parts.push_back(cur);
        cur.clear();
      } else {
        cur += c;
      }
    }
    parts.push_back(cur);
    size_t common = 0;
    while (common + 1 < parts.size() && common < open.size() && open[common] == parts[common]) ++common;
    for (size_t i = common; i + 1 < parts.size(); ++i)
      std::printf("%*s%s/\n", static_cast<int>(2 * i), "", printable(parts[i]).c_str());
    const Tensor& t = *r.tensor;
    std::printf("%*s%s  %s %s  %s\n", static_cast<int>(2 * (parts.size() - 1)), "", printable(parts.back()).c_str(),
                std::string(name(t.dtype())).c_str(), format_shape(t.sizes()).c_str(), human_bytes(t.nbytes()).c_str());
    parts.pop_back();
    open = std::move(parts);
  }
}

// Lists one file. With --json, `json_out` collects the JSON object (with a
// "file" key when there are several files); with several files the table
// gets a "FILE:" heading.
int run_ls_file(const LsArgs& a, const std::string& path, nlohmann::ordered_json* json_out) {
  const bool several = a.files.size() > 1;
  const Loaded loaded = load_checkpoint(path, a.read);
  const Format format = loaded.format;
  const Value& root = loaded.root;

  const std::vector<TensorRef> tensors = select_tensors(root, compile_filter(a.filter));
  if (several && !a.json) std::printf("%s:\n", path.c_str());
  if (a.tree && !a.json) {
    print_tree(tensors);
    return kExitOk;
  }

  if (a.json) {
    nlohmann::ordered_json out;
    if (several) out["file"] = path;
    out["format"] = std::string(format_name(format));
    auto& list = out["tensors"] = nlohmann::ordered_json::array();
    for (const auto& r : tensors) {
      nlohmann::ordered_json t;
      t["path"] = r.path;
      t["dtype"] = std::string(name(r.tensor->dtype()));
      t["shape"] = r.tensor->sizes();
      t["device"] = r.tensor->device();
      if (a.digest) t["sha256"] = tensor_sha256(*r.tensor);
      if (const Quantization* q = r.tensor->quantization()) {
        auto& j = t["quantization"] = {{"scheme", q->scheme}};
        if (q->per_channel()) {
          j["axis"] = q->axis;
          if (a.digest) {
            j["scales_sha256"] = tensor_sha256(q->scales);
            j["zero_points_sha256"] = tensor_sha256(q->zero_points);
          }
        } else {
          j["scale"] = q->scale;
          j["zero_point"] = q->zero_point;
        }
      }
      list.push_back(std::move(t));
    }
    *json_out = std::move(out);
    return kExitOk;
  }

  const TensorColumns c = tensor_columns(tensors);
  std::printf("%-*s  %-*s  %-*s  %10s  %s%s\n", c.path_width, "PATH", c.dtype_width, "DTYPE", c.shape_width,
              "SHAPE", "SIZE", "DEVICE", a.digest ? "  SHA256" : "");
  const uint64_t total = total_nbytes(tensors);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = *tensors[i].tensor;
    std::printf("%-*s  %-*s  %-*s  %10s  %s%s%s\n", c.path_width, c.paths[i].c_str(), c.dtype_width,
                std::string(name(t.dtype())).c_str(), c.shape_width, c.shapes[i].c_str(),
                human_bytes(t.nbytes()).c_str(), t.device().c_str(), a.digest ? "  " : "",
                a.digest ? tensor_sha256(t).c_str() : "");
  }
  std::printf("%s tensors, %s (%s bytes), format %s\n", thousands(tensors.size()).c_str(),
              human_bytes(total).c_str(), thousands(total).c_str(), std::string(format_name(format)).c_str());
  return kExitOk;
}

int run_ls(const LsArgs& a) {
  return report_files(a.files, a.json,
                      [&](const std::string& f, nlohmann::ordered_json* j) { return run_ls_file(a, f, j); });
}

}  // namespace

void register_ls(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<LsArgs>();
  CLI::App* cmd = app.add_subcommand("ls", "List the tensors of a checkpoint");
  cmd->add_option("FILE", args->files, "Checkpoint files")->required();
  cmd->add_flag("--json", args->json, "Machine-readable output");
  cmd->add_flag("--digest", args->digest, "Add the sha256 of each tensor's row-major bytes");
  cmd->add_flag("--tree", args->tree, "Show the tensors as a tree of their path components");
  cmd->add_option("--filter", args->filter, "Only tensors whose path matches this regular expression");
  add_read_flags(cmd, args->read);
  cmd->callback([args, exit_code] { *exit_code = run_ls(*args); });
}

}  // namespace ckpt::cli
