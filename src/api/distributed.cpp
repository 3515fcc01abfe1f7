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
#include "ckpt/error.hpp"
#include "ckpt/save.hpp"
#include "core/checked.hpp"
#include "container/zip.hpp"
#include "formats/dcp.hpp"
#include "formats/dcp_reader.hpp"
#include "formats/torch_zip.hpp"
#include "io/file.hpp"

namespace ckpt {

namespace dcp = formats::dcp;

namespace {

std::span<const std::byte> as_bytes(const std::string& s) { return std::as_bytes(std::span<const char>(s)); }

}  // namespace

// ---------------------------------------------------------------- reading: a face over formats::dcp::Reader

bool is_distributed_checkpoint(const std::string& dir) { return dcp::is_checkpoint_dir(dir); }

struct DistributedReader::Impl {
  dcp::Reader reader;
  std::vector<Item> items;
  std::map<std::string, size_t> by_name;

  Impl(const std::string& dir, const LoadOptions& options, std::string_view metadata_bytes)
      : reader(dir, options, metadata_bytes) {
    const auto& entries = reader.metadata().entries;
    for (size_t i = 0; i < entries.size(); ++i) {
      const dcp::Entry& e = entries[i];
      items.push_back(Item{e.fqn, e.is_tensor, e.dtype, e.size, e.chunks.size()});
      by_name.emplace(e.fqn, i);
    }
  }
};

DistributedReader::DistributedReader(const std::string& dir, const LoadOptions& options)
    : impl_(std::make_unique<Impl>(dir, options, dcp::read_metadata_bytes(dir))) {}

DistributedReader::DistributedReader(const std::string& dir, Comm& comm, const LoadOptions& options) {
  std::string bytes;
  std::string failure;
  if (comm.rank() == 0) {
    try {
      bytes = dcp::read_metadata_bytes(dir);
    } catch (const Error& e) {
      failure = e.what();
    }
  }
  // One broadcast: a status byte, then the bytes or rank 0's error.
  std::string msg = (failure.empty() ? "1" : "0") + (failure.empty() ? bytes : failure);
  comm.broadcast(msg, 0);
  if (msg.empty() || msg[0] != '1')
    throw IoError("rank 0 could not read the checkpoint's .metadata: " + (msg.empty() ? std::string() : msg.substr(1)), 0,
                  ErrorContext{dcp::metadata_path(dir)});
  impl_ = std::make_unique<Impl>(dir, options, std::string_view(msg).substr(1));
}

DistributedReader::~DistributedReader() = default;
DistributedReader::DistributedReader(DistributedReader&&) noexcept = default;
DistributedReader& DistributedReader::operator=(DistributedReader&&) noexcept = default;

const std::vector<DistributedReader::Item>& DistributedReader::items() const noexcept { return impl_->items; }

const DistributedReader::Item& DistributedReader::item(const std::string& name) const {
  impl_->reader.entry(name);  // the error for a missing name
  return impl_->items[impl_->by_name.at(name)];
}

Tensor DistributedReader::read(const std::string& name) const {
  const dcp::Entry& e = impl_->reader.entry(name);
  return impl_->reader.read_region(e, std::vector<int64_t>(e.size.size(), 0), e.size);
}

Tensor DistributedReader::read(const std::string& name, const std::vector<int64_t>& offsets,
                               const std::vector<int64_t>& sizes) const {
  return impl_->reader.read_region(impl_->reader.entry(name), offsets, sizes);
}

Value DistributedReader::read_value(const std::string& name) const {
  return impl_->reader.read_value(impl_->reader.entry(name));
}

Value DistributedReader::consolidate() const { return impl_->reader.consolidate(); }

size_t DistributedReader::verify() const { return impl_->reader.verify(); }

uint64_t DistributedReader::bytes_read() const noexcept { return impl_->reader.bytes_read(); }

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
    RenameWatch watch(env, dcp::metadata_path(dir));
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
      io::write_atomically(watch, dcp::metadata_path(dir), [&](io::WritableFile& f) { f.append(as_bytes(pickle)); },
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
