#include "io/fault_env.hpp"

#include <cstring>

#include "ckpt/error.hpp"

namespace ckpt::io {
namespace {

class FaultyFile final : public WritableFile {
 public:
  FaultyFile(FaultInjectionEnv& env, std::unique_ptr<WritableFile> base, std::string path)
      : env_(env), base_(std::move(base)), path_(std::move(path)) {}
  void append(std::span<const std::byte> data) override {
    try {
      env_.check("write", path_);
    } catch (const IoError&) {
      if (env_.short_write && data.size() > 1) base_->append(data.first(data.size() / 2));
      throw;
    }
    base_->append(data);
  }
  void sync() override {
    env_.check("fsync", path_);
    base_->sync();
  }
  void close() override {
    env_.check("close", path_);
    base_->close();
  }
  uint64_t size() const override { return base_->size(); }

 private:
  FaultInjectionEnv& env_;
  std::unique_ptr<WritableFile> base_;
  std::string path_;
};

}  // namespace

void FaultInjectionEnv::check(const char* what, const std::string& path) {
  const int64_t n = calls_++;
  if (fail_at >= 0 && (n == fail_at || (sticky && n > fail_at))) {
    fired_ = true;
    throw IoError(std::string(what) + " failed (injected): " + std::strerror(error), error, ErrorContext{path});
  }
}

std::unique_ptr<WritableFile> FaultInjectionEnv::new_writable_file(const std::string& path) {
  check("create", path);
  return std::make_unique<FaultyFile>(*this, base_.new_writable_file(path), path);
}

void FaultInjectionEnv::rename_file(const std::string& from, const std::string& to) {
  check("rename", to);
  base_.rename_file(from, to);
}

void FaultInjectionEnv::sync_dir(const std::string& dir) {
  check("fsync directory", dir);
  base_.sync_dir(dir);
}

}  // namespace ckpt::io
