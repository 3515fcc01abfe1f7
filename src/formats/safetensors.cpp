#include "formats/safetensors.hpp"
#include "formats/safetensors_tree.hpp"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_set>

#include "ckpt/error.hpp"
#include "core/checked.hpp"
#include "core/hex.hpp"
#include "core/utf8.hpp"

namespace ckpt::formats {
namespace {

// ---------------------------------------------------------------- dtype codes

struct Code {
  std::string_view code;
  uint8_t bits;                // bits per value as the header counts values
  std::optional<DType> dtype;  // the torch dtype, none for the MX fp6 types
};

// The reference's `Dtype` enum in declaration order. The writer sorts by
// this order, descending, so the position is part of the file format.
// clang-format off
constexpr std::array<Code, 22> kCodes = {{
  {"BOOL",        8,  DType::bool_},
  {"F4",          4,  DType::float4_e2m1fn_x2},  // torch packs two F4 values per element
  {"F6_E2M3",     6,  std::nullopt},
  {"F6_E3M2",     6,  std::nullopt},
  {"U8",          8,  DType::uint8},
  {"I8",          8,  DType::int8},
  {"F8_E5M2",     8,  DType::float8_e5m2},
  {"F8_E4M3",     8,  DType::float8_e4m3fn},
  {"F8_E8M0",     8,  DType::float8_e8m0fnu},
  {"F8_E4M3FNUZ", 8,  DType::float8_e4m3fnuz},
  {"F8_E5M2FNUZ", 8,  DType::float8_e5m2fnuz},
  {"I16",         16, DType::int16},
  {"U16",         16, DType::uint16},
  {"F16",         16, DType::float16},
  {"BF16",        16, DType::bfloat16},
  {"I32",         32, DType::int32},
  {"U32",         32, DType::uint32},
  {"F32",         32, DType::float32},
  {"C64",         64, DType::complex64},
  {"F64",         64, DType::float64},
  {"I64",         64, DType::int64},
  {"U64",         64, DType::uint64},
}};
// clang-format on

const Code* code_by_name(std::string_view name) {
  for (const Code& c : kCodes)
    if (c.code == name) return &c;
  return nullptr;
}

const Code* code_by_dtype(DType dtype) {
  for (const Code& c : kCodes)
    if (c.dtype == dtype) return &c;
  return nullptr;
}

size_t rank_of(const Code* c) { return static_cast<size_t>(c - kCodes.data()); }

// ---------------------------------------------------------------- helpers

uint64_t load_u64_le(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

void store_u64_le(uint64_t v, std::byte* p) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}

// A name for error messages: printable, with quotes.
std::string quote_name(std::string_view s) {
  std::string out = "'";
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "'";
}

std::string shape_string(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// A JSON string exactly as serde_json writes it: only '"', '\\' and control
// characters are escaped (\b \t \n \f \r by name, the rest as \u00xx in
// lower-case hex); '/', DEL and all non-ASCII bytes are written raw.
void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          append_hex_byte(out, c);
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

// ---------------------------------------------------------------- header JSON

// Input iterator over the header bytes that publishes how far the JSON lexer
// has read, so that errors found in SAX callbacks can name a file offset.
class CountingIterator {
 public:
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;

  CountingIterator(const char* p, const char** sink) : p_(p), sink_(sink) {}
  reference operator*() const { return *p_; }
  CountingIterator& operator++() {
    *sink_ = ++p_;
    return *this;
  }
  CountingIterator operator++(int) {
    CountingIterator old = *this;
    ++*this;
    return old;
  }
  bool operator==(const CountingIterator& o) const { return p_ == o.p_; }
  bool operator!=(const CountingIterator& o) const { return p_ != o.p_; }

 private:
  const char* p_;
  const char** sink_;
};

struct RawEntry {
  std::string name;
  const Code* code = nullptr;
  bool has_shape = false;
  std::vector<uint64_t> shape;
  bool has_offsets = false;
  std::vector<uint64_t> offsets;
  size_t header_index = 0;
};

// SAX handler that checks the header against the schema while nlohmann's
// parser runs, without building a DOM:
//   { "__metadata__": null | {str: str, ...},
//     name: {"dtype": str, "shape": [uint...], "data_offsets": [uint, uint], other: any}, ... }
// Duplicate keys are refused at every level; unknown fields inside a tensor
// entry are skipped, as the reference reader does.
class HeaderSax {
 public:
  using json = nlohmann::json;

  HeaderSax(const std::string& file, const char* begin, const char* const* cursor)
      : file_(file), begin_(begin), cursor_(cursor) {}

  std::vector<RawEntry> entries;
  std::vector<std::pair<std::string, std::string>> metadata;

  // --- nlohmann SAX interface
  bool null() { return scalar(Scalar::null); }
  bool boolean(bool) { return scalar(Scalar::boolean); }
  bool number_integer(json::number_integer_t v) {
    // Non-negative integers arrive as number_unsigned, except "-0".
    if (v >= 0) return number_unsigned(static_cast<uint64_t>(v));
    scalar_value_ = std::to_string(v);
    return scalar(Scalar::negative);
  }
  bool number_unsigned(json::number_unsigned_t v) {
    unsigned_value_ = v;
    return scalar(Scalar::unsigned_int);
  }
  bool number_float(json::number_float_t, const std::string& text) {
    scalar_value_ = text;
    return scalar(Scalar::floating);
  }
  bool string(std::string& s) {
    scalar_value_ = std::move(s);
    return scalar(Scalar::string);
  }
  bool binary(json::binary_t&) { return scalar(Scalar::boolean); }  // not produced by JSON input

  bool start_object(size_t) { return open(true); }
  bool start_array(size_t) { return open(false); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }

  bool key(std::string& k) {
    Frame& f = stack_.back();
    if (!f.keys.insert(k).second) {
      switch (f.kind) {
        case Kind::top:
          if (k == "__metadata__") fail("header has two '__metadata__' entries");
          fail("header describes tensor " + quote_name(k) + " twice (duplicate JSON key)", k);
        case Kind::metadata:
          fail("'__metadata__' has key " + quote_name(k) + " twice");
        case Kind::entry:
          fail("tensor entry has field " + quote_name(k) + " twice", current().name);
        default:
          fail("duplicate JSON key " + quote_name(k) + " in the header", record());
      }
    }
    f.key = std::move(k);
    return true;
  }

  bool parse_error(size_t position, const std::string&, const nlohmann::detail::exception& ex) {
    std::string what = ex.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 5: ..." -> "parse error at ..."
    if (auto p = what.find("] "); p != std::string::npos) what = what.substr(p + 2);
    throw FormatError("header is not valid JSON: " + what,
                      ErrorContext{file_, "", 8 + (position ? position - 1 : 0)});
  }

 private:
  enum class Kind : uint8_t { top, metadata, entry, shape, offsets, skip };
  enum class Scalar : uint8_t { null, boolean, negative, unsigned_int, floating, string };
  struct Frame {
    Kind kind;
    bool object;
    std::string key;                       // objects: the key whose value comes next
    std::unordered_set<std::string> keys;  // objects: keys seen so far
  };

  [[noreturn]] void fail(const std::string& message, const std::string& rec = {}) const {
    throw FormatError(message, ErrorContext{file_, rec, 8 + static_cast<uint64_t>(*cursor_ - begin_)});
  }

  RawEntry& current() { return entries.back(); }

  // The tensor the parser is inside, if any (for error records).
  std::string record() const {
    for (const Frame& f : stack_)
      if (f.kind == Kind::entry) return entries.back().name;
    return {};
  }

  static const char* scalar_name(Scalar s) {
    switch (s) {
      case Scalar::null:
        return "null";
      case Scalar::boolean:
        return "a boolean";
      case Scalar::negative:
        return "a negative integer";
      case Scalar::unsigned_int:
        return "an integer";
      case Scalar::floating:
        return "a non-integer number";
      case Scalar::string:
        return "a string";
    }
    return "a value";
  }

  bool open(bool object) {
    if (stack_.size() >= kSafetensorsMaxJsonDepth)
      fail("header nests deeper than " + std::to_string(kSafetensorsMaxJsonDepth) + " levels", record());
    const char* what = object ? "an object" : "an array";
    Kind kind = Kind::skip;
    if (stack_.empty()) {
      kind = Kind::top;  // the header starts with '{' (checked before parsing)
    } else {
      Frame& p = stack_.back();
      switch (p.kind) {
        case Kind::top:
          if (p.key == "__metadata__") {
            if (!object) fail("'__metadata__' must be an object of strings, got an array");
            kind = Kind::metadata;
          } else {
            if (!object)
              fail("tensor entry must be an object {dtype, shape, data_offsets}, got an array", p.key);
            entries.push_back(RawEntry{p.key, nullptr, false, {}, false, {}, entries.size()});
            kind = Kind::entry;
          }
          break;
        case Kind::metadata:
          fail("'__metadata__' value for key " + quote_name(p.key) + " must be a string, got " + what);
        case Kind::entry:
          if (p.key == "dtype") fail(std::string("'dtype' must be a string, got ") + what, current().name);
          if (p.key == "shape" || p.key == "data_offsets") {
            if (object) fail("'" + p.key + "' must be an array of integers, got an object", current().name);
            if (p.key == "shape") {
              current().has_shape = true;
              kind = Kind::shape;
            } else {
              current().has_offsets = true;
              kind = Kind::offsets;
            }
          }
          break;  // unknown field: skipped
        case Kind::shape:
        case Kind::offsets:
          fail(std::string(p.kind == Kind::shape ? "'shape'" : "'data_offsets'") +
                   " must hold non-negative integers, got " + what,
               current().name);
        case Kind::skip:
          break;
      }
    }
    stack_.push_back(Frame{kind, object, {}, {}});
    return true;
  }

  bool close() {
    Frame& f = stack_.back();
    if (f.kind == Kind::entry) {
      RawEntry& e = current();
      const char* missing = e.code == nullptr ? "dtype"
                            : !e.has_shape    ? "shape"
                            : !e.has_offsets  ? "data_offsets"
                                              : nullptr;
      if (missing) fail("tensor entry has no '" + std::string(missing) + "' field", e.name);
    } else if (f.kind == Kind::offsets && current().offsets.size() != 2) {
      fail("'data_offsets' must be [begin, end], got " + std::to_string(current().offsets.size()) +
               " element(s)",
           current().name);
    }
    stack_.pop_back();
    return true;
  }

  bool scalar(Scalar s) {
    Frame& p = stack_.back();
    switch (p.kind) {
      case Kind::top:
        if (p.key == "__metadata__") {
          if (s == Scalar::null) return true;  // "no metadata", as the reference reads it
          fail(std::string("'__metadata__' must be an object of strings, got ") + scalar_name(s));
        }
        fail(
            std::string("tensor entry must be an object {dtype, shape, data_offsets}, got ") + scalar_name(s),
            p.key);
      case Kind::metadata:
        if (s != Scalar::string)
          fail("'__metadata__' value for key " + quote_name(p.key) + " must be a string, got " +
               scalar_name(s));
        metadata.emplace_back(p.key, std::move(scalar_value_));
        return true;
      case Kind::entry:
        if (p.key == "dtype") {
          if (s != Scalar::string)
            fail(std::string("'dtype' must be a string, got ") + scalar_name(s), current().name);
          current().code = code_by_name(scalar_value_);
          if (!current().code) fail("unknown dtype " + quote_name(scalar_value_), current().name);
        } else if (p.key == "shape" || p.key == "data_offsets") {
          fail("'" + p.key + "' must be an array of integers, got " + scalar_name(s), current().name);
        }
        return true;  // unknown field: ignored
      case Kind::shape:
      case Kind::offsets: {
        const char* field = p.kind == Kind::shape ? "'shape'" : "'data_offsets'";
        if (s == Scalar::negative)
          fail(std::string(field) + " holds " + scalar_value_ + "; it must be non-negative", current().name);
        if (s != Scalar::unsigned_int) {
          std::string got = scalar_name(s);
          if (s == Scalar::floating) got += " (" + scalar_value_ + ")";
          fail(std::string(field) + " must hold non-negative integers, got " + got, current().name);
        }
        auto& v = p.kind == Kind::shape ? current().shape : current().offsets;
        if (p.kind == Kind::offsets && v.size() == 2)
          fail("'data_offsets' must be [begin, end], got more than 2 elements", current().name);
        v.push_back(unsigned_value_);
        return true;
      }
      case Kind::skip:
        return true;
    }
    return true;
  }

  const std::string& file_;
  const char* begin_;
  const char* const* cursor_;
  std::vector<Frame> stack_;
  std::string scalar_value_;
  uint64_t unsigned_value_ = 0;
};

// The torch shape for a validated entry (F4: last dimension halved).
std::vector<int64_t> torch_shape(const std::string& file, const RawEntry& e, uint64_t abs_begin) {
  std::vector<int64_t> shape;
  shape.reserve(e.shape.size());
  for (uint64_t d : e.shape) {
    if (d > static_cast<uint64_t>(INT64_MAX))
      throw FormatError("dimension " + std::to_string(d) + " of shape " + shape_string(e.shape) +
                            " does not fit a torch size (int64)",
                        ErrorContext{file, e.name, abs_begin});
    shape.push_back(static_cast<int64_t>(d));
  }
  if (e.code->dtype == DType::float4_e2m1fn_x2) {
    // numel * 4 bits is a whole number of bytes here, so the shape is not 0-dim.
    if (shape.empty() || shape.back() % 2 != 0)
      throw UnsupportedError("F4 tensor has shape " + shape_string(e.shape) +
                                 "; torch's float4_e2m1fn_x2 packs two values per element, so the "
                                 "last dimension must be even",
                             ErrorContext{file, e.name, abs_begin});
    shape.back() /= 2;
  }
  return shape;
}

}  // namespace

// ---------------------------------------------------------------- reading

SafetensorsHeader read_safetensors_header(const io::RandomAccessFile& file) {
  const std::string& name = file.name();
  const uint64_t size = file.size();
  if (size < 8)
    throw FormatError("file is " + std::to_string(size) +
                          " bytes, too small for a safetensors header (the 8-byte length comes first)",
                      ErrorContext{name, "", 0});
  std::byte len_bytes[8];
  file.read_at(0, len_bytes);
  const uint64_t n = load_u64_le(len_bytes);
  if (n > kSafetensorsMaxHeaderBytes)
    throw LimitError("header length " + std::to_string(n) + " is over the limit of " +
                         std::to_string(kSafetensorsMaxHeaderBytes) + " bytes",
                     ErrorContext{name, "", 0});
  if (n > size - 8)
    throw FormatError("header length " + std::to_string(n) + " runs past the end of the file (" +
                          std::to_string(size) + " bytes): the file is truncated or not safetensors",
                      ErrorContext{name, "", 0});
  if (n == 0)
    throw FormatError("header length is 0; the header must be a JSON object", ErrorContext{name, "", 0});

  std::string header(static_cast<size_t>(n), '\0');
  file.read_at(8, {reinterpret_cast<std::byte*>(header.data()), header.size()});
  if (header[0] != '{')
    throw FormatError("header does not start with '{' (the safetensors spec requires a JSON object first)",
                      ErrorContext{name, "", 8});
  if (size_t bad = utf8::invalid_at(header); bad != std::string_view::npos)
    throw FormatError("header is not valid UTF-8", ErrorContext{name, "", 8 + bad});

  // nlohmann's lexer takes a NUL byte for the end of the input, so "{}\0junk"
  // would parse; raw NUL is never valid JSON.
  if (size_t nul = header.find('\0'); nul != std::string::npos)
    throw FormatError("header is not valid JSON: NUL byte", ErrorContext{name, "", 8 + nul});

  const char* cursor = header.data();
  HeaderSax sax(name, header.data(), &cursor);
  CountingIterator first(header.data(), &cursor), last(header.data() + header.size(), &cursor);
  nlohmann::json::sax_parse(first, last, &sax, nlohmann::json::input_format_t::json, /*strict=*/true);

  SafetensorsHeader out;
  out.data_start = 8 + n;
  out.metadata = std::move(sax.metadata);
  std::vector<RawEntry>& raw = sax.entries;

  // Validation in the reference's order: by data_offsets, each tensor must
  // start where the previous one ended (the first at 0), and hold exactly
  // numel * bits / 8 bytes.
  std::stable_sort(raw.begin(), raw.end(), [](const RawEntry& a, const RawEntry& b) {
    return a.offsets[0] != b.offsets[0] ? a.offsets[0] < b.offsets[0] : a.offsets[1] < b.offsets[1];
  });
  uint64_t expected = 0;
  const std::string* previous = nullptr;
  for (const RawEntry& e : raw) {
    const uint64_t b = e.offsets[0], end = e.offsets[1];
    std::optional<uint64_t> abs;
    if (b <= UINT64_MAX - out.data_start) abs = out.data_start + b;
    auto ctx = [&] { return ErrorContext{name, e.name, abs}; };
    const std::string offsets = "data_offsets [" + std::to_string(b) + ", " + std::to_string(end) + "]";
    if (end < b) throw FormatError(offsets + ": end is before begin", ctx());
    if (b != expected) {
      if (!previous)
        throw FormatError(offsets + ": the first tensor in the data section must start at 0", ctx());
      if (b > expected)
        throw FormatError(offsets + ": gap of " + std::to_string(b - expected) + " bytes after tensor " +
                              quote_name(*previous) + ", which ends at " + std::to_string(expected),
                          ctx());
      throw FormatError(offsets + ": overlaps tensor " + quote_name(*previous) + ", which ends at " +
                            std::to_string(expected),
                        ctx());
    }
    expected = end;
    previous = &e.name;

    uint64_t numel = 1, bits = 0;
    for (uint64_t d : e.shape)
      if (mul_overflows(numel, d, numel))
        throw FormatError("shape " + shape_string(e.shape) + " has more elements than fit in 64 bits", ctx());
    if (mul_overflows(numel, uint64_t{e.code->bits}, bits))
      throw FormatError("shape " + shape_string(e.shape) + " of " + std::string(e.code->code) +
                            " needs more bytes than fit in 64 bits",
                        ctx());
    if (bits % 8 != 0)
      throw FormatError(std::to_string(numel) + " " + std::string(e.code->code) + " values of " +
                            std::to_string(e.code->bits) + " bits (shape " + shape_string(e.shape) +
                            ") do not end on a byte boundary",
                        ctx());
    if (end - b != bits / 8)
      throw FormatError(offsets + " hold " + std::to_string(end - b) + " bytes but dtype " +
                            std::string(e.code->code) + " with shape " + shape_string(e.shape) + " needs " +
                            std::to_string(bits / 8),
                        ctx());
  }
  // Here expected <= 2^64 - 1 and data_start <= 8 + 10^8: no overflow in u64
  // unless expected is huge, which the comparison below handles.
  if (expected > size - out.data_start)
    throw FormatError("file is truncated: the tensors need " + std::to_string(expected) +
                          " bytes of data after the header but the file has " +
                          std::to_string(size - out.data_start),
                      ErrorContext{name, "", size});
  if (expected < size - out.data_start)
    throw FormatError(std::to_string(size - out.data_start - expected) +
                          " unexpected bytes after the last tensor's data (the data section must end "
                          "exactly at the end of the file)",
                      ErrorContext{name, "", out.data_start + expected});

  out.tensors.reserve(raw.size());
  for (RawEntry& e : raw) {
    const uint64_t abs_begin = out.data_start + e.offsets[0];
    if (!e.code->dtype)
      throw UnsupportedError(
          "dtype " + std::string(e.code->code) + " has no torch equivalent; ckpt cannot load this tensor",
          ErrorContext{name, e.name, abs_begin});
    SafetensorsEntry t;
    t.shape = torch_shape(name, e, abs_begin);
    t.name = std::move(e.name);
    t.dtype = *e.code->dtype;
    t.code = e.code->code;
    t.begin = abs_begin;
    t.end = out.data_start + e.offsets[1];
    out.tensors.push_back(std::move(t));
  }
  return out;
}

std::vector<std::pair<std::string, Tensor>> read_safetensors(const io::RandomAccessFile& file, bool mmap,
                                                             const std::string& device) {
  SafetensorsHeader header = read_safetensors_header(file);
  return read_safetensors(file, std::move(header), mmap, device);
}

std::vector<std::pair<std::string, Tensor>> read_safetensors(const io::RandomAccessFile& file,
                                                             SafetensorsHeader header, bool mmap,
                                                             const std::string& device, Storage::HugePages huge) {
  const std::byte* memory = mmap ? file.memory() : nullptr;
  std::shared_ptr<const void> keepalive = memory ? file.keepalive() : nullptr;
  std::vector<std::pair<std::string, Tensor>> out;
  out.reserve(header.tensors.size());
  for (SafetensorsEntry& e : header.tensors) {
    const size_t nbytes = static_cast<size_t>(e.nbytes());
    Storage storage;
    const std::byte* src = memory ? memory + e.begin : nullptr;
    if (src && nbytes > 0 && reinterpret_cast<uintptr_t>(src) % itemsize(e.dtype) == 0) {
      storage = Storage::mapped(keepalive, src, nbytes);
    } else {
      // One positioned read per tensor into its own storage: every byte is
      // copied once either way, and tensors keep independent lifetimes (no
      // false sharing when they are saved again, nothing pinned by a
      // tensor the caller dropped).
      storage = Storage::allocate(nbytes, huge);
      if (nbytes > 0) {
        if (src)
          std::memcpy(storage.mutable_data(), src, nbytes);
        else
          io::read_at_parallel(file, e.begin, {storage.mutable_data(), nbytes});
      }
    }
    std::vector<int64_t> strides = Tensor::contiguous_strides(e.shape);
    Tensor t(std::move(storage), e.dtype, std::move(e.shape), std::move(strides), 0);
    t.set_device(device);
    out.emplace_back(std::move(e.name), std::move(t));
  }
  return out;
}

Value load_safetensors(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options) {
  SafetensorsHeader header = read_safetensors_header(*file);
  // A pickle-free training checkpoint carries its object tree as JSON.
  std::string tree;
  for (const auto& [key, text] : header.metadata)
    if (key == kTreeMetadataKey) tree = text;
  auto tensors = read_safetensors(*file, std::move(header), options.mmap, options.map_location.apply("cpu"),
                                  huge_pages(options));
  if (!tree.empty()) {
    try {
      return decode_tree(tree, tensors, options);
    } catch (Error& e) {
      e.add_context(ErrorContext{"", std::string("__metadata__[\"") + kTreeMetadataKey + "\"]", std::nullopt});
      throw;
    }
  }
  Value v = Value::dict();
  Dict& d = v.as_dict();
  d.reserve(tensors.size());
  for (auto& [name, t] : tensors) d.set(Value(std::move(name)), Value(std::move(t)));
  return v;
}

// ---------------------------------------------------------------- writing

namespace {

struct Planned {
  const std::string* name;
  const Tensor* tensor;
  const Code* code;
  std::vector<int64_t> header_shape;
  uint64_t nbytes;
};

// The bytes a tensor's elements can address: [data, data + extent).
size_t extent_bytes(const Tensor& t) {
  int64_t last = 0;
  for (size_t i = 0; i < t.sizes().size(); ++i) last += (t.sizes()[i] - 1) * t.strides()[i];
  return static_cast<size_t>(last + 1) * t.itemsize();
}

// Python's safetensors refuses tensors whose memory overlaps another's in the
// same storage (safetensors.torch._find_shared_tensors: same storage pointer and size,
// then overlapping [data_ptr, end_ptr) ranges); tensors on separate storages
// or on disjoint parts of one storage are fine. Empty tensors hold no bytes
// and never conflict (torch reports data_ptr() == 0 for them).
void check_no_aliasing(const std::vector<Planned>& plan) {
  struct Area {
    const std::byte* storage;
    size_t storage_nbytes;
    const std::byte* start;
    const std::byte* stop;
    const std::string* name;
  };
  std::vector<Area> areas;
  for (const Planned& p : plan) {
    const Tensor& t = *p.tensor;
    if (t.numel() == 0 || t.storage().data() == nullptr || t.storage().nbytes() == 0) continue;
    areas.push_back({t.storage().data(), t.storage().nbytes(), t.data(), t.data() + extent_bytes(t), p.name});
  }
  std::sort(areas.begin(), areas.end(), [](const Area& a, const Area& b) {
    if (a.storage != b.storage) return std::less<>()(a.storage, b.storage);
    if (a.storage_nbytes != b.storage_nbytes) return a.storage_nbytes < b.storage_nbytes;
    if (a.start != b.start) return std::less<>()(a.start, b.start);
    if (a.stop != b.stop) return std::less<>()(a.stop, b.stop);
    return *a.name < *b.name;
  });
  std::vector<std::vector<const std::string*>> shared;
  for (size_t i = 0; i < areas.size();) {
    size_t j = i + 1;
    const std::byte* stop = areas[i].stop;
    while (j < areas.size() && areas[j].storage == areas[i].storage &&
           areas[j].storage_nbytes == areas[i].storage_nbytes && std::less<>()(areas[j].start, stop)) {
      stop = std::max(stop, areas[j].stop, std::less<>());
      ++j;
    }
    if (j - i > 1) {
      shared.emplace_back();
      for (size_t k = i; k < j; ++k) shared.back().push_back(areas[k].name);
      std::sort(shared.back().begin(), shared.back().end(),
                [](const std::string* a, const std::string* b) { return *a < *b; });
    }
    i = j;
  }
  if (shared.empty()) return;
  std::string groups;
  for (const auto& g : shared) {
    if (!groups.empty()) groups += "; ";
    for (size_t k = 0; k < g.size(); ++k) groups += (k ? ", " : "") + quote_name(*g[k]);
  }
  throw UnsupportedError("tensors share memory (" + groups +
                         "); safetensors stores every tensor separately and forbids aliasing: keep one "
                         "name per shared tensor (as safetensors.torch.save_model does) or clone the "
                         "others so that they own their data");
}

// Streams tensor elements in row-major order: contiguous tensors straight
// from their memory, others through a buffer of at most `chunk` bytes.
class DataWriter {
 public:
  DataWriter(io::WritableFile& out, size_t chunk) : out_(out), chunk_(chunk) {}

