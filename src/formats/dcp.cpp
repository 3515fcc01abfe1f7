#include "formats/dcp.hpp"

#include <algorithm>
#include <map>
#include <random>

#include "ckpt/error.hpp"
#include "core/checked.hpp"
#include "pickle/pickler.hpp"
#include "pickle/unpickler.hpp"

namespace ckpt::formats::dcp {

namespace {

constexpr const char* kFilesystemModule = "torch.distributed.checkpoint.filesystem";
constexpr size_t kMaxDims = 64;

// ---------------------------------------------------------------- reading

class Parser {
 public:
  explicit Parser(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& what, const std::string& where = "") const {
    throw FormatError("DCP .metadata: " + what, ErrorContext{file_, where});
  }

  // The attribute dict of an inert dataclass instance module.name (its
  // BUILD state, or (state, slotstate)); `optional_state`: no BUILD is fine
  // (dataclasses without fields).
  const Dict* attrs(const Value& v, const char* module, const char* name, const std::string& where,
                    bool optional_state = false) const {
    if (!v.is_object() || v.as_object().module != module || v.as_object().name != name)
      fail("expected a " + std::string(module) + "." + name + ", found a " + std::string(v.kind_name()) +
               (v.is_object() ? " " + v.as_object().qualified() : ""),
           where);
    const Value& s = v.as_object().state;
    if (s.is_dict()) return &s.as_dict();
    if (s.is_tuple() && s.as_tuple().size() == 2 && s.as_tuple()[0].is_dict()) return &s.as_tuple()[0].as_dict();
    if (optional_state && s.is_none()) return nullptr;
    fail(std::string(name) + " has no attribute dict", where);
  }

  static const Value* get(const Dict* d, const char* key) { return d ? d->find(Value(key)) : nullptr; }
  const Value& need(const Dict* d, const char* key, const std::string& where) const {
    const Value* v = get(d, key);
    if (!v) fail(std::string("missing field '") + key + "'", where);
    return *v;
  }

  std::vector<int64_t> dims(const Value& v, const char* what, const std::string& where, bool nonneg = true) const {
    const std::vector<int64_t>* d = nullptr;
    std::vector<int64_t> tmp;
    if (v.kind() == Value::Kind::Size) {
      d = &v.as_size().dims;
    } else if (v.is_tuple() || v.is_list()) {
      for (const Value& x : v.items()) {
        if (!x.is_int()) fail(std::string(what) + " holds a " + std::string(x.kind_name()) + ", not an int", where);
        tmp.push_back(x.as_int());
      }
      d = &tmp;
    } else {
      fail(std::string(what) + " is a " + std::string(v.kind_name()) + ", not a torch.Size", where);
    }
    if (d->size() > kMaxDims) fail(std::string(what) + " has " + std::to_string(d->size()) + " dims (at most 64)", where);
    if (nonneg)
      for (int64_t x : *d)
        if (x < 0) fail(std::string(what) + " holds a negative value " + std::to_string(x), where);
    return *d;
  }

  uint64_t u64(const Value& v, const char* what, const std::string& where) const {
    if (!v.is_int() || v.as_int() < 0) fail(std::string(what) + " is not a non-negative int", where);
    return static_cast<uint64_t>(v.as_int());
  }

  DType tensor_dtype(const Value& props, const std::string& where) const {
    const Value& s = props.is_object() ? props.as_object().state : props;
    if (props.is_object() && (props.as_object().module != kMetadataModule || props.as_object().name != "TensorProperties"))
      fail("properties are a " + props.as_object().qualified() + ", not TensorProperties", where);
    const Value* d = nullptr;
    if (s.is_tuple() && !s.as_tuple().empty()) d = &s.as_tuple()[0];  // __getstate__: (dtype, layout, ...)
    else if (s.is_dict()) d = s.as_dict().find(Value("dtype"));        // a plain dataclass state
    if (!d || d->kind() != Value::Kind::DType) fail("TensorProperties without a torch dtype", where);
    return d->as_dtype();
  }

  StorageInfo storage_info(const Value& v, const std::string& where) const {
    const Dict* d = attrs(v, kFilesystemModule, "_StorageInfo", where);
    StorageInfo s;
    const Value& path = need(d, "relative_path", where);
    if (!path.is_string()) fail("relative_path is not a str", where);
    s.relative_path = path.as_string();
    const std::string& p = s.relative_path;
    if (p.empty() || p == "." || p == ".." || p.find('/') != std::string::npos || p.find('\\') != std::string::npos ||
        p.find('\0') != std::string::npos)
      fail("data file name '" + p + "' is not a plain file name inside the checkpoint", where);
    s.offset = u64(need(d, "offset", where), "offset", where);
    s.length = u64(need(d, "length", where), "length", where);
    (void)checked_add_u64(s.offset, s.length, "record offset + length");
    if (const Value* t = get(d, "transform_descriptors"); t && !t->is_none() && !t->items().empty())
      throw UnsupportedError("record uses storage transforms (" + t->repr() +
                                 "), which ckpt does not read",
                             ErrorContext{file_, where});
    return s;
  }

