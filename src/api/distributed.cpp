#include "ckpt/distributed.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>

#include "api/open_internal.hpp"
#include "ckpt/error.hpp"
#include "ckpt/save.hpp"
#include "core/checked.hpp"
#include "container/zip.hpp"
#include "formats/dcp.hpp"
#include "formats/torch_zip.hpp"
#include "io/file.hpp"

namespace ckpt {

namespace dcp = formats::dcp;

namespace {

// Bytes [offset, offset + length) of a parent file, as a file of their own
// (a torch.save record inside a .distcp file). Memory stays shared.
class SliceFile final : public io::RandomAccessFile {
 public:
  SliceFile(std::shared_ptr<io::RandomAccessFile> parent, uint64_t offset, uint64_t length, std::string name)
      : parent_(std::move(parent)), offset_(offset), length_(length), name_(std::move(name)) {}
  const std::string& name() const override { return name_; }
  uint64_t size() const override { return length_; }
  void read_at(uint64_t offset, std::span<std::byte> dst) const override {
    if (offset > length_ || dst.size() > length_ - offset)
      throw FormatError("read of " + std::to_string(dst.size()) + " bytes at " + std::to_string(offset) +
                            " passes the end of the " + std::to_string(length_) + "-byte record",
                        ErrorContext{name_, "", offset});
    parent_->read_at(offset_ + offset, dst);
  }
  const std::byte* memory() const override {
    const std::byte* m = parent_->memory();
    return m ? m + offset_ : nullptr;
  }
  std::shared_ptr<const void> keepalive() const override { return parent_->keepalive(); }

 private:
  std::shared_ptr<io::RandomAccessFile> parent_;
  uint64_t offset_, length_;
  std::string name_;
};

std::string read_whole(const std::string& path) {
  auto f = io::open_file(path);
  std::string s(static_cast<size_t>(f->size()), '\0');
  f->read_at(0, std::as_writable_bytes(std::span<char>(s)));
  return s;
}

std::span<const std::byte> as_bytes(const std::string& s) { return std::as_bytes(std::span<const char>(s)); }

std::string metadata_path(const std::string& dir) {
  return (std::filesystem::path(dir) / dcp::kMetadataFile).string();
}

// Copies the intersection of box `src` (a tensor whose element 0 is at
// `src_off` in global coordinates) and box `dst` (contiguous, at `dst_off`).
void copy_overlap(const Tensor& src, const std::vector<int64_t>& src_off, Tensor& dst,
                  const std::vector<int64_t>& dst_off) {
  const size_t n = dst_off.size();
  std::vector<int64_t> lo(n), hi(n);
  for (size_t d = 0; d < n; ++d) {
    lo[d] = std::max(src_off[d], dst_off[d]);
    hi[d] = std::min(src_off[d] + src.sizes()[d], dst_off[d] + dst.sizes()[d]);
    if (lo[d] >= hi[d]) return;
  }
  const size_t item = src.itemsize();
  const std::vector<int64_t>& ss = src.strides();
  const std::vector<int64_t> ds = Tensor::contiguous_strides(dst.sizes());
  const std::byte* sbase = src.data();
  std::byte* dbase = dst.mutable_data();
  if (n == 0) {
    std::memcpy(dbase, sbase, item);
    return;
  }
  const int64_t run = hi[n - 1] - lo[n - 1];
  std::vector<int64_t> idx(lo);
  while (true) {
    int64_t so = 0, dof = 0;
    for (size_t d = 0; d < n; ++d) {
      so += (idx[d] - src_off[d]) * ss[d];
      dof += (idx[d] - dst_off[d]) * ds[d];
    }
    if (ss[n - 1] == 1) {
      std::memcpy(dbase + dof * static_cast<int64_t>(item), sbase + so * static_cast<int64_t>(item),
                  static_cast<size_t>(run) * item);
    } else {
      for (int64_t i = 0; i < run; ++i)
        std::memcpy(dbase + (dof + i) * static_cast<int64_t>(item), sbase + (so + i * ss[n - 1]) * static_cast<int64_t>(item),
                    item);
    }
    size_t d = n - 1;  // odometer over all dims but the last
    while (d > 0) {
      --d;
      if (++idx[d] < hi[d]) break;
      idx[d] = lo[d];
      if (d == 0) return;
    }
    if (n == 1) return;
  }
}

}  // namespace

// ---------------------------------------------------------------- reading

bool is_distributed_checkpoint(const std::string& dir) {
  std::error_code ec;
  const std::string p = metadata_path(dir);
  if (!std::filesystem::is_directory(dir, ec) || !std::filesystem::is_regular_file(p, ec)) return false;
  try {
    return dcp::is_metadata(as_bytes(read_whole(p)));
  } catch (const Error&) {
    return false;
  }
}

struct DistributedReader::Impl {
  std::string dir;
  LoadOptions options;
  dcp::Metadata md;
  std::vector<Item> items;
  std::map<std::string, size_t> by_name;
  mutable std::mutex mu;
  mutable std::map<std::string, std::shared_ptr<io::RandomAccessFile>> files;
  mutable uint64_t bytes_read = 0;

