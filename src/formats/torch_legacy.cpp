#include "formats/torch_legacy.hpp"

#include <cstring>
#include <unordered_map>

#include "ckpt/error.hpp"
#include "core/checked.hpp"

namespace ckpt::formats {
namespace {

// torch/serialization.py: MAGIC_NUMBER = 0x1950a86a20f9469cfc6c, PROTOCOL_VERSION = 1001.
const BigInt kMagic{{0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19}};
constexpr int64_t kProtocolVersion = 1001;

int64_t read_i64_le(const io::RandomAccessFile& f, uint64_t offset) {
  unsigned char b[8];
  f.read_at(offset, std::as_writable_bytes(std::span<unsigned char>(b)));
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return static_cast<int64_t>(v);
}

pickle::Options base_options(const io::RandomAccessFile& f, const LoadOptions& options, const std::string& record,
                             pickle::Observer* observer) {
  pickle::Options p;
  p.policy = options.weights_only ? pickle::GlobalPolicy::weights_only : pickle::GlobalPolicy::inspect;
  p.observer = observer;
  p.numpy = options.numpy;
  p.file = f.name();
  p.record = record;
  return p;
}

// The storage type of a persistent id: a Global naming a *Storage class.
DType storage_dtype(const Value& type, const ErrorContext& where) {
  if (type.kind() != Value::Kind::Global)
    throw FormatError("storage type is a " + std::string(type.kind_name()) + ", expected a storage class", where);
  const Global& g = type.as_global();
  if (g.name == "UntypedStorage") return DType::uint8;
  if (auto d = dtype_from_storage_name(g.name)) return *d;
  throw FormatError("unknown storage type '" + g.qualified() + "'", where);
}

// ---------------------------------------------------------------- multi-pickle format

struct PendingStorage {
  Storage storage;
  DType dtype;
};

Value load_multi_pickle(const io::RandomAccessFile& f, std::span<const std::byte> bytes,
                        const LoadOptions& options, pickle::Observer* observer) {
  const std::string& file = f.name();
  size_t pos = 0;
  auto next = [&](const char* what, pickle::Options popts) {
    if (pos >= bytes.size())
      throw FormatError(std::string("file ends before the ") + what, ErrorContext{file, what, pos});
    size_t used = 0;
    popts.record = what;
    Value v = pickle::unpickle(bytes.subspan(pos), popts, &used);
    pos += used;
    return v;
  };
  pickle::Options plain = base_options(f, options, "", observer);

  Value magic = next("magic number", plain);
  if (magic.kind() != Value::Kind::BigInt || !(magic.as_bigint() == kMagic))
    throw FormatError("invalid magic number; not a legacy torch file", ErrorContext{file, "magic number", 0});
  Value proto = next("protocol version", plain);
  if (!proto.is_int() || proto.as_int() != kProtocolVersion)
    throw UnsupportedError("legacy protocol version " + proto.repr() + " (expected 1001)",
                           ErrorContext{file, "protocol version", std::nullopt});
  (void)next("sys_info", plain);  // data are little-endian whatever the writer's host said

  // The object pickle references storages before their bytes appear; they are
  // allocated (bounded by the file size) here and filled after the key list.
  const uint64_t file_size = f.size();
  uint64_t claimed = 0;
  std::unordered_map<std::string, PendingStorage> roots;
  std::unordered_map<std::string, StorageValue> views;
  pickle::Options popts = plain;
  popts.persistent_load = [&](const Value& pid, uint64_t offset) -> Value {
    ErrorContext where{file, "object pickle", offset};
    if (!pid.is_tuple() || pid.as_tuple().empty() || !pid.as_tuple()[0].is_string())
      throw FormatError("persistent id " + pid.repr() + " is not a tuple", where);
    const List& t = pid.as_tuple();
    const std::string& kind = t[0].as_string();
    if (kind == "module") {
      // ('module', class, source_file, source): whole-module pickles of old torch.
      if (t.size() < 2) throw FormatError("module persistent id is too short", where);
      return t[1];
    }
    if (kind != "storage" || t.size() != 6)
      throw FormatError("persistent id " + pid.repr() + " is not a 6-field storage reference", where);
    DType dtype = storage_dtype(t[1], where);
    if (!t[2].is_string() || !t[3].is_string() || !t[4].is_int() || t[4].as_int() < 0)
      throw FormatError("malformed storage persistent id " + pid.repr(), where);
    const std::string& key = t[2].as_string();
    const size_t esize = itemsize(dtype);
    auto it = roots.find(key);
    if (it == roots.end()) {
      uint64_t nbytes = checked_mul_size(static_cast<uint64_t>(t[4].as_int()), esize, "storage size");
      claimed = checked_add_u64(claimed, nbytes, "storage sizes");
      if (claimed > file_size)
        throw FormatError("storages declare " + std::to_string(claimed) + " bytes but the file has " +
                              std::to_string(file_size),
                          where);
      it = roots.emplace(key, PendingStorage{Storage::allocate(nbytes, huge_pages(options)), dtype}).first;
    } else if (it->second.dtype != dtype) {
      throw FormatError("storage '" + key + "' is used as " + std::string(name(it->second.dtype)) + " and " +
                            std::string(name(dtype)),
                        where);
    }
    StorageValue sv{it->second.storage, dtype, options.map_location.apply(t[3].as_string())};
    if (t[5].is_none()) return Value(sv);
    // view_metadata = (view_key, offset, size) in elements of the root.
    if (!t[5].is_tuple() || t[5].as_tuple().size() != 3)
      throw FormatError("malformed storage view metadata " + t[5].repr(), where);
    const List& vm = t[5].as_tuple();
    if (!vm[0].is_string() || !vm[1].is_int() || !vm[2].is_int() || vm[1].as_int() < 0 || vm[2].as_int() < 0)
      throw FormatError("malformed storage view metadata " + t[5].repr(), where);
    auto v = views.find(vm[0].as_string());
    if (v != views.end()) return Value(v->second);
    uint64_t off = checked_mul_size(static_cast<uint64_t>(vm[1].as_int()), esize, "view offset");
    uint64_t len = checked_mul_size(static_cast<uint64_t>(vm[2].as_int()), esize, "view size");
    if (off > sv.storage.nbytes() || len > sv.storage.nbytes() - off)
      throw FormatError("storage view " + t[5].repr() + " lies outside its storage", where);
    sv.storage = sv.storage.slice(off, len);
    views.emplace(vm[0].as_string(), sv);
    return Value(sv);
  };
  Value result = next("object pickle", popts);

  Value keys = next("storage keys", plain);
  if (!keys.is_list()) throw FormatError("storage key list is a " + std::string(keys.kind_name()), ErrorContext{file, "storage keys", pos});
  for (const Value& k : keys.as_list()) {
    if (!k.is_string()) throw FormatError("storage key " + k.repr() + " is not a string", ErrorContext{file, "storage keys", pos});
    auto it = roots.find(k.as_string());
    if (it == roots.end())
      throw FormatError("storage key '" + k.as_string() + "' is not referenced by the object pickle",
                        ErrorContext{file, "storage keys", pos});
    const Storage& s = it->second.storage;
    const size_t esize = itemsize(it->second.dtype);
    ErrorContext where{file, "storage '" + k.as_string() + "'", pos};
    int64_t numel = read_i64_le(f, pos);
    if (numel < 0 || static_cast<uint64_t>(numel) != s.nbytes() / esize)
      throw FormatError("storage holds " + std::to_string(numel) + " elements, the pickle declared " +
                            std::to_string(s.nbytes() / esize),
                        where);
    pos += 8;
    f.read_at(pos, {s.mutable_data(), s.nbytes()});  // one copy, straight into place
    pos += s.nbytes();
  }
  if (roots.size() != keys.as_list().size())
    throw FormatError("the object pickle references " + std::to_string(roots.size()) + " storages but " +
                          std::to_string(keys.as_list().size()) + " are stored",
                      ErrorContext{file, "storage keys", std::nullopt});
  return result;
}

// ---------------------------------------------------------------- tar format (PyTorch 0.1.x)

struct TarMember {
  uint64_t offset;
  uint64_t size;
};

uint64_t parse_octal(const char* p, size_t n, const ErrorContext& where) {
  uint64_t v = 0;
  size_t i = 0;
  while (i < n && (p[i] == ' ' || p[i] == '\0')) ++i;
  for (; i < n && p[i] >= '0' && p[i] <= '7'; ++i) {
    if (v > (UINT64_MAX >> 3)) throw FormatError("tar header number overflows", where);
    v = (v << 3) | static_cast<uint64_t>(p[i] - '0');
  }
  for (; i < n; ++i)
    if (p[i] != ' ' && p[i] != '\0') throw FormatError("tar header has a malformed number", where);
  return v;
}

std::unordered_map<std::string, TarMember> read_tar(const io::RandomAccessFile& f) {
  constexpr size_t kBlock = 512;
  constexpr size_t kMaxMembers = 4096;  // torch's tar files have four
  std::unordered_map<std::string, TarMember> members;
  uint64_t pos = 0;
  std::string pax_path;
  const uint64_t size = f.size();
  while (pos + kBlock <= size) {
    char h[kBlock];
    f.read_at(pos, std::as_writable_bytes(std::span<char>(h)));
    ErrorContext where{f.name(), "tar header", pos};
    bool zero = true;
    for (char c : h) zero = zero && c == 0;
    if (zero) break;  // end of archive
    uint64_t checksum = parse_octal(h + 148, 8, where);
    uint64_t sum = 0;
    int64_t signed_sum = 0;  // Python's tarfile also accepts the signed-char sum (Sun, NeXT)
    for (size_t i = 0; i < kBlock; ++i) {
      sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(h[i]);
      signed_sum += (i >= 148 && i < 156) ? ' ' : static_cast<signed char>(h[i]);
    }
    if (sum != checksum && static_cast<uint64_t>(signed_sum) != checksum)
      throw FormatError("tar header checksum mismatch", where);
    uint64_t len = parse_octal(h + 124, 12, where);
    uint64_t data = pos + kBlock;
    if (len > size - data) throw FormatError("tar member extends past the end of the file", where);
    char type = h[156];
    std::string name(h, strnlen(h, 100));
    if (std::memcmp(h + 257, "ustar", 5) == 0 && h[345] != 0)
      name = std::string(h + 345, strnlen(h + 345, 155)) + "/" + name;
    if (type == 'x') {  // PAX extended header: "len key=value\n" records
      std::string rec(len, '\0');
      f.read_at(data, std::as_writable_bytes(std::span<char>(rec)));
      size_t p = 0;
      while (p < rec.size()) {
        size_t sp = rec.find(' ', p);
        if (sp == std::string::npos) break;
        uint64_t n = std::strtoull(rec.c_str() + p, nullptr, 10);
        if (n == 0 || p + n > rec.size()) throw FormatError("malformed PAX header", where);
        std::string kv = rec.substr(sp + 1, p + n - sp - 2);
        if (kv.rfind("path=", 0) == 0) pax_path = kv.substr(5);
        p += n;
      }
    } else if (type == '0' || type == '\0') {
      if (!pax_path.empty()) name = std::exchange(pax_path, "");
      if (members.size() >= kMaxMembers) throw FormatError("tar archive has too many members", where);
      if (!members.emplace(name, TarMember{data, len}).second)
        throw FormatError("tar member '" + name + "' appears twice", where);
    } else {
      pax_path.clear();
    }
    pos = data + (len + kBlock - 1) / kBlock * kBlock;
  }
  return members;
}

Value load_tar(const io::RandomAccessFile& f, std::span<const std::byte> bytes, const LoadOptions& options,
               pickle::Observer* observer) {
  // torch refuses weights_only loads of tar files; ckpt does not need to: its
  // pickles go through the same allow-list as every other format.
  const std::string& file = f.name();
  auto members = read_tar(f);
  auto member = [&](const char* name) {
    auto it = members.find(name);
    if (it == members.end()) throw FormatError(std::string("tar archive has no '") + name + "' member", ErrorContext{file});
    return it->second;
  };
  pickle::Options plain = base_options(f, options, "", observer);
  std::unordered_map<std::string, Value> objects;  // key -> StorageValue / Tensor
  auto key_of = [](const Value& v) { return v.is_string() ? v.as_string() : v.repr(); };

  {  // storages: count, then (key, location, type) + i64 numel + bytes each, then views
    TarMember m = member("storages");
    auto span = bytes.subspan(m.offset, m.size);
    size_t pos = 0;
    auto next = [&](const char* what) {
      size_t used = 0;
      pickle::Options p = plain;
      p.record = std::string("storages: ") + what;
      if (pos >= span.size()) throw FormatError(std::string("'storages' ends before the ") + what, ErrorContext{file, "storages", pos});
      Value v = pickle::unpickle(span.subspan(pos), p, &used);
      pos += used;
      return v;
    };
    Value count = next("storage count");
    if (!count.is_int() || count.as_int() < 0 || static_cast<uint64_t>(count.as_int()) > m.size)
      throw FormatError("bad storage count " + count.repr(), ErrorContext{file, "storages", 0});
    for (int64_t i = 0; i < count.as_int(); ++i) {
      Value header = next("storage header");
      ErrorContext where{file, "storages", pos};
      if (!header.is_tuple() || header.as_tuple().size() != 3)
        throw FormatError("storage header " + header.repr() + " is not (key, location, type)", where);
      const List& h = header.as_tuple();
      DType dtype = storage_dtype(h[2], where);
      if (pos + 8 > span.size()) throw FormatError("storage size is truncated", where);
      int64_t numel = read_i64_le(f, m.offset + pos);
      pos += 8;
      uint64_t nbytes = numel < 0 ? UINT64_MAX : checked_mul_size(static_cast<uint64_t>(numel), itemsize(dtype), "storage size");
      if (nbytes > span.size() - pos) throw FormatError("storage of " + std::to_string(numel) + " elements passes the end of 'storages'", where);
      StorageValue sv{Storage::copy_of(span.subspan(pos, nbytes)), dtype,
                      options.map_location.apply(h[1].is_string() ? h[1].as_string() : "cpu")};
      pos += nbytes;
      objects[key_of(h[0])] = Value(sv);
    }
    Value views = next("storage views");
    if (!views.is_list()) throw FormatError("storage views are not a list", ErrorContext{file, "storages", pos});
    for (const Value& v : views.as_list()) {
      ErrorContext where{file, "storages", pos};
      if (!v.is_tuple() || v.as_tuple().size() != 4) throw FormatError("bad storage view " + v.repr(), where);
      const List& t = v.as_tuple();
      auto root = objects.find(key_of(t[1]));
      if (root == objects.end() || root->second.kind() != Value::Kind::Storage)
        throw FormatError("storage view of unknown storage " + t[1].repr(), where);
      StorageValue sv = root->second.as_storage();
      if (!t[2].is_int() || !t[3].is_int() || t[2].as_int() < 0 || t[3].as_int() < 0)
        throw FormatError("bad storage view " + v.repr(), where);
      size_t esize = itemsize(sv.dtype);
      uint64_t off = checked_mul_size(static_cast<uint64_t>(t[2].as_int()), esize, "view offset");
      uint64_t len = checked_mul_size(static_cast<uint64_t>(t[3].as_int()), esize, "view size");
      if (off > sv.storage.nbytes() || len > sv.storage.nbytes() - off)
        throw FormatError("storage view " + v.repr() + " lies outside its storage", where);
      sv.storage = sv.storage.slice(off, len);
      objects[key_of(t[0])] = Value(sv);
    }
  }
  {  // tensors: count, then (key, storage key, type) + i32 ndim + pad + sizes + strides + offset
    TarMember m = member("tensors");
    auto span = bytes.subspan(m.offset, m.size);
    size_t pos = 0;
    pickle::Options p = plain;
    p.record = "tensors";
    size_t used = 0;
    Value count = pickle::unpickle(span, p, &used);
    pos += used;
    if (!count.is_int() || count.as_int() < 0 || static_cast<uint64_t>(count.as_int()) > m.size)
      throw FormatError("bad tensor count " + count.repr(), ErrorContext{file, "tensors", 0});
    for (int64_t i = 0; i < count.as_int(); ++i) {
      if (pos >= span.size()) throw FormatError("'tensors' is truncated", ErrorContext{file, "tensors", pos});
      Value header = pickle::unpickle(span.subspan(pos), p, &used);
      pos += used;
      ErrorContext where{file, "tensors", pos};
      if (!header.is_tuple() || header.as_tuple().size() != 3)
        throw FormatError("tensor header " + header.repr() + " is not (key, storage, type)", where);
      const List& h = header.as_tuple();
      auto st = objects.find(key_of(h[1]));
      if (st == objects.end() || st->second.kind() != Value::Kind::Storage)
        throw FormatError("tensor of unknown storage " + h[1].repr(), where);
      if (pos + 8 > span.size()) throw FormatError("tensor header is truncated", where);
      unsigned char nd[4];
      std::memcpy(nd, span.data() + pos, 4);
      int32_t ndim = static_cast<int32_t>(nd[0] | nd[1] << 8 | nd[2] << 16 | static_cast<uint32_t>(nd[3]) << 24);
      pos += 8;  // ndim + 4 bytes of padding
      if (ndim < 0 || ndim > 64) throw FormatError("tensor has " + std::to_string(ndim) + " dimensions", where);
      size_t need = (2 * static_cast<size_t>(ndim) + 1) * 8;
      if (need > span.size() - pos) throw FormatError("tensor shape is truncated", where);
      std::vector<int64_t> sizes(static_cast<size_t>(ndim)), strides(static_cast<size_t>(ndim));
      for (auto& s : sizes) { s = read_i64_le(f, m.offset + pos); pos += 8; }
      for (auto& s : strides) { s = read_i64_le(f, m.offset + pos); pos += 8; }
      int64_t offset = read_i64_le(f, m.offset + pos);
      pos += 8;
      const StorageValue& sv = st->second.as_storage();
      try {
        Tensor t(sv.storage, sv.dtype, sizes, strides, offset);
        t.set_device(sv.device);
        objects[key_of(h[0])] = Value(std::move(t));
      } catch (Error& e) {
        e.add_context(where);
        throw;
      }
    }
  }
  TarMember m = member("pickle");
  pickle::Options p = plain;
  p.record = "pickle";
  p.persistent_load = [&](const Value& pid, uint64_t offset) -> Value {
    if (pid.is_tuple() && !pid.as_tuple().empty()) return pid.as_tuple()[0];  // (class, source_file, source)
    auto it = objects.find(key_of(pid));
    if (it == objects.end())
      throw FormatError("persistent id " + pid.repr() + " names no stored tensor or storage", ErrorContext{file, "pickle", offset});
    return it->second;
  };
  return pickle::unpickle(bytes.subspan(m.offset, m.size), p);
}

// tarfile.nti: NUL-terminated ASCII octal with surrounding whitespace, or
// base-256 when the first byte is 0200 or 0377.
bool python_nti(const unsigned char* p, size_t n, int64_t* out) {
  if (p[0] == 0200 || p[0] == 0377) {
    // Always a number to Python. Only the 8-byte checksum field's value is
    // used here (7 bytes fit); wider fields report 0.
    if (n > 8) {
      *out = 0;
      return true;
    }
    uint64_t v = 0;
    for (size_t i = 1; i < n; ++i) v = (v << 8) | p[i];
    *out = p[0] == 0377 ? static_cast<int64_t>(v) - (int64_t{1} << (8 * (n - 1))) : static_cast<int64_t>(v);
    return true;
  }
  size_t end = 0;
  while (end < n && p[end] != 0) ++end;
  size_t b = 0;
  auto space = [](unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' || (c >= 0x1c && c <= 0x1f); };
  while (b < end && space(p[b])) ++b;
  while (end > b && space(p[end - 1])) --end;
  int64_t v = 0;
  if (b == end) {
    *out = 0;
    return true;
  }
  size_t i = b;
  if (p[i] == '+' || p[i] == '-') ++i;  // int(s, 8) takes a sign
  if (i == end) return false;
  for (; i < end; ++i) {
    if (p[i] == '_' && i + 1 < end && i > b && p[i - 1] != '_') continue;  // int() accepts single underscores
    if (p[i] < '0' || p[i] > '7') return false;
    if (v > (INT64_MAX >> 4)) return false;
    v = v * 8 + (p[i] - '0');
  }
  *out = p[b] == '-' ? -v : v;
  return true;
}

}  // namespace

bool is_tar_header(std::span<const std::byte> block) noexcept {
  if (block.size() < 512) return false;  // TruncatedHeaderError -> ReadError
  const auto* h = reinterpret_cast<const unsigned char*>(block.data());
  bool zero = true;
  for (size_t i = 0; i < 512 && zero; ++i) zero = h[i] == 0;
  if (zero) return true;  // EOFHeaderError at offset 0: an empty archive opens
  int64_t chk = 0;
  if (!python_nti(h + 148, 8, &chk)) return false;
  int64_t unsigned_sum = 256, signed_sum = 256;
  for (size_t i = 0; i < 512; ++i) {
    if (i >= 148 && i < 156) continue;
    unsigned_sum += h[i];
    signed_sum += static_cast<signed char>(h[i]);
  }
  if (chk != unsigned_sum && chk != signed_sum) return false;
  // frombuf then parses mode, uid, gid, size, mtime, devmajor, devminor.
  static constexpr size_t kFields[][2] = {{100, 8}, {108, 8}, {116, 8}, {124, 12}, {136, 12}, {329, 8}, {337, 8}};
  for (const auto& f : kFields) {
    int64_t v = 0;
    if (!python_nti(h + f[0], f[1], &v)) return false;
  }
  return true;
}

bool starts_with_legacy_magic(std::span<const std::byte> head) noexcept {
  try {
    pickle::Options p;
    p.policy = pickle::GlobalPolicy::inspect;
    p.persistent_load = [](const Value& pid, uint64_t) { return pid; };
    Value v = pickle::unpickle(head, p);
    return v.kind() == Value::Kind::BigInt && v.as_bigint() == kMagic;
  } catch (...) {
    return false;
  }
}

Value load_torch_legacy(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options,
                        pickle::Observer* observer) {
  // The pickles are parsed from memory: the file as memory (mapped, not reopened by name).
  std::shared_ptr<io::RandomAccessFile> mem = io::as_memory(file);
  std::span<const std::byte> bytes(mem->memory(), mem->size());
  return load_multi_pickle(*mem, bytes, options, observer);
}

Value load_torch_tar(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options,
                     pickle::Observer* observer) {
  std::shared_ptr<io::RandomAccessFile> mem = io::as_memory(file);
  std::span<const std::byte> bytes(mem->memory(), mem->size());
  return load_tar(*mem, bytes, options, observer);
}

}  // namespace ckpt::formats
