// CheckpointManager: see include/ckpt/manager.hpp and docs/manager.md.
//
// A save is all or nothing. Its steps, in order:
//   1. stream the state as a torch zip archive (detail::write_torch_save,
//      the writer behind ckpt::save) into a temporary file in the directory,
//      taking the size and CRC-32 of the bytes on the way;
//   2. fsync the temporary;
//   3. write the manifest with the new entry (atomically);
//   4. rename the temporary to the checkpoint's name, fsync the directory;
//   5. write the `last` pointer (atomically);
//   6. retention: delete retired files, then write the manifest without them.
// The manifest names the new file before the file exists, so a crash between
// 3 and 4 leaves an entry whose file is missing (dropped when the directory is
// next opened) and never a checkpoint the manifest does not describe. A
// failure in 2-5 undoes what was done (removes the new file, restores the
// manifest and pointer) and throws; a failure in 6 is logged, and the next
// save or open finishes the job.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <thread>
#include <utility>

#include "api/save_internal.hpp"
#include "api/verify_internal.hpp"
#include "ckpt/checksum.hpp"
#include "ckpt/error.hpp"
#include "ckpt/manager.hpp"
#include "ckpt/save.hpp"  // SaveOptions
#include "core/hex.hpp"
#include "io/file.hpp"
#include "manager/filename_template.hpp"
#include "manager/manager_internal.hpp"
#include "manager/manifest.hpp"
#include "manager/staging.hpp"

namespace ckpt {
namespace {

namespace fs = std::filesystem;
using manager::kLockName;
using manager::kManifestName;
using manager::kPointerName;

// Bytes read at a time when checksumming a file.
constexpr size_t kChecksumChunk = size_t{8} << 20;
// The `last` pointer holds one file name; anything longer is not ours.
constexpr uint64_t kMaxPointerBytes = 4096;

std::string join(const std::string& dir, const std::string& name) { return dir + "/" + name; }

std::span<const std::byte> as_bytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

// Size and CRC-32 of a whole file.
std::pair<uint64_t, uint32_t> checksum_file(io::Env& env, const std::string& path,
                                            const std::function<void(uint64_t)>& progress = {}) {
  auto f = env.open_for_read(path, io::ReadMode::random);
  std::vector<std::byte> buf(static_cast<size_t>(std::min<uint64_t>(f->size(), kChecksumChunk)));
  uint32_t crc = 0;
  for (uint64_t off = 0; off < f->size();) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), f->size() - off));
    f->read_at(off, std::span<std::byte>(buf.data(), n));
    crc = ckpt::crc32(std::span<const std::byte>(buf.data(), n), crc);
    off += n;
    if (progress) progress(n);
  }
  return {f->size(), crc};
}

// A temporary io::write_atomically makes: ".<name>.tmp.<pid>.<counter>.<random>".
bool is_temporary(const std::string& name) {
  if (name.size() < 2 || name[0] != '.') return false;
  size_t tmp = name.rfind(".tmp.");
  if (tmp == std::string::npos || tmp < 2) return false;
  int numbers = 0;
  for (size_t i = tmp + 5; i <= name.size(); ++i) {
    if (i == name.size() || name[i] == '.') {
      if (i == tmp + 5 || name[i - 1] == '.') return false;  // an empty number
      ++numbers;
    } else if (!std::isdigit(static_cast<unsigned char>(name[i]))) {
      return false;
    }
  }
  return numbers == 3;
}

std::string describe(const CheckpointInfo& e) { return "'" + e.file + "' (step " + std::to_string(e.step) + ")"; }

// Passes writes through, computing the CRC-32 of everything written.
class ChecksummingFile final : public io::WritableFile {
 public:
  explicit ChecksummingFile(io::WritableFile& inner) : inner_(inner) {}
  void append(std::span<const std::byte> data) override {
    inner_.append(data);
    crc_ = ckpt::crc32(data, crc_);
    size_ += data.size();
  }
  void sync() override { inner_.sync(); }
  void close() override { inner_.close(); }
  uint64_t size() const override { return size_; }
  uint32_t crc32() const { return crc_; }