  void init(const std::string& metadata_bytes) {
    md = dcp::parse_metadata(as_bytes(metadata_bytes), metadata_path(dir));
    for (size_t i = 0; i < md.entries.size(); ++i) {
      const dcp::Entry& e = md.entries[i];
      items.push_back(Item{e.fqn, e.is_tensor, e.dtype, e.size, e.chunks.size()});
      by_name.emplace(e.fqn, i);
    }
  }

  const dcp::Entry& entry(const std::string& name) const {
    auto it = by_name.find(name);
    if (it == by_name.end()) throw TypeError("no item '" + name + "' in the distributed checkpoint", ErrorContext{dir});
    return md.entries[it->second];
  }

  // The bytes of a record, bounds-checked against its data file.
  std::shared_ptr<io::RandomAccessFile> record_file(const dcp::Entry& e, const dcp::StorageInfo& s) const {
    const std::string path = (std::filesystem::path(dir) / s.relative_path).string();
    std::shared_ptr<io::RandomAccessFile> file;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = files.find(path);
      if (it == files.end()) it = files.emplace(path, detail::open_for_load(path, options.mmap)).first;
      file = it->second;
      bytes_read += s.length;
    }
    if (s.offset > file->size() || s.length > file->size() - s.offset)
      throw FormatError("record of " + std::to_string(s.length) + " bytes at offset " + std::to_string(s.offset) +
                            " passes the end of the " + std::to_string(file->size()) + "-byte data file",
                        ErrorContext{path, e.fqn, s.offset});
    // Errors from inside the record name the data file, the item and where the record starts.
    return std::make_shared<SliceFile>(file, s.offset, s.length,
                                       path + " (item '" + e.fqn + "', record at byte " + std::to_string(s.offset) + ")");
  }

  // The torch.save record of an item, loaded (tensors and values alike).
  // `raw_ok`: a record that is not a torch.save blob is returned as bytes.
  Value load_record(const dcp::Entry& e, const dcp::StorageInfo& s, bool raw_ok, const LoadOptions& opts) const {
    auto slice = record_file(e, s);
    try {
      if (raw_ok && detail::detect(slice) == Format::unknown) {
        std::string raw(static_cast<size_t>(s.length), '\0');
        slice->read_at(0, std::as_writable_bytes(std::span<char>(raw)));
        return Value::bytes(std::move(raw));
      }
      LoadOptions o = opts;
      o.key.clear();
      return detail::load_file(slice, o, nullptr, nullptr);
    } catch (Error& err) {
      err.add_context(ErrorContext{slice->name()});
      throw;
    }
  }

