#include "formats/torch_zip.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <span>
#include <vector>
#include <unordered_map>

#include "ckpt/error.hpp"
#include "core/byteswap.hpp"
#include "core/checked.hpp"
#include "pickle/rewrite.hpp"

namespace ckpt::formats {
namespace {

// The `version` record: torch writes 3; readers accept 1..0xA (kMaxSupportedFileFormatVersion).
constexpr uint64_t kMinFileFormatVersion = 1;
constexpr uint64_t kMaxFileFormatVersion = 0xA;

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// PyTorchStreamReader::getRecord / hasRecord: "<prefix>/<name>" located by
// miniz without MZ_ZIP_FLAG_CASE_SENSITIVE, i.e. ignoring ASCII case.
const zip::Entry* record(const zip::ZipReader& zip, const std::string& prefix, const char* name) {
  return zip.find_torch(prefix + "/" + name);
}

// Resolves torch's persistent ids ('storage', type, key, location, numel),
// in TorchScript archives also the early ('storage', type, key, location,
// numel, None), to storages read from `<prefix>/data/<key>`, once per key.
class StorageLoader {
 public:
  StorageLoader(const zip::ZipReader& zip, const TorchZipInfo& info, const LoadOptions& options,
                std::string pickle_record, std::string storage_dir)
      : zip_(zip),
        info_(info),
        options_(options),
        pkl_(info.prefix + "/" + pickle_record),
        dir_(info.prefix + "/" + storage_dir + "/") {
    // One slot per record, indexed by its position in the archive: a file
    // of 100,000 tensors costs no hash table of keys (a node and a lookup
    // per tensor were a tenth of its open time).
    by_entry_.resize(zip.entries().size());
  }

