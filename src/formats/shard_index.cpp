#include "formats/shard_index.hpp"

#include <algorithm>
#include <cstring>
#include <optional>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "ckpt/error.hpp"
#include "io/file.hpp"

namespace ckpt::formats {
namespace {

// An index lists one line per tensor; 256 MiB is ~2 million tensors.
constexpr uint64_t kMaxIndexBytes = uint64_t{256} << 20;

bool valid_shard_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos &&
         s.find('\\') == std::string::npos && s.find('\0') == std::string::npos;
}


}  // namespace

// An error reading the file propagates: "cannot read" must not turn into
// "not an index" (and then "not a checkpoint format").
std::optional<std::string> shard_index_text(const io::RandomAccessFile& file) {
  if (file.size() > kMaxIndexBytes || file.size() < 2) return std::nullopt;
  char head[64] = {};
  size_t n = static_cast<size_t>(std::min<uint64_t>(file.size(), sizeof head));
  file.read_at(0, {reinterpret_cast<std::byte*>(head), n});
  size_t i = 0;
  while (i < n && (head[i] == ' ' || head[i] == '\n' || head[i] == '\r' || head[i] == '\t')) ++i;
  if (i == n || head[i] != '{') return std::nullopt;
  // JSON text holds no NUL; a safetensors file whose 8-byte header length
  // starts with 0x7b ('{') has NULs right after it.
  if (std::memchr(head, '\0', n) != nullptr) return std::nullopt;
  // Decided by the key, not by a successful parse, so that a damaged index
  // gets parse_shard_index's error (with its byte offset) rather than
  // "not a checkpoint format".
  std::string text = io::read_whole(file, kMaxIndexBytes);
  if (text.find("\"weight_map\"") == std::string::npos) return std::nullopt;
  return text;
}

ShardIndex parse_shard_index(const std::string& text, const std::string& path) {
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

}  // namespace ckpt::formats