  // ckpt verify: the record's archive structure and CRCs.
  void verify_record(const dcp::Entry& e, const dcp::StorageInfo& s) const {
    auto slice = record_file(e, s);
    try {
      if (!e.is_tensor && detail::detect(slice) == Format::unknown) return;  // raw bytes: nothing to check
      zip::ZipReader z(slice);
      formats::verify_torch_zip(z);
    } catch (Error& err) {
      err.add_context(ErrorContext{slice->name()});
      throw;
    }
  }

  Tensor load_chunk(const dcp::Entry& e, const dcp::Chunk& c) const {
    Value v = load_record(e, c.storage, false, options);
    const std::string where = e.fqn;
    const std::string path = (std::filesystem::path(dir) / c.storage.relative_path).string();
    if (!v.is_tensor())
      throw FormatError("chunk record holds a " + std::string(v.kind_name()) + ", not a tensor",
                        ErrorContext{path, where, c.storage.offset});
    const Tensor& t = v.as_tensor();
    if (t.dtype() != e.dtype || t.sizes() != c.sizes)
      throw FormatError("chunk record holds a " + std::string(name(t.dtype())) + " tensor of shape " +
                            format_shape(t.sizes()) + ", .metadata says " + std::string(name(e.dtype)) + " " +
                            format_shape(c.sizes),
                        ErrorContext{path, where, c.storage.offset});
    return t;
  }

  Tensor read_region(const dcp::Entry& e, const std::vector<int64_t>& offsets,
                     const std::vector<int64_t>& sizes) const {
    if (!e.is_tensor) throw TypeError("item '" + e.fqn + "' is not a tensor", ErrorContext{dir});
    bool ok = offsets.size() == e.size.size() && sizes.size() == e.size.size();
    for (size_t d = 0; ok && d < e.size.size(); ++d)
      ok = offsets[d] >= 0 && sizes[d] >= 0 && offsets[d] <= e.size[d] && sizes[d] <= e.size[d] - offsets[d];
    if (!ok)
      throw TypeError("region at " + format_shape(offsets) + " of shape " + format_shape(sizes) +
                          " is outside tensor '" + e.fqn + "' of shape " + format_shape(e.size),
                      ErrorContext{dir});
    Tensor out = Tensor::empty(e.dtype, sizes);
    if (out.numel() == 0) return out;
    for (const dcp::Chunk& c : e.chunks) {
      bool meets = true;
      for (size_t d = 0; meets && d < e.size.size(); ++d)
        meets = c.offsets[d] < offsets[d] + sizes[d] && offsets[d] < c.offsets[d] + c.sizes[d];
      int64_t vol = 1;
      for (int64_t s : c.sizes) vol *= s;
      if (!meets || vol == 0) continue;
      Tensor t = load_chunk(e, c);
      copy_overlap(t, c.offsets, out, offsets);
    }
    return out;
  }
};

DistributedReader::DistributedReader(const std::string& dir, const LoadOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->dir = dir;
  impl_->options = options;
  impl_->init(read_whole(metadata_path(dir)));
}

DistributedReader::DistributedReader(const std::string& dir, Comm& comm, const LoadOptions& options)
    : impl_(std::make_unique<Impl>()) {
  impl_->dir = dir;
  impl_->options = options;
  std::string bytes;
  std::string failure;
  if (comm.rank() == 0) {
    try {
      bytes = read_whole(metadata_path(dir));
    } catch (const Error& e) {
      failure = e.what();
    }
  }
  // One broadcast: a status byte, then the bytes or rank 0's error.
  std::string msg = (failure.empty() ? "1" : "0") + (failure.empty() ? bytes : failure);
  comm.broadcast(msg, 0);
  if (msg.empty() || msg[0] != '1')
    throw IoError("rank 0 could not read the checkpoint's .metadata: " + (msg.empty() ? std::string() : msg.substr(1)), 0,
                  ErrorContext{metadata_path(dir)});
  impl_->init(msg.substr(1));
}

DistributedReader::~DistributedReader() = default;
DistributedReader::DistributedReader(DistributedReader&&) noexcept = default;
DistributedReader& DistributedReader::operator=(DistributedReader&&) noexcept = default;

