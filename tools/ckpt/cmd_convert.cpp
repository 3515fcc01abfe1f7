// ckpt convert IN OUT — re-save a checkpoint as torch zip, safetensors or a
// Hugging Face sharded set, optionally renaming, filtering and casting.
#include <sys/stat.h>

#include <cstdio>
#include <algorithm>
#include <optional>
#include <regex>

#include "progress.hpp"
#include "ckpt/distributed.hpp"
#include "ckpt/error.hpp"
#include "ckpt/inspect.hpp"
#include "ckpt/onnx.hpp"
#include "ckpt/open.hpp"
#include "ckpt/safetensors.hpp"
#include "ckpt/save.hpp"
#include "ckpt/sharded.hpp"
#include "commands.hpp"
#include "common.hpp"

namespace ckpt::cli {
namespace {

struct ConvertArgs {
  std::string in;
  std::string out;
  std::string to;  // "", "torch", "safetensors"
  std::string key;
  ReadFlags read;
  std::vector<std::string> rename;   // REGEX=REPLACEMENT
  std::vector<std::string> only;     // REGEX
  std::vector<std::string> exclude;  // REGEX
  std::string dtype;
  std::string max_shard_size;
  std::string onnx_template;  // --template: an exported .onnx whose weights are refreshed
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::regex compile(const std::string& pattern, const char* option) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw Error(std::string(option) + ": not a valid regular expression: '" + pattern + "' (" + e.what() + ")");
  }
}

// The state dict as the same kind of container the input had (dict or
// OrderedDict, with its _metadata when it had one), so an unchanged state
// dict is written exactly as torch.save wrote it.
Value like(const Value& root, const StateDict& sd) {
  const Dict& in = root.as_dict();
  Value out = in.ordered ? Value::ordered_dict() : Value::dict();
  Dict& d = out.as_dict();
  d.reserve(sd.size());
  for (const auto& [name, t] : sd) d.set(Value(name), Value(t));
  if (in.attributes.is_dict()) {  // BUILD state: {'_metadata': ...}, renamed by transform()
    Value attrs = Value::dict();
    for (const auto& [k, v] : in.attributes.as_dict())
      attrs.as_dict().set(k, k.is_string() && k.as_string() == "_metadata" ? sd.metadata : v);
    d.attributes = attrs;
  } else {
    d.attributes = in.attributes;
  }
  return out;
}

uint64_t tensor_bytes(const Value& root) {
  uint64_t n = 0;
  for_each_tensor(root, [&](const std::string&, const Tensor& t) { n += t.nbytes(); });
  return n;
}

struct RenameRule {
  std::regex pattern;
  std::string replacement;
};

// A flat name -> tensor view of the input: its state dict, or every tensor
// by path when `allow_paths`.
bool as_state_dict(const Value& root, StateDict& sd) {
  if (!root.is_dict()) return false;
  try {
    sd = StateDict::from_value(root);
    return !sd.empty() || root.as_dict().empty();
  } catch (const TypeError&) {
    return false;
  }
}

std::string apply_renames(const std::vector<RenameRule>& rules, const std::string& name) {
  std::string out = name;
  for (const auto& r : rules) out = std::regex_replace(out, r.pattern, r.replacement);
  return out;
}

// Renames (and re-keys `_metadata` the same way, as PyTorch's
// consume_prefix_in_state_dict_if_present does), filters and casts.
StateDict transform(const StateDict& in, const ConvertArgs& a, std::optional<DType> dtype) {
  std::vector<RenameRule> rules;
  for (const auto& r : a.rename) {
    auto eq = r.find('=');
    if (eq == std::string::npos || eq == 0)
      throw Error("--rename expects REGEX=REPLACEMENT (e.g. '^module\\.='), got '" + r + "'");
    rules.push_back({compile(r.substr(0, eq), "--rename"), r.substr(eq + 1)});
  }
  std::vector<std::regex> only, exclude;
  for (const auto& p : a.only) only.push_back(compile(p, "--only"));
  for (const auto& p : a.exclude) exclude.push_back(compile(p, "--exclude"));

  StateDict out;
  for (const auto& [name, t] : in) {
    if (!only.empty() && std::none_of(only.begin(), only.end(), [&](const std::regex& r) { return std::regex_search(name, r); }))
      continue;
    if (std::any_of(exclude.begin(), exclude.end(), [&](const std::regex& r) { return std::regex_search(name, r); }))
      continue;
    std::string new_name = apply_renames(rules, name);
    if (new_name.empty()) throw Error("--rename turns '" + name + "' into an empty name");
    if (out.contains(new_name))
      throw Error("--rename maps two tensors to '" + new_name + "' (one of them is '" + name + "')");
    Tensor tensor = t;
    if (dtype && info(t.dtype()).is_floating && t.dtype() != *dtype &&
        (t.dtype() == DType::float64 || t.dtype() == DType::float32 || t.dtype() == DType::float16 ||
         t.dtype() == DType::bfloat16))
      tensor = t.to(*dtype);
    out.set(std::move(new_name), std::move(tensor));
  }
  if (in.metadata.is_dict() && !rules.empty()) {
    Value meta = in.metadata.as_dict().ordered ? Value::ordered_dict() : Value::dict();
    for (const auto& [k, v] : in.metadata.as_dict()) {
      if (!k.is_string()) continue;
      // _metadata keys are module prefixes ("" for the root, "fc" for fc.*);
      // rename them as the names "<prefix>." would be renamed.
      std::string renamed = apply_renames(rules, k.as_string().empty() ? k.as_string() : k.as_string() + ".");
      if (!renamed.empty() && renamed.back() == '.') renamed.pop_back();
      if (!meta.as_dict().contains(Value(renamed))) meta.as_dict().set(Value(renamed), v);
    }
    out.metadata = meta;
  } else {
    out.metadata = in.metadata;
  }
  return out;
}

// convert NEW OUT.onnx --template MODEL.onnx: the template with its
// initializers' data replaced by the state dict's tensors of the same names.
int run_refresh_onnx(const ConvertArgs& a, const StateDict& sd, const std::string& from) {
  if (!a.max_shard_size.empty()) throw Error("--max-shard-size does not apply to ONNX output");
  OnnxRefreshResult r = refresh_onnx_weights(a.onnx_template, sd, a.out);
  if (r.replaced.empty())
    std::fprintf(stderr, "ckpt: warning: no initializer of %s is named like a tensor of %s; the weights are unchanged\n",
                 a.onnx_template.c_str(), a.in.c_str());
  if (!r.unused.empty()) {
    std::string list;
    for (size_t i = 0; i < r.unused.size() && i < 8; ++i) list += (i ? ", " : "") + r.unused[i];
    if (r.unused.size() > 8) list += ", ...";
    std::fprintf(stderr, "ckpt: note: %zu tensor(s) of %s name no initializer of the template: %s\n", r.unused.size(),
                 a.in.c_str(), list.c_str());
  }
  std::string what;
  for (size_t i = 0; i < r.written.size(); ++i) what += (i ? " + " : "") + r.written[i];
  std::fprintf(stderr, "ckpt: wrote %s (onnx from %s; %zu initializer(s) replaced)\n", what.c_str(), from.c_str(),
               r.replaced.size());
  return kExitOk;
}

int run_convert(const ConvertArgs& a) {
  const bool onnx_out = !a.onnx_template.empty() || a.to == "onnx" || ends_with(a.out, ".onnx");
  if (onnx_out && a.onnx_template.empty())
    throw Error("writing an ONNX model needs --template MODEL.onnx: the exported graph whose weights are replaced");
  if (onnx_out && !a.to.empty() && a.to != "onnx") throw Error("--template writes ONNX; --to " + a.to + " contradicts it");
  // --to dcp always writes a directory (an existing one too: an earlier
  // checkpoint there is replaced); otherwise a directory means a sharded set.
  const bool sharded_out =
      a.to != "dcp" && (!a.max_shard_size.empty() || is_directory(a.out) || ends_with(a.out, "/"));
  std::string to = onnx_out ? "onnx" : a.to;
  if (to.empty()) to = ends_with(a.out, ".safetensors") || sharded_out ? "safetensors" : "torch";
  if (to != "torch" && to != "safetensors" && to != "dcp" && to != "onnx")
    throw Error("--to must be 'torch', 'safetensors', 'dcp' or 'onnx' (with --template), not '" + to + "'");
  if (to == "dcp" && !a.max_shard_size.empty())
    throw Error("--max-shard-size does not apply to --to dcp (one data file per rank)");
  std::optional<DType> dtype;
  if (!a.dtype.empty()) {
    dtype = dtype_from_name(a.dtype);
    if (!dtype || !(*dtype == DType::float64 || *dtype == DType::float32 || *dtype == DType::float16 ||
                    *dtype == DType::bfloat16))
      throw Error("--dtype must be one of bfloat16, float16, float32, float64; got '" + a.dtype + "'");
  }
  const bool reshaping = !a.rename.empty() || !a.only.empty() || !a.exclude.empty();

  // Input: one file (any format), a sharded set (index), or a directory holding either.
  LoadOptions opts;
  opts.mmap = true;  // the writer reads straight from the mapping
  opts.weights_only = !a.read.objects;
  opts.numpy = a.read.numpy;
  LoadReport report;
  Value root = load(a.in, opts, report);
  const std::string from(format_name(report.format));
  if (!a.key.empty()) root = lookup(root, a.key);
  if (is_module_object(root)) root = module_state_dict(root).to_value();  // torch.save(model) + --objects

  StateDict sd;
  const bool flat = as_state_dict(root, sd);
  if (!flat && (reshaping || sharded_out))
    throw Error("--rename/--only/--exclude and sharded output work on a state dict, and " + a.in +
                " holds a checkpoint tree; select the state dict with --key (e.g. --key model)");
  if (flat) sd = transform(sd, a, dtype);
  if (onnx_out) {
    if (!flat) throw Error("--template needs a state dict, and " + a.in + " holds a checkpoint tree; select it with --key");
    return run_refresh_onnx(a, sd, from);
  }

  // Carry a safetensors input's metadata where the output can hold it.
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  if (report.format == Format::safetensors && !is_directory(a.in))
    for (const auto& [k, v] : safetensors_metadata(a.in))
      if (k != "ckpt.tree") metadata[k] = v;

  Progress bar("convert", flat ? sd.nbytes() : tensor_bytes(root), Progress::Unit::bytes);
  SaveOptions save_options;
  save_options.progress = [&bar](uint64_t n) { bar.advance(n); };
  std::string what;
  if (to == "dcp") {
    // A torch.distributed.checkpoint directory, as one rank saves it.
    save_distributed(a.out, flat ? like(root, sd) : root);
    what = a.out + " (.metadata + one data file)";
  } else if (sharded_out) {
    ShardOptions so;
    so.format = to == "torch" ? ShardFormat::torch : ShardFormat::safetensors;
    so.metadata = metadata;
    if (!a.max_shard_size.empty()) so.max_shard_size = parse_size(a.max_shard_size);
    if (so.format == ShardFormat::safetensors)
      for (const auto& [alias, kept] : remove_shared_tensors(sd))
        std::fprintf(stderr, kept.empty() ? "ckpt: note: '%s' overlaps another tensor's memory: stored as a copy\n"
                                          : "ckpt: note: '%s' is the same tensor as '%s': stored once, as '%s'\n",
                     alias.c_str(), kept.c_str(), kept.c_str());
    so.progress = save_options.progress;
    ShardedFiles files = save_sharded(a.out, sd, so);
    what = std::to_string(files.files.size()) + " shard(s)" + (files.index.empty() ? "" : " + " + files.index);
  } else if (to == "torch") {
    save(a.out, flat ? like(root, sd) : root, save_options);
    what = a.out;
  } else if (flat) {
    for (const auto& [alias, kept] : remove_shared_tensors(sd))
      std::fprintf(stderr, kept.empty() ? "ckpt: note: '%s' overlaps another tensor's memory: stored as a copy\n"
                                        : "ckpt: note: '%s' is the same tensor as '%s': stored once, as '%s'\n",
                   alias.c_str(), kept.c_str(), kept.c_str());
    save_safetensors(a.out, sd, metadata, save_options);
    what = a.out;
  } else {
    // A training checkpoint: tensors by path, the tree as JSON metadata.
    if (dtype) throw Error("--dtype works on a state dict; select one with --key");
    size_t aliases = save_safetensors_checkpoint(a.out, root, metadata, save_options);
    if (aliases > 0)
      std::fprintf(stderr, "ckpt: note: %zu tensor reference(s) share another's data: stored once\n", aliases);
    what = a.out + " (checkpoint tree in __metadata__[\"ckpt.tree\"])";
  }
  bar.finish();
  std::fprintf(stderr, "ckpt: wrote %s (%s from %s)\n", what.c_str(), to.c_str(), from.c_str());
  return kExitOk;
}

}  // namespace

