#include "ckpt/safetensors.hpp"

#include "ckpt/error.hpp"
#include "formats/detect.hpp"
#include "formats/safetensors.hpp"
#include "formats/safetensors_tree.hpp"
#include "api/save_internal.hpp"

#include <algorithm>
#include <unordered_map>
#include "io/file.hpp"

namespace ckpt {
namespace {

std::vector<std::pair<std::string, std::string>> metadata_items(const std::map<std::string, std::string>& m) {
  return {m.begin(), m.end()};
}

// "This is not a safetensors file" rather than a header error when the bytes
// are clearly another format ckpt knows.
void require_safetensors(const std::shared_ptr<io::RandomAccessFile>& file) {
  Format f = formats::detect(file);
  if (f != Format::safetensors && f != Format::unknown)
    throw FormatError("not a safetensors file: it is a " + std::string(format_name(f)) +
                          " checkpoint (use ckpt::load_state_dict)",
                      ErrorContext{file->name(), "", std::nullopt});
}

}  // namespace

void save_safetensors(const std::string& path, const StateDict& state_dict,
                      const std::map<std::string, std::string>& metadata, const SaveOptions& options) {
  const auto meta = metadata_items(metadata);
  detail::write_file(io::default_env(), path, options,
                     [&](io::WritableFile& out) { formats::write_safetensors(out, state_dict.items(), meta); });
}

std::string save_safetensors_to_buffer(const StateDict& state_dict,
                                       const std::map<std::string, std::string>& metadata) {
  std::string out;
  auto writer = io::string_writer(out);
  formats::write_safetensors(*writer, state_dict.items(), metadata_items(metadata));
  writer->close();
  return out;
}

StateDict load_safetensors(const std::string& path, const LoadOptions& options) {
  const bool mmap = options.mmap;
  auto file = formats::open_for_load(path, mmap);
  require_safetensors(file);
  StateDict sd;
  for (auto& [name, t] : formats::read_safetensors(*file, mmap)) sd.set(std::move(name), std::move(t));
  return sd;
}

std::map<std::string, std::string> safetensors_metadata(const std::string& path) {
  auto file = io::open_file(path);
  require_safetensors(file);
  auto header = formats::read_safetensors_header(*file);
  return {header.metadata.begin(), header.metadata.end()};
}

namespace {

std::vector<std::pair<std::string, std::string>> tree_metadata(const formats::TreeEncoding& enc,
                                                               const std::map<std::string, std::string>& metadata) {
  std::vector<std::pair<std::string, std::string>> meta;
  for (const auto& [k, v] : metadata)
    if (k != formats::kTreeMetadataKey) meta.emplace_back(k, v);
  meta.emplace_back(formats::kTreeMetadataKey, enc.tree);
  return meta;
}

}  // namespace

size_t save_safetensors_checkpoint(const std::string& path, const Value& checkpoint,
                                   const std::map<std::string, std::string>& metadata, const SaveOptions& options) {
  formats::TreeEncoding enc;
  try {
    enc = formats::encode_tree(checkpoint);
  } catch (Error& e) {
    e.add_context(ErrorContext{path, "", std::nullopt});
    throw;
  }
  const auto meta = tree_metadata(enc, metadata);
  detail::write_file(io::default_env(), path, options,
                     [&](io::WritableFile& out) { formats::write_safetensors(out, enc.tensors, meta); });
  return enc.aliases;
}

std::string save_safetensors_checkpoint_to_buffer(const Value& checkpoint,
                                                  const std::map<std::string, std::string>& metadata) {
  formats::TreeEncoding enc = formats::encode_tree(checkpoint);
  std::string out;
  auto writer = io::string_writer(out);
  formats::write_safetensors(*writer, enc.tensors, tree_metadata(enc, metadata));
  writer->close();
  return out;
}

std::vector<std::pair<std::string, std::string>> remove_shared_tensors(StateDict& state_dict) {
  struct Kept {
    std::string name;
    const Tensor* tensor;
  };
  std::unordered_map<const void*, std::vector<Kept>> by_storage;
  std::vector<std::pair<std::string, std::string>> report;
  StateDict out;
  out.metadata = state_dict.metadata;
  auto span = [](const Tensor& t) {
    int64_t last = 0;
    for (size_t i = 0; i < t.sizes().size(); ++i) last += (t.sizes()[i] - 1) * t.strides()[i];
    const std::byte* b = t.data();
    return std::make_pair(b, b + (last + 1) * static_cast<int64_t>(t.itemsize()));
  };
  for (const auto& [name, t] : state_dict) {
    if (!t.defined() || t.numel() == 0) {
      out.set(name, t);
      continue;
    }
    auto& kept = by_storage[t.storage().id()];
    bool handled = false;
    for (const Kept& k : kept) {
      const Tensor& o = *k.tensor;
      if (o.dtype() == t.dtype() && o.storage_offset() == t.storage_offset() && o.sizes() == t.sizes() &&
          o.strides() == t.strides()) {
        report.emplace_back(name, k.name);  // the same view: an alias
        handled = true;
        break;
      }
      auto [a0, a1] = span(o);
      auto [b0, b1] = span(t);
      if (a0 < b1 && b0 < a1) {
        out.set(name, t.clone());  // overlaps another kept tensor: an independent copy
        report.emplace_back(name, "");
        handled = true;
        break;
      }
    }
    if (handled) continue;
    out.set(name, t);
    kept.push_back({name, state_dict.find(name)});
  }
  state_dict = std::move(out);
  return report;
}

}  // namespace ckpt
