// ckpt::open: the lazy reader over single files and Hugging Face sharded sets.
#include "ckpt/open.hpp"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <unordered_map>

#include "api/open_internal.hpp"
#include "api/resolve.hpp"
#include "core/name_table.hpp"
#include "ckpt/error.hpp"
#include "ckpt/tree.hpp"
#include "formats/dcp_reader.hpp"
#include "formats/detect.hpp"
#include "formats/safetensors.hpp"
#include "formats/shard_index.hpp"
#include "io/file.hpp"

namespace fs = std::filesystem;

namespace ckpt {

struct Reader::Impl {
  Impl() = default;
  Impl(const Impl&) = delete;  // `index` views into `infos`
  Impl& operator=(const Impl&) = delete;

  Format format = Format::unknown;
  std::string path;
  bool sharded = false;
  std::vector<std::string> files;
  std::vector<TensorInfo> infos;
  std::vector<Tensor> tensors;  // parallel to infos
  // Names -> position in `infos` (core/name_table.hpp: the names are
  // compared in `infos`, which no longer changes once built), built once by
  // finish().
  NameTable index;
  static constexpr size_t npos = NameTable::npos;
  std::map<std::string, std::string> metadata;
  uint64_t nbytes = 0;
  uint64_t file_bytes = 0;  // the sizes of `files`, summed

  void add_file(const std::string& name, uint64_t size) {
    files.push_back(name);
    file_bytes += size;
  }

  // Room for the tensors of `root` (a state dict: one per entry), so that
  // 100,000 tensors cost no reallocation of the tables.
  void reserve(const Value& root) {
    if (!root.is_dict()) return;
    const size_t n = infos.size() + root.as_dict().size();
    infos.reserve(n);
    tensors.reserve(n);
  }

  void add(const std::string& name, Tensor t, const std::string& file, const io::RandomAccessFile* f) {
    TensorInfo info;
    info.name = name;
    info.dtype = t.dtype();
    info.shape = t.sizes();
    info.strides = t.strides();
    info.storage_offset = t.storage_offset();
    info.device = t.device();
    info.file = file;
    info.nbytes = t.nbytes();
    info.contiguous = t.is_contiguous();
    const std::byte* base = f ? f->memory() : nullptr;
    const Storage& s = t.storage();
    if (base != nullptr && s.backing() == Storage::Backing::mapped && s.data() >= base &&
        s.data() <= base + f->size()) {
      info.file_offset = static_cast<int64_t>(s.data() - base) +
                         t.storage_offset() * static_cast<int64_t>(t.itemsize());
    }
    nbytes += info.nbytes;
    infos.push_back(std::move(info));
    tensors.push_back(std::move(t));
  }

  auto name_of() const {
    return [this](size_t i) -> std::string_view { return infos[i].name; };
  }

  // The name index, once every tensor is in; a name seen twice is refused.
  void finish() {
    index.reset(infos.size());
    for (size_t i = 0; i < infos.size(); ++i) {
      const TensorInfo& info = infos[i];
      if (!index.insert(info.name, i, name_of()))
        throw FormatError("tensor " + info.name + " appears twice", ErrorContext{info.file, info.name, std::nullopt});
    }
  }

  // The position of `name` in `infos`, or npos.
  size_t find(std::string_view name) const { return index.find(name, name_of()); }

