// ckpt::load and ckpt::load_state_dict: a path resolved (resolve.hpp), then
// loaded by the loader core (formats/detect.hpp), ckpt::open's index reader
// (a shard index) or the DCP reader.
#include "ckpt/load.hpp"

#include <utility>

#include "api/open_internal.hpp"
#include "api/resolve.hpp"
#include "ckpt/error.hpp"
#include "formats/dcp_reader.hpp"
#include "formats/detect.hpp"
#include "io/file.hpp"

namespace ckpt {

Format detect_format(const std::string& path) { return formats::detect(io::open_file(path)); }

Format detect_format(std::span<const std::byte> bytes) { return formats::detect(io::memory_file(bytes)); }

namespace {

Value load_path(const std::string& path, const LoadOptions& options, LoadReport& out) {
  out = LoadReport{};
  const detail::Target target = detail::resolve(path, options.mmap);
  switch (target.kind) {
    case detail::Target::Kind::dcp:
      out.format = Format::dcp;
      out.files = target.dcp.files;
      out.file_bytes = target.dcp.file_bytes;
      return formats::dcp::Reader(target.dcp.dir, options, target.dcp.metadata_bytes).consolidate();
    case detail::Target::Kind::shard_index: {
      detail::ShardIndexLoad loaded = detail::load_shard_index(target, options);
      out.format = loaded.format;
      out.files = std::move(loaded.files);
      out.file_bytes = loaded.file_bytes;
      return std::move(loaded.state_dict);
    }
    case detail::Target::Kind::file:
      break;
  }
  out.files.push_back(target.path);
  out.file_bytes = target.file->size();
  return formats::load_any(target.file, options, &out.format, nullptr);
}

}  // namespace

Value load(const std::string& path, const LoadOptions& options) {
  LoadReport unused;
  return load_path(path, options, unused);
}

Value load(const std::string& path, const LoadOptions& options, LoadReport& report) {
  return load_path(path, options, report);
}

Value load(std::span<const std::byte> bytes, const LoadOptions& options) {
  // The caller owns the buffer; with mmap the tensors view it directly.
  return formats::load_any(io::memory_file(bytes), options, nullptr, nullptr);
}

// ---------------------------------------------------------------- state dicts

namespace {

// Candidate keys that hold a state dict inside a checkpoint dict.
std::string suggest_key(const Value& v) {
  if (!v.is_dict()) return "";
  for (const auto& [k, val] : v.as_dict()) {
    if (!k.is_string() || !val.is_dict() || val.as_dict().empty()) continue;
    bool all_tensors = true;
    for (const auto& [k2, v2] : val.as_dict()) all_tensors = all_tensors && v2.is_tensor();
    if (all_tensors) return k.as_string();
  }
  return "";
}

// `root` is the loader's tree, which nothing else holds: its tensors are
// moved into the state dict, not copied.
StateDict to_state_dict(Value root, const LoadOptions& options, const std::string& name) {
  Value v = options.key.empty() ? std::move(root) : lookup(root, options.key);
  if (is_module_object(v)) return module_state_dict(v);  // torch.save(model), weights_only=false
  try {
    return StateDict::from_value(std::move(v));
  } catch (const TypeError& e) {
    std::string where = options.key.empty() ? "the file" : "key '" + options.key + "'";
    std::string msg = "expected a state dict (a dict of tensors) but " + where + " holds " + describe(v);
    if (v.is_dict() && !v.as_dict().empty() && v.as_dict().begin()->second.is_tensor())
      msg = std::string(e.message());
    std::string key = suggest_key(v);
    if (!key.empty())
      msg += "; key '" + (options.key.empty() ? key : options.key + "/" + key) +
             "' holds a state dict (LoadOptions::key / --key)";
    throw TypeError(msg, ErrorContext{name, "", std::nullopt});
  }
}

}  // namespace

StateDict load_state_dict(const std::string& path, const LoadOptions& options) {
  return to_state_dict(load(path, options), options, path);
}

StateDict load_state_dict(std::span<const std::byte> bytes, const LoadOptions& options) {
  return to_state_dict(load(bytes, options), options, "<memory>");
}

}  // namespace ckpt