 private:
  io::WritableFile& inner_;
  uint32_t crc_ = 0;
  uint64_t size_ = 0;
};

}  // namespace

struct CheckpointManager::Impl {
  Impl(std::string dir_, ManagerOptions options, io::Env& env_);
  ~Impl();

  // ---- configuration
  std::string dir;
  ManagerOptions opts;
  io::Env& env;
  manager::FilenameTemplate tmpl;
  std::unique_ptr<io::FileLock> lock;  // held by a writer

  // ---- state. write_mu serialises everything that changes the directory or
  // the entries (commits, retention, resume's verdicts, refresh); mu guards
  // the fields below and the async queue. Order: write_mu before mu.
  std::mutex write_mu;
  mutable std::mutex mu;
  mutable std::mutex log_mu;  // innermost: serialises calls of opts.log
  std::vector<CheckpointInfo> entries;  // oldest first
  std::string pointer;                  // what `last` names ("" when none)

  // ---- asynchronous saves
  struct Job {
    int64_t step = 0;
    Value snapshot;
    Metrics metrics;
  };
  manager::StagingPool pool;
  std::thread worker;
  std::condition_variable cv;  // a job was queued or finished, or stop
  std::optional<Job> pending;
  bool busy = false;  // the worker is writing a job
  bool stop = false;
  std::exception_ptr error;

  // ---- helpers
  void log(const std::string& message) const noexcept;
  void acquire_lock();
  void load_state(bool write);  // needs write_mu
  bool should_save(int64_t step, SaveTrigger trigger) const;
  void check_request(int64_t step, const Metrics& metrics) const;
  void commit(int64_t step, const Value& state, const Metrics& metrics);  // needs write_mu
  void write_pointer(const std::string& name);
  // Deletes (dry_run: only lists) what the policy retires; returns those. Needs write_mu.
  std::vector<CheckpointInfo> apply_retention(bool dry_run = false);
  std::string unique_name(int64_t step, const Metrics& metrics, const std::vector<CheckpointInfo>& known);
  void verify(const CheckpointInfo& e) const;
  // Why e's file does not match the manifest ("" when it does); throws when unreadable.
  std::string damage(const CheckpointInfo& e, const std::function<void(uint64_t)>& progress = {}) const;
  void mark_invalid(const std::string& file, const std::string& problem);
  Value load_verified(const CheckpointInfo& e, const LoadOptions& options);
  void rethrow_error_locked(std::unique_lock<std::mutex>& lk);
  void wait_idle_locked(std::unique_lock<std::mutex>& lk);
  void worker_loop();
  std::optional<CheckpointInfo> latest_locked() const;
  std::optional<CheckpointInfo> best_locked() const;
  CheckpointInfo with_path(CheckpointInfo e) const {
    e.path = join(dir, e.file);
    return e;
  }
};

// ------------------------------------------------------------------ opening

CheckpointManager::Impl::Impl(std::string dir_, ManagerOptions options, io::Env& env_)
    : dir(std::move(dir_)), opts(std::move(options)), env(env_), tmpl(opts.filename), pool(opts.staging_limit) {
  if (dir.empty()) dir = ".";
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (opts.keep_best > 0 && opts.metric.empty())
    throw Error("CheckpointManager: keep_best = " + std::to_string(opts.keep_best) +
                    " needs the metric to rank by (set ManagerOptions::metric)",
                ErrorContext{dir});
  if (opts.save_every < 0 || opts.keep_every < 0)
    throw Error("CheckpointManager: save_every and keep_every must not be negative", ErrorContext{dir});

  std::error_code ec;
  if (opts.read_only) {
    if (!fs::is_directory(dir, ec))
      throw IoError("checkpoint directory does not exist", ENOENT, ErrorContext{dir});
  } else {
    fs::create_directories(dir, ec);
    if (ec) throw IoError("cannot create checkpoint directory: " + ec.message(), ec.value(), ErrorContext{dir});
    if (!fs::is_directory(dir, ec)) throw IoError("not a directory", ENOTDIR, ErrorContext{dir});
    acquire_lock();
  }
  try {
    std::lock_guard w(write_mu);
    load_state(!opts.read_only);
  } catch (...) {
    lock.reset();
    throw;
  }
}

