// ckpt convert IN OUT [--to torch|safetensors] — re-save a checkpoint.
#include <cstdio>

#include "api/open_internal.hpp"
#include "ckpt/error.hpp"
#include "ckpt/inspect.hpp"
#include "ckpt/safetensors.hpp"
#include "ckpt/save.hpp"
#include "commands.hpp"
#include "common.hpp"

namespace ckpt::cli {
namespace {

struct ConvertArgs {
  std::string in;
  std::string out;
  std::string to;  // "", "torch", "safetensors"
  std::string key;
  bool objects = false;
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int run_convert(const ConvertArgs& a) {
  std::string to = a.to;
  if (to.empty()) to = ends_with(a.out, ".safetensors") ? "safetensors" : "torch";
  if (to != "torch" && to != "safetensors")
    throw Error("--to must be 'torch' or 'safetensors', not '" + to + "'");
  LoadOptions opts;
  opts.mmap = true;  // the writer reads straight from the mapping
  opts.weights_only = !a.objects;
  Format format = Format::unknown;
  Value root = detail::load_file(detail::open_for_load(a.in, true), opts, &format, nullptr);
  if (!a.key.empty()) root = lookup(root, a.key);

  if (to == "torch") {
    save(a.out, root);
  } else {
    // safetensors holds flat name -> tensor maps: a state dict, or any tree
    // whose tensors are named by their '/'-joined paths.
    StateDict sd;
    if (root.is_dict()) {
      try {
        sd = StateDict::from_value(root);
      } catch (const TypeError&) {
        sd = StateDict();
      }
    }
    if (sd.empty()) for_each_tensor(root, [&](const std::string& path, const Tensor& t) { sd.set(path, t); });
    save_safetensors(a.out, sd, {{"format", "pt"}});
  }
  std::fprintf(stderr, "ckpt: wrote %s (%s from %s)\n", a.out.c_str(), to.c_str(),
               std::string(format_name(format)).c_str());
  return kExitOk;
}

}  // namespace

void register_convert(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<ConvertArgs>();
  CLI::App* cmd = app.add_subcommand("convert", "Re-save a checkpoint as a torch zip file or safetensors");
  cmd->add_option("IN", args->in, "Input checkpoint (any format ckpt reads)")->required();
  cmd->add_option("OUT", args->out, "Output file (written atomically)")->required();
  cmd->add_option("--to", args->to, "Output format: torch (default) or safetensors (default for *.safetensors)");
  cmd->add_option("--key", args->key, "Convert only this '/'-separated path inside the checkpoint (e.g. model)");
  cmd->add_flag("--objects", args->objects, "Admit non-allow-listed classes as inert objects when reading");
  cmd->callback([args, exit_code] { *exit_code = run_convert(*args); });
}

}  // namespace ckpt::cli
