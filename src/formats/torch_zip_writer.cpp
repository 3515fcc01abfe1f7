#include "formats/torch_zip_writer.hpp"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <unordered_set>

#include "container/zip.hpp"
#include "pickle/pickler.hpp"

namespace ckpt::formats {
namespace {

// `version`: caffe2::serialize::kMinProducedFileFormatVersion (3), as torch.save writes it.
constexpr std::string_view kFileFormatVersion = "3\n";
// `.format_version` "1": storages are written in numeric key order (torch 2.7+).
constexpr std::string_view kFormatVersion = "1";
// Bytes of a storage handed to the zip writer at a time: small enough that the
// write() after the CRC pass reads from cache.
constexpr size_t kStreamChunk = size_t{1} << 20;
constexpr uint32_t kDescriptorSig = 0x08074b50;  // "PK\7\8"

std::span<const std::byte> bytes_of(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

uint32_t le32(std::string_view s, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v |= uint32_t{static_cast<uint8_t>(s[at + i])} << (8 * i);
  return v;
}

// c10::hash_combine
uint64_t hash_combine(uint64_t seed, uint64_t value) {
  return seed ^ (value + 0x9e3779b9 + (seed << 6u) + (seed >> 2u));
}

}  // namespace

std::string archive_name_for(const std::string& path) {
  for (unsigned char c : path)
    if (c >= 0x80) return "archive";
  // caffe2::serialize basename(): after the last '/' or '\\', up to the last '.'.
  size_t start = 0;
  for (size_t i = 0; i < path.size(); ++i)
    if (path[i] == '/' || path[i] == '\\') start = i + 1;
  size_t end = path.size();
  for (size_t i = end; i > start; --i) {
    if (path[i - 1] == '.') {
      end = i - 1;
      break;
    }
  }
  std::string name = start < end ? path.substr(start, end - start) : std::string();
  return name.empty() ? "archive" : name;
}

void SerializationId::observe_write(std::string_view bytes) {
  if (bytes.size() >= 8 && le32(bytes, 0) == kDescriptorSig) crcs_ = hash_combine(crcs_, le32(bytes, 4));
}

void SerializationId::add(std::string_view record, std::string_view full_name, uint32_t crc,
                          std::string_view head) {
  names_.emplace_back(record);
  observe_write(full_name);
  observe_write(head);
  // The data descriptor; miniz writes none for an empty record.
  if (!head.empty()) crcs_ = hash_combine(crcs_, crc);
}

std::string SerializationId::str() const {
  std::unordered_set<std::string> set;  // files_written_
  for (const auto& n : names_) set.insert(n);
  uint64_t names = 0;
  for (const auto& n : set) names = hash_combine(names, std::hash<std::string>{}(n));
  char id[48];
  std::snprintf(id, sizeof id, "%020llu%020llu", static_cast<unsigned long long>(names),
                static_cast<unsigned long long>(crcs_));
  return std::string(id, 40);
}

void write_torch_zip(io::WritableFile& out, const Value& value, const std::string& prefix,
                     const SaveOptions& options, uint64_t zip64_threshold) {
  pickle::TorchPickler pickler;
  const std::string pkl = pickler.dump(value);
  zip::WriterOptions zopts;
  zopts.alignment = options.alignment;
  zopts.zip64_threshold = zip64_threshold;
  zip::ZipWriter w(out, zopts);
  SerializationId sid;
  const std::string folder = prefix + "/";
  auto small = [&](std::string_view record, std::string_view content) {
    const std::string full = folder + std::string(record);
    w.add(full, bytes_of(content));
    sid.add(record, full, w.last_crc(), content.substr(0, 8));
  };
  small("data.pkl", pkl);
  small(".format_version", kFormatVersion);
  small(".storage_alignment", std::to_string(options.alignment));
  small("byteorder", "little");
  for (const auto& s : pickler.storages()) {
    const std::string record = "data/" + s.key;
    const std::string full = folder + record;
    const std::byte* data = s.storage.data();
    const uint64_t n = s.storage.nbytes();
    w.begin_entry(full, n);
    for (uint64_t done = 0; done < n;) {
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(kStreamChunk, n - done));
      w.write({data + done, chunk});  // CRC, then write, of a chunk still in cache
      done += chunk;
    }
    w.end_entry();
    sid.add(record, full, w.last_crc(),
            std::string_view(reinterpret_cast<const char*>(data), static_cast<size_t>(std::min<uint64_t>(n, 8))));
  }
  small("version", kFileFormatVersion);
  const std::string id = sid.str();
  w.add(folder + ".data/serialization_id", bytes_of(id));
  w.finish();
}

}  // namespace ckpt::formats
