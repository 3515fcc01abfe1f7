#include "formats/detect.hpp"

#include <algorithm>
#include <cstring>

#include "ckpt/error.hpp"
#include "container/zip.hpp"
#include "core/hex.hpp"
#include "formats/onnx.hpp"
#include "formats/safetensors.hpp"
#include "formats/torch_legacy.hpp"
#include "formats/torch_zip.hpp"
#include "formats/torchscript.hpp"

namespace ckpt::formats {

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
  if (is_tar_header(b)) return Format::torch_tar;
  if (starts_with_legacy_magic(b)) return Format::torch_legacy;
  if (b.size() >= 9 && static_cast<char>(b[8]) == '{') {
    uint64_t n = 0;
    std::memcpy(&n, b.data(), 8);  // little-endian hosts only (static_assert elsewhere)
    if (n >= 2) return Format::safetensors;
  }
  // ONNX: a protobuf ModelProto, recognised by its leading fields.
  if (looks_like_onnx(b)) return Format::onnx;
  return Format::unknown;
}

Format refine_zip(const std::shared_ptr<io::RandomAccessFile>& file) {
  zip::ZipReader z(file);
  auto info = inspect_torch_zip(z);
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

Value load_any(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options,
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
      const bool torchscript = inspect_torch_zip(z).torchscript;
      if (format_out) *format_out = torchscript ? Format::torchscript : Format::torch_zip;
      return torchscript ? load_torchscript(z, options, observer) : load_torch_zip(z, options, observer);
    }
    if (format_out) *format_out = f;
    switch (f) {
      case Format::torch_zip:
      case Format::torchscript: break;  // handled above
      case Format::torch_legacy:
        return load_torch_legacy(file, options, observer);
      case Format::torch_tar:
        return load_torch_tar(file, options, observer);
      case Format::safetensors:
        return load_safetensors(file, options);
      case Format::onnx:
        return load_onnx(file, options);
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


}  // namespace ckpt::formats
