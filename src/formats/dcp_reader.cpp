// torch.distributed.checkpoint directories: reading (see dcp_reader.hpp).
#include "formats/dcp_reader.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "ckpt/error.hpp"
#include "container/zip.hpp"
#include "formats/detect.hpp"
#include "formats/torch_zip.hpp"

namespace ckpt::formats::dcp {

namespace {

// .metadata holds a few hundred bytes per item: 1 GiB is millions of items.
constexpr uint64_t kMaxMetadataBytes = uint64_t{1} << 30;

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

std::string metadata_path(const std::string& dir) { return (std::filesystem::path(dir) / kMetadataFile).string(); }

std::string read_metadata_bytes(const std::string& dir) {
  return io::read_small_file(metadata_path(dir), kMaxMetadataBytes);
}

bool is_checkpoint_dir(const std::string& dir) {
  const std::string p = metadata_path(dir);
  if (!io::status(dir).directory() || !io::status(p).regular()) return false;
  // An error reading `.metadata` propagates: an unreadable checkpoint must
  // not pass for a directory without one.
  const std::string bytes = read_metadata_bytes(dir);
  try {
    return is_metadata(std::as_bytes(std::span<const char>(bytes)));
  } catch (const Error&) {
    return false;
  }
}

std::optional<CheckpointDir> checkpoint_dir(const std::string& dir, const std::vector<io::DirEntry>& listing) {
  const bool listed = std::any_of(listing.begin(), listing.end(),
                                  [](const io::DirEntry& e) { return e.regular && e.name == kMetadataFile; });
  if (!listed) return std::nullopt;
  CheckpointDir out;
  out.metadata_bytes = read_metadata_bytes(dir);
  if (!is_metadata(std::as_bytes(std::span<const char>(out.metadata_bytes)))) return std::nullopt;
  out.dir = dir;
  for (const io::DirEntry& e : listing) {
    if (!e.regular) continue;
    out.files.push_back((std::filesystem::path(dir) / e.name).string());
    out.file_bytes += e.size;
  }
  std::sort(out.files.begin(), out.files.end());
  return out;
}

Reader::Reader(std::string dir, const LoadOptions& options, std::string_view metadata_bytes)
    : dir_(std::move(dir)), options_(options) {
  md_ = parse_metadata(std::as_bytes(std::span<const char>(metadata_bytes)), metadata_path(dir_));
  for (size_t i = 0; i < md_.entries.size(); ++i) by_name_.emplace(md_.entries[i].fqn, i);
}

const Entry& Reader::entry(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) throw TypeError("no item '" + name + "' in the distributed checkpoint", ErrorContext{dir_});
  return md_.entries[it->second];
}

// The bytes of a record, bounds-checked against its data file.
std::shared_ptr<io::RandomAccessFile> Reader::record_file(const Entry& e, const StorageInfo& s) const {
  const std::string path = (std::filesystem::path(dir_) / s.relative_path).string();
  std::shared_ptr<io::RandomAccessFile> file;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = files_.find(path);
    if (it == files_.end()) it = files_.emplace(path, open_for_load(path, options_.mmap)).first;
    file = it->second;
    bytes_read_ += s.length;
  }
  if (s.offset > file->size() || s.length > file->size() - s.offset)
    throw FormatError("record of " + std::to_string(s.length) + " bytes at offset " + std::to_string(s.offset) +
                          " passes the end of the " + std::to_string(file->size()) + "-byte data file",
                      ErrorContext{path, e.fqn, s.offset});
  // Errors from inside the record name the data file, the item and where the record starts.
  return io::slice_file(file, s.offset, s.length,
                        path + " (item '" + e.fqn + "', record at byte " + std::to_string(s.offset) + ")");
}

// The torch.save record of an item, loaded (tensors and values alike).
// `raw_ok`: a record that is not a torch.save blob is returned as bytes.
Value Reader::load_record(const Entry& e, const StorageInfo& s, bool raw_ok, const LoadOptions& opts) const {
  auto slice = record_file(e, s);
  try {
    if (raw_ok && detect(slice) == Format::unknown) {
      std::string raw(static_cast<size_t>(s.length), '\0');
      slice->read_at(0, std::as_writable_bytes(std::span<char>(raw)));
      return Value::bytes(std::move(raw));
    }
    LoadOptions o = opts;
    o.key.clear();
    return load_any(slice, o, nullptr, nullptr);
  } catch (Error& err) {
    err.add_context(ErrorContext{slice->name()});
    throw;
  }
}

// ckpt verify: the record's archive structure and CRCs.
void Reader::verify_record(const Entry& e, const StorageInfo& s) const {
  auto slice = record_file(e, s);
  try {
    if (!e.is_tensor && detect(slice) == Format::unknown) return;  // raw bytes: nothing to check
    zip::ZipReader z(slice);
    formats::verify_torch_zip(z);
  } catch (Error& err) {
    err.add_context(ErrorContext{slice->name()});
    throw;
  }
}

Tensor Reader::load_chunk(const Entry& e, const Chunk& c) const {
  Value v = load_record(e, c.storage, false, options_);
  const std::string where = e.fqn;
  const std::string path = (std::filesystem::path(dir_) / c.storage.relative_path).string();
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

Tensor Reader::read_region(const Entry& e, const std::vector<int64_t>& offsets,
                   const std::vector<int64_t>& sizes) const {
  if (!e.is_tensor) throw TypeError("item '" + e.fqn + "' is not a tensor", ErrorContext{dir_});
  bool ok = offsets.size() == e.size.size() && sizes.size() == e.size.size();
  for (size_t d = 0; ok && d < e.size.size(); ++d)
    ok = offsets[d] >= 0 && sizes[d] >= 0 && offsets[d] <= e.size[d] && sizes[d] <= e.size[d] - offsets[d];
  if (!ok)
    throw TypeError("region at " + format_shape(offsets) + " of shape " + format_shape(sizes) +
                        " is outside tensor '" + e.fqn + "' of shape " + format_shape(e.size),
                    ErrorContext{dir_});
  Tensor out = Tensor::empty(e.dtype, sizes);
  if (out.numel() == 0) return out;
  for (const Chunk& c : e.chunks) {
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

Value Reader::read_value(const Entry& e) const {
  if (e.is_tensor) return Value(read_region(e, std::vector<int64_t>(e.size.size(), 0), e.size));
  return load_record(e, e.bytes, true, options_);
}

Value Reader::consolidate() const {
  Value root = Value::dict();
  for (const Entry& e : md_.entries) {
    Value v = read_value(e);
    try {
      set_element(root, e.path.empty() ? std::vector<Value>{Value(e.fqn)} : e.path, std::move(v),
                  md_.entries.size(), e.fqn);
    } catch (Error& err) {
      err.add_context(ErrorContext{metadata_path(dir_), e.fqn});
      throw;
    }
  }
  return root;
}

size_t Reader::verify() const {
  size_t records = 0;
  LoadOptions inspect = options_;
  inspect.weights_only = false;  // values are decoded, never executed: inert objects are fine here
  for (const Entry& e : md_.entries) {
    if (!e.is_tensor) {
      verify_record(e, e.bytes);
      (void)load_record(e, e.bytes, true, inspect);
      ++records;
      continue;
    }
    for (const Chunk& c : e.chunks) {
      verify_record(e, c.storage);
      (void)load_chunk(e, c);
      ++records;
    }
  }
  return records;
}

uint64_t Reader::bytes_read() const noexcept {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_read_;
}

}  // namespace ckpt::formats::dcp
