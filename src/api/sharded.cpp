// Hugging Face sharded sets: the index format, the writer, size parsing.
#include "ckpt/sharded.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "api/save_internal.hpp"
#include "ckpt/error.hpp"
#include "ckpt/safetensors.hpp"
#include "ckpt/save.hpp"
#include "io/file.hpp"

namespace fs = std::filesystem;

namespace ckpt {

uint64_t parse_size(std::string_view text) {
  std::string_view s = text;
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  size_t digits = 0;
  while (digits < s.size() && ((s[digits] >= '0' && s[digits] <= '9') || s[digits] == '.')) ++digits;
  const std::string number(s.substr(0, digits));
  std::string unit(s.substr(digits));
  while (!unit.empty() && unit.front() == ' ') unit.erase(0, 1);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double value = 0;
  auto [p, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
  static const std::pair<const char*, double> units[] = {
      {"", 1},           {"B", 1},           {"KB", 1e3},          {"MB", 1e6},          {"GB", 1e9},
      {"TB", 1e12},      {"KIB", 1024.0},    {"MIB", 1048576.0},   {"GIB", 1073741824.0}, {"TIB", 1099511627776.0},
      {"K", 1e3},        {"M", 1e6},         {"G", 1e9},           {"T", 1e12}};
  double scale = -1;
  for (const auto& [u, f] : units)
    if (unit == u) scale = f;
  if (number.empty() || ec != std::errc() || p != number.data() + number.size() || scale < 0 ||
      !std::isfinite(value * scale) || value * scale < 1 || value * scale > 1.8e19)
    throw TypeError("not a size: '" + std::string(text) + "' (examples: 5GB, 500MB, 10GiB, 1000000)");
  return static_cast<uint64_t>(value * scale);
}

ShardedFiles save_sharded(const std::string& dir, const StateDict& state_dict, const ShardOptions& options) {
  const bool st = options.format == ShardFormat::safetensors;
  const std::string prefix = !options.prefix.empty() ? options.prefix : st ? "model" : "pytorch_model";
  const std::string ext = st ? ".safetensors" : ".bin";
  if (options.max_shard_size == 0) throw TypeError("max_shard_size must be positive");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw IoError("cannot create the directory: " + ec.message(), ec.value(), ErrorContext{dir, "", std::nullopt});

  // Greedy packing in state-dict order, as transformers does. Bytes of a
  // storage shared by several tensors count once, in the first one's shard.
  std::vector<StateDict> shards;
  StateDict current;
  uint64_t current_size = 0, total = 0;
  std::unordered_set<const void*> counted;
  for (const auto& [name, t] : state_dict) {
    uint64_t size = t.nbytes();
    if (t.defined() && !counted.insert(t.storage().id()).second) size = 0;
    total += size;
    if (size > options.max_shard_size) {
      StateDict alone;
      alone.set(name, t);
      shards.push_back(std::move(alone));
      continue;
    }
    if (current_size + size > options.max_shard_size && !current.empty()) {
      shards.push_back(std::move(current));
      current = StateDict();
      current_size = 0;
    }
    current.set(name, t);
    current_size += size;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));

  ShardedFiles out;
  out.total_size = total;
  SaveOptions file_options;
  file_options.progress = options.progress;
  auto write_one = [&](const std::string& path, const StateDict& sd) {
    if (st) save_safetensors(path, sd, options.metadata, file_options);
    else save(path, sd.to_value(), file_options);
    out.files.push_back(path);
  };
  const fs::path base(dir);
  if (shards.size() == 1) {
    write_one((base / (prefix + ext)).string(), shards.front());
    return out;
  }
  nlohmann::json weight_map = nlohmann::json::object();  // sorted keys, as json.dumps(sort_keys=True)
  const size_t n = shards.size();
  for (size_t i = 0; i < n; ++i) {
    char suffix[64];
    std::snprintf(suffix, sizeof suffix, "-%05zu-of-%05zu", i + 1, n);
    const std::string file = prefix + suffix + ext;
    write_one((base / file).string(), shards[i]);
    for (const auto& [name, t] : shards[i]) weight_map[name] = file;
  }
  nlohmann::json index;
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = std::move(weight_map);
  const std::string text = index.dump(2, ' ', /*ensure_ascii=*/true) + "\n";  // json.dumps(indent=2, sort_keys=True)
  out.index = (base / (prefix + ext + ".index.json")).string();
  detail::write_file(io::default_env(), out.index, file_options, [&](io::WritableFile& f) {
    f.append({reinterpret_cast<const std::byte*>(text.data()), text.size()});
  });
  return out;
}

}  // namespace ckpt