const std::vector<DistributedReader::Item>& DistributedReader::items() const noexcept { return impl_->items; }

const DistributedReader::Item& DistributedReader::item(const std::string& name) const {
  impl_->entry(name);
  return impl_->items[impl_->by_name.at(name)];
}

Tensor DistributedReader::read(const std::string& name) const {
  const dcp::Entry& e = impl_->entry(name);
  return impl_->read_region(e, std::vector<int64_t>(e.size.size(), 0), e.size);
}

Tensor DistributedReader::read(const std::string& name, const std::vector<int64_t>& offsets,
                               const std::vector<int64_t>& sizes) const {
  return impl_->read_region(impl_->entry(name), offsets, sizes);
}

Value DistributedReader::read_value(const std::string& name) const {
  const dcp::Entry& e = impl_->entry(name);
  if (e.is_tensor) return Value(read(name));
  return impl_->load_record(e, e.bytes, true, impl_->options);
}

namespace {

// torch's set_element: walks `path` from `root`, making dicts for str keys
// and lists (padded with None) for int indexes.
void set_element(Value& root, const std::vector<Value>& path, Value value, size_t max_index, const std::string& fqn) {
  auto bad = [&](const std::string& why) {
    throw FormatError("planner_data path of '" + fqn + "' " + why, ErrorContext{"", ".metadata"});
  };
  Value cur = root;
  for (size_t i = 0; i < path.size(); ++i) {
    const Value& key = path[i];
    const bool last = i + 1 == path.size();
    Value fresh = last ? value : (path[i + 1].is_int() ? Value::list() : Value::dict());
    if (key.is_string()) {
      if (!cur.is_dict()) bad("uses key '" + key.as_string() + "' on a list");
      Value* slot = cur.as_dict().find(key);
      if (last) {
        if (slot) bad("names an item twice");
        cur.as_dict().set(key, std::move(fresh));
        return;
      }
      if (!slot || slot->is_none()) {
        cur.as_dict().set(key, fresh);
        slot = cur.as_dict().find(key);
      }
      cur = *slot;
    } else {
      if (!cur.is_list()) bad("uses index " + std::to_string(key.as_int()) + " on a dict");
      if (key.as_int() < 0 || static_cast<uint64_t>(key.as_int()) >= max_index)
        bad("has list index " + std::to_string(key.as_int()) + " (the checkpoint has " + std::to_string(max_index) +
            " items)");
      List& items = cur.as_list();
      const auto k = static_cast<size_t>(key.as_int());
      if (items.size() <= k) items.resize(k + 1);
      if (last) {
        if (!items[k].is_none()) bad("names an item twice");
        items[k] = std::move(fresh);
        return;
      }
      if (items[k].is_none()) items[k] = fresh;
      cur = items[k];
    }
    if (!last && !(cur.is_dict() || cur.is_list())) bad("passes through a " + std::string(cur.kind_name()));
  }
}

}  // namespace

Value DistributedReader::consolidate() const {
  Value root = Value::dict();
  for (const dcp::Entry& e : impl_->md.entries) {
    Value v = read_value(e.fqn);
    try {
      set_element(root, e.path.empty() ? std::vector<Value>{Value(e.fqn)} : e.path, std::move(v),
                  impl_->md.entries.size(), e.fqn);
    } catch (Error& err) {
      err.add_context(ErrorContext{metadata_path(impl_->dir), e.fqn});
      throw;
    }
  }
  return root;
}

size_t DistributedReader::verify() const {
  size_t records = 0;
  LoadOptions inspect = impl_->options;
  inspect.weights_only = false;  // values are decoded, never executed: inert objects are fine here
  for (const dcp::Entry& e : impl_->md.entries) {
    if (!e.is_tensor) {
      impl_->verify_record(e, e.bytes);
      (void)impl_->load_record(e, e.bytes, true, inspect);
      ++records;
      continue;
    }
    for (const dcp::Chunk& c : e.chunks) {
      impl_->verify_record(e, c.storage);
      (void)impl_->load_chunk(e, c);
      ++records;
    }
  }
  return records;
}

