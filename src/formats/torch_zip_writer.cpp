#include "formats/torch_zip_writer.hpp"

#include <cstdio>
#include <filesystem>

#include "ckpt/error.hpp"
#include "pickle/pickler.hpp"

namespace ckpt::formats {
namespace {

// The value torch writes in `version` (caffe2::serialize kMinProducedFileFormatVersion).
constexpr const char* kFileFormatVersion = "3\n";
// Storages are written in numeric key order (torch 2.7+ `.format_version` 1).
constexpr const char* kFormatVersion = "1";
constexpr size_t kStreamChunk = size_t{64} << 20;  // bytes per write of a storage

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

}  // namespace

std::string archive_name_for(const std::string& path) {
  std::filesystem::path p(path);
  std::string stem = p.has_extension() ? p.stem().string() : p.filename().string();
  return stem.empty() ? "archive" : stem;
}

void write_torch_zip(io::WritableFile& out, const Value& value, const std::string& prefix,
                     const SaveOptions& options, uint64_t zip64_threshold) {
  pickle::TorchPickler pickler;
  const std::string pkl = pickler.dump(value);
  zip::WriterOptions zopts;
  zopts.alignment = options.alignment;
  zopts.zip64_threshold = zip64_threshold;
  zip::ZipWriter w(out, zopts);
  uint64_t names_hash = 0xcbf29ce484222325ULL, crcs_hash = 0xcbf29ce484222325ULL;
  auto small = [&](const std::string& name, const std::string& content) {
    std::string full = prefix + "/" + name;
    w.add(full, bytes_of(content));
    names_hash = fnv1a(names_hash, full.data(), full.size());
    uint32_t crc = zip::crc32(bytes_of(content));
    crcs_hash = fnv1a(crcs_hash, &crc, sizeof crc);
  };
  small("data.pkl", pkl);
  small(".format_version", kFormatVersion);
  small(".storage_alignment", std::to_string(options.alignment));
  small("byteorder", "little");
  for (const auto& s : pickler.storages()) {
    std::string full = prefix + "/data/" + s.key;
    const std::byte* data = s.storage.data();
    const uint64_t n = s.storage.nbytes();
    w.begin_entry(full, n);
    for (uint64_t done = 0; done < n;) {
      size_t chunk = static_cast<size_t>(std::min<uint64_t>(kStreamChunk, n - done));
      w.write({data + done, chunk});
      done += chunk;
    }
    w.end_entry();
    names_hash = fnv1a(names_hash, full.data(), full.size());
  }
  small("version", kFileFormatVersion);
  // 40 ASCII digits, like torch's; deterministic for the same records.
  char id[41];
  std::snprintf(id, sizeof id, "%020llu%020llu", static_cast<unsigned long long>(names_hash),
                static_cast<unsigned long long>(crcs_hash));
  w.add(prefix + "/.data/serialization_id", bytes_of(std::string(id, 40)));
  w.finish();
}

}  // namespace ckpt::formats