CheckpointManager::Impl::~Impl() {
  {
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return !busy && !pending; });
    stop = true;
    cv.notify_all();
    if (error) {
      try {
        std::rethrow_exception(std::exchange(error, nullptr));
      } catch (const std::exception& e) {
        log(std::string("background save failed: ") + e.what());
      } catch (...) {
        log("background save failed");
      }
    }
  }
  if (worker.joinable()) worker.join();
  lock.reset();  // releases the flock
}

void CheckpointManager::Impl::log(const std::string& message) const noexcept {
  std::lock_guard lk(log_mu);  // one line at a time, whichever thread logs
  try {
    if (opts.log)
      opts.log(message);
    else
      std::fprintf(stderr, "ckpt: %s: %s\n", dir.c_str(), message.c_str());
  } catch (...) {  // a logger that throws must not break a save or a destructor
  }
}

void CheckpointManager::Impl::acquire_lock() {
  std::string holder;
  lock = env.try_lock(join(dir, kLockName), holder);
  if (!lock)
    throw Error("checkpoint directory '" + dir + "' is already open for writing by another CheckpointManager" +
                (holder.empty() ? std::string() : " (pid " + holder + ")") +
                "; only one writer at a time (open it with read_only = true to read it)");
}

void CheckpointManager::Impl::load_state(bool write) {
  bool dirty = false;
  std::vector<CheckpointInfo> loaded;
  const std::string manifest_path = join(dir, kManifestName);
  std::error_code ec;
  if (fs::exists(manifest_path, ec)) {
    try {
      std::vector<std::string> skipped;
      loaded = manager::parse_manifest(io::read_small_file(env, manifest_path, manager::kMaxManifestBytes), skipped);
      for (const auto& s : skipped) log(s + "; ignoring it");
      dirty |= !skipped.empty();
    } catch (const UnsupportedError&) {
      throw;  // a newer ckpt's manifest: never rewrite it
    } catch (const Error& e) {
      log(std::string("manifest is unreadable (") + e.what() + "); rebuilding it from the checkpoint files");
      loaded.clear();
      dirty = true;
    }
  }

  // One entry per file (the later one wins: it was saved later).
  {
    std::set<std::string> seen;
    std::vector<CheckpointInfo> unique;
    for (auto it = loaded.rbegin(); it != loaded.rend(); ++it)
      if (seen.insert(it->file).second) unique.push_back(std::move(*it));
    if (unique.size() != loaded.size()) dirty = true;
    std::reverse(unique.begin(), unique.end());
    loaded = std::move(unique);
  }

  // What is on disk.
  std::map<std::string, uint64_t> files;  // regular files -> size
  std::vector<std::string> temporaries;
  for (io::DirEntry& entry : env.list_dir(dir)) {
    if (!entry.regular) continue;
    if (is_temporary(entry.name)) {
      temporaries.push_back(std::move(entry.name));
      continue;
    }
    files[entry.name] = entry.size;
  }

  // Temporaries are what a save (ours, or a crashed one) was writing. We hold
  // the lock, so none of them belongs to a live save.
  if (write) {
    std::sort(temporaries.begin(), temporaries.end());
    for (const auto& t : temporaries) {
      try {
        env.remove_file(join(dir, t));
        log("removed '" + t + "', left by an interrupted save");
      } catch (const std::exception& e) {
        log("cannot remove '" + t + "': " + e.what());
      }
    }
  }

  // Entries against files.
  std::vector<CheckpointInfo> kept;
  std::set<std::string> known;
  for (auto& e : loaded) {
    auto f = files.find(e.file);
    if (f == files.end()) {
      log("checkpoint " + describe(e) + " is in the manifest but not in the directory" +
          (write ? "; dropping it from the manifest" : ""));
      dirty = true;
      continue;
    }
    if (f->second != e.size) {
      e.valid = false;
      e.problem = "file is " + std::to_string(f->second) + " bytes, the manifest says " + std::to_string(e.size);
      log("checkpoint " + describe(e) + " is damaged: " + e.problem);
    }
    known.insert(e.file);
    kept.push_back(std::move(e));
  }

  // Files the manifest does not know: adopt the ones that are checkpoints.
  std::vector<CheckpointInfo> adopted;
  for (const auto& [name, size] : files) {
    if (known.count(name) || !manager::is_safe_checkpoint_name(name)) continue;
    auto parsed = tmpl.parse(name);
    if (!parsed) continue;  // not ours
    if (!parsed->step) {
      log("not adopting '" + name + "': the filename template '" + tmpl.text() +
          "' has no {step}, so its step is unknown");
      continue;
    }
    CheckpointInfo e;
    e.file = name;
    e.step = *parsed->step;
    e.metrics = std::move(parsed->metrics);
    e.pinned = opts.keep_every > 0 && e.step % opts.keep_every == 0;
    try {
      const std::string path = join(dir, name);
      detail::verify_torch_archive(env.open_for_read(path, io::ReadMode::random));
      std::tie(e.size, e.crc32) = checksum_file(env, path);
    } catch (const std::exception& x) {
      log("not adopting '" + name + "': it is not a complete checkpoint (" + x.what() + ")");
      continue;
    }
    log("adopted " + describe(e) + ", which the manifest did not list");
    adopted.push_back(std::move(e));
    dirty = true;
  }
  std::stable_sort(adopted.begin(), adopted.end(),
                   [](const CheckpointInfo& a, const CheckpointInfo& b) { return a.step < b.step; });
  for (auto& e : adopted) kept.push_back(std::move(e));

  // The pointer names the newest checkpoint.
  std::string ptr;
  const std::string pointer_path = join(dir, kPointerName);
  if (fs::exists(pointer_path, ec)) {
    try {
      ptr = io::read_small_file(env, pointer_path, kMaxPointerBytes);
      while (!ptr.empty() && (ptr.back() == '\n' || ptr.back() == '\r' || ptr.back() == ' ')) ptr.pop_back();
    } catch (const std::exception& e) {
      log(std::string("cannot read the 'last' pointer: ") + e.what());
    }
  }
  std::string newest;
  for (auto it = kept.rbegin(); it != kept.rend(); ++it)
    if (it->valid) {
      newest = it->file;
      break;
    }

  // Write back what changed. A failure here (a full disk) must not stop a
  // job from resuming: it is logged, and the next save writes both files.
  try {
    if (write && dirty) manager::write_manifest(env, dir, kept);
    if (write && newest.empty() && !ptr.empty()) {
      log("'last' named '" + ptr + "', which is not a valid checkpoint; removing it");
      env.remove_file(pointer_path);
      ptr.clear();
    }
    if (write && !newest.empty() && ptr != newest) {
      if (!ptr.empty()) log("'last' named '" + ptr + "'; pointing it at the newest checkpoint '" + newest + "'");
      write_pointer(newest);
      ptr = newest;
    }
  } catch (const std::exception& x) {
    log(std::string("cannot update the manifest or the 'last' pointer (the next save does): ") + x.what());
  }
  std::lock_guard lk(mu);
  entries = std::move(kept);
  pointer = write ? newest : ptr;
}