  Value operator()(const Value& pid, uint64_t offset) {
    const std::string& file = zip_.file().name();
    auto fail = [&](const std::string& msg) -> FormatError {
      return FormatError(msg, ErrorContext{file, pkl_, offset});
    };
    if (!pid.is_tuple()) throw fail("persistent id is a " + std::string(pid.kind_name()) + ", expected a tuple");
    const List& t = pid.as_tuple();
    if (t.empty() || !t[0].is_string() || t[0].as_string() != "storage")
      throw fail("persistent id " + pid.repr() + " is not a storage reference");
    // torch.save (1.6+) and TorchScript write five fields; early TorchScript
    // (torch ~1.2) wrote a sixth, the view metadata of the legacy format, always
    // None there. torch.jit.load reads fields 0-4 by position and ignores any
    // further one; torch.load unpacks exactly five. A non-None sixth field
    // would make the tensor a view into its storage, which torch.jit.load would
    // silently drop: refused rather than misread.
    const size_t max_fields = info_.torchscript ? 6 : 5;
    if (t.size() < 5 || t.size() > max_fields)
      throw fail("storage persistent id has " + std::to_string(t.size()) + " fields, expected 5" +
                 (info_.torchscript ? " or 6 ('storage', type, key, location, numel[, None])" : ""));
    if (t.size() == 6 && !t[5].is_none())
      throw fail("storage persistent id's sixth field (view metadata) is " + t[5].repr() +
                 ", expected None: storage views in TorchScript archives are not supported");
    if (t[1].kind() != Value::Kind::Global)
      throw fail("storage type in persistent id is a " + std::string(t[1].kind_name()));
    const Global& type = t[1].as_global();
    DType dtype;
    if (type.name == "UntypedStorage") {
      dtype = DType::uint8;
    } else if (auto d = dtype_from_storage_name(type.name)) {
      dtype = *d;
    } else {
      throw fail("unknown storage type '" + type.qualified() + "'");
    }
    if (!t[2].is_string()) throw fail("storage key is not a string");
    if (!t[3].is_string()) throw fail("storage location is not a string");
    if (!t[4].is_int() || t[4].as_int() < 0) throw fail("storage size is not a non-negative int");
    const std::string& key = t[2].as_string();

    // torch keeps one storage per key. A key whose record name is the
    // entry's name exactly is the only key for that entry: its storage is
    // kept in the entry's slot. Other keys (another letter case than the
    // record's) go to a map by key, so that two spellings of one record stay
    // two storages, as in torch.
    record_name_.assign(dir_).append(key);
    const zip::Entry* e = zip_.find_torch(record_name_, next_entry_);
    if (e != nullptr) next_entry_ = static_cast<size_t>(e - zip_.entries().data()) + 1;
    Value* slot = nullptr;
    if (e != nullptr && e->name == record_name_) {
      slot = &by_entry_[static_cast<size_t>(e - zip_.entries().data())];
    } else {
      auto it = by_key_.find(key);
      if (it != by_key_.end()) slot = &it->second;
    }
    if (slot != nullptr && !slot->is_none()) {
      const DType cached = slot->as_storage().dtype;
      if (cached != dtype)
        throw fail("storage '" + key + "' is referenced as " + std::string(name(cached)) + " and as " +
                   std::string(name(dtype)));
      return *slot;  // the same storage, shared (no copy)
    }

    const uint64_t numel = static_cast<uint64_t>(t[4].as_int());
    const uint64_t nbytes = checked_mul_size(numel, itemsize(dtype), "storage size");
    const std::string& record_name = record_name_;
    if (e == nullptr) throw fail("storage record '" + record_name + "' is missing from the archive");
    if (storages_out) storages_out->push_back(e);
    if (e->uncompressed_size != nbytes)
      throw FormatError("storage record has " + std::to_string(e->uncompressed_size) +
                            " bytes, but data.pkl declares " + std::to_string(numel) + " " +
                            std::string(name(dtype)) + " elements (" + std::to_string(nbytes) +
                            " bytes)",
                        ErrorContext{file, record_name, std::nullopt});

    StorageValue sv;
    sv.dtype = dtype;
    sv.device = options_.map_location.apply(t[3].as_string());
    const bool swap = info_.byteorder == "big" && itemsize(dtype) > 1;
    // The data offset (its local header) is looked up here only for a view;
    // a copy finds it as it reads (read_windowed: no read of its own).
    const auto aligned = [&] { return zip_.data_offset(*e) % std::max<size_t>(itemsize(dtype), 1) == 0; };
    if (options_.mmap && !swap && e->method == 0 && zip_.file().memory() != nullptr && aligned()) {
      sv.storage = zip_.view(*e);
    } else {
      sv.storage = read_storage(*e);
      if (swap) byteswap_dtype_elements(sv.storage.mutable_data(), sv.storage.nbytes(), dtype);
    }
    Value v(std::move(sv));
    if (slot != nullptr) *slot = v;
    else by_key_.emplace(key, v);
    return v;
  }

 private:
  const zip::ZipReader& zip_;
  const TorchZipInfo& info_;
  const LoadOptions& options_;
  std::string pkl_;
  std::string dir_;
  std::vector<Value> by_entry_;  // per zip entry: its storage once read (None before)
  size_t next_entry_ = 0;        // where the next storage record is guessed to be (find_torch's hint)
  std::unordered_map<std::string, Value> by_key_;  // keys that are not their record's exact name
  std::string record_name_;      // dir_ + key, reused

 public:
  std::vector<const zip::Entry*>* storages_out = nullptr;

 private:
  Storage slab_;         // small storages are slices of this block
  size_t slab_used_ = 0;

  // Small stored records are read into slices of 1 MiB blocks, not into an
  // allocation each: with glibc, every aligned_alloc past the small-bin sizes
  // consolidates the fast bins first, which made allocation a fifth of the
  // time of loading 100,000 tensors of ~2 KiB. A block is freed with the last
  // tensor viewing it (at most 1 MiB held by one small tensor); every slice is
  // Storage::kAlignment-aligned, writable and owned, as an allocation is.
  static constexpr size_t kSlab = size_t{1} << 20;
  static constexpr size_t kSlabMaxRecord = size_t{64} << 10;
  Storage read_storage(const zip::Entry& e) {
    const uint64_t n = e.uncompressed_size;
    if (e.method != 0 || n > kSlabMaxRecord) return zip_.read(e, huge_pages(options_));
    const size_t size = static_cast<size_t>(n);
    const size_t offset = (slab_used_ + Storage::kAlignment - 1) / Storage::kAlignment * Storage::kAlignment;
    if (!slab_ || offset + size > slab_.nbytes()) {
      slab_ = Storage::allocate(kSlab);
      slab_used_ = 0;
      return read_storage(e);
    }
    Storage s = slab_.slice(offset, size);
    const std::span<std::byte> dst{s.mutable_data(), size};
    if (zip_.file().memory() != nullptr || !read_windowed(e, dst)) zip_.read_into(e, dst);
    slab_used_ = offset + size;
    return s;
  }

