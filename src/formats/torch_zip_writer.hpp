// Private: writing the torch.save zip layout.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/options.hpp"
#include "ckpt/value.hpp"
#include "io/file.hpp"

namespace ckpt::formats {

// Writes `value` as torch 2.x's torch.save does, record for record:
// data.pkl, .format_version, .storage_alignment, byteorder, data/<key> (each
// storage once, streamed from its bytes, in numeric key order), version,
// .data/serialization_id. `zip64_threshold` lowers the ZIP64 limit (tests).
void write_torch_zip(io::WritableFile& out, const Value& value, const std::string& prefix,
                     const SaveOptions& options, uint64_t zip64_threshold = 0xFFFFFFFFull);

// torch.save's archive folder for a path: the file name without its last
// extension ("dir/model.pt" -> "model", "a.b.pt" -> "a.b"), as caffe2's
// basename() cuts it ('/' and '\\' separate directories). "archive" when the
// path is not ASCII (torch 2.x then writes through a Python stream) or the
// name is empty (torch refuses such a name).
std::string archive_name_for(const std::string& path);

// The 40 digits torch writes to .data/serialization_id
// (PyTorchStreamWriter::writeSerializationId): 20 digits of c10::hash_combine
// over std::hash of every record name (without the folder) in the iteration
// order of the std::unordered_set torch inserts them into, then 20 digits of
// hash_combine over the CRC32 of every data descriptor in write order.
// Equal to torch's with 64-bit libstdc++ (torch's Linux builds: its std::hash
// and unordered_set iteration order); deterministic everywhere.
class SerializationId {
 public:
  // One record as its bytes go out: `record` without the folder, `full_name`
  // with it, the CRC32 of its data, and the first bytes of its data (at most
  // 8; fewer when the record is shorter, none when it is empty: miniz writes
  // no data descriptor for an empty record). torch's write callback takes any
  // write of 8+ bytes that starts with the data descriptor signature for a
  // descriptor, so a name or payload that starts with it counts too.
  void add(std::string_view record, std::string_view full_name, uint32_t crc, std::string_view head);
  std::string str() const;

 private:
  void observe_write(std::string_view bytes);
  std::vector<std::string> names_;  // in write order
  uint64_t crcs_ = 0;
};

}  // namespace ckpt::formats