// ------------------------------------------------------------------ saving

bool CheckpointManager::Impl::should_save(int64_t step, SaveTrigger trigger) const {
  return trigger == SaveTrigger::force || opts.save_every <= 1 || step % opts.save_every == 0;
}

// What commit() would refuse, found before anything is queued.
void CheckpointManager::Impl::check_request(int64_t step, const Metrics& metrics) const {
  if (opts.read_only) throw Error("checkpoint directory '" + dir + "' was opened read_only; saving is not allowed");
  if (metrics.count("step")) throw Error("a metric may not be called 'step' (the step is save()'s first argument)");
  (void)tmpl.format(step, metrics);  // every metric the file name needs is there
}

std::string CheckpointManager::Impl::unique_name(int64_t step, const Metrics& metrics,
                                                 const std::vector<CheckpointInfo>& known) {
  const std::string base = tmpl.format(step, metrics);
  if (!manager::is_safe_checkpoint_name(base) || base == kLockName)
    throw Error("filename template '" + tmpl.text() + "' gives '" + base +
                "', which is not a usable checkpoint name (hidden, reserved or not a plain name)");
  std::string name = base;
  for (int n = 1;; ++n) {
    bool taken = std::any_of(known.begin(), known.end(), [&](const CheckpointInfo& e) { return e.file == name; });
    if (!taken && !env.file_exists(join(dir, name))) return name;
    name = tmpl.with_version(base, n);
  }
}