  Metadata parse(const Value& root) const {
    const Dict* md = attrs(root, kMetadataModule, "Metadata", "Metadata");
    Metadata out;
    if (const Value* v = get(md, "version"); v && v->is_string()) out.version = v->as_string();
    const Value& sdm = need(md, "state_dict_metadata", "Metadata");
    if (!sdm.is_dict()) fail("state_dict_metadata is not a dict", "Metadata");
    std::map<std::string, size_t> by_fqn;
    for (const auto& [k, v] : sdm.as_dict()) {
      if (!k.is_string()) fail("a state_dict_metadata key is a " + std::string(k.kind_name()), "state_dict_metadata");
      Entry e;
      e.fqn = k.as_string();
      const std::string where = e.fqn;
      if (v.is_object() && v.as_object().name == "BytesStorageMetadata" && v.as_object().module == kMetadataModule) {
        e.is_tensor = false;
      } else {
        const Dict* t = attrs(v, kMetadataModule, "TensorStorageMetadata", where);
        e.is_tensor = true;
        e.dtype = tensor_dtype(need(t, "properties", where), where);
        e.size = dims(need(t, "size", where), "size", where);
        const Value& chunks = need(t, "chunks", where);
        if (!chunks.is_list()) fail("chunks is not a list", where);
        for (const Value& c : chunks.as_list()) {
          const Dict* cd = attrs(c, kMetadataModule, "ChunkStorageMetadata", where);
          Chunk ch;
          ch.offsets = dims(need(cd, "offsets", where), "chunk offsets", where);
          ch.sizes = dims(need(cd, "sizes", where), "chunk sizes", where);
          e.chunks.push_back(std::move(ch));
        }
        if (std::string bad = check_tiling(e.size, e.chunks); !bad.empty()) fail(bad, where);
      }
      if (!by_fqn.emplace(e.fqn, out.entries.size()).second) fail("duplicate entry", where);
      out.entries.push_back(std::move(e));
    }

    // storage_data: MetadataIndex(fqn, offset) -> _StorageInfo
    const Value& sd = need(md, "storage_data", "Metadata");
    if (!sd.is_dict()) fail("storage_data is not a dict", "storage_data");
    std::vector<std::vector<bool>> seen(out.entries.size());
    std::vector<bool> bytes_seen(out.entries.size(), false);
    for (size_t i = 0; i < out.entries.size(); ++i) seen[i].assign(out.entries[i].chunks.size(), false);
    for (const auto& [k, v] : sd.as_dict()) {
      const Dict* idx = attrs(k, kMetadataModule, "MetadataIndex", "storage_data");
      const Value& fqn = need(idx, "fqn", "storage_data");
      if (!fqn.is_string()) fail("MetadataIndex.fqn is not a str", "storage_data");
      const std::string where = fqn.as_string();
      auto it = by_fqn.find(fqn.as_string());
      if (it == by_fqn.end()) fail("storage_data names an item state_dict_metadata does not have", where);
      Entry& e = out.entries[it->second];
      StorageInfo info = storage_info(v, where);
      const Value* off = get(idx, "offset");
      if (!e.is_tensor) {
        if (bytes_seen[it->second]) fail("two records for one value", where);
        bytes_seen[it->second] = true;
        e.bytes = std::move(info);
        continue;
      }
      if (!off || off->is_none()) fail("a tensor record without chunk offsets", where);
      std::vector<int64_t> o = dims(*off, "MetadataIndex.offset", where);
      // The index hint first, then a search (as torch's find_state_dict_object).
      size_t pos = e.chunks.size();
      if (const Value* h = get(idx, "index"); h && h->is_int() && h->as_int() >= 0 &&
                                                static_cast<uint64_t>(h->as_int()) < e.chunks.size() &&
                                                e.chunks[static_cast<size_t>(h->as_int())].offsets == o)
        pos = static_cast<size_t>(h->as_int());
      for (size_t j = 0; pos == e.chunks.size() && j < e.chunks.size(); ++j)
        if (e.chunks[j].offsets == o) pos = j;
      if (pos == e.chunks.size()) fail("a record for chunk offsets that no chunk has", where);
      if (seen[it->second][pos]) fail("two records for one chunk", where);
      seen[it->second][pos] = true;
      e.chunks[pos].storage = std::move(info);
    }
    for (size_t i = 0; i < out.entries.size(); ++i) {
      const Entry& e = out.entries[i];
      const std::string where = e.fqn;
      if (!e.is_tensor && !bytes_seen[i]) fail("no record for this value in storage_data", where);
      for (size_t j = 0; j < e.chunks.size(); ++j)
        if (!seen[i][j]) fail("no record for chunk " + std::to_string(j) + " in storage_data", where);
    }

    // planner_data: fqn -> path in the nested state dict (DefaultSavePlanner).
    if (const Value* pd = get(md, "planner_data"); pd && pd->is_dict()) {
      for (const auto& [k, v] : pd->as_dict()) {
        if (!k.is_string()) continue;
        auto it = by_fqn.find(k.as_string());
        if (it == by_fqn.end() || !(v.is_tuple() || v.is_list()) || v.items().empty()) continue;
        std::vector<Value> path;
        for (const Value& p : v.items()) {
          if (!p.is_string() && !p.is_int()) fail("planner_data path holds a " + std::string(p.kind_name()),
                                                 k.as_string());
          path.push_back(p);
        }
        out.entries[it->second].path = std::move(path);
      }
    }
    return out;
  }