  StateDict state_dict(bool copy) const {
    StateDict sd;
    for (size_t i = 0; i < infos.size(); ++i) sd.set(infos[i].name, copy ? tensors[i].clone() : tensors[i]);
    return sd;
  }
};

namespace {

LoadOptions mapped(const OpenOptions& options) {
  LoadOptions lo = options;
  lo.mmap = true;
  lo.key.clear();  // open() applies the key itself
  return lo;
}

void open_single(Reader::Impl& impl, const std::string& path, const std::shared_ptr<io::RandomAccessFile>& file,
                 const OpenOptions& options) {
  if (formats::detect_head(file) == Format::safetensors && options.key.empty()) {
    // The flat tensors straight from the header, parsed once (a ckpt.tree
    // is not rebuilt: its tensors are already named by their paths).
    if (impl.format == Format::unknown) impl.format = Format::safetensors;
    impl.add_file(path, file->size());
    auto header = formats::read_safetensors_header(*file);
    for (auto& [k, v] : header.metadata) impl.metadata.emplace(k, v);
    auto tensors = formats::read_safetensors(*file, std::move(header), /*mmap=*/true,
                                             options.map_location.apply("cpu"));
    impl.infos.reserve(tensors.size());
    impl.tensors.reserve(tensors.size());
    for (auto& [name, t] : tensors) impl.add(name, std::move(t), path, file.get());
    return;
  }
  Format format = Format::unknown;
  Value root = formats::load_any(file, mapped(options), &format, nullptr);
  if (impl.format == Format::unknown) impl.format = format;
  impl.add_file(path, file->size());
  if (format == Format::safetensors) {
    auto header = formats::read_safetensors_header(*file);
    for (auto& [k, v] : header.metadata) impl.metadata.emplace(k, v);
  }
  if (!options.key.empty()) root = lookup(root, options.key);
  impl.reserve(root);
  // The tree is ours and dropped after: its tensors are moved into the Reader.
  for_each_mutable_tensor(root, [&](const std::string& name, Tensor& t) { impl.add(name, std::move(t), path, file.get()); });
}

void open_index(Reader::Impl& impl, const std::string& index_path, const std::string& index_text,
                const OpenOptions& options) {
  formats::ShardIndex index = formats::parse_shard_index(index_text, index_path);
  impl.sharded = true;
  impl.metadata = index.metadata;
  const fs::path dir = fs::path(index_path).parent_path();
  // Open every shard once, in order of first appearance in the weight map.
  std::unordered_map<std::string, std::unordered_map<std::string, Tensor>> shard_tensors;
  std::unordered_map<std::string, std::shared_ptr<io::RandomAccessFile>> shard_files;
  for (const auto& shard : index.shards) {
    const std::string shard_path = (dir / shard).string();
    auto file = io::map_file(shard_path);
    Format format = Format::unknown;
    Value root = formats::load_any(file, mapped(options), &format, nullptr);
    if (impl.format == Format::unknown) impl.format = format;
    auto& named = shard_tensors[shard];
    for_each_tensor(root, [&](const std::string& name, const Tensor& t) {
      if (!named.emplace(name, t).second)
        throw FormatError("tensor " + name + " appears twice", ErrorContext{shard_path, name, std::nullopt});
    });
    shard_files[shard] = file;
    impl.add_file(shard_path, file->size());
  }
  for (const auto& [name, shard] : index.weight_map) {
    auto& named = shard_tensors[shard];
    auto it = named.find(name);
    const std::string shard_path = (dir / shard).string();
    if (it == named.end())
      throw FormatError("the index maps tensor " + name + " to " + shard + ", which does not hold it",
                        ErrorContext{index_path, name, std::nullopt});
    impl.add(name, it->second, shard_path, shard_files[shard].get());
    named.erase(it);
  }
  for (const auto& shard : index.shards) {
    const auto& rest = shard_tensors[shard];
    if (!rest.empty()) {
      std::vector<std::string> names;
      for (const auto& [n, t] : rest) names.push_back(n);
      std::sort(names.begin(), names.end());
      throw FormatError("shard " + shard + " holds " + std::to_string(names.size()) +
                            " tensor(s) the index does not list, e.g. " + names.front(),
                        ErrorContext{index_path, names.front(), std::nullopt});
    }
  }
}

// A distributed checkpoint, consolidated: each tensor assembled from its
// chunks (so copied, not mapped; records are views into mapped data files
// only where a chunk is the whole tensor).
void open_dcp(Reader::Impl& impl, const formats::dcp::CheckpointDir& dcp, const OpenOptions& options) {
  impl.format = Format::dcp;
  impl.files = dcp.files;
  impl.file_bytes = dcp.file_bytes;
  Value root = formats::dcp::Reader(dcp.dir, mapped(options), dcp.metadata_bytes).consolidate();
  if (!options.key.empty()) root = lookup(root, options.key);
  for_each_tensor(root, [&](const std::string& name, const Tensor& t) { impl.add(name, t, dcp.dir, nullptr); });
}

void open_target(Reader::Impl& impl, const detail::Target& target, const OpenOptions& options) {
  switch (target.kind) {
    case detail::Target::Kind::shard_index:
      open_index(impl, target.path, target.index_text, options);
      break;
    case detail::Target::Kind::dcp:
      open_dcp(impl, target.dcp, options);
      break;
    case detail::Target::Kind::file:
      open_single(impl, target.path, target.file, options);
      break;
  }
  impl.finish();
}

}  // namespace

detail::ShardIndexLoad detail::load_shard_index(const Target& target, const LoadOptions& options) {
  Reader::Impl impl;
  impl.path = target.path;
  OpenOptions o = options;
  o.key.clear();  // load_state_dict applies the key to the loaded value
  try {
    open_target(impl, target, o);
  } catch (Error& e) {
    e.add_context(ErrorContext{target.path, "", std::nullopt});
    throw;
  }
  return {impl.state_dict(/*copy=*/!options.mmap).to_value(), impl.format, impl.files, impl.file_bytes};
}

Reader open(const std::string& path, const OpenOptions& options) {
  auto impl = std::make_shared<Reader::Impl>();
  impl->path = path;
  try {
    open_target(*impl, detail::resolve(path, /*mmap=*/true), options);
  } catch (Error& e) {
    e.add_context(ErrorContext{path, "", std::nullopt});
    throw;
  }
  return Reader(std::move(impl));
}

Format Reader::format() const { return impl_->format; }
const std::string& Reader::path() const { return impl_->path; }
bool Reader::sharded() const { return impl_->sharded; }
const std::vector<std::string>& Reader::files() const { return impl_->files; }
const std::vector<TensorInfo>& Reader::tensors() const { return impl_->infos; }
size_t Reader::size() const { return impl_->infos.size(); }
uint64_t Reader::nbytes() const { return impl_->nbytes; }
const std::map<std::string, std::string>& Reader::metadata() const { return impl_->metadata; }

std::vector<std::string> Reader::keys() const {
  std::vector<std::string> out;
  out.reserve(impl_->infos.size());
  for (const auto& i : impl_->infos) out.push_back(i.name);
  return out;
}

bool Reader::contains(std::string_view name) const { return impl_->find(name) != Impl::npos; }

namespace {
size_t position(const Reader::Impl& impl, std::string_view name) {
  const size_t i = impl.find(name);
  if (i == Reader::Impl::npos)
    throw TypeError("no tensor named '" + std::string(name) + "' (" + std::to_string(impl.infos.size()) +
                        " tensors)",
                    ErrorContext{impl.path, std::string(name), std::nullopt});
  return i;
}
}  // namespace

const TensorInfo& Reader::info(std::string_view name) const { return impl_->infos[position(*impl_, name)]; }
Tensor Reader::get(std::string_view name) const { return impl_->tensors[position(*impl_, name)]; }
Tensor Reader::copy(std::string_view name) const { return impl_->tensors[position(*impl_, name)].clone(); }

namespace {

// Writes the contiguous bytes `src` (dst's dtype, row-major) into dst's
// strided layout, one element at a time.
void scatter_strided(std::span<const std::byte> src, const Tensor& dst) {
  const size_t item = dst.itemsize();
  const auto& sizes = dst.sizes();
  const auto& strides = dst.strides();
  std::byte* base = dst.mutable_data();
  std::vector<int64_t> idx(sizes.size(), 0);
  for (size_t done = 0; done * item < src.size(); ++done) {
    int64_t off = 0;
    for (size_t d = 0; d < idx.size(); ++d) off += idx[d] * strides[d];
    std::memcpy(base + off * static_cast<int64_t>(item), src.data() + done * item, item);
    for (size_t d = idx.size(); d-- > 0;) {
      if (++idx[d] < sizes[d]) break;
      idx[d] = 0;
    }
  }
}

bool read_one_into(const Reader& r, const TensorInfo& info, const Tensor& dst,
                   std::unordered_map<std::string, std::shared_ptr<io::RandomAccessFile>>& files) {
  if (dst.sizes() != info.shape)
    throw TypeError("read_into: tensor '" + info.name + "' has shape " + format_shape(info.shape) + " in " +
                    info.file + " but " + format_shape(dst.sizes()) + " in the destination");
  if (dst.numel() == 0) return info.dtype == dst.dtype();
  std::byte* out = dst.mutable_data();  // throws for read-only destinations
  if (info.dtype == dst.dtype() && info.contiguous && dst.is_contiguous() && info.file_offset >= 0 &&
      !dst.quantization()) {
    auto& f = files[info.file];
    if (!f) f = io::open_file(info.file);
    io::read_at_parallel(*f, static_cast<uint64_t>(info.file_offset), {out, info.nbytes});
    return true;
  }
  Tensor src = r.get(info.name);
  if (src.dtype() != dst.dtype()) src = src.to(dst.dtype());
  if (dst.is_contiguous()) {
    src.copy_contiguous_to({out, dst.nbytes()});
  } else {
    scatter_strided(src.contiguous_bytes(), dst);
  }
  return false;
}

}  // namespace

bool Reader::read_into(std::string_view name, const Tensor& dst) const {
  std::unordered_map<std::string, std::shared_ptr<io::RandomAccessFile>> files;
  return read_one_into(*this, info(name), dst, files);
}

size_t Reader::read_into(const StateDict& dst) const {
  std::string missing;
  for (const auto& [name, t] : dst)
    if (!contains(name)) missing += (missing.empty() ? "'" : ", '") + name + "'";
  if (!missing.empty()) throw TypeError("read_into: " + impl_->path + " lacks " + missing);
  std::unordered_map<std::string, std::shared_ptr<io::RandomAccessFile>> files;
  size_t direct = 0;
  for (const auto& [name, t] : dst) direct += read_one_into(*this, info(name), t, files) ? 1 : 0;
  return direct;
}

StateDict Reader::state_dict(bool copy) const { return impl_->state_dict(copy); }

}  // namespace ckpt