uint64_t DistributedReader::bytes_read() const noexcept {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->bytes_read;
}

// ---------------------------------------------------------------- the state to save

namespace {

// torch's traverse_state_dict: a list is visited element by element when it
// holds a tensor or a dict/list that is itself not terminal.
bool is_terminal(const Value& v) {
  if (v.is_dict()) return false;
  if (!v.is_list()) return true;
  for (const Value& x : v.as_list()) {
    if ((x.is_dict() || x.is_list()) && !is_terminal(x)) return false;
    if (x.is_tensor()) return false;
  }
  return true;
}

std::string key_text(const Value& k) {
  if (k.is_string()) return k.as_string();
  if (k.is_int()) return std::to_string(k.as_int());
  return k.repr();
}

}  // namespace

void DistributedState::add(const std::string& name, Value value) { add_flat(name, {Value(name)}, std::move(value)); }

void DistributedState::add_flat(const std::string& name, std::vector<Value> path, Value value) {
  if (value.is_dict()) {
    for (const auto& [k, v] : value.as_dict()) {
      std::vector<Value> p = path;
      p.emplace_back(key_text(k));
      add_flat(name + "." + key_text(k), std::move(p), v);
    }
    return;
  }
  if (!is_terminal(value)) {
    const List& items = value.as_list();
    for (size_t i = 0; i < items.size(); ++i) {
      std::vector<Value> p = path;
      p.emplace_back(static_cast<int64_t>(i));
      add_flat(name + "." + std::to_string(i), std::move(p), items[i]);
    }
    return;
  }
  for (const Entry& e : entries_)
    if (e.name == name) throw TypeError("item '" + name + "' added twice");
  Entry e;
  e.name = name;
  e.path = std::move(path);
  if (value.is_tensor()) {
    e.global_shape = value.as_tensor().sizes();
    e.offsets.assign(e.global_shape.size(), 0);
  }
  e.value = std::move(value);
  entries_.push_back(std::move(e));
}

void DistributedState::add_shard(const std::string& name, Tensor local, std::vector<int64_t> global_shape,
                                 std::vector<int64_t> offsets) {
  if (offsets.size() != global_shape.size() || local.sizes().size() != global_shape.size())
    throw TypeError("shard of '" + name + "': " + std::to_string(local.dim()) + "-d tensor, offsets " +
                    format_shape(offsets) + ", global shape " + format_shape(global_shape) + " do not match");
  for (size_t d = 0; d < global_shape.size(); ++d)
    if (offsets[d] < 0 || offsets[d] > global_shape[d] || local.sizes()[d] > global_shape[d] - offsets[d])
      throw TypeError("shard of '" + name + "' of shape " + format_shape(local.sizes()) + " at " +
                      format_shape(offsets) + " is outside the global shape " + format_shape(global_shape));
  for (const Entry& e : entries_)
    if (e.name == name) throw TypeError("item '" + name + "' added twice");
  Entry e;
  e.name = name;
  e.path = {Value(name)};
  e.value = Value(std::move(local));
  e.shard = true;
  e.global_shape = std::move(global_shape);
  e.offsets = std::move(offsets);
  entries_.push_back(std::move(e));
}

// ---------------------------------------------------------------- saving

