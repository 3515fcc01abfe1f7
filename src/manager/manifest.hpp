// Private: manifest.json, the CheckpointManager's record of its checkpoints.
//
//   {"format": "ckpt-manager-manifest", "version": 1,
//    "checkpoints": [{"file": "step=00000100.pt", "step": 100,
//                     "metrics": {"val_loss": 0.25}, "size": 1234,
//                     "crc32": "0a1b2c3d", "pinned": false}, ...]}
//
// Checkpoints are listed in the order they were saved (oldest first). Metric
// values that JSON cannot hold (NaN, infinities) are the strings "nan",
// "inf", "-inf". See docs/manager.md.
#pragma once

#include <string>
#include <vector>

#include "ckpt/manager.hpp"
#include "io/file.hpp"

namespace ckpt::manager {

inline constexpr const char* kManifestName = "manifest.json";
inline constexpr const char* kPointerName = "last";
inline constexpr const char* kLockName = ".lock";
inline constexpr int kManifestVersion = 1;

// A manifest larger than this is not one we wrote (a million checkpoints
// with long metric lists stay well below it).
inline constexpr uint64_t kMaxManifestBytes = uint64_t{256} << 20;

// Whether `name` may be a checkpoint file: a plain name inside the
// directory, not hidden, not one of the manager's own files. Names from a
// manifest that fail this are never opened nor deleted.
bool is_safe_checkpoint_name(const std::string& name);

std::string serialize_manifest(const std::vector<CheckpointInfo>& entries);

// Parses manifest text. Entries with a bad file name or missing fields are
// skipped and described in `skipped`. Throws ckpt::FormatError when the text
// is not a manifest at all (not JSON, wrong format tag, newer version).
std::vector<CheckpointInfo> parse_manifest(const std::string& text, std::vector<std::string>& skipped);

// Writes the manifest atomically through `env`.
void write_manifest(io::Env& env, const std::string& dir, const std::vector<CheckpointInfo>& entries);

}  // namespace ckpt::manager