void CheckpointManager::Impl::write_pointer(const std::string& name) {
  const std::string text = name + "\n";
  io::write_atomically(env, join(dir, kPointerName), [&](io::WritableFile& f) { f.append(as_bytes(text)); });
}

void CheckpointManager::Impl::commit(int64_t step, const Value& state, const Metrics& metrics) {
  check_request(step, metrics);
  std::vector<CheckpointInfo> before;
  std::string pointer_before;
  {
    std::lock_guard lk(mu);
    before = entries;
    pointer_before = pointer;
  }
  CheckpointInfo e;
  e.step = step;
  e.metrics = metrics;
  e.file = unique_name(step, metrics, before);
  e.path = join(dir, e.file);
  e.pinned = opts.keep_every > 0 && step % opts.keep_every == 0;


  std::vector<CheckpointInfo> after;
  bool manifest_written = false, pointer_started = false;
  try {
    io::write_atomically(env, e.path, [&](io::WritableFile& f) {
      ChecksummingFile out(f);
      detail::write_torch_save(out, e.file, state, SaveOptions{});
      e.size = out.size();
      e.crc32 = out.crc32();
      f.sync();  // the data is durable before the manifest names it
      after = before;
      after.push_back(e);
      manifest_written = true;  // (or may be: a failure after its rename still leaves it)
      manager::write_manifest(env, dir, after);
    });
    pointer_started = true;
    write_pointer(e.file);
  } catch (const std::exception& failure) {
    // Undo, so that the directory is as it was. Names are never reused, so
    // removing e.path removes nothing older.
    try {
      env.remove_file(e.path);
    } catch (const std::exception& x) {
      log("cannot remove '" + e.file + "' after a failed save: " + x.what());
    }
    if (manifest_written) {
      try {
        manager::write_manifest(env, dir, before);
      } catch (const std::exception& x) {
        log(std::string("cannot restore the manifest after a failed save (the next open drops the entry): ") +
            x.what());
      }
    }
    if (pointer_started) {
      try {
        if (pointer_before.empty())
          env.remove_file(join(dir, kPointerName));
        else
          write_pointer(pointer_before);
      } catch (const std::exception& x) {
        log(std::string("cannot restore the 'last' pointer after a failed save (the next open repairs it): ") +
            x.what());
      }
    }
    if (auto* io = dynamic_cast<const IoError*>(&failure))
      throw IoError("cannot save step " + std::to_string(step) + ": " + io->what() +
                        "; the previous checkpoints are unchanged",
                    io->code(), ErrorContext{e.path});
    throw;
  }
  {
    std::lock_guard lk(mu);
    entries = std::move(after);
    pointer = e.file;
  }
  apply_retention();
}