namespace {

// A flat binary encoding of what ranks exchange (little-endian u64s and
// length-prefixed strings). Only ever read back by the same build.
struct Out {
  std::string b;
  void u64(uint64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); }
  void str(const std::string& s) {
    u64(s.size());
    b += s;
  }
  void dims(const std::vector<int64_t>& d) {
    u64(d.size());
    for (int64_t x : d) u64(static_cast<uint64_t>(x));
  }
};
struct In {
  const std::string& b;
  size_t pos = 0;
  uint64_t u64() {
    if (b.size() - pos < 8) throw Error("distributed save: truncated message between ranks");
    uint64_t v;
    std::memcpy(&v, b.data() + pos, 8);
    pos += 8;
    return v;
  }
  std::string str() {
    uint64_t n = u64();
    if (n > b.size() - pos) throw Error("distributed save: truncated message between ranks");
    std::string s = b.substr(pos, n);
    pos += n;
    return s;
  }
  std::vector<int64_t> dims() {
    uint64_t n = u64();
    if (n > 64) throw Error("distributed save: bad message between ranks");
    std::vector<int64_t> d(n);
    for (auto& x : d) x = static_cast<int64_t>(u64());
    return d;
  }
  bool done() const { return pos == b.size(); }
};

// One item of one rank's plan.
struct PlanItem {
  int rank = 0;
  size_t local = 0;  // index in that rank's DistributedState
  std::string fqn;
  std::vector<Value> path;
  bool tensor = false;
  DType dtype = DType::float32;
  std::vector<int64_t> global_shape, offsets, sizes;
  uint64_t nbytes = 0;
};

std::string encode_plan(const DistributedState& st) {
  Out o;
  o.u64(st.entries().size());
  for (const auto& e : st.entries()) {
    o.str(e.name);
    o.u64(e.path.size());
    for (const Value& p : e.path) {
      o.u64(p.is_int() ? 1 : 0);
      o.str(p.is_int() ? std::to_string(p.as_int()) : p.as_string());
    }
    const bool tensor = e.value.is_tensor();
    o.u64(tensor);
    if (tensor) {
      const Tensor& t = e.value.as_tensor();
      o.u64(static_cast<uint64_t>(t.dtype()));
      o.dims(e.global_shape);
      o.dims(e.offsets);
      o.dims(t.sizes());
      o.u64(t.nbytes());
    }
  }
  return o.b;
}

std::vector<PlanItem> decode_plan(const std::string& bytes, int rank) {
  In in{bytes};
  std::vector<PlanItem> items(in.u64());
  for (size_t i = 0; i < items.size(); ++i) {
    PlanItem& p = items[i];
    p.rank = rank;
    p.local = i;
    p.fqn = in.str();
    const uint64_t n = in.u64();
    for (uint64_t k = 0; k < n; ++k) {
      const bool is_int = in.u64() != 0;
      std::string s = in.str();
      p.path.push_back(is_int ? Value(static_cast<int64_t>(std::stoll(s))) : Value(std::move(s)));
    }
    p.tensor = in.u64() != 0;
    if (p.tensor) {
      p.dtype = static_cast<DType>(in.u64());
      p.global_shape = in.dims();
      p.offsets = in.dims();
      p.sizes = in.dims();
      p.nbytes = in.u64();
    }
  }
  if (!in.done()) throw Error("distributed save: bad message between ranks");
  return items;
}

// Who writes what: one writer per distinct (fqn, offsets), the rank with the
// fewest planned bytes so far (torch's dedup_save_plans), and the global
// metadata. Every rank computes the same from the same plans.
struct GlobalPlan {
  dcp::Metadata md;
  // md entry index, chunk index (or npos for a value) for each writing item
  std::vector<std::vector<std::pair<size_t, size_t>>> writes;  // by rank: (entry, chunk) per kept local item
  std::vector<std::vector<size_t>> write_local;                  // by rank: local item index, parallel to writes
};

constexpr size_t kValue = static_cast<size_t>(-1);