 private:
  std::string file_;
};

Value decode(std::span<const std::byte> bytes, const std::string& file) {
  pickle::Options o;
  o.policy = pickle::GlobalPolicy::inspect;
  o.file = file;
  o.record = ".metadata";
  return pickle::unpickle(bytes, o);
}

// ---------------------------------------------------------------- writing

Value obj(const char* module, const char* name, const char* how, Value args, Value state) {
  auto o = std::make_shared<Object>();
  o->module = module;
  o->name = name;
  o->how = how;
  o->args = std::move(args);
  o->state = std::move(state);
  return Value(o);
}

// A dataclass instance as pickle protocol 2 writes it: cls.__new__(cls), then BUILD(__dict__).
Value dataclass(const char* module, const char* name, Value state) {
  return obj(module, name, "NEWOBJ", Value::tuple(), std::move(state));
}

Value fields(std::initializer_list<std::pair<const char*, Value>> items) {
  Value d = Value::dict();
  for (const auto& [k, v] : items) d.as_dict().set(Value(k), v);
  return d;
}

Value size_value(const std::vector<int64_t>& dims) { return Value(Size{dims}); }

Value storage_info_value(const StorageInfo& s) {
  return dataclass(kFilesystemModule, "_StorageInfo",
                   fields({{"relative_path", Value(s.relative_path)},
                           {"offset", Value(static_cast<int64_t>(s.offset))},
                           {"length", Value(static_cast<int64_t>(s.length))}}));
}

Value metadata_index(const std::string& fqn, const std::vector<int64_t>* offset, int64_t index) {
  Value d = Value::dict();
  d.as_dict().set(Value("fqn"), Value(fqn));
  if (offset) {
    d.as_dict().set(Value("index"), Value(index));
    d.as_dict().set(Value("offset"), size_value(*offset));
  } else {
    d.as_dict().set(Value("index"), Value());
  }
  return dataclass(kMetadataModule, "MetadataIndex", d);
}

std::string random_uuid() {
  std::random_device rd;
  std::mt19937_64 g((static_cast<uint64_t>(rd()) << 32) ^ rd());
  uint64_t a = g(), b = g();
  a = (a & ~0xf000ull) | 0x4000ull;                    // version 4
  b = (b & ~(3ull << 62)) | (2ull << 62);               // variant 10
  char buf[40];
  std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%04x-%012llx", static_cast<unsigned>(a >> 32),
                static_cast<unsigned>((a >> 16) & 0xffff), static_cast<unsigned>(a & 0xffff),
                static_cast<unsigned>(b >> 48), static_cast<unsigned long long>(b & 0xffffffffffffull));
  return buf;
}

}  // namespace

