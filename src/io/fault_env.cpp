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

// A file opened for reading through the fault env: each read_at is a call.
class FaultyReadFile final : public RandomAccessFile {
 public:
  FaultyReadFile(FaultInjectionEnv& env, std::shared_ptr<RandomAccessFile> base)
      : env_(env), base_(std::move(base)) {}
  const std::string& name() const override { return base_->name(); }
  uint64_t size() const override { return base_->size(); }
  void read_at(uint64_t offset, std::span<std::byte> dst) const override {
    if (env_.read_fails()) {
      if (!env_.short_read) env_.throw_read("read failed", name(), offset);
      // The file ends halfway through this read: what a pread loop sees when
      // the file shrinks under it.
      const size_t half = dst.size() / 2;
      base_->read_at(offset, dst.first(half));
      throw FormatError("file shrank while reading (injected)", ErrorContext{name(), "", offset + half});
    }
    base_->read_at(offset, dst);
  }
  const std::byte* memory() const override { return base_->memory(); }
  std::shared_ptr<const void> keepalive() const override { return base_->keepalive(); }

 private:
  FaultInjectionEnv& env_;
  std::shared_ptr<RandomAccessFile> base_;
};

}  // namespace

bool FaultInjectionEnv::read_fails() noexcept {
  const int64_t n = read_calls_.fetch_add(1);
  if (read_fail_at >= 0 && (n == read_fail_at || (read_sticky && n > read_fail_at))) {
    read_fired_ = true;
    return true;
  }
  return false;
}

void FaultInjectionEnv::throw_read(const char* what, const std::string& path, std::optional<uint64_t> offset) const {
  throw IoError(std::string(what) + " (injected): " + std::strerror(read_error), read_error,
                ErrorContext{path, "", offset});
}

std::shared_ptr<RandomAccessFile> FaultInjectionEnv::open_for_read(const std::string& path, ReadMode mode) {
  if (read_fails()) throw_read(mode == ReadMode::mmap ? "cannot map" : "cannot open", path);
  return std::make_shared<FaultyReadFile>(*this, base_.open_for_read(path, mode));
}

std::vector<DirEntry> FaultInjectionEnv::list_dir(const std::string& dir) {
  if (read_fails()) throw_read("cannot list the directory", dir);
  return base_.list_dir(dir);
}

std::unique_ptr<FileLock> FaultInjectionEnv::try_lock(const std::string& path, std::string& holder) {
  if (read_fails()) throw_read("cannot lock", path);
  return base_.try_lock(path, holder);
}

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