GlobalPlan make_global_plan(const std::vector<std::vector<PlanItem>>& plans) {
  GlobalPlan g;
  g.writes.resize(plans.size());
  g.write_local.resize(plans.size());
  std::map<std::string, size_t> entry_of;
  std::map<std::pair<std::string, std::vector<int64_t>>, std::vector<const PlanItem*>> holders;
  std::vector<std::pair<std::string, std::vector<int64_t>>> order;
  for (const auto& plan : plans)
    for (const PlanItem& p : plan) {
      auto [it, fresh] = entry_of.emplace(p.fqn, g.md.entries.size());
      if (fresh) {
        dcp::Entry e;
        e.fqn = p.fqn;
        e.path = p.path;
        e.is_tensor = p.tensor;
        e.dtype = p.dtype;
        e.size = p.global_shape;
        g.md.entries.push_back(std::move(e));
      }
      const dcp::Entry& e = g.md.entries[it->second];
      if (e.is_tensor != p.tensor || (p.tensor && (e.dtype != p.dtype || e.size != p.global_shape)))
        throw TypeError("item '" + p.fqn + "' differs between ranks (rank " + std::to_string(p.rank) +
                        " has a " + (p.tensor ? std::string(name(p.dtype)) + " " + format_shape(p.global_shape) : "value") +
                        ", another rank a " +
                        (e.is_tensor ? std::string(name(e.dtype)) + " " + format_shape(e.size) : "value") + ")");
      // An empty shard of a non-empty tensor holds nothing: no chunk (as
      // DTensor ranks beyond torch.chunk's split).
      auto numel = [](const std::vector<int64_t>& d) {
        int64_t n = 1;
        for (int64_t x : d) n = checked_mul(n, x, "tensor numel");
        return n;
      };
      if (p.tensor && numel(p.sizes) == 0 && numel(p.global_shape) != 0) continue;
      auto key = std::make_pair(p.fqn, p.offsets);
      auto& h = holders[key];
      if (!h.empty() && p.tensor && h.front()->sizes != p.sizes)
        throw TypeError("item '" + p.fqn + "': ranks hold chunks at " + format_shape(p.offsets) +
                        " of different shapes " + format_shape(h.front()->sizes) + " and " + format_shape(p.sizes));
      if (h.empty()) order.push_back(key);
      h.push_back(&p);
    }
  std::vector<uint64_t> planned(plans.size(), 0);
  for (const auto& key : order) {
    const auto& h = holders[key];
    const PlanItem* best = h.front();
    for (const PlanItem* p : h)
      if (planned[static_cast<size_t>(p->rank)] < planned[static_cast<size_t>(best->rank)]) best = p;
    planned[static_cast<size_t>(best->rank)] += std::max<uint64_t>(best->nbytes, 1);
    const size_t ei = entry_of[best->fqn];
    dcp::Entry& e = g.md.entries[ei];
    size_t ci = kValue;
    if (e.is_tensor) {
      ci = e.chunks.size();
      e.chunks.push_back(dcp::Chunk{best->offsets, best->sizes, {}});
    }
    g.writes[static_cast<size_t>(best->rank)].emplace_back(ei, ci);
    g.write_local[static_cast<size_t>(best->rank)].push_back(best->local);
  }
  for (const dcp::Entry& e : g.md.entries)
    if (e.is_tensor)
      if (std::string bad = dcp::check_tiling(e.size, e.chunks); !bad.empty())
        throw TypeError("the shards of '" + e.fqn + "' do not tile its global shape " + format_shape(e.size) +
                        ": " + bad);
  return g;
}

// A chunk as torch saves it: a plain CPU tensor owning just its elements.
Value record_value(const Value& v) {
  if (!v.is_tensor()) return v;
  const Tensor& t = v.as_tensor();
  Tensor c = (t.is_contiguous() && t.storage_offset() == 0 && t.storage().nbytes() == t.nbytes()) ? t : t.clone();
  c.set_requires_grad(false);
  c.set_is_parameter(false);
  c.set_device("cpu");
  return Value(c);
}

}  // namespace

