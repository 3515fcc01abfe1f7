#include "api/resolve.hpp"

#include <algorithm>
#include <filesystem>
#include <string_view>
#include <vector>

#include "ckpt/error.hpp"
#include "formats/detect.hpp"
#include "formats/shard_index.hpp"

namespace fs = std::filesystem;

namespace ckpt::detail {

namespace {

bool has_suffix(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The directory's single index, else its single checkpoint file, from its listing.
std::string find_checkpoint_in_dir(const std::string& dir, const std::vector<io::DirEntry>& listing) {
  std::vector<std::string> indexes, files;
  for (const io::DirEntry& entry : listing) {
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

// The parent directory of a `.metadata` file, or "" when `path` is no such file.
std::string metadata_parent(const std::string& path, const io::FileStatus& st) {
  const fs::path p(path);
  if (!st.regular() || p.filename() != formats::dcp::kMetadataFile) return "";
  return p.parent_path().empty() ? "." : p.parent_path().string();
}

}  // namespace

std::string dcp_dir(const std::string& path) {
  const io::FileStatus st = io::status(path);
  if (st.directory()) return formats::dcp::is_checkpoint_dir(path) ? path : "";
  const std::string dir = metadata_parent(path, st);
  return !dir.empty() && formats::dcp::is_checkpoint_dir(dir) ? dir : "";
}

Target resolve(const std::string& path, bool mmap) {
  Target out;
  out.path = path;
  const io::FileStatus st = io::status(path);
  const std::string dir = st.directory() ? path : metadata_parent(path, st);
  if (!dir.empty()) {
    const std::vector<io::DirEntry> listing = io::list_dir(dir);
    if (auto dcp = formats::dcp::checkpoint_dir(dir, listing)) {
      out.kind = Target::Kind::dcp;
      out.path = dir;
      out.dcp = std::move(*dcp);
      return out;
    }
    // find_checkpoint_in_dir returns a regular file; a path that is no
    // regular file (missing, a device...) is left for the opener to report.
    if (st.directory()) out.path = find_checkpoint_in_dir(dir, listing);
  }
  out.file = formats::open_for_load(out.path, mmap);
  if (auto text = formats::shard_index_text(*out.file)) {
    out.kind = Target::Kind::shard_index;
    out.index_text = std::move(*text);
    out.file.reset();
  }
  return out;
}

}  // namespace ckpt::detail
