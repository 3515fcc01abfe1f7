#include "ckpt/safetensors.hpp"

#include "api/open_internal.hpp"
#include "ckpt/error.hpp"
#include "formats/safetensors.hpp"
#include "io/file.hpp"

namespace ckpt {
namespace {

std::vector<std::pair<std::string, std::string>> metadata_items(const std::map<std::string, std::string>& m) {
  return {m.begin(), m.end()};
}

// "This is not a safetensors file" rather than a header error when the bytes
// are clearly another format ckpt knows.
void require_safetensors(const std::shared_ptr<io::RandomAccessFile>& file) {
  Format f = detail::detect(file);
  if (f != Format::safetensors && f != Format::unknown)
    throw FormatError("not a safetensors file: it is a " + std::string(format_name(f)) +
                          " checkpoint (use ckpt::load_state_dict)",
                      ErrorContext{file->name(), "", std::nullopt});
}

}  // namespace

void save_safetensors(const std::string& path, const StateDict& state_dict,
                      const std::map<std::string, std::string>& metadata) {
  const auto meta = metadata_items(metadata);
  try {
    io::write_atomically(io::Env::posix(), path, [&](io::WritableFile& out) {
      formats::write_safetensors(out, state_dict.items(), meta);
    });
  } catch (Error& e) {
    e.add_context(ErrorContext{path, "", std::nullopt});
    throw;
  }
}

std::string save_safetensors_to_buffer(const StateDict& state_dict,
                                       const std::map<std::string, std::string>& metadata) {
  std::string out;
  auto writer = io::string_writer(out);
  formats::write_safetensors(*writer, state_dict.items(), metadata_items(metadata));
  writer->close();
  return out;
}

StateDict load_safetensors(const std::string& path, bool mmap) {
  auto file = detail::open_for_load(path, mmap);
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

}  // namespace ckpt