std::vector<CheckpointInfo> CheckpointManager::Impl::apply_retention(bool dry_run) {
  std::vector<CheckpointInfo> all;
  std::string ptr;
  {
    std::lock_guard lk(mu);
    all = entries;
    ptr = pointer;
  }
  if (opts.keep_last == 0 && opts.keep_best == 0) return {};

  std::vector<bool> keep(all.size(), false);
  // The last N valid ones.
  size_t n = 0;
  for (size_t i = all.size(); i-- > 0 && n < opts.keep_last;)
    if (all[i].valid) {
      keep[i] = true;
      ++n;
    }
  // The best K valid ones with the metric (ties: the newer).
  if (opts.keep_best > 0) {
    std::vector<size_t> ranked;
    for (size_t i = 0; i < all.size(); ++i) {
      auto m = all[i].metrics.find(opts.metric);
      if (all[i].valid && m != all[i].metrics.end() && !std::isnan(m->second)) ranked.push_back(i);
    }
    auto value = [&](size_t i) { return all[i].metrics.at(opts.metric); };
    std::stable_sort(ranked.begin(), ranked.end(), [&](size_t a, size_t b) {
      if (value(a) != value(b)) return opts.mode == MetricMode::min ? value(a) < value(b) : value(a) > value(b);
      return a > b;
    });
    for (size_t k = 0; k < ranked.size() && k < opts.keep_best; ++k) keep[ranked[k]] = true;
  }
  bool any_valid_kept = false;
  for (size_t i = 0; i < all.size(); ++i) {
    if (all[i].pinned || all[i].file == ptr) keep[i] = true;
    any_valid_kept |= keep[i] && all[i].valid;
  }
  // Never the only valid checkpoint.
  if (!any_valid_kept)
    for (size_t i = all.size(); i-- > 0;)
      if (all[i].valid) {
        keep[i] = true;
        break;
      }

  std::vector<CheckpointInfo> remaining, retired;
  for (size_t i = 0; i < all.size(); ++i) {
    if (keep[i]) {
      remaining.push_back(std::move(all[i]));
      continue;
    }
    if (dry_run) {
      retired.push_back(std::move(all[i]));
      continue;
    }
    try {
      env.remove_file(join(dir, all[i].file));
      retired.push_back(all[i]);
    } catch (const std::exception& x) {
      log("retention: cannot delete " + describe(all[i]) + ": " + x.what());
      remaining.push_back(std::move(all[i]));
    }
  }
  if (retired.empty() || dry_run) return retired;
  try {
    manager::write_manifest(env, dir, remaining);
  } catch (const std::exception& x) {
    log(std::string("retention: cannot update the manifest (the next save or open does): ") + x.what());
  }
  std::lock_guard lk(mu);
  entries = std::move(remaining);
  return retired;
}

// ------------------------------------------------------------------ async

void CheckpointManager::Impl::rethrow_error_locked(std::unique_lock<std::mutex>&) {
  if (error) std::rethrow_exception(std::exchange(error, nullptr));
}

void CheckpointManager::Impl::wait_idle_locked(std::unique_lock<std::mutex>& lk) {
  cv.wait(lk, [&] { return !busy && !pending; });
}

void CheckpointManager::Impl::worker_loop() {
  std::unique_lock lk(mu);
  for (;;) {
    cv.wait(lk, [&] { return stop || pending.has_value(); });
    if (!pending) return;  // stop, nothing queued
    Job job = std::move(*pending);
    pending.reset();
    busy = true;
    lk.unlock();
    std::exception_ptr failure;
    try {
      std::lock_guard w(write_mu);
      commit(job.step, job.snapshot, job.metrics);
    } catch (...) {
      failure = std::current_exception();
    }
    job.snapshot = Value();  // buffers back to the pool before anyone waits on them
    lk.lock();
    busy = false;
    if (failure) {
      if (error) {  // the first error is the one reported; say that this one happened too
        try {
          std::rethrow_exception(failure);
        } catch (const std::exception& e) {
          log(std::string("background save failed: ") + e.what());
        } catch (...) {
        }
      } else {
        error = failure;
      }
    }
    cv.notify_all();
  }
}

// ------------------------------------------------------------------ reading

std::optional<CheckpointInfo> CheckpointManager::Impl::latest_locked() const {
  for (auto it = entries.rbegin(); it != entries.rend(); ++it)
    if (it->valid) return with_path(*it);
  return std::nullopt;
}

std::optional<CheckpointInfo> CheckpointManager::Impl::best_locked() const {
  if (opts.metric.empty()) return std::nullopt;
  const CheckpointInfo* best = nullptr;
  double best_value = 0;
  for (const auto& e : entries) {  // oldest first: ">=" lets the newer win ties
    auto m = e.metrics.find(opts.metric);
    if (!e.valid || m == e.metrics.end() || std::isnan(m->second)) continue;
    if (!best || (opts.mode == MetricMode::min ? m->second <= best_value : m->second >= best_value)) {
      best = &e;
      best_value = m->second;
    }
  }
  return best ? std::optional(with_path(*best)) : std::nullopt;
}

