#include "manager/manifest.hpp"

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "ckpt/error.hpp"
#include "core/hex.hpp"

namespace ckpt::manager {
namespace {

constexpr const char* kFormatTag = "ckpt-manager-manifest";

nlohmann::json metric_to_json(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

bool metric_from_json(const nlohmann::json& j, double& out) {
  if (j.is_number()) {
    out = j.get<double>();
    return true;
  }
  if (j.is_string()) {
    const auto& s = j.get_ref<const std::string&>();
    if (s == "nan") out = std::nan("");
    else if (s == "inf") out = HUGE_VAL;
    else if (s == "-inf") out = -HUGE_VAL;
    else return false;
    return true;
  }
  return false;
}

bool parse_hex32(const std::string& s, uint32_t& out) {
  if (s.size() != 8) return false;
  uint32_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return false;
    v = v << 4 | static_cast<uint32_t>(d);
  }
  out = v;
  return true;
}

}  // namespace

}  // namespace ckpt::manager

namespace ckpt::manager {

bool is_safe_checkpoint_name(const std::string& name) {
  if (name.empty() || name[0] == '.' || name.size() > 255) return false;
  if (name.find('/') != std::string::npos || name.find('\0') != std::string::npos) return false;
  return name != kManifestName && name != kPointerName;
}

std::string serialize_manifest(const std::vector<CheckpointInfo>& entries) {
  nlohmann::json root;
  root["format"] = kFormatTag;
  root["version"] = kManifestVersion;
  nlohmann::json list = nlohmann::json::array();
  for (const CheckpointInfo& e : entries) {
    nlohmann::json m = nlohmann::json::object();
    for (const auto& [k, v] : e.metrics) m[k] = metric_to_json(v);
    list.push_back({{"file", e.file},
                    {"step", e.step},
                    {"metrics", std::move(m)},
                    {"size", e.size},
                    {"crc32", hex32(e.crc32)},
                    {"pinned", e.pinned}});
  }
  root["checkpoints"] = std::move(list);
  return root.dump(1) + "\n";
}

std::vector<CheckpointInfo> parse_manifest(const std::string& text, std::vector<std::string>& skipped) {
  nlohmann::json root = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) throw FormatError("manifest is not valid JSON", ErrorContext{kManifestName});
  if (!root.is_object() || !root.contains("format") || root["format"] != kFormatTag)
    throw FormatError(std::string("not a checkpoint manifest (no \"format\": \"") + kFormatTag + "\")",
                      ErrorContext{kManifestName});
  const nlohmann::json version = root.contains("version") ? root["version"] : nlohmann::json();
  if (!version.is_number_integer() || version.get<int64_t>() < 1)
    throw FormatError("manifest has no valid \"version\"", ErrorContext{kManifestName});
  if (version.get<int64_t>() > kManifestVersion)
    throw UnsupportedError("manifest version " + std::to_string(version.get<int64_t>()) +
                               " is newer than this ckpt understands (" + std::to_string(kManifestVersion) +
                               "); upgrade ckpt",
                           ErrorContext{kManifestName});
  const nlohmann::json list = root.contains("checkpoints") ? root["checkpoints"] : nlohmann::json();
  if (!list.is_array()) throw FormatError("manifest has no \"checkpoints\" list", ErrorContext{kManifestName});

  std::vector<CheckpointInfo> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& j = list[i];
    std::string where = "manifest entry " + std::to_string(i);
    if (!j.is_object()) {
      skipped.push_back(where + ": not an object");
      continue;
    }
    CheckpointInfo e;
    if (!j.contains("file") || !j["file"].is_string() ||
        !is_safe_checkpoint_name(j["file"].get<std::string>())) {
      skipped.push_back(where + ": missing or unsafe \"file\"");
      continue;
    }
    e.file = j["file"].get<std::string>();
    where += " ('" + e.file + "')";
    if (!j.contains("step") || !j["step"].is_number_integer()) {
      skipped.push_back(where + ": missing \"step\"");
      continue;
    }
    e.step = j["step"].get<int64_t>();
    if (!j.contains("size") || !j["size"].is_number_unsigned()) {
      skipped.push_back(where + ": missing \"size\"");
      continue;
    }
    e.size = j["size"].get<uint64_t>();
    if (!j.contains("crc32") || !j["crc32"].is_string() ||
        !parse_hex32(j["crc32"].get<std::string>(), e.crc32)) {
      skipped.push_back(where + ": missing \"crc32\"");
      continue;
    }
    if (j.contains("metrics")) {
      const auto& m = j["metrics"];
      if (!m.is_object()) {
        skipped.push_back(where + ": \"metrics\" is not an object");
        continue;
      }
      bool ok = true;
      for (auto it = m.begin(); it != m.end(); ++it) {
        double v = 0;
        if (!metric_from_json(it.value(), v)) {
          ok = false;
          break;
        }
        e.metrics[it.key()] = v;
      }
      if (!ok) {
        skipped.push_back(where + ": a metric is not a number");
        continue;
      }
    }
    e.pinned = j.contains("pinned") && j["pinned"].is_boolean() && j["pinned"].get<bool>();
    out.push_back(std::move(e));
  }
  return out;
}

void write_manifest(io::Env& env, const std::string& dir, const std::vector<CheckpointInfo>& entries) {
  const std::string text = serialize_manifest(entries);
  io::write_atomically(env, dir + "/" + kManifestName, [&](io::WritableFile& f) {
    f.append(std::as_bytes(std::span<const char>(text.data(), text.size())));
  });
}

}  // namespace ckpt::manager
