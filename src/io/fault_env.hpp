// Private: an Env that fails on purpose, for tests of every error path.
//
// Wraps another Env and counts the calls that can fail during a save —
// create, append, sync, close, rename, sync_dir — failing the call with index
// `fail_at` (0-based) with `error` (ENOSPC, EIO, ...), or every call from
// `fail_at` on when `sticky`. `short_write` makes the failing append write
// half of its bytes before failing, as a full disk does.
#pragma once

#include <cerrno>
#include <memory>
#include <string>

#include "io/file.hpp"

namespace ckpt::io {

class FaultInjectionEnv final : public Env {
 public:
  explicit FaultInjectionEnv(Env& base) : base_(base) {}

  int64_t fail_at = -1;  // never
  int error = ENOSPC;
  bool sticky = false;
  bool short_write = false;
  int64_t calls() const noexcept { return calls_; }
  bool fired() const noexcept { return fired_; }

  std::unique_ptr<WritableFile> new_writable_file(const std::string& path) override;
  void rename_file(const std::string& from, const std::string& to) override;
  void remove_file(const std::string& path) override { base_.remove_file(path); }
  void sync_dir(const std::string& dir) override;
  bool file_exists(const std::string& path) override { return base_.file_exists(path); }

  // Counts a call; throws IoError when it is the one to fail.
  void check(const char* what, const std::string& path);

 private:
  Env& base_;
  int64_t calls_ = 0;
  bool fired_ = false;
};

}  // namespace ckpt::io