  void write(const Tensor& t) {
    if (t.numel() == 0) return;
    if (t.is_contiguous()) {
      out_.append({t.data(), t.nbytes()});
      return;
    }
    if (t.nbytes() <= chunk_) {
      if (buffer_.size() < t.nbytes())
        buffer_.resize(std::min(chunk_, std::max(t.nbytes(), buffer_.size() * 2)));
      t.copy_contiguous_to({buffer_.data(), t.nbytes()});
      out_.append({buffer_.data(), t.nbytes()});
      return;
    }
    // Too big for the buffer: split along dimension 0 (a non-contiguous
    // tensor has at least one dimension).
    const int64_t rows = t.sizes()[0];
    const size_t row_bytes = t.nbytes() / static_cast<size_t>(rows);
    const int64_t stride0 = t.strides()[0];
    if (row_bytes <= chunk_) {
      const auto step = static_cast<int64_t>(chunk_ / row_bytes);
      std::vector<int64_t> sizes = t.sizes();
      for (int64_t r = 0; r < rows; r += step) {
        sizes[0] = std::min(step, rows - r);
        write(Tensor(t.storage(), t.dtype(), sizes, t.strides(), t.storage_offset() + r * stride0));
      }
    } else {
      std::vector<int64_t> sizes(t.sizes().begin() + 1, t.sizes().end());
      std::vector<int64_t> strides(t.strides().begin() + 1, t.strides().end());
      for (int64_t r = 0; r < rows; ++r)
        write(Tensor(t.storage(), t.dtype(), sizes, strides, t.storage_offset() + r * stride0));
    }
  }