  // A file read by calls (not mapped): small records are copied out of a
  // window of the file read ahead in one call, local header and payload
  // together. torch writes the records of a file one after the other, so a
  // 1 MiB window serves thousands of small tensors: two reads per tensor
  // (its local header, then its bytes) were a sixth of the load time of
  // 100,000 small tensors. False when the record does not lie in a window;
  // the caller then reads it as before. The header is checked as
  // ZipReader::data_offset checks it.
  static constexpr size_t kWindow = size_t{1} << 20;
  static constexpr uint64_t kHeaderSlack = 512;  // room for the local header's name and extra field
  std::vector<std::byte> window_;
  uint64_t window_at_ = 0;
  bool read_windowed(const zip::Entry& e, std::span<std::byte> dst) {
    const uint64_t file_size = zip_.file().size();
    const uint64_t start = e.local_header_offset;
    if (start >= file_size) return false;
    const uint64_t want = std::min<uint64_t>(zip::ZipReader::kLocalHeaderSize + kHeaderSlack + dst.size(),
                                             file_size - start);
    if (want > kWindow) return false;
    if (window_.empty() || start < window_at_ || start + want > window_at_ + window_.size()) {
      window_.resize(static_cast<size_t>(std::min<uint64_t>(kWindow, file_size - start)));
      zip_.file().read_at(start, window_);
      window_at_ = start;
    }
    const auto in_window = std::span<const std::byte>(window_).subspan(static_cast<size_t>(start - window_at_));
    if (in_window.size() < zip::ZipReader::kLocalHeaderSize) return false;
    const uint64_t data = zip_.data_offset(e, in_window);
    if (data < window_at_ || data - window_at_ > window_.size() || dst.size() > window_.size() - (data - window_at_))
      return false;
    std::memcpy(dst.data(), window_.data() + (data - window_at_), dst.size());
    return true;
  }
};

}  // namespace

TorchZipInfo inspect_torch_zip(const zip::ZipReader& zip) {
  const std::string& file = zip.file().name();
  if (zip.entries().empty()) throw FormatError("zip archive is empty, not a torch checkpoint", {file});
  TorchZipInfo info;
  // PyTorchStreamReader::init: the prefix is the first central-directory
  // name up to its first '/' (possibly empty: "/data.pkl" has prefix "").
  const std::string& first = zip.entries().front().name;
  size_t slash = first.find('/');
  if (slash == std::string::npos)
    throw FormatError("zip entry '" + first + "' is not inside a folder; not a torch checkpoint",
                      {file});
  info.prefix = first.substr(0, slash);
  // torch.serialization._is_torchscript_zip: "constants.pkl" among
  // getAllRecords(), which are exact names with the prefix stripped.
  info.torchscript = zip.find(info.prefix + "/constants.pkl") != nullptr;

  const zip::Entry* v = record(zip, info.prefix, ".data/version");
  if (v == nullptr) v = record(zip, info.prefix, "version");
  if (v != nullptr) {
    if (v->uncompressed_size > 32)
      throw FormatError("version record is " + std::to_string(v->uncompressed_size) + " bytes long",
                        {file, v->name});
    std::string s = trim(zip.read_string(*v));
    uint64_t n = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc() || p != s.data() + s.size() || s.empty())
      throw FormatError("version record '" + s + "' is not a number", {file, v->name});
    if (n < kMinFileFormatVersion || n > kMaxFileFormatVersion)
      throw UnsupportedError("file format version " + std::to_string(n) +
                                 " is outside the supported range 1..10",
                             {file, v->name});
    info.version = n;
  }
  info.byteorder = "little";
  if (const zip::Entry* b = record(zip, info.prefix, "byteorder")) {
    if (b->uncompressed_size > 16)
      throw FormatError("byteorder record is too long", {file, b->name});
    std::string s = trim(zip.read_string(*b));
    if (s != "little" && s != "big")
      throw FormatError("byteorder record says '" + s + "', expected 'little' or 'big'", {file, b->name});
    info.byteorder = s;
  }
  return info;
}

