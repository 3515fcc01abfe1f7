#include "formats/onnx.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include "ckpt/error.hpp"

namespace fs = std::filesystem;

namespace ckpt::formats {
namespace {

// ---------------------------------------------------------------- wire reader

enum WireType : int { kVarint = 0, kFixed64 = 1, kLen = 2, kFixed32 = 5 };

struct Field {
  uint32_t number = 0;
  int wire = 0;
  uint64_t begin = 0;        // offset of the tag
  uint64_t value_begin = 0;  // payload (kLen), or the value's bytes
  uint64_t end = 0;          // one past the field
  uint64_t value = 0;        // varint / fixed value
};

// Reads the fields of one message in [pos, end) of `data`.
class Wire {
 public:
  Wire(std::span<const std::byte> data, uint64_t begin, uint64_t end, const std::string& file, std::string what)
      : data_(data), pos_(begin), end_(end), file_(file), what_(std::move(what)) {}

  bool done() const noexcept { return pos_ >= end_; }

  Field next() {
    Field f;
    f.begin = pos_;
    uint64_t tag = varint();
    f.number = static_cast<uint32_t>(tag >> 3);
    f.wire = static_cast<int>(tag & 7);
    if (tag >> 3 == 0 || tag >> 3 > 0x1fffffff) fail("invalid field number " + std::to_string(tag >> 3), f.begin);
    f.value_begin = pos_;
    switch (f.wire) {
      case kVarint: f.value = varint(); break;
      case kFixed64: f.value = fixed(8); break;
      case kFixed32: f.value = fixed(4); break;
      case kLen: {
        uint64_t len = varint();
        if (len > end_ - pos_)
          fail("field " + std::to_string(f.number) + " says " + std::to_string(len) + " bytes, but only " +
                   std::to_string(end_ - pos_) + " remain (truncated or damaged)",
               f.begin);
        f.value_begin = pos_;
        pos_ += len;
        break;
      }
      default:
        fail("field " + std::to_string(f.number) + " has wire type " + std::to_string(f.wire) +
                 ", which ONNX never uses (groups or invalid)",
             f.begin);
    }
    f.end = pos_;
    return f;
  }