 private:
  io::WritableFile& out_;
  size_t chunk_;
  std::vector<std::byte> buffer_;
};

void check_utf8_name(std::string_view s, const std::string& what) {
  if (utf8::invalid_at(s) != std::string_view::npos)
    throw TypeError(what + " " + quote_name(s) + " is not valid UTF-8; safetensors headers are UTF-8 JSON");
}

}  // namespace

void write_safetensors(io::WritableFile& out, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::vector<std::pair<std::string, std::string>>& metadata, size_t chunk_bytes) {
  // Everything is checked before the first byte is written.
  std::vector<Planned> plan;
  plan.reserve(tensors.size());
  std::unordered_set<std::string_view> names;
  for (const auto& [name, t] : tensors) {
    check_utf8_name(name, "tensor name");
    if (name == "__metadata__")
      throw TypeError(
          "a tensor cannot be named '__metadata__' in safetensors (the header reserves that key)");
    if (!names.insert(name).second) throw TypeError("tensor " + quote_name(name) + " appears twice");
    if (!t.defined()) throw TypeError("tensor " + quote_name(name) + " is undefined (has no storage)");
    const Code* code = code_by_dtype(t.dtype());
    if (!code)
      throw UnsupportedError("tensor " + quote_name(name) + " has dtype " +
                             std::string(ckpt::name(t.dtype())) +
                             ", which safetensors cannot store (no dtype code); convert it or save a "
                             "torch checkpoint instead");
    std::vector<int64_t> shape = t.sizes();
    if (t.dtype() == DType::float4_e2m1fn_x2) {
      // The header counts 4-bit values: the last dimension doubles.
      if (shape.empty())
        throw UnsupportedError("tensor " + quote_name(name) +
                               " is a 0-dim float4_e2m1fn_x2; safetensors' F4 needs at least one "
                               "dimension to hold the two packed values");
      if (mul_overflows(shape.back(), int64_t{2}, shape.back()))
        throw UnsupportedError("tensor " + quote_name(name) + ": F4 shape overflows");
    }
    plan.push_back({&name, &t, code, std::move(shape), t.nbytes()});
  }
  std::unordered_set<std::string_view> keys;
  for (const auto& [k, v] : metadata) {
    check_utf8_name(k, "metadata key");
    check_utf8_name(v, "metadata value");
    if (!keys.insert(k).second) throw TypeError("metadata key " + quote_name(k) + " appears twice");
  }
  check_no_aliasing(plan);

  // The reference's order: dtype descending in its enum order, then name
  // (bytewise, as Rust compares strings).
  std::sort(plan.begin(), plan.end(), [](const Planned& a, const Planned& b) {
    if (a.code != b.code) return rank_of(a.code) > rank_of(b.code);
    return *a.name < *b.name;
  });

  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      if (!first) header += ',';
      first = false;
      append_json_string(header, k);
      header += ':';
      append_json_string(header, v);
    }
    header += '}';
  }
  uint64_t offset = 0;
  for (const Planned& p : plan) {
    if (header.size() > 1) header += ',';
    append_json_string(header, *p.name);
    header += ":{\"dtype\":\"";
    header += p.code->code;
    header += "\",\"shape\":[";
    for (size_t i = 0; i < p.header_shape.size(); ++i) {
      if (i) header += ',';
      header += std::to_string(p.header_shape[i]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + ",";
    offset += p.nbytes;
    header += std::to_string(offset) + "]}";
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');
  if (header.size() > kSafetensorsMaxHeaderBytes)
    throw UnsupportedError("the header would be " + std::to_string(header.size()) + " bytes, over the " +
                           std::to_string(kSafetensorsMaxHeaderBytes) +
                           " bytes safetensors readers accept; split the tensors over several files");

  std::byte len[8];
  store_u64_le(header.size(), len);
  out.append(len);
  out.append({reinterpret_cast<const std::byte*>(header.data()), header.size()});
  DataWriter data(out, std::max<size_t>(chunk_bytes, 64));
  for (const Planned& p : plan) data.write(*p.tensor);
}

}  // namespace ckpt::formats