void register_convert(CLI::App& app, int* exit_code) {
  auto args = std::make_shared<ConvertArgs>();
  CLI::App* cmd = app.add_subcommand(
      "convert", "Re-save a checkpoint as a torch zip file, safetensors, a sharded set, or a distributed checkpoint");
  cmd->add_option("IN", args->in, "Input: a checkpoint in any format ckpt reads, a shard index, a distributed checkpoint, or a directory")
      ->required();
  cmd->add_option("OUT", args->out,
                  "Output file (written atomically), or a directory for a sharded set (with --max-shard-size) or --to dcp")
      ->required();
  cmd->add_option("--to", args->to,
                  "Output format: torch, safetensors, dcp (a torch.distributed.checkpoint directory), or onnx (with --template) "
                  "(default: safetensors for *.safetensors and directories, onnx for *.onnx)");
  cmd->add_option("--key", args->key, "Convert only this '/'-separated path inside the checkpoint (e.g. model)");
  cmd->add_option("--rename", args->rename,
                  "REGEX=REPLACEMENT applied to every tensor name (repeatable; e.g. '^module\\.=' strips DDP prefixes)");
  cmd->add_option("--only", args->only, "Keep only tensors whose name matches REGEX (repeatable)");
  cmd->add_option("--exclude", args->exclude, "Drop tensors whose name matches REGEX (repeatable)");
  cmd->add_option("--dtype", args->dtype, "Cast floating tensors to bfloat16, float16, float32 or float64");
  cmd->add_option("--max-shard-size", args->max_shard_size,
                  "Write a Hugging Face sharded set into OUT (a directory) with shards of at most SIZE (e.g. 5GB)");
  cmd->add_option("--template", args->onnx_template,
                  "An exported ONNX model: OUT (.onnx) is this model with every initializer named like a tensor of IN "
                  "replaced by it (same dtype and shape); external data goes to OUT.data");
  add_read_flags(cmd, args->read);
  cmd->callback([args, exit_code] { *exit_code = run_convert(*args); });
}

}  // namespace ckpt::cli
