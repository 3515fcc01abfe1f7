#include "ckpt/distributed.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <string_view>

#include "api/distributed_internal.hpp"
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
  // An error reading `.metadata` propagates: an unreadable checkpoint must
  // not pass for a directory without one.
  const std::string bytes = read_whole(p);
  try {
    return dcp::is_metadata(as_bytes(bytes));
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

namespace detail {

std::optional<uint64_t> dcp_data_file_number(const std::string& name) {
  // __<rank>_<n>.distcp, both numbers plain decimal digits
  constexpr std::string_view kSuffix = ".distcp";
  if (name.size() < 2 + 1 + 1 + 1 + kSuffix.size() || name.compare(0, 2, "__") != 0 ||
      name.compare(name.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0)
    return std::nullopt;
  const std::string mid = name.substr(2, name.size() - 2 - kSuffix.size());  // <rank>_<n>
  const size_t us = mid.find('_');
  if (us == std::string::npos || us == 0 || us + 1 == mid.size()) return std::nullopt;
  auto digits = [](std::string_view d) { return std::all_of(d.begin(), d.end(), [](char c) { return c >= '0' && c <= '9'; }); };
  const std::string_view rank(mid.data(), us), n(mid.data() + us + 1, mid.size() - us - 1);
  if (!digits(rank) || !digits(n)) return std::nullopt;
  if (n.size() > 18) return std::numeric_limits<uint64_t>::max();  // too large to be one of ours
  uint64_t v = 0;
  for (char c : n) v = v * 10 + static_cast<uint64_t>(c - '0');
  return v;
}

}  // namespace detail

namespace {

// The data file of `rank` in save generation `gen`: torch's own name,
// __<rank>_0.distcp, in a fresh directory; a higher <n> when the directory
// already holds DCP files, so that a save never writes over a file the
// checkpoint in place may need.
std::string data_file_name(size_t rank, uint64_t gen) {
  return "__" + std::to_string(rank) + "_" + std::to_string(gen) + ".distcp";
}

// Temporaries write_atomically leaves behind when killed: ".<name>.tmp.<...>".
bool is_save_temporary(const std::string& name) {
  if (name.size() < 2 || name[0] != '.') return false;
  const size_t t = name.find(".tmp.", 1);
  if (t == std::string::npos) return false;
  const std::string base = name.substr(1, t - 1);
  return base == dcp::kMetadataFile || detail::dcp_data_file_number(base).has_value();
}

// Rank 0, before anything is written: the generation of this save's data
// file names, one above every DCP data file (or temporary of one) in `dir`,
// and none of whose names exists.
uint64_t choose_generation(const std::string& dir, size_t world) {
  std::set<std::string> names;
  uint64_t gen = 0;
  for (io::DirEntry& entry : io::list_dir(dir)) {
    std::string name = std::move(entry.name);
    std::string base = name;
    if (is_save_temporary(name)) base = name.substr(1, name.find(".tmp.", 1) - 1);
    if (auto n = detail::dcp_data_file_number(base); n && *n < (uint64_t{1} << 40)) gen = std::max(gen, *n + 1);
    names.insert(std::move(name));
  }
  for (;; ++gen) {
    bool taken = false;
    for (size_t r = 0; r < world && !taken; ++r) taken = names.count(data_file_name(r, gen)) > 0;
    if (!taken) return gen;
  }
}

// Rank 0, after `.metadata` names only `keep`: removes the DCP data files
// (and save temporaries) it does not name. Best effort: a file left behind
// is harmless, and the next save removes it.
void remove_unreferenced(io::Env& env, const std::string& dir, const std::set<std::string>& keep, bool sync) {
  std::vector<std::string> doomed;
  std::vector<io::DirEntry> entries;
  try {
    entries = env.list_dir(dir);
  } catch (const Error&) {
    return;  // best effort
  }
  for (io::DirEntry& entry : entries) {
    if (keep.count(entry.name) || !(detail::dcp_data_file_number(entry.name) || is_save_temporary(entry.name)))
      continue;
    if (entry.regular) doomed.push_back(std::move(entry.name));
  }
  for (const std::string& name : doomed) {
    try {
      env.remove_file((std::filesystem::path(dir) / name).string());
    } catch (const std::exception&) {
    }
  }
  if (sync && !doomed.empty()) {
    try {
      env.sync_dir(dir);
    } catch (const std::exception&) {
    }
  }
}

// `base`, noting when a rename onto `watched` has succeeded (the commit point
// of write_atomically: a failure after it leaves the new file in place).
class RenameWatch final : public io::Env {
 public:
  RenameWatch(io::Env& base, std::string watched) : base_(base), watched_(std::move(watched)) {}
  bool renamed = false;
  std::unique_ptr<io::WritableFile> new_writable_file(const std::string& path) override {
    return base_.new_writable_file(path);
  }
  void rename_file(const std::string& from, const std::string& to) override {
    base_.rename_file(from, to);
    if (to == watched_) renamed = true;
  }
  void remove_file(const std::string& path) override { base_.remove_file(path); }
  void sync_dir(const std::string& dir) override { base_.sync_dir(dir); }
  bool file_exists(const std::string& path) override { return base_.file_exists(path); }

 private:
  io::Env& base_;
  std::string watched_;
};

// What rank 0 tells every rank after trying to commit.
enum class Commit : char { failed = '0', done = '1', not_durable = '2' };

}  // namespace

namespace detail {

void save_distributed(io::Env& env, const std::string& dir, const DistributedState& state, Comm& comm,
                      const DistributedSaveOptions& options) {
  const int rank = comm.rank();
  const auto world = static_cast<size_t>(comm.size());

  // 1. Plans: every rank learns every rank's items and computes the same
  //    global plan (dedup of replicated items, dtypes and shapes agree,
  //    chunks tile every tensor). All ranks agree it is valid before any of
  //    them touches the directory.
  std::exception_ptr refused;
  GlobalPlan g;
  try {
    std::vector<std::string> raw = comm.allgather(encode_plan(state));
    if (raw.size() != world)
      throw Error("distributed save: allgather returned " + std::to_string(raw.size()) + " plans");
    std::vector<std::vector<PlanItem>> plans;
    for (size_t r = 0; r < world; ++r) plans.push_back(decode_plan(raw[r], static_cast<int>(r)));
    g = make_global_plan(plans);
  } catch (const std::exception&) {
    refused = std::current_exception();
  }
  if (!comm.all_true(!refused)) {
    if (refused) std::rethrow_exception(refused);
    throw TypeError("distributed save: another rank refused the plan (nothing was written)", ErrorContext{dir});
  }

  // 2. Rank 0 makes the directory and picks this save's data file names,
  //    none of which exists there (the checkpoint in place, if any, keeps
  //    every file it needs until the new `.metadata` replaces its own).
  std::string prepared;  // "<generation>", or "!" + the error
  if (rank == 0) {
    try {
      std::filesystem::create_directories(dir);
      prepared = std::to_string(choose_generation(dir, world));
    } catch (const std::exception& e) {
      prepared = std::string("!") + e.what();
    }
  }
  comm.broadcast(prepared, 0);
  if (prepared.empty() || prepared[0] == '!')
    throw IoError("distributed save: " + (prepared.empty() ? std::string("rank 0 sent no file names") : prepared.substr(1)),
                  0, ErrorContext{dir});
  const uint64_t gen = std::stoull(prepared);

  // 3. This rank's data file, under its new name.
  const auto& mine = g.writes[static_cast<size_t>(rank)];
  const std::string my_path = (std::filesystem::path(dir) / data_file_name(static_cast<size_t>(rank), gen)).string();
  auto remove_mine = [&] {  // undo this rank's part of a save that did not commit
    if (mine.empty()) return;
    try {
      env.remove_file(my_path);
    } catch (const std::exception&) {
    }
  };
  std::string failure;
  Out results;
  try {
    if (!mine.empty()) {
      io::write_atomically(
          env, my_path,
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
  if (!comm.all_true(failure.empty())) {
    remove_mine();
    throw IoError("distributed save: " + (failure.empty() ? std::string("another rank failed to write its data file")
                                                            : "rank " + std::to_string(rank) + ": " + failure),
                  0, ErrorContext{dir});
  }
  std::vector<std::string> gathered = comm.gather(results.b, 0);

  // 5. The commit: rank 0 writes `.metadata` (temporary, fsync, rename over
  //    the old one, directory fsync), then removes the DCP files the new
  //    `.metadata` does not name, and tells every rank how it went.
  std::string status;
  if (rank == 0) {
    RenameWatch watch(env, metadata_path(dir));
    try {
      std::set<std::string> keep;
      for (size_t r = 0; r < world; ++r) {
        In in{gathered.at(r)};
        if (!g.writes[r].empty()) keep.insert(data_file_name(r, gen));
        for (const auto& [ei, ci] : g.writes[r]) {
          dcp::StorageInfo s{data_file_name(r, gen), in.u64(), 0};
          s.length = in.u64();
          dcp::Entry& e = g.md.entries[ei];
          (ci == kValue ? e.bytes : e.chunks[ci].storage) = std::move(s);
        }
        if (!in.done()) throw Error("distributed save: bad write results from rank " + std::to_string(r));
      }
      const std::string pickle = dcp::write_metadata(g.md, dir);
      io::write_atomically(watch, metadata_path(dir), [&](io::WritableFile& f) { f.append(as_bytes(pickle)); },
                           options.fsync);
      // Durable: the old checkpoint's files are no longer needed.
      remove_unreferenced(env, dir, keep, options.fsync);
      status = std::string(1, static_cast<char>(Commit::done));
    } catch (const std::exception& e) {
      // After the rename the new checkpoint is in place but its directory
      // entry may not be durable: keep every file, so that whichever
      // `.metadata` survives a crash finds its data.
      status = std::string(1, static_cast<char>(watch.renamed ? Commit::not_durable : Commit::failed)) + e.what();
    }
  }
  comm.broadcast(status, 0);
  const auto outcome = status.empty() ? Commit::failed : static_cast<Commit>(status[0]);
  if (outcome == Commit::done) return;
  const std::string why = status.size() > 1 ? status.substr(1) : std::string("rank 0 sent no commit status");
  if (outcome == Commit::not_durable)
    throw IoError("distributed save: the new checkpoint is in place, but making it durable failed: " + why, 0,
                  ErrorContext{dir});
  remove_mine();
  throw IoError("distributed save: .metadata was not written (the previous checkpoint, if any, is unchanged): " + why,
                0, ErrorContext{dir});
}

}  // namespace detail

void save_distributed(const std::string& dir, const DistributedState& state, Comm& comm,
                      const DistributedSaveOptions& options) {
  detail::save_distributed(io::Env::posix(), dir, state, comm, options);
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