  uint64_t varint() {
    uint64_t v = 0;
    const uint64_t start = pos_;
    for (int shift = 0; shift < 70; shift += 7) {
      if (pos_ >= end_) fail("truncated varint", start);
      auto b = static_cast<uint8_t>(data_[pos_++]);
      if (shift == 63 && (b & 0x7e)) fail("varint overflows 64 bits", start);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("varint longer than 10 bytes", start);
  }

  [[noreturn]] void fail(const std::string& msg, uint64_t at) const {
    throw FormatError("ONNX " + what_ + ": " + msg, ErrorContext{file_, "", at});
  }

 private:
  uint64_t fixed(int n) {
    if (end_ - pos_ < static_cast<uint64_t>(n)) fail("truncated fixed-width value", pos_);
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(data_[pos_ + static_cast<uint64_t>(i)]);
    pos_ += static_cast<uint64_t>(n);
    return v;
  }

  std::span<const std::byte> data_;
  uint64_t pos_, end_;
  const std::string& file_;
  std::string what_;
};

std::string text(std::span<const std::byte> data, const Field& f) {
  return std::string(reinterpret_cast<const char*>(data.data() + f.value_begin), f.end - f.value_begin);
}

// ---------------------------------------------------------------- data types

// TensorProto.DataType -> ckpt dtype.
std::optional<DType> dtype_of(int32_t t) {
  switch (t) {
    case 1: return DType::float32;
    case 2: return DType::uint8;
    case 3: return DType::int8;
    case 4: return DType::uint16;
    case 5: return DType::int16;
    case 6: return DType::int32;
    case 7: return DType::int64;
    case 9: return DType::bool_;
    case 10: return DType::float16;
    case 11: return DType::float64;
    case 12: return DType::uint32;
    case 13: return DType::uint64;
    case 14: return DType::complex64;
    case 15: return DType::complex128;
    case 16: return DType::bfloat16;
    case 17: return DType::float8_e4m3fn;
    case 18: return DType::float8_e4m3fnuz;
    case 19: return DType::float8_e5m2;
    case 20: return DType::float8_e5m2fnuz;
    case 24: return DType::float8_e8m0fnu;
    default: return std::nullopt;
  }
}

std::string data_type_name(int32_t t) {
  static const char* names[] = {"UNDEFINED", "FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64",
                                "STRING", "BOOL", "FLOAT16", "DOUBLE", "UINT32", "UINT64", "COMPLEX64",
                                "COMPLEX128", "BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                                "FLOAT8E5M2FNUZ", "UINT4", "INT4", "FLOAT4E2M1", "FLOAT8E8M0", "UINT2",
                                "INT2", "FLOAT6E2M3", "FLOAT6E3M2"};
  if (t >= 0 && t < static_cast<int32_t>(std::size(names))) return names[t];
  return "data_type " + std::to_string(t);
}

// The typed field that may carry data of ONNX type `t` (0 when none).
uint32_t typed_field_for(int32_t t) {
  switch (t) {
    case 1: case 14: return 4;                          // float_data
    case 2: case 3: case 4: case 5: case 6: case 9:
    case 10: case 16: case 17: case 18: case 19: case 20: case 24: return 5;  // int32_data
    case 7: return 7;                                   // int64_data
    case 11: case 15: return 10;                        // double_data
    case 12: case 13: return 11;                        // uint64_data
    default: return 0;
  }
}

bool is_data_field(uint32_t n) { return n == 4 || n == 5 || n == 6 || n == 7 || n == 9 || n == 10 || n == 11; }

uint64_t parse_decimal(const std::string& s, const std::string& key, const Wire& w, uint64_t at) {
  if (s.empty() || s.size() > 20) w.fail("external_data '" + key + "' is not a decimal number: '" + s + "'", at);
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') w.fail("external_data '" + key + "' is not a decimal number: '" + s + "'", at);
    auto d = static_cast<uint64_t>(c - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) w.fail("external_data '" + key + "' overflows 64 bits", at);
    v = v * 10 + d;
  }
  return v;
}

// ---------------------------------------------------------------- parsing

OnnxTensorRecord parse_tensor(std::span<const std::byte> data, const Field& entry, const std::string& file) {
  OnnxTensorRecord r;
  r.entry = {entry.begin, entry.end};
  r.payload = {entry.value_begin, entry.end};
  Wire w(data, entry.value_begin, entry.end, file, "initializer");
  bool have_type = false;
  std::vector<std::pair<std::string, std::string>> ext;
  uint64_t ext_at = entry.begin;
  while (!w.done()) {
    Field f = w.next();
    switch (f.number) {
      case 1:  // dims
        if (f.wire == kVarint) {
          r.dims.push_back(static_cast<int64_t>(f.value));
        } else if (f.wire == kLen) {
          Wire p(data, f.value_begin, f.end, file, "initializer dims");
          while (!p.done()) r.dims.push_back(static_cast<int64_t>(p.varint()));
        } else {
          w.fail("dims has wire type " + std::to_string(f.wire), f.begin);
        }
        break;
      case 2:
        if (f.wire != kVarint) w.fail("data_type has wire type " + std::to_string(f.wire), f.begin);
        r.data_type = static_cast<int32_t>(static_cast<uint32_t>(f.value));
        have_type = true;
        break;
      case 3: r.has_segment = true; break;
      case 8:
        if (f.wire != kLen) w.fail("name has wire type " + std::to_string(f.wire), f.begin);
        r.name = text(data, f);
        break;
      case 9:
        if (f.wire != kLen) w.fail("raw_data has wire type " + std::to_string(f.wire), f.begin);
        r.has_raw = true;
        r.raw = {f.value_begin, f.end};
        break;
      case 4: case 5: case 7: case 10: case 11:
        if (r.typed_field != 0 && r.typed_field != f.number)
          w.fail("data in two typed fields (" + std::to_string(r.typed_field) + " and " + std::to_string(f.number) + ")",
                 f.begin);
        r.typed_field = f.number;
        r.typed.emplace_back(f.wire, OnnxSpan{f.value_begin, f.end});
        break;
      case 6:
        w.fail("string_data (STRING tensors) is not supported", f.begin);
      case 13: {
        if (f.wire != kLen) w.fail("external_data has wire type " + std::to_string(f.wire), f.begin);
        Wire e(data, f.value_begin, f.end, file, "external_data entry");
        std::string key, value;
        while (!e.done()) {
          Field g = e.next();
          if (g.wire != kLen) continue;
          if (g.number == 1) key = text(data, g);
          if (g.number == 2) value = text(data, g);
        }
        ext.emplace_back(std::move(key), std::move(value));
        ext_at = f.begin;
        break;
      }
      case 14:
        if (f.wire != kVarint) w.fail("data_location has wire type " + std::to_string(f.wire), f.begin);
        r.external = f.value == 1;
        break;
      default: break;
    }
  }
  const std::string where = r.name.empty() ? "" : r.name;
  auto fail = [&](const std::string& msg) -> void {
    throw FormatError("ONNX initializer: " + msg, ErrorContext{file, where, entry.begin});
  };
  if (r.name.empty()) fail("an initializer has no name");
  if (!have_type || r.data_type == 0) fail("no data_type");
  if (r.dims.size() > 64) fail(std::to_string(r.dims.size()) + " dimensions (at most 64)");
  r.numel = 1;
  for (int64_t d : r.dims) {
    if (d < 0) fail("negative dimension " + std::to_string(d));
    auto u = static_cast<uint64_t>(d);
    if (u != 0 && r.numel > (uint64_t{1} << 62) / u) fail("element count overflows");
    r.numel *= u;
  }
  r.dtype = dtype_of(r.data_type);
  if (r.dtype) {
    const uint64_t item = itemsize(*r.dtype);
    if (r.numel > (uint64_t{1} << 62) / item) fail("byte size overflows");
    r.nbytes = r.numel * item;
  }
  if (r.external) {
    for (const auto& [k, v] : ext) {
      if (k == "location") r.location = v;
      else if (k == "offset") r.offset = parse_decimal(v, k, w, ext_at);
      else if (k == "length") r.length = parse_decimal(v, k, w, ext_at);
    }
    if (r.location.empty()) fail("data_location is EXTERNAL but external_data has no 'location'");
  }
  return r;
}

void parse_graph(std::span<const std::byte> data, const Field& g, size_t index, const std::string& file,
                 OnnxModelRecord& out) {
  Wire w(data, g.value_begin, g.end, file, "graph");
  while (!w.done()) {
    Field f = w.next();
    if (f.number != 5) continue;
    if (f.wire != kLen) w.fail("initializer has wire type " + std::to_string(f.wire), f.begin);
    OnnxTensorRecord r = parse_tensor(data, f, file);
    r.graph = index;
    out.initializers.push_back(std::move(r));
  }
}

// ---------------------------------------------------------------- tensor data

[[noreturn]] void data_error(const OnnxTensorRecord& r, const std::string& file, const std::string& msg) {
  throw FormatError("ONNX initializer: " + msg, ErrorContext{file, r.name, r.entry.begin});
}

std::string describe_dims(const std::vector<int64_t>& d);

// Refuses, before anything is allocated, typed data too short to hold the
// values r's dims declare: every value takes at least one byte (a varint), or
// 4 / 8 (float_data / double_data). Without this a few bytes declaring huge
// dims would allocate their size first (found by fuzz_onnx).
void check_typed_size(const OnnxTensorRecord& r, const std::string& file) {
  const bool complex = r.data_type == 14 || r.data_type == 15;
  const uint64_t min_width = r.typed_field == 4 ? 4 : r.typed_field == 10 ? 8 : 1;
  uint64_t total = 0;
  for (const auto& [wire, span] : r.typed) total += span.size();
  const uint64_t fits = total / min_width;
  if (r.numel > fits || (complex && r.numel > fits / 2))
    data_error(r, file, "typed field of " + std::to_string(total) + " bytes cannot hold the " + std::to_string(r.numel) +
                            " values its dims " + describe_dims(r.dims) + " declare");
}

// Decodes a typed field into `dst` (r.nbytes bytes).
void decode_typed(std::span<const std::byte> data, const OnnxTensorRecord& r, const std::string& file,
                  std::byte* dst) {
  const uint32_t expected = typed_field_for(r.data_type);
  if (r.typed_field != expected)
    data_error(r, file,
               data_type_name(r.data_type) + " data in typed field " + std::to_string(r.typed_field) +
                   (expected ? " (expected field " + std::to_string(expected) + ")" : " (no typed field carries this type)"));
  const bool complex = r.data_type == 14 || r.data_type == 15;
  const uint64_t count = r.numel * (complex ? 2 : 1);
  const size_t width = itemsize(*r.dtype) / (complex ? 2 : 1);
  uint64_t n = 0;
  auto put = [&](uint64_t v) {
    if (n >= count) data_error(r, file, "typed field holds more than the " + std::to_string(count) + " values of its dims");
    if (r.data_type == 9) v = v != 0;
    for (size_t i = 0; i < width; ++i) dst[n * width + i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
    ++n;
  };
  const bool fixed32 = r.typed_field == 4, fixed64 = r.typed_field == 10;
  for (const auto& [wire, span] : r.typed) {
    Wire w(data, span.begin, span.end, file, "initializer data");
    if (fixed32 || fixed64) {
      const uint64_t len = fixed32 ? 4 : 8;
      if ((wire == kLen && span.size() % len != 0) || (wire != kLen && wire != (fixed32 ? kFixed32 : kFixed64)))
        data_error(r, file, "malformed packed fixed-width typed data");
      for (uint64_t p = span.begin; p < span.end; p += len) {
        uint64_t v = 0;
        for (uint64_t i = len; i-- > 0;) v = (v << 8) | static_cast<uint8_t>(data[p + i]);
        put(v);
      }
    } else if (wire == kLen) {
      while (!w.done()) put(w.varint());
    } else if (wire == kVarint) {
      Wire one(data, span.begin, span.end, file, "initializer data");
      put(one.varint());
    } else {
      data_error(r, file, "typed data has wire type " + std::to_string(wire));
    }
  }
  if (n != count)
    data_error(r, file, "typed field holds " + std::to_string(n) + " values, its dims need " + std::to_string(count));
}

std::string describe_dims(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// The folder a model's external data is resolved against; refuses
// locations that are absolute, contain "..", or lead outside it.
fs::path resolve_location(const std::string& model_path, const OnnxTensorRecord& r, const std::string& file) {
  if (model_path.empty() || model_path == "<memory>")
    data_error(r, file, "external data ('" + r.location + "') needs the model's folder; load the model from its file");
  fs::path loc(r.location);
  if (loc.is_absolute() || loc.has_root_name() || loc.has_root_directory())
    data_error(r, file, "external data location '" + r.location + "' is absolute; it must be relative to the model's folder");
  for (const auto& part : loc)
    if (part == "..") data_error(r, file, "external data location '" + r.location + "' leads outside the model's folder");
  fs::path dir = fs::path(model_path).parent_path();
  if (dir.empty()) dir = ".";
  fs::path full = dir / loc;
  std::error_code ec;
  fs::path cdir = fs::weakly_canonical(dir, ec);
  fs::path cfull = fs::weakly_canonical(full, ec);
  if (!ec) {
    auto [a, b] = std::mismatch(cdir.begin(), cdir.end(), cfull.begin(), cfull.end());
    if (a != cdir.end())
      data_error(r, file, "external data location '" + r.location + "' resolves outside the model's folder (symbolic link)");
  }
  return full;
}

}  // namespace

// ---------------------------------------------------------------- public

void append_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

bool looks_like_onnx(std::span<const std::byte> head) {
  // ModelProto fields in number order, as every protobuf serializer writes
  // them: ir_version (1, varint) first, then producer_name (2), ...,
  // graph (7), opset_import (8).
  if (head.size() < 4 || static_cast<uint8_t>(head[0]) != 0x08) return false;
  const auto v = static_cast<uint8_t>(head[1]);
  if (v == 0 || v > 0x40) return false;  // a small ir_version (3..13 today)
  const auto tag = static_cast<uint8_t>(head[2]);
  const uint32_t number = tag >> 3;
  const int wire = tag & 7;
  if (tag & 0x80) return false;
  if (number == 5) return wire == kVarint;  // model_version
  return (number >= 2 && number <= 8 && number != 5 && wire == kLen) || (number == 14 && wire == kLen);
}

OnnxModelRecord parse_onnx(std::span<const std::byte> bytes, const std::string& file_name) {
  OnnxModelRecord out;
  Wire w(bytes, 0, bytes.size(), file_name, "model");
  while (!w.done()) {
    Field f = w.next();
    if (f.number != 7) continue;
    if (f.wire != kLen) w.fail("graph has wire type " + std::to_string(f.wire), f.begin);
    out.graph_entries.push_back({f.begin, f.end});
    out.graph_payloads.push_back({f.value_begin, f.end});
    parse_graph(bytes, f, out.graph_entries.size() - 1, file_name, out);
  }
  if (out.graph_entries.empty()) throw FormatError("ONNX model: no graph", ErrorContext{file_name, "", std::nullopt});
  std::unordered_set<std::string_view> names;
  for (const auto& r : out.initializers)
    if (!names.insert(r.name).second)
      throw FormatError("ONNX model: initializer " + r.name + " appears twice", ErrorContext{file_name, r.name, r.entry.begin});
  return out;
}

Value load_onnx(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options) {
  // The model's bytes: the mapping itself, or one read of the whole file.
  const std::byte* memory = file->memory();
  Storage whole;
  if (!memory) {
    whole = Storage::allocate(static_cast<size_t>(file->size()));
    if (file->size() > 0) io::read_at_parallel(*file, 0, {whole.mutable_data(), static_cast<size_t>(file->size())});
    memory = whole.data();
  }
  std::span<const std::byte> bytes(memory, static_cast<size_t>(file->size()));
  const std::string& name = file->name();
  OnnxModelRecord model = parse_onnx(bytes, name);
  const bool views = options.mmap && file->memory() != nullptr;
  std::shared_ptr<const void> keepalive = views ? file->keepalive() : nullptr;
  const std::string device = options.map_location.apply("cpu");
  std::map<std::string, std::shared_ptr<io::RandomAccessFile>> externals;

  Value v = Value::dict();
  Dict& d = v.as_dict();
  d.reserve(model.initializers.size());
  for (const OnnxTensorRecord& r : model.initializers) {
    if (!r.dtype)
      throw UnsupportedError("ONNX initializer of type " + data_type_name(r.data_type) + ", which ckpt has no dtype for",
                             ErrorContext{name, r.name, r.entry.begin});
    if (r.has_segment)
      throw UnsupportedError("ONNX initializer split into segments", ErrorContext{name, r.name, r.entry.begin});
    const size_t nbytes = static_cast<size_t>(r.nbytes);
    const size_t item = itemsize(*r.dtype);
    Storage storage;
    auto view_or_copy = [&](const std::byte* src, const std::shared_ptr<const void>& keep, bool may_view) {
      if (may_view && nbytes > 0 && reinterpret_cast<uintptr_t>(src) % item == 0) {
        storage = Storage::mapped(keep, src, nbytes);
      } else {
        storage = Storage::allocate(nbytes);
        if (nbytes) std::memcpy(storage.mutable_data(), src, nbytes);
      }
    };
    if (r.external) {
      if (r.length && *r.length != r.nbytes)
        data_error(r, name, "external_data length " + std::to_string(*r.length) + " but " + data_type_name(r.data_type) +
                                describe_dims(r.dims) + " needs " + std::to_string(r.nbytes) + " bytes");
      fs::path path = resolve_location(name, r, name);
      auto& ext = externals[path.string()];
      if (!ext) ext = options.mmap ? io::map_file(path.string()) : io::open_file(path.string());
      if (r.offset > ext->size() || r.nbytes > ext->size() - r.offset)
        data_error(r, name, "external data [" + std::to_string(r.offset) + ", +" + std::to_string(r.nbytes) +
                                ") passes the end of " + r.location + " (" + std::to_string(ext->size()) + " bytes)");
      if (ext->memory()) {
        view_or_copy(ext->memory() + r.offset, ext->keepalive(), options.mmap);
      } else {
        storage = Storage::allocate(nbytes);
        if (nbytes) io::read_at_parallel(*ext, r.offset, {storage.mutable_data(), nbytes});
      }
    } else if (r.has_raw) {
      if (r.raw.size() != r.nbytes)
        data_error(r, name, "raw_data holds " + std::to_string(r.raw.size()) + " bytes but " +
                                data_type_name(r.data_type) + describe_dims(r.dims) + " needs " +
                                std::to_string(r.nbytes));
      view_or_copy(memory + r.raw.begin, keepalive, views);
    } else if (!r.typed.empty()) {
      check_typed_size(r, name);
      storage = Storage::allocate(nbytes);
      decode_typed(bytes, r, name, storage.mutable_data());
    } else if (r.numel == 0) {
      storage = Storage::allocate(0);
    } else {
      data_error(r, name, "no data (no raw_data, typed field or external data) for " + std::to_string(r.numel) + " elements");
    }
    Tensor t(std::move(storage), *r.dtype, r.dims, Tensor::contiguous_strides(r.dims), 0);
    t.set_device(device);
    d.set(Value(r.name), Value(std::move(t)));
  }
  return v;
}

// ---------------------------------------------------------------- refresh

namespace {

void append_bytes(std::string& out, std::span<const std::byte> b) {
  out.append(reinterpret_cast<const char*>(b.data()), b.size());
}

void append_len_field(std::string& out, uint32_t number, std::string_view payload) {
  append_varint(out, (uint64_t{number} << 3) | kLen);
  append_varint(out, payload.size());
  out.append(payload);
}

std::string string_entry(const std::string& key, const std::string& value) {
  std::string e;
  append_len_field(e, 1, key);
  append_len_field(e, 2, value);
  return e;
}

}  // namespace

OnnxRefreshResult refresh_onnx(io::Env& env, const std::string& template_path, const StateDict& weights,
                               const std::string& out_path) {
  OnnxRefreshResult result;
  std::error_code ec;
  if (fs::exists(out_path, ec) && fs::equivalent(template_path, out_path, ec))
    throw Error("the output " + out_path + " is the template itself; write to another file (the template is never modified)");
  auto file = io::map_file(template_path);
  std::span<const std::byte> bytes(file->memory(), static_cast<size_t>(file->size()));
  OnnxModelRecord model = parse_onnx(bytes, template_path);

  // Validate every replacement before writing anything.
  std::vector<const Tensor*> repl(model.initializers.size(), nullptr);
  std::unordered_set<std::string> used;
  for (size_t i = 0; i < model.initializers.size(); ++i) {
    const OnnxTensorRecord& r = model.initializers[i];
    const Tensor* t = weights.find(r.name);
    if (!t) continue;
    const ErrorContext ctx{template_path, r.name, std::nullopt};
    if (!r.dtype)
      throw UnsupportedError("initializer " + r.name + " is " + data_type_name(r.data_type) + ", which ckpt cannot write", ctx);
    if (r.has_segment) throw UnsupportedError("initializer " + r.name + " is split into segments", ctx);
    if (t->dtype() != *r.dtype)
      throw TypeError("dtype mismatch for '" + r.name + "': the model holds " + std::string(name(*r.dtype)) + " (" +
                          data_type_name(r.data_type) + "), the new weights " + std::string(name(t->dtype())),
                      ctx);
    if (t->sizes() != r.dims)
      throw TypeError("shape mismatch for '" + r.name + "': the model holds " + describe_dims(r.dims) +
                          ", the new weights " + describe_dims(t->sizes()),
                      ctx);
    if (t->quantization()) throw UnsupportedError("'" + r.name + "' is a quantized tensor", ctx);
    repl[i] = t;
    used.insert(r.name);
    result.replaced.push_back(r.name);
  }
  for (const auto& [k, t] : weights)
    if (!used.count(k)) result.unused.push_back(k);

  // External data: every external initializer moves to one file named after
  // the output. With a single template file its bytes are copied whole
  // (offsets kept); with several, initializers are laid out in graph order.
  const fs::path out_fs(out_path);
  const std::string data_name = out_fs.filename().string() + ".data";
  fs::path out_dir = out_fs.parent_path();
  const fs::path data_path = (out_dir.empty() ? fs::path(".") : out_dir) / data_name;
  std::vector<std::string> sources;  // resolved template data files, first-appearance order
  std::vector<size_t> source_of(model.initializers.size(), 0);
  std::vector<uint64_t> new_offset(model.initializers.size(), 0);
  for (size_t i = 0; i < model.initializers.size(); ++i) {
    const OnnxTensorRecord& r = model.initializers[i];
    if (!r.external) continue;
    std::string p = resolve_location(template_path, r, template_path).string();
    auto it = std::find(sources.begin(), sources.end(), p);
    source_of[i] = static_cast<size_t>(it - sources.begin());
    if (it == sources.end()) sources.push_back(p);
  }
  std::vector<std::shared_ptr<io::RandomAccessFile>> source_files;
  for (const auto& s : sources) {
    if (fs::exists(data_path, ec) && fs::equivalent(s, data_path, ec))
      throw Error("the output's external data file " + data_path.string() +
                  " is the template's own external data; choose another output name");
    source_files.push_back(io::open_file(s));
  }
  for (size_t i = 0; i < model.initializers.size(); ++i) {
    const OnnxTensorRecord& r = model.initializers[i];
    if (!r.external) continue;
    const auto& src = source_files[source_of[i]];
    if (!r.dtype) data_error(r, template_path, "external initializer of type " + data_type_name(r.data_type));
    if (r.offset > src->size() || r.nbytes > src->size() - r.offset)
      data_error(r, template_path, "external data passes the end of " + r.location);
  }
  const bool single = sources.size() == 1;
  uint64_t laid = 0;
  if (!single) {
    for (size_t i = 0; i < model.initializers.size(); ++i) {
      if (!model.initializers[i].external) continue;
      laid = (laid + 63) / 64 * 64;
      new_offset[i] = laid;
      laid += model.initializers[i].nbytes;
    }
  } else {
    for (size_t i = 0; i < model.initializers.size(); ++i) new_offset[i] = model.initializers[i].offset;
  }

  // The new TensorProto of every initializer that changes.
  std::vector<std::optional<std::string>> new_payload(model.initializers.size());
  for (size_t i = 0; i < model.initializers.size(); ++i) {
    const OnnxTensorRecord& r = model.initializers[i];
    if (!r.external && !repl[i]) continue;
    std::string p;
    Wire w(bytes, r.payload.begin, r.payload.end, template_path, "initializer");
    bool data_written = false, saw_offset = false;
    while (!w.done()) {
      Field f = w.next();
      std::span<const std::byte> raw = bytes.subspan(f.begin, f.end - f.begin);
      if (r.external && f.number == 13) {
        Wire e(bytes, f.value_begin, f.end, template_path, "external_data entry");
        std::string key;
        while (!e.done()) {
          Field g = e.next();
          if (g.number == 1 && g.wire == kLen) key = text(bytes, g);
        }
        if (key == "location") {
          append_len_field(p, 13, string_entry("location", data_name));
        } else if (key == "offset" && !single) {
          append_len_field(p, 13, string_entry("offset", std::to_string(new_offset[i])));
          saw_offset = true;
        } else {
          append_bytes(p, raw);
        }
        continue;
      }
      if (!r.external && is_data_field(f.number)) {
        if (!data_written) {
          std::vector<std::byte> b = repl[i]->contiguous_bytes();
          append_len_field(p, 9, std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
          data_written = true;
        }
        continue;
      }
      append_bytes(p, raw);
    }
    if (!r.external && !data_written && r.nbytes > 0) {
      std::vector<std::byte> b = repl[i]->contiguous_bytes();
      append_len_field(p, 9, std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
    }
    if (r.external && !single && !saw_offset)
      append_len_field(p, 13, string_entry("offset", std::to_string(new_offset[i])));
    new_payload[i] = std::move(p);
  }

  // The new model: every byte copied, changed initializers re-encoded with
  // the lengths of their enclosing GraphProto fields.
  std::string model_out;
  model_out.reserve(bytes.size());
  uint64_t pos = 0;
  size_t next_init = 0;
  for (size_t g = 0; g < model.graph_entries.size(); ++g) {
    append_bytes(model_out, bytes.subspan(pos, model.graph_entries[g].begin - pos));
    std::string graph;
    uint64_t gpos = model.graph_payloads[g].begin;
    for (; next_init < model.initializers.size() && model.initializers[next_init].graph == g; ++next_init) {
      const OnnxTensorRecord& r = model.initializers[next_init];
      if (!new_payload[next_init]) continue;
      append_bytes(graph, bytes.subspan(gpos, r.entry.begin - gpos));
      append_len_field(graph, 5, *new_payload[next_init]);
      gpos = r.entry.end;
    }
    append_bytes(graph, bytes.subspan(gpos, model.graph_payloads[g].end - gpos));
    append_len_field(model_out, 7, graph);
    pos = model.graph_entries[g].end;
  }
  append_bytes(model_out, bytes.subspan(pos));

  if (!sources.empty()) {
    io::write_atomically(env, data_path.string(), [&](io::WritableFile& out) {
      std::vector<std::byte> buf;
      if (single) {
        // The template's file, with the replaced ranges patched.
        std::vector<std::pair<uint64_t, size_t>> patches;  // (offset, initializer)
        for (size_t i = 0; i < model.initializers.size(); ++i)
          if (model.initializers[i].external && repl[i]) patches.emplace_back(model.initializers[i].offset, i);
        std::sort(patches.begin(), patches.end());
        const auto& src = source_files[0];
        uint64_t at = 0;
        auto copy_to = [&](uint64_t until) {
          while (at < until) {
            const size_t n = static_cast<size_t>(std::min<uint64_t>(until - at, uint64_t{8} << 20));
            buf.resize(n);
            src->read_at(at, buf);
            out.append(buf);
            at += n;
          }
        };
        for (const auto& [off, i] : patches) {
          if (off < at)
            throw UnsupportedError("external initializers " + model.initializers[i].name +
                                       " overlaps another replaced initializer's bytes",
                                   ErrorContext{template_path, model.initializers[i].name, std::nullopt});
          copy_to(off);
          std::vector<std::byte> b = repl[i]->contiguous_bytes();
          out.append(b);
          at += b.size();
        }
        copy_to(src->size());
      } else {
        uint64_t at = 0;
        for (size_t i = 0; i < model.initializers.size(); ++i) {
          const OnnxTensorRecord& r = model.initializers[i];
          if (!r.external) continue;
          buf.assign(static_cast<size_t>(new_offset[i] - at), std::byte{0});
          out.append(buf);
          if (repl[i]) {
            out.append(repl[i]->contiguous_bytes());
          } else {
            buf.resize(static_cast<size_t>(r.nbytes));
            source_files[source_of[i]]->read_at(r.offset, buf);
            out.append(buf);
          }
          at = new_offset[i] + r.nbytes;
        }
      }
    });
    result.written.push_back(data_path.string());
  }
  io::write_atomically(env, out_path, [&](io::WritableFile& out) {
    out.append({reinterpret_cast<const std::byte*>(model_out.data()), model_out.size()});
  });
  result.written.push_back(out_path);
  return result;
}

}  // namespace ckpt::formats
