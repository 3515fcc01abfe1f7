#include "ckpt/load.hpp"

#include <charconv>
#include <cstring>

#include "api/open_internal.hpp"
#include "api/sharded_internal.hpp"
#include "core/hex.hpp"
#include "ckpt/distributed.hpp"
#include "ckpt/open.hpp"

#include <algorithm>
#include <filesystem>
#include "ckpt/error.hpp"
#include "container/zip.hpp"
#include "formats/onnx.hpp"
#include "formats/safetensors.hpp"
#include "formats/torch_legacy.hpp"
#include "formats/torch_zip.hpp"
#include "formats/torchscript.hpp"

namespace ckpt {

// ---------------------------------------------------------------- detection

namespace {

constexpr size_t kDetectBytes = 512;

// The order of torch.load (torch/serialization.py, 1.13 and 2.x):
//   1. _is_zipfile: "PK\3\4" at offset 0 -> the zip reader, no fallback;
//   2. _legacy_load: tarfile.open(mode="r:") -> the tar path when the first
//      block passes Python's checksum test (no "ustar" magic needed);
//   3. otherwise pickle.load from offset 0: the magic number (compared by
//      value, so any pickle protocol), protocol version, sys_info, ...
// Safetensors is ckpt's own addition after those: a safetensors file is
// never a zip, a tar or a legacy stream, though torch.load would still run
// its first bytes as a pickle (scan looks at that path too).
Format detect_prefix(std::span<const std::byte> b) {
  if (zip::starts_with_local_header(b)) return Format::torch_zip;  // refined by the caller
  if (formats::is_tar_header(b)) return Format::torch_tar;
  if (formats::starts_with_legacy_magic(b)) return Format::torch_legacy;
  if (b.size() >= 9 && static_cast<char>(b[8]) == '{') {
    uint64_t n = 0;
    std::memcpy(&n, b.data(), 8);  // little-endian hosts only (static_assert elsewhere)
    if (n >= 2) return Format::safetensors;
  }
  // ONNX: a protobuf ModelProto, recognised by its leading fields.
  if (formats::looks_like_onnx(b)) return Format::onnx;
  return Format::unknown;
}

Format refine_zip(const std::shared_ptr<io::RandomAccessFile>& file) {
  zip::ZipReader z(file);
  auto info = formats::inspect_torch_zip(z);
  return info.torchscript ? Format::torchscript : Format::torch_zip;
}

std::string hex_prefix(std::span<const std::byte> b) {
  std::string s;
  for (size_t i = 0; i < std::min<size_t>(b.size(), 8); ++i) {
    append_hex_byte(s, static_cast<unsigned char>(b[i]));
    s += ' ';
  }
  if (!s.empty()) s.pop_back();
  return s;
}

}  // namespace

namespace detail {

Format detect_head(const std::shared_ptr<io::RandomAccessFile>& file) {
  std::byte head[kDetectBytes];
  size_t n = static_cast<size_t>(std::min<uint64_t>(file->size(), kDetectBytes));
  file->read_at(0, {head, n});
  return detect_prefix({head, n});
}

Format detect(const std::shared_ptr<io::RandomAccessFile>& file) {
  Format f = detect_head(file);
  if (f == Format::torch_zip) return refine_zip(file);
  return f;
}

std::shared_ptr<io::RandomAccessFile> open_for_load(const std::string& path, bool mmap) {
  return mmap ? io::map_file(path) : io::open_file_to_read_whole(path);
}

namespace {

// Collects the non-allow-listed globals a pickle references.
class ClassCollector : public pickle::Observer {
 public:
  std::vector<std::string> names;
  void on_event(const pickle::Event& e) override {
    if (e.kind != pickle::Event::Kind::global || e.allowed) return;
    std::string q = e.module + "." + e.name;
    if (std::find(names.begin(), names.end(), q) == names.end()) names.push_back(std::move(q));
  }
};

Value load_file_once(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options,
                     Format* format_out, pickle::Observer* observer);

}  // namespace

Value load_file(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options,
                Format* format_out, pickle::Observer* observer) {
  try {
    return load_file_once(file, options, format_out, observer);
  } catch (const UnsafeError& e) {
    if (!options.weights_only) throw;
    // Name every class the file needs, not just the first, by reading it
    // again in inspection mode (nothing is executed either way).
    ClassCollector collector;
    try {
      LoadOptions inspect = options;
      inspect.weights_only = false;
      (void)load_file_once(file, inspect, nullptr, &collector);
    } catch (const Error&) {
    }
    if (collector.names.size() <= 1) throw;
    std::string list;
    for (size_t i = 0; i < collector.names.size() && i < 12; ++i) list += (i ? ", " : "") + collector.names[i];
    if (collector.names.size() > 12) list += ", ... (" + std::to_string(collector.names.size()) + " in all)";
    throw UnsafeError(e.message() + "; the file references these globals outside the allow-list: " + list,
                      e.context());
  }
}

namespace {

Value load_file_once(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options,
                     Format* format_out, pickle::Observer* observer) {
  try {
    // A zip archive's central directory is read once, here, and tells
    // TorchScript from torch.save archives (detect() would read it again;
    // for a file of 100,000 tensors each reading is ~6% of a load).
    Format f = detect_head(file);
    if (f == Format::torch_zip) {
      zip::ZipReader z(file);
      const bool torchscript = formats::inspect_torch_zip(z).torchscript;
      if (format_out) *format_out = torchscript ? Format::torchscript : Format::torch_zip;
      return torchscript ? formats::load_torchscript(z, options, observer)
                         : formats::load_torch_zip(z, options, observer);
    }
    if (format_out) *format_out = f;
    switch (f) {
      case Format::torch_zip:
      case Format::torchscript: break;  // handled above
      case Format::torch_legacy:
        return formats::load_torch_legacy(file, options, observer);
      case Format::torch_tar:
        return formats::load_torch_tar(file, options, observer);
      case Format::safetensors:
        return formats::load_safetensors(file, options);
      case Format::onnx:
        return formats::load_onnx(file, options);
      case Format::dcp:  // never detected from a single file's prefix
      case Format::unknown: break;
    }
    std::byte head[8];
    size_t n = static_cast<size_t>(std::min<uint64_t>(file->size(), 8));
    file->read_at(0, {head, n});
    throw FormatError(n == 0 ? std::string("file is empty; not a checkpoint")
                             : "not a checkpoint format ckpt recognizes (first bytes: " +
                                   hex_prefix({head, n}) + ")");
  } catch (Error& e) {
    e.add_context(ErrorContext{file->name(), "", std::nullopt});
    throw;
  }
}

}  // namespace

}  // namespace detail

Format detect_format(const std::string& path) { return detail::detect(io::open_file(path)); }

Format detect_format(std::span<const std::byte> bytes) { return detail::detect(io::memory_file(bytes)); }

namespace detail {

std::string distributed_checkpoint_dir(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return is_distributed_checkpoint(path) ? path : "";
  // The `.metadata` file itself (a pickle, which detect() does not know).
  const std::filesystem::path p(path);
  if (p.filename() != ".metadata" || !std::filesystem::is_regular_file(p, ec)) return "";
  std::string dir = p.parent_path().empty() ? "." : p.parent_path().string();
  return is_distributed_checkpoint(dir) ? dir : "";
}

Value load_path(const std::string& path, const LoadOptions& options, LoadReport* report,
                pickle::Observer* observer) {
  LoadReport scratch;
  LoadReport& out = report ? *report : scratch;
  out = LoadReport{};
  std::error_code ec;
  const auto add_file = [&](const std::string& f) {
    out.files.push_back(f);
    const auto size = std::filesystem::file_size(f, ec);
    if (!ec) out.file_bytes += size;
  };
  std::string target = path;
  if (std::string dcp_dir = distributed_checkpoint_dir(path); !dcp_dir.empty()) {
    out.format = Format::dcp;
    if (report) {
      std::vector<std::string> files;
      for (const auto& f : std::filesystem::directory_iterator(dcp_dir, ec))
        if (f.is_regular_file(ec)) files.push_back(f.path().string());
      std::sort(files.begin(), files.end());
      for (const auto& f : files) add_file(f);
    }
    return DistributedReader(dcp_dir, options).consolidate();
  }
  if (std::filesystem::is_directory(path, ec)) target = find_checkpoint_in_dir(path);
  if (is_shard_index(target)) {
    OpenOptions oo = options;
    oo.key.clear();  // load_state_dict applies the key to the loaded value
    Reader r = open(target, oo);
    out.format = r.format();
    for (const auto& f : r.files()) add_file(f);
    return r.state_dict(/*copy=*/!options.mmap).to_value();
  }
  auto file = open_for_load(target, options.mmap);
  out.files.push_back(target);
  out.file_bytes = file->size();
  return load_file(file, options, &out.format, observer);
}

}  // namespace detail

Value load(const std::string& path, const LoadOptions& options) {
  return detail::load_path(path, options, nullptr, nullptr);
}

Value load(const std::string& path, const LoadOptions& options, LoadReport& report) {
  return detail::load_path(path, options, &report, nullptr);
}

Value load(std::span<const std::byte> bytes, const LoadOptions& options) {
  // The caller owns the buffer; with mmap the tensors view it directly.
  return detail::load_file(io::memory_file(bytes), options, nullptr, nullptr);
}

// ---------------------------------------------------------------- state dicts

namespace {

std::string describe(const Value& v) {
  if (!v.is_dict()) return "a " + std::string(v.kind_name());
  const Dict& d = v.as_dict();
  std::string keys;
  size_t shown = 0;
  for (const auto& [k, val] : d) {
    if (shown == 8) {
      keys += ", ...";
      break;
    }
    if (shown++) keys += ", ";
    keys += k.repr();
  }
  return "a dict with keys " + keys;
}

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

StateDict to_state_dict(const Value& root, const LoadOptions& options, const std::string& name) {
  const Value& v = options.key.empty() ? root : lookup(root, options.key);
  if (is_module_object(v)) return module_state_dict(v);  // torch.save(model), weights_only=false
  try {
    return StateDict::from_value(v);
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

const Value& lookup(const Value& root, std::string_view path) {
  const Value* cur = &root;
  std::string walked;
  while (!path.empty()) {
    size_t slash = path.find('/');
    std::string_view part = path.substr(0, slash);
    path = slash == std::string_view::npos ? std::string_view{} : path.substr(slash + 1);
    if (part.empty()) continue;
    int64_t index = 0;
    auto [p, ec] = std::from_chars(part.data(), part.data() + part.size(), index);
    bool is_index = ec == std::errc() && p == part.data() + part.size();
    const Value* next = nullptr;
    if (cur->is_dict()) {
      next = cur->as_dict().find(Value(std::string(part)));
      if (!next && is_index) next = cur->as_dict().find(Value(index));
    } else if ((cur->is_list() || cur->is_tuple()) && is_index) {
      const List& items = cur->items();
      if (index >= 0 && static_cast<size_t>(index) < items.size()) next = &items[static_cast<size_t>(index)];
    }
    if (!next)
      throw TypeError("no '" + std::string(part) + "' in " + (walked.empty() ? "the checkpoint" : "'" + walked + "'") +
                      " (" + describe(*cur) + ")");
    if (!walked.empty()) walked += "/";
    walked += part;
    cur = next;
  }
  return *cur;
}

}  // namespace ckpt
