// Private: the weights (initializers) of ONNX models, read and refreshed with
// a small hand-written protobuf wire reader (no libprotobuf; see
// docs/architecture.md for why and docs/formats.md for the mapping).
//
// Only the path ModelProto.graph (7) -> GraphProto.initializer (5) ->
// TensorProto is decoded; every other field is skipped by its wire type,
// and nested graphs inside node attributes are never entered, so the parse
// is not recursive. Every length, offset and count is 64-bit and checked
// against what remains of its enclosing message before use.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ckpt/options.hpp"
#include "ckpt/state_dict.hpp"
#include "io/file.hpp"

namespace ckpt::formats {

// A span [begin, end) of bytes inside the model file.
struct OnnxSpan {
  uint64_t begin = 0;
  uint64_t end = 0;
  uint64_t size() const noexcept { return end - begin; }
};

// One TensorProto of the main graph's initializer list, as found in the file.
struct OnnxTensorRecord {
  std::string name;
  int32_t data_type = 0;          // TensorProto.DataType
  std::optional<DType> dtype;     // ckpt's dtype, none for types ckpt lacks
  std::vector<int64_t> dims;
  uint64_t numel = 0;
  uint64_t nbytes = 0;            // numel * itemsize (0 when dtype is none)
  bool has_raw = false;
  OnnxSpan raw;                   // raw_data's payload
  uint32_t typed_field = 0;       // 4/5/7/10/11 when the data is in a typed field
  std::vector<std::pair<int, OnnxSpan>> typed;  // (wire type, payload) per occurrence
  bool has_segment = false;
  bool external = false;          // data_location == EXTERNAL
  std::string location;
  uint64_t offset = 0;
  std::optional<uint64_t> length;
  size_t graph = 0;               // which occurrence of ModelProto.graph holds it
  OnnxSpan entry;                 // the whole field: tag, length, payload
  OnnxSpan payload;               // the TensorProto's bytes
};

struct OnnxModelRecord {
  std::vector<OnnxSpan> graph_entries;   // each ModelProto.graph field (tag .. end)
  std::vector<OnnxSpan> graph_payloads;  // their GraphProto bytes
  std::vector<OnnxTensorRecord> initializers;  // in file order
};

// True when the first bytes look like a serialized ModelProto: field 1
// (ir_version) as a small varint, followed by another ModelProto field.
bool looks_like_onnx(std::span<const std::byte> head);

// Parses the structure (no tensor data is touched). Throws ckpt::FormatError
// naming the byte offset for damaged or truncated bytes, duplicate or empty
// initializer names.
OnnxModelRecord parse_onnx(std::span<const std::byte> bytes, const std::string& file_name);

// ckpt::load()'s view: a dict name -> Tensor of the main graph's
// initializers in graph order. External data is resolved relative to the
// folder of file->name() (refused for in-memory buffers).
Value load_onnx(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options);

// See ckpt::refresh_onnx_weights.
OnnxRefreshResult refresh_onnx(io::Env& env, const std::string& template_path, const StateDict& weights,
                               const std::string& out_path);

// Protobuf wire helpers, exposed for the unit tests.
void append_varint(std::string& out, uint64_t v);

}  // namespace ckpt::formats
