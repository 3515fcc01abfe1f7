#include "ckpt/save.hpp"

#include "api/save_internal.hpp"
#include "ckpt/error.hpp"
#include "formats/torch_zip_writer.hpp"

namespace ckpt {

namespace detail {

void write_file(io::Env& env, const std::string& path, const SaveOptions& options,
                const std::function<void(io::WritableFile&)>& body) {
  try {
    if (options.progress) {
      auto counted = io::progress_env(env, options.progress);
      io::write_atomically(*counted, path, body, options.fsync);
    } else {
      io::write_atomically(env, path, body, options.fsync);
    }
  } catch (Error& e) {
    e.add_context(ErrorContext{path});
    throw;
  }
}

void write_torch_save(io::WritableFile& out, const std::string& path, const Value& value,
                      const SaveOptions& options) {
  const std::string prefix = options.archive_name.empty() ? formats::archive_name_for(path) : options.archive_name;
  formats::write_torch_zip(out, value, prefix, options);
}

void save(io::Env& env, const std::string& path, const Value& value, const SaveOptions& options,
          uint64_t zip64_threshold) {
  const std::string prefix = options.archive_name.empty() ? formats::archive_name_for(path) : options.archive_name;
  write_file(env, path, options,
             [&](io::WritableFile& f) { formats::write_torch_zip(f, value, prefix, options, zip64_threshold); });
}

}  // namespace detail

void save(const std::string& path, const Value& value, const SaveOptions& options) {
  detail::save(io::default_env(), path, value, options);
}

void save_state_dict(const std::string& path, const StateDict& state_dict, const SaveOptions& options) {
  save(path, state_dict.to_value(), options);
}

std::string save_to_buffer(const Value& value, const SaveOptions& options) {
  std::string out;
  auto w = io::string_writer(out);
  formats::write_torch_zip(*w, value, options.archive_name.empty() ? "archive" : options.archive_name, options);
  return out;
}

}  // namespace ckpt
