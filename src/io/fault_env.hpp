// Private: an Env that fails on purpose, for tests of every error path.
//
// Wraps another Env and counts the calls that can fail during a save —
// create, append, sync, close, rename, sync_dir — failing the call with index
// `fail_at` (0-based) with `error` (ENOSPC, EIO, ...), or every call from
// `fail_at` on when `sticky`. `short_write` makes the failing append write
// half of its bytes before failing, as a full disk does.
//
// Reads are counted apart (read_calls()), so that a write test's indices do
// not move: opening or mapping a file for reading, each read_at of a file it
// opened, listing a directory and taking a lock. The call with index
// `read_fail_at` fails with `read_error` (EIO, ENOENT, ...), or every one
// from then on when `read_sticky`. `short_read` makes a failing read_at
// instead deliver the first half of its bytes and then find the end of the
// file, as when the file shrinks under the reader. A mapped file's bytes are
// read by touching memory, not by calls: only its opening can fail here.
#pragma once

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <optional>
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

  int64_t read_fail_at = -1;  // never
  int read_error = EIO;
  bool read_sticky = false;
  bool short_read = false;
  int64_t read_calls() const noexcept { return read_calls_.load(); }
  bool read_fired() const noexcept { return read_fired_.load(); }

  std::shared_ptr<RandomAccessFile> open_for_read(const std::string& path, ReadMode mode) override;
  std::vector<DirEntry> list_dir(const std::string& dir) override;
  std::unique_ptr<FileLock> try_lock(const std::string& path, std::string& holder) override;

  // Counts a call; throws IoError when it is the one to fail.
  void check(const char* what, const std::string& path);
  // Counts a read-side call; true when it is the one to fail (the caller
  // throws, or for a short read delivers part of the bytes first).
  bool read_fails() noexcept;
  [[noreturn]] void throw_read(const char* what, const std::string& path,
                               std::optional<uint64_t> offset = std::nullopt) const;

 private:
  Env& base_;
  int64_t calls_ = 0;
  bool fired_ = false;
  std::atomic<int64_t> read_calls_{0};  // read_at_parallel reads from several threads
  std::atomic<bool> read_fired_{false};
};

}  // namespace ckpt::io