Value load_torch_zip(const zip::ZipReader& zip, const LoadOptions& options, pickle::Observer* observer) {
  TorchZipInfo info = inspect_torch_zip(zip);
  const std::string& file = zip.file().name();
  if (info.torchscript && options.weights_only)
    throw UnsupportedError(
        "this is a TorchScript archive (it has constants.pkl); load it as TorchScript", {file});
  if (info.version == 0)
    throw FormatError("archive has no 'version' record; not a torch checkpoint", {file, info.prefix});
  // LibTorch's torch::pickle_save wraps typed containers in identity
  // functions (restore_type_tag(value, "Dict[str, Tensor]")): read them as
  // inert wrappers and keep their first argument. Nothing is called.
  return unwrap_jit_containers(
      unpickle_record(zip, info, "data.pkl", "data", options, observer, is_jit_container_wrapper));
}

bool is_jit_container_wrapper(std::string_view module, std::string_view name) {
  return module == "torch.jit._pickle" && (name == "restore_type_tag" || name == "build_intlist" ||
                                           name == "build_tensorlist" || name == "build_doublelist" ||
                                           name == "build_boollist");
}

Value unwrap_jit_containers(const Value& v) {
  return pickle::rewrite_objects(v, [](const Value& obj) -> Value {
    const Object& o = obj.as_object();
    if (!is_jit_container_wrapper(o.module, o.name)) return obj;
    if (!o.args.is_tuple() || o.args.as_tuple().empty()) throw FormatError(o.qualified() + " has no arguments");
    return o.args.as_tuple()[0];
  });
}

Value unpickle_record(const zip::ZipReader& zip, const TorchZipInfo& info, const std::string& pickle_record,
                      const std::string& storage_dir, const LoadOptions& options, pickle::Observer* observer,
                      std::function<bool(std::string_view, std::string_view)> accept_inert,
                      const zip::Entry* pickle_entry, std::vector<const zip::Entry*>* storages_out) {
  const std::string& file = zip.file().name();
  const std::string pkl_name = pickle_entry ? pickle_entry->name : info.prefix + "/" + pickle_record;
  const zip::Entry* pkl = pickle_entry ? pickle_entry : zip.find_torch(pkl_name);
  if (pkl == nullptr) throw FormatError("archive has no " + pickle_record + " record", {file, pkl_name});
  // With mmap the pickle is parsed where it lies in the mapped file (as the
  // tensors are viewed there): no copy of a 10 MB data.pkl to fault in.
  const bool view = options.mmap && pkl->method == 0 && zip.file().memory() != nullptr;
  Storage pkl_bytes = view ? zip.view(*pkl) : zip.read(*pkl);

  StorageLoader loader(zip, info, options, pickle_record, storage_dir);
  loader.storages_out = storages_out;
  pickle::Options popts;
  popts.policy = options.weights_only ? pickle::GlobalPolicy::weights_only : pickle::GlobalPolicy::inspect;
  popts.persistent_load = [&loader](const Value& pid, uint64_t offset) { return loader(pid, offset); };
  popts.observer = observer;
  popts.accept_inert = std::move(accept_inert);
  popts.numpy = options.numpy;
  popts.file = file;
  popts.record = pkl_name;
  return pickle::unpickle(pkl_bytes.bytes(), popts);
}

void verify_torch_zip(const zip::ZipReader& zip) {
  for (const auto& e : zip.entries()) zip.verify(e);
  TorchZipInfo info = inspect_torch_zip(zip);
  if (info.torchscript) return;  // TorchScript archives: CRCs only for now
  LoadOptions options;
  options.weights_only = false;  // structure check, not a safety check
  options.mmap = zip.file().memory() != nullptr;
  (void)load_torch_zip(zip, options);
}

}  // namespace ckpt::formats