std::string CheckpointManager::Impl::damage(const CheckpointInfo& e,
                                            const std::function<void(uint64_t)>& progress) const {
  auto [size, crc] = checksum_file(env, join(dir, e.file), progress);
  if (size != e.size)
    return "its size is " + std::to_string(size) + " bytes, the manifest says " + std::to_string(e.size);
  if (crc != e.crc32) return "its CRC-32 is " + hex32(crc) + ", the manifest says " + hex32(e.crc32);
  return "";
}

void CheckpointManager::Impl::verify(const CheckpointInfo& e) const {
  if (std::string why = damage(e); !why.empty())
    throw FormatError("checkpoint is damaged: " + why, ErrorContext{join(dir, e.file)});
}

void CheckpointManager::Impl::mark_invalid(const std::string& file, const std::string& problem) {
  std::lock_guard lk(mu);
  for (auto& e : entries)
    if (e.file == file) {
      e.valid = false;
      e.problem = problem;
    }
}

Value CheckpointManager::Impl::load_verified(const CheckpointInfo& e, const LoadOptions& options) {
  try {
    verify(e);
  } catch (const FormatError& x) {
    mark_invalid(e.file, x.message());
    throw;
  }
  return load(join(dir, e.file), options);
}

// ------------------------------------------------------------------ public

CheckpointManager::CheckpointManager(std::string dir, ManagerOptions options)
    : impl_(std::make_unique<Impl>(std::move(dir), std::move(options), io::default_env())) {}

