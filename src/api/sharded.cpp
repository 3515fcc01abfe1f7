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
#include "api/sharded_internal.hpp"
#include "ckpt/error.hpp"
#include "ckpt/safetensors.hpp"
#include "ckpt/save.hpp"
#include "io/file.hpp"

namespace fs = std::filesystem;

namespace ckpt {
namespace detail {
namespace {

// An index lists one line per tensor; 256 MiB is ~2 million tensors.
constexpr uint64_t kMaxIndexBytes = uint64_t{256} << 20;

std::string read_small_file(const std::string& path, uint64_t limit) {
  auto file = io::open_file(path);
  if (file->size() > limit)
    throw LimitError("index file is " + std::to_string(file->size()) + " bytes; the limit is " +
                         std::to_string(limit),
                     ErrorContext{path, "", std::nullopt});
  std::string text(static_cast<size_t>(file->size()), '\0');
  file->read_at(0, {reinterpret_cast<std::byte*>(text.data()), text.size()});
  return text;
}

bool valid_shard_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos &&
         s.find('\\') == std::string::npos && s.find('\0') == std::string::npos;
}

bool has_suffix(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

// An error reading the file propagates: "cannot read" must not turn into
// "not an index" (and then "not a checkpoint format").
bool is_shard_index(const std::string& path) {
  auto file = io::open_file(path);
  if (file->size() > kMaxIndexBytes || file->size() < 2) return false;
  char head[64] = {};
  size_t n = static_cast<size_t>(std::min<uint64_t>(file->size(), sizeof head));
  file->read_at(0, {reinterpret_cast<std::byte*>(head), n});
  size_t i = 0;
  while (i < n && (head[i] == ' ' || head[i] == '\n' || head[i] == '\r' || head[i] == '\t')) ++i;
  if (i == n || head[i] != '{') return false;
  // JSON text holds no NUL; a safetensors file whose 8-byte header length
  // starts with 0x7b ('{') has NULs right after it.
  if (std::memchr(head, '\0', n) != nullptr) return false;
  // Decided by the key, not by a successful parse, so that a damaged index
  // gets read_shard_index's error (with its byte offset) rather than
  // "not a checkpoint format".
  std::string text = read_small_file(path, kMaxIndexBytes);
  return text.find("\"weight_map\"") != std::string::npos;
}

ShardIndex read_shard_index(const std::string& path) {
  std::string text = read_small_file(path, kMaxIndexBytes);
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw FormatError(std::string("index is not valid JSON: ") + e.what(),
                      ErrorContext{path, "", static_cast<uint64_t>(e.byte)});
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw FormatError("index has no \"weight_map\" object", ErrorContext{path, "", std::nullopt});
  ShardIndex out;
  std::unordered_set<std::string> seen;
  for (const auto& [name, shard] : j["weight_map"].items()) {
    if (!shard.is_string())
      throw FormatError("weight_map entry is not a file name", ErrorContext{path, name, std::nullopt});
    const std::string file = shard.get<std::string>();
    if (!valid_shard_name(file))
      throw FormatError("weight_map names shard '" + file + "', which is not a plain file name in the index's folder",
                        ErrorContext{path, name, std::nullopt});
    if (seen.insert(file).second) out.shards.push_back(file);
    out.weight_map.emplace_back(name, file);
  }
  if (j.contains("metadata") && j["metadata"].is_object()) {
    for (const auto& [k, v] : j["metadata"].items())
      out.metadata[k] = v.is_string() ? v.get<std::string>() : v.dump();
  }
  return out;
}

std::string find_checkpoint_in_dir(const std::string& dir) {
  std::vector<std::string> indexes, files;
  for (const io::DirEntry& entry : io::list_dir(dir)) {
    if (!entry.regular) continue;
    const std::string& name = entry.name;
    if (has_suffix(name, ".index.json")) indexes.push_back((fs::path(dir) / name).string());
    else if (has_suffix(name, ".safetensors") || has_suffix(name, ".bin") || has_suffix(name, ".pt") ||
             has_suffix(name, ".pth") || has_suffix(name, ".ckpt"))
      files.push_back((fs::path(dir) / name).string());
  }
  std::sort(indexes.begin(), indexes.end());
  std::sort(files.begin(), files.end());
  if (indexes.size() == 1) return indexes.front();
  if (indexes.size() > 1)
    throw IoError("the directory holds several shard indexes (" + indexes[0] + ", " + indexes[1] +
                      "); open one of them",
                  0, ErrorContext{dir, "", std::nullopt});
  if (files.size() == 1) return files.front();
  if (files.empty())
    throw IoError("the directory holds no checkpoint (no *.index.json, *.safetensors, *.bin, *.pt, *.pth, *.ckpt)",
                  0, ErrorContext{dir, "", std::nullopt});
  throw IoError("the directory holds " + std::to_string(files.size()) + " checkpoint files and no index (" +
                    files[0] + ", " + files[1] + ", ...); open one of them",
                0, ErrorContext{dir, "", std::nullopt});
}

}  // namespace detail

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
  return detail::save_sharded(io::Env::posix(), dir, state_dict, options);
}

ShardedFiles detail::save_sharded(io::Env& env, const std::string& dir, const StateDict& state_dict,
                                  const ShardOptions& options) {
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
  auto write_one = [&](const std::string& path, const StateDict& sd) {
    if (st) detail::save_safetensors(env, path, sd, options.metadata);
    else detail::save(env, path, sd.to_value(), SaveOptions{});
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
  io::write_atomically(env, out.index, [&](io::WritableFile& f) {
    f.append({reinterpret_cast<const std::byte*>(text.data()), text.size()});
  });
  return out;
}

}  // namespace ckpt