std::string check_tiling(const std::vector<int64_t>& size, const std::vector<Chunk>& chunks) {
  int64_t numel = 1;
  for (int64_t d : size) numel = checked_mul(numel, d, "tensor numel");
  int64_t covered = 0;
  std::vector<size_t> order;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const Chunk& c = chunks[i];
    const std::string which = "chunk " + std::to_string(i);
    if (c.offsets.size() != size.size() || c.sizes.size() != size.size())
      return which + " has " + std::to_string(c.sizes.size()) + " dims, the tensor " + std::to_string(size.size());
    int64_t vol = 1;
    for (size_t d = 0; d < size.size(); ++d) {
      if (c.offsets[d] < 0 || c.sizes[d] < 0 || c.offsets[d] > size[d] || c.sizes[d] > size[d] - c.offsets[d])
        return which + " (offsets " + format_shape(c.offsets) + ", sizes " + format_shape(c.sizes) +
               ") reaches outside the tensor " + format_shape(size);
      vol = checked_mul(vol, c.sizes[d], "chunk numel");
    }
    covered = checked_add(covered, vol, "chunk numel total");
    if (vol > 0) order.push_back(i);
  }
  // Overlap: sweep along dim 0 (boxes sorted by start; compare with those still open).
  auto start = [&](size_t i) { return size.empty() ? 0 : chunks[i].offsets[0]; };
  auto end = [&](size_t i) { return size.empty() ? 1 : chunks[i].offsets[0] + chunks[i].sizes[0]; };
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return start(a) < start(b); });
  std::vector<size_t> open;
  for (size_t i : order) {
    std::erase_if(open, [&](size_t j) { return end(j) <= start(i); });
    for (size_t j : open) {
      bool overlap = true;
      for (size_t d = 1; d < size.size() && overlap; ++d)
        overlap = chunks[i].offsets[d] < chunks[j].offsets[d] + chunks[j].sizes[d] &&
                  chunks[j].offsets[d] < chunks[i].offsets[d] + chunks[i].sizes[d];
      if (overlap) return "chunks " + std::to_string(j) + " and " + std::to_string(i) + " overlap";
    }
    open.push_back(i);
  }
  if (covered != numel)
    return "chunks cover " + std::to_string(covered) + " of the tensor's " + std::to_string(numel) + " elements";
  return "";
}

bool is_metadata(std::span<const std::byte> bytes) {
  if (bytes.size() < 2 || bytes[0] != std::byte{0x80}) return false;
  try {
    Value v = decode(bytes, "");
    return v.is_object() && v.as_object().module == kMetadataModule && v.as_object().name == "Metadata";
  } catch (const Error&) {
    return false;
  }
}

Metadata parse_metadata(std::span<const std::byte> bytes, const std::string& file) {
  Value root = decode(bytes, file);
  return Parser(file).parse(root);
}

std::string write_metadata(const Metadata& m, const std::string& checkpoint_id) {
  Value sdm = Value::dict(), planner = Value::dict(), storage = Value::dict();
  // TensorProperties.__getstate__: (dtype, layout, requires_grad, memory format, pin_memory, strides)
  Value layout = obj("torch.serialization", "_get_layout", "REDUCE", Value::tuple({Value("torch.strided")}), Value());
  Value contiguous = obj("builtins", "getattr", "REDUCE",
                         Value::tuple({Value(Global{kMetadataModule, "_MEM_FORMAT_ENCODING"}),
                                       Value("TORCH_CONTIGUOUS_FORMAT")}),
                         Value());
  for (const Entry& e : m.entries) {
    if (!e.is_tensor) {
      sdm.as_dict().set(Value(e.fqn), dataclass(kMetadataModule, "BytesStorageMetadata", Value()));
      storage.as_dict().set(metadata_index(e.fqn, nullptr, 0), storage_info_value(e.bytes));
    } else {
      List strides;
      for (int64_t s : Tensor::contiguous_strides(e.size)) strides.emplace_back(s);
      Value props = dataclass(kMetadataModule, "TensorProperties",
                              Value::tuple({Value(e.dtype), layout, Value(false), contiguous, Value(false),
                                            Value::tuple(std::move(strides))}));
      List chunks;
      for (size_t i = 0; i < e.chunks.size(); ++i) {
        const Chunk& c = e.chunks[i];
        chunks.push_back(dataclass(kMetadataModule, "ChunkStorageMetadata",
                                   fields({{"offsets", size_value(c.offsets)}, {"sizes", size_value(c.sizes)}})));
        storage.as_dict().set(metadata_index(e.fqn, &c.offsets, static_cast<int64_t>(i)),
                              storage_info_value(c.storage));
      }
      sdm.as_dict().set(Value(e.fqn),
                        dataclass(kMetadataModule, "TensorStorageMetadata",
                                  fields({{"properties", props},
                                          {"size", size_value(e.size)},
                                          {"chunks", Value::list(std::move(chunks))}})));
    }
    List path = e.path.empty() ? List{Value(e.fqn)} : List(e.path.begin(), e.path.end());
    planner.as_dict().set(Value(e.fqn), Value::tuple(std::move(path)));
  }
  Value storage_meta = dataclass(kMetadataModule, "StorageMeta",
                                 fields({{"checkpoint_id", Value(checkpoint_id)},
                                         {"save_id", Value(random_uuid())},
                                         {"load_id", Value()},
                                         {"modules", Value::list()}}));
  Value root = dataclass(kMetadataModule, "Metadata",
                         fields({{"state_dict_metadata", sdm},
                                 {"planner_data", planner},
                                 {"storage_data", storage},
                                 {"storage_meta", storage_meta},
                                 {"version", Value(m.version.empty() ? std::string(kVersion) : m.version)}}));
  pickle::TorchPickler p(/*write_objects=*/true);
  return p.dump(root);
}

}  // namespace ckpt::formats::dcp
