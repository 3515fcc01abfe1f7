#include "api/resolve.hpp"

#include <algorithm>
#include <filesystem>
#include <string_view>
#include <vector>

#include "ckpt/error.hpp"
#include "formats/dcp_reader.hpp"
#include "formats/shard_index.hpp"
#include "io/file.hpp"

namespace fs = std::filesystem;

namespace ckpt::detail {

namespace {

bool has_suffix(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
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

// dcp_dir, given what `path` is (status taken once by the caller).
std::string dcp_dir_of(const std::string& path, const io::FileStatus& st) {
  if (st.directory()) return formats::dcp::is_checkpoint_dir(path) ? path : "";
  const fs::path p(path);
  if (!st.regular() || p.filename() != formats::dcp::kMetadataFile) return "";
  std::string dir = p.parent_path().empty() ? "." : p.parent_path().string();
  return formats::dcp::is_checkpoint_dir(dir) ? dir : "";
}

}  // namespace

std::string dcp_dir(const std::string& path) { return dcp_dir_of(path, io::status(path)); }

Target resolve(const std::string& path) {
  const io::FileStatus st = io::status(path);
  if (std::string dir = dcp_dir_of(path, st); !dir.empty()) return {Target::Kind::dcp, std::move(dir)};
  // find_checkpoint_in_dir returns a regular file; a path that is no regular
  // file (missing, a device...) is left for the opener to report.
  const bool in_dir = st.directory();
  std::string target = in_dir ? find_checkpoint_in_dir(path) : path;
  if ((in_dir || st.regular()) && formats::is_shard_index(target))
    return {Target::Kind::shard_index, std::move(target)};
  return {Target::Kind::file, std::move(target)};
}

}  // namespace ckpt::detail