CheckpointManager::CheckpointManager(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

CheckpointManager ManagerAccess::open(std::string dir, ManagerOptions options, io::Env& env) {
  return CheckpointManager(std::make_unique<CheckpointManager::Impl>(std::move(dir), std::move(options), env));
}

CheckpointManager::~CheckpointManager() = default;
CheckpointManager::CheckpointManager(CheckpointManager&&) noexcept = default;
CheckpointManager& CheckpointManager::operator=(CheckpointManager&&) noexcept = default;

const std::string& CheckpointManager::directory() const noexcept { return impl_->dir; }

bool CheckpointManager::should_save(int64_t step) const { return impl_->should_save(step, SaveTrigger::schedule); }

bool CheckpointManager::save(int64_t step, const Value& state, const Metrics& metrics, SaveTrigger trigger) {
  Impl& m = *impl_;
  if (m.opts.read_only) m.check_request(step, metrics);  // throws
  {
    std::unique_lock lk(m.mu);
    m.rethrow_error_locked(lk);
    if (!m.should_save(step, trigger)) return false;
    m.check_request(step, metrics);
    m.wait_idle_locked(lk);
    m.rethrow_error_locked(lk);
  }
  std::lock_guard w(m.write_mu);
  m.commit(step, state, metrics);
  return true;
}

bool CheckpointManager::save_async(int64_t step, const Value& state, const Metrics& metrics, SaveTrigger trigger) {
  Impl& m = *impl_;
  if (m.opts.read_only) m.check_request(step, metrics);  // throws
  {
    std::unique_lock lk(m.mu);
    m.rethrow_error_locked(lk);
    if (!m.should_save(step, trigger)) return false;
    m.check_request(step, metrics);
    if (m.pool.limit() != 0) m.pool.check_fits(manager::StagingPool::staged_bytes(state));
    if (m.opts.async_policy == AsyncPolicy::wait) {
      m.wait_idle_locked(lk);
      m.rethrow_error_locked(lk);
    } else if (m.pending) {
      m.log("save_async: step " + std::to_string(m.pending->step) + " had not started; step " +
            std::to_string(step) + " replaces it");
      std::optional<Impl::Job> dropped = std::exchange(m.pending, std::nullopt);
      lk.unlock();
      dropped.reset();  // gives its staging buffers back
    }
  }
  Value snapshot = m.pool.snapshot(state);  // may wait for the in-flight save's buffers
  std::unique_lock lk(m.mu);
  if (m.pending) {  // another thread queued meanwhile
    if (m.opts.async_policy == AsyncPolicy::wait) {
      m.cv.wait(lk, [&] { return !m.pending; });
    } else {  // the newer call wins
      m.log("save_async: step " + std::to_string(m.pending->step) + " had not started; step " +
            std::to_string(step) + " replaces it");
    }
  }
  std::optional<Impl::Job> replaced = std::exchange(m.pending, Impl::Job{step, std::move(snapshot), metrics});
  if (!m.worker.joinable()) m.worker = std::thread([&m] { m.worker_loop(); });
  m.cv.notify_all();
  return true;
}

void CheckpointManager::wait() {
  Impl& m = *impl_;
  std::unique_lock lk(m.mu);
  m.wait_idle_locked(lk);
  m.rethrow_error_locked(lk);
}

std::optional<CheckpointInfo> CheckpointManager::latest() const {
  std::lock_guard lk(impl_->mu);
  return impl_->latest_locked();
}

std::optional<CheckpointInfo> CheckpointManager::best() const {
  std::lock_guard lk(impl_->mu);
  return impl_->best_locked();
}

std::vector<CheckpointInfo> CheckpointManager::list() const {
  std::lock_guard lk(impl_->mu);
  std::vector<CheckpointInfo> out;
  out.reserve(impl_->entries.size());
  for (const auto& e : impl_->entries) out.push_back(impl_->with_path(e));
  return out;
}

std::vector<CheckpointInfo> CheckpointManager::verify(
    const std::function<void(const CheckpointInfo&, uint64_t)>& progress) {
  for (const CheckpointInfo& e : list()) {
    if (!e.valid) continue;
    std::string why;
    try {
      why = impl_->damage(e, [&](uint64_t n) {
        if (progress) progress(e, n);
      });
    } catch (const Error& x) {
      why = x.what();
    }
    if (!why.empty()) impl_->mark_invalid(e.file, why);
  }
  return list();
}

Value CheckpointManager::load_latest(const LoadOptions& options) {
  std::optional<CheckpointInfo> e = latest();
  if (!e)
    throw Error("no valid checkpoint in '" + impl_->dir + "'" +
                (list().empty() ? std::string() : " (resume() says why each one is unusable)"));
  return impl_->load_verified(*e, options);
}

Value CheckpointManager::load_best(const LoadOptions& options) {
  std::optional<CheckpointInfo> e = best();
  if (!e)
    throw Error(impl_->opts.metric.empty()
                    ? "load_best: no metric is set (ManagerOptions::metric)"
                    : "no valid checkpoint in '" + impl_->dir + "' has the metric '" + impl_->opts.metric + "'");
  return impl_->load_verified(*e, options);
}

std::optional<Checkpoint> CheckpointManager::resume(const LoadOptions& options) {
  Impl& m = *impl_;
  if (m.opts.read_only) refresh();
  std::vector<CheckpointInfo> candidates;
  {
    std::lock_guard lk(m.mu);
    for (auto it = m.entries.rbegin(); it != m.entries.rend(); ++it)
      if (it->valid) candidates.push_back(m.with_path(*it));
  }
  for (const auto& e : candidates) {
    try {
      m.verify(e);
      Value v = load(e.path, options);
      return Checkpoint{e, std::move(v)};
    } catch (const std::exception& x) {
      std::string why = x.what();
      m.log("resume: skipping " + describe(e) + ": " + why);
      m.mark_invalid(e.file, why);
    }
  }
  return std::nullopt;
}

std::vector<CheckpointInfo> CheckpointManager::prune(const PruneOptions& options) {
  const bool dry_run = options.dry_run;
  Impl& m = *impl_;
  if (m.opts.read_only && !dry_run)
    throw Error("checkpoint directory '" + m.dir + "' was opened read_only; pruning is not allowed");
  {
    std::unique_lock lk(m.mu);
    m.wait_idle_locked(lk);
    m.rethrow_error_locked(lk);
  }
  std::lock_guard w(m.write_mu);
  return m.apply_retention(dry_run);
}

void CheckpointManager::refresh() {
  Impl& m = *impl_;
  std::lock_guard w(m.write_mu);
  m.load_state(!m.opts.read_only);
}

}  // namespace ckpt