void save_distributed(const std::string& dir, const DistributedState& state, Comm& comm,
                      const DistributedSaveOptions& options) {
  const int rank = comm.rank();
  const auto world = static_cast<size_t>(comm.size());
  io::Env& env = io::Env::posix();

  // 1. The directory exists and holds no .metadata (a checkpoint being
  //    overwritten stops being one before any of its files changes).
  std::string failure;
  try {
    std::filesystem::create_directories(dir);
    if (rank == 0) {
      env.remove_file(metadata_path(dir));
      if (options.fsync) env.sync_dir(dir);
    }
  } catch (const std::exception& e) {
    failure = e.what();
  }
  if (!comm.all_true(failure.empty()))
    throw IoError("distributed save: " + (failure.empty() ? std::string("another rank could not prepare the directory")
                                                            : failure),
                  0, ErrorContext{dir});

  // 2. Plans: every rank learns every rank's items and computes the same
  //    global plan (dedup of replicated items, chunk tiling checked).
  std::vector<std::string> raw = comm.allgather(encode_plan(state));
  if (raw.size() != world) throw Error("distributed save: allgather returned " + std::to_string(raw.size()) + " plans");
  std::vector<std::vector<PlanItem>> plans;
  for (size_t r = 0; r < world; ++r) plans.push_back(decode_plan(raw[r], static_cast<int>(r)));
  GlobalPlan g = make_global_plan(plans);

  // 3. This rank's data file.
  const auto& mine = g.writes[static_cast<size_t>(rank)];
  const std::string file_name = "__" + std::to_string(rank) + "_0.distcp";
  Out results;
  try {
    if (!mine.empty()) {
      const std::string path = (std::filesystem::path(dir) / file_name).string();
      io::write_atomically(
          env, path,
          [&](io::WritableFile& f) {
            for (size_t i = 0; i < mine.size(); ++i) {
              const std::string blob =
                  save_to_buffer(record_value(state.entries()[g.write_local[static_cast<size_t>(rank)][i]].value));
              results.u64(f.size());
              results.u64(blob.size());
              f.append(as_bytes(blob));
            }
          },
          options.fsync);
    }
  } catch (const std::exception& e) {
    failure = e.what();
  }

  // 4. The collective success check; then rank 0 gathers where every record is.
  if (!comm.all_true(failure.empty()))
    throw IoError("distributed save: " + (failure.empty() ? std::string("another rank failed to write its data file")
                                                            : "rank " + std::to_string(rank) + ": " + failure),
                  0, ErrorContext{dir});
  std::vector<std::string> gathered = comm.gather(results.b, 0);

  // 5. Rank 0 writes .metadata (temporary + rename), then tells everyone.
  if (rank == 0) {
    try {
      for (size_t r = 0; r < world; ++r) {
        In in{gathered.at(r)};
        for (const auto& [ei, ci] : g.writes[r]) {
          dcp::StorageInfo s{"__" + std::to_string(r) + "_0.distcp", in.u64(), 0};
          s.length = in.u64();
          dcp::Entry& e = g.md.entries[ei];
          (ci == kValue ? e.bytes : e.chunks[ci].storage) = std::move(s);
        }
        if (!in.done()) throw Error("distributed save: bad write results from rank " + std::to_string(r));
      }
      const std::string pickle = dcp::write_metadata(g.md, dir);
      io::write_atomically(env, metadata_path(dir), [&](io::WritableFile& f) { f.append(as_bytes(pickle)); },
                           options.fsync);
    } catch (const std::exception& e) {
      failure = e.what();
    }
  }
  if (!comm.all_true(failure.empty()))
    throw IoError("distributed save: " + (failure.empty() ? std::string("rank 0 could not write .metadata") : failure), 0,
                  ErrorContext{dir});
}

void save_distributed(const std::string& dir, const DistributedState& state, const DistributedSaveOptions& options) {
  SingleProcessComm comm;
  save_distributed(dir, state, comm, options);
}

void save_distributed(const std::string& dir, const Value& state_dict, const DistributedSaveOptions& options) {
  if (!state_dict.is_dict()) throw TypeError("save_distributed: expected a dict, got a " + std::string(state_dict.kind_name()));
  DistributedState st;
  for (const auto& [k, v] : state_dict.as_dict()) st.add(key_text(k), v);
  save_distributed(dir, st, options);
}

}  // namespace ckpt
