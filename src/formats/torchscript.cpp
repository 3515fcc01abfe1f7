#include "formats/torchscript.hpp"

#include <unordered_map>

#include "ckpt/error.hpp"
#include "formats/torch_zip.hpp"

namespace ckpt::formats {
namespace {

constexpr std::string_view kTorchModule = "__torch__";
constexpr size_t kMaxCodeRecord = size_t{64} << 20;  // class sources are kilobytes
// module.state_dict() walks every path to every submodule, as torch does: a
// module shared twice is listed twice. A pickle can share modules so that
// the paths number 2^depth, so the walk is bounded: modules visited (a large
// real model has ~10^4) and bytes of the key prefixes built on the way.
constexpr size_t kMaxModuleVisits = size_t{1} << 18;
constexpr size_t kMaxStateKeyBytes = size_t{256} << 20;

bool is_torchscript_class(std::string_view module) {
  return module == kTorchModule || module.starts_with("__torch__.");
}

struct ClassInfo {
  bool found = false;
  std::vector<std::string> parameters;
  std::vector<std::string> buffers;
};

// Parses `["a", "b", ]` into its strings.
std::vector<std::string> parse_name_list(std::string_view line) {
  std::vector<std::string> out;
  size_t p = 0;
  while ((p = line.find('"', p)) != std::string_view::npos) {
    size_t q = line.find('"', p + 1);
    if (q == std::string_view::npos) break;
    out.emplace_back(line.substr(p + 1, q - p - 1));
    p = q + 1;
  }
  return out;
}

class ClassSources {
 public:
  ClassSources(const zip::ZipReader& zip, std::string prefix) : zip_(zip), prefix_(std::move(prefix)) {}

  const ClassInfo& get(const std::string& module, const std::string& name) {
    std::string key = module + "." + name;
    auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    ClassInfo info;
    std::string path = prefix_ + "/code/" + module;
    for (auto& c : path)
      if (c == '.') c = '/';
    path += ".py";
    if (const zip::Entry* e = zip_.find(path); e && e->uncompressed_size <= kMaxCodeRecord) {
      std::string src = zip_.read_string(*e);
      std::string header = "class " + name + "(";
      size_t pos = 0;
      while ((pos = src.find(header, pos)) != std::string::npos) {
        if (pos == 0 || src[pos - 1] == '\n') break;
        pos += header.size();
      }
      if (pos != std::string::npos) {
        info.found = true;
        size_t line_start = src.find('\n', pos);
        while (line_start != std::string::npos) {
          size_t line_end = src.find('\n', line_start + 1);
          std::string_view line(src.data() + line_start + 1,
                                (line_end == std::string::npos ? src.size() : line_end) - line_start - 1);
          if (!line.empty() && line[0] != ' ') break;  // end of the class body
          if (line.starts_with("  __parameters__ = ")) info.parameters = parse_name_list(line);
          if (line.starts_with("  __buffers__ = ")) info.buffers = parse_name_list(line);
          line_start = line_end;
        }
      }
    }
    return cache_.emplace(key, std::move(info)).first->second;
  }

 private:
  const zip::ZipReader& zip_;
  std::string prefix_;
  std::unordered_map<std::string, ClassInfo> cache_;
};

// module.state_dict(): each module's parameters, then its buffers, then its
// children in attribute order. None entries (bias=False) are skipped, as
// Python skips them.
struct StateWalk {
  size_t modules = 0;
  size_t key_bytes = 0;
};

void collect_state(const Value& module, const std::string& prefix, ClassSources& sources, StateDict& out,
                   int depth, StateWalk& walk) {
  if (depth > 1000) throw FormatError("TorchScript module nesting is too deep");
  walk.key_bytes += prefix.size();
  if (++walk.modules > kMaxModuleVisits || walk.key_bytes > kMaxStateKeyBytes)
    throw LimitError("the TorchScript module tree reaches shared submodules through more than " +
                     std::to_string(kMaxModuleVisits) + " paths (or " + std::to_string(kMaxStateKeyBytes >> 20) +
                     " MiB of names); refusing to build its state dict");
  const Object& o = module.as_object();
  if (!o.state.is_dict()) return;
  const Dict& attrs = o.state.as_dict();
  const ClassInfo& cls = sources.get(o.module, o.name);
  auto add = [&](const std::string& attr, bool is_param) {
    const Value* v = attrs.find(Value(attr));
    if (v == nullptr || !v->is_tensor()) return;
    // As module.state_dict(): detached tensors, not Parameters.
    Tensor t = v->as_tensor();
    t.set_is_parameter(false);
    t.set_requires_grad(false);
    (void)is_param;
    out.set(prefix + attr, std::move(t));
  };
  if (cls.found) {
    for (const auto& p : cls.parameters) add(p, true);
    for (const auto& b : cls.buffers) add(b, false);
  } else {
    // No source for this class: every tensor attribute is state.
    for (const auto& [k, v] : attrs)
      if (k.is_string() && v.is_tensor()) add(k.as_string(), false);
  }
  for (const auto& [k, v] : attrs) {
    if (!k.is_string() || !v.is_object()) continue;
    if (!is_torchscript_class(v.as_object().module)) continue;
    collect_state(v, prefix + k.as_string() + ".", sources, out, depth + 1, walk);
  }
}

}  // namespace

TorchScriptModule read_torchscript(const zip::ZipReader& zip, const LoadOptions& options,
                                   pickle::Observer* observer) {
  TorchZipInfo info = inspect_torch_zip(zip);
  const std::string& file = zip.file().name();
  if (!info.torchscript) throw FormatError("not a TorchScript archive (no constants.pkl)", {file});
  if (zip.find_torch(info.prefix + "/data.pkl") == nullptr) {
    if (zip.find_torch(info.prefix + "/bytecode.pkl") != nullptr)
      throw UnsupportedError("this is a lite-interpreter (mobile) archive with only bytecode.pkl", {file});
    throw FormatError("TorchScript archive has no data.pkl", {file});
  }
  auto accept = [](std::string_view module, std::string_view name) {
    return is_torchscript_class(module) || is_jit_container_wrapper(module, name);
  };
  // Module objects are inert by construction; the allow-list still applies to
  // everything else (an os.system in a TorchScript pickle is refused).
  LoadOptions opts = options;
  TorchScriptModule m;
  m.root = unwrap_jit_containers(unpickle_record(zip, info, "data.pkl", "data", opts, observer, accept));
  const std::string constants_dir = zip.find_torch(info.prefix + "/constants.pkl") ? "constants" : "data";
  m.constants = unwrap_jit_containers(unpickle_record(zip, info, "constants.pkl", constants_dir, opts, observer, accept));
  if (m.root.is_object()) {
    ClassSources sources(zip, info.prefix);
    StateWalk walk;
    collect_state(m.root, "", sources, m.state_dict, 0, walk);
  }
  return m;
}

Value load_torchscript(const zip::ZipReader& zip, const LoadOptions& options, pickle::Observer* observer) {
  TorchScriptModule m = read_torchscript(zip, options, observer);
  if (options.weights_only) return m.state_dict.to_value();
  Value out = Value::dict();
  out.as_dict().set(Value("state_dict"), m.state_dict.to_value());
  out.as_dict().set(Value("module"), m.root);
  out.as_dict().set(Value("constants"), m.constants);
  return out;
}

}  // namespace ckpt::formats
