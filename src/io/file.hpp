// Private: the one interface for bytes in and out of ckpt.
//
// Reading goes through RandomAccessFile::read_at (positioned reads that
// either fill the whole span or throw); memory-resident files (a buffer or a
// read-only mapping) also expose their bytes for zero-copy views. Every file
// system operation — opening and mapping files for reading, listing a
// directory, taking a lock, creating/writing/renaming — goes through an Env,
// so that tests can swap in FaultInjectionEnv and hit every error path
// (ENOSPC, EIO, ENOENT, short reads at the Nth call). The loaders reach the
// Env through the free functions below (open_file, map_file, list_dir), which
// use default_env(): one virtual call per file opened, none per read of a
// pread file beyond RandomAccessFile's own.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace ckpt::io {

class RandomAccessFile {
 public:
  virtual ~RandomAccessFile() = default;
  // The name used in error messages (a path, or "<memory>").
  virtual const std::string& name() const = 0;
  virtual uint64_t size() const = 0;
  // Fills `dst` with the bytes at [offset, offset + dst.size()). Throws
  // ckpt::FormatError when that range passes the end of the file and
  // ckpt::IoError when the OS fails.
  virtual void read_at(uint64_t offset, std::span<std::byte> dst) const = 0;
  // The whole file as memory, when it is memory (buffer or mapping); null
  // otherwise. Views into it stay valid while keepalive() is held.
  virtual const std::byte* memory() const { return nullptr; }
  virtual std::shared_ptr<const void> keepalive() const { return nullptr; }
  // This same file as memory (io::as_memory): an open file maps its own
  // descriptor, a slice views its parent's memory; the default reads the
  // whole file into a buffer through read_at.
  virtual std::shared_ptr<RandomAccessFile> to_memory() const;
};

// `file` when it is memory already, else file->to_memory(): for parsers that
// need the bytes at once (the legacy formats' pickles). Never reopens the
// file by name.
std::shared_ptr<RandomAccessFile> as_memory(const std::shared_ptr<RandomAccessFile>& file);

// f.read_at(offset, dst), with a large read (8 MiB and more) split into
// pieces of at least 4 MiB read by up to min(hardware threads, 4) threads. A copying load of
// page-cached data is bound by the page faults of the fresh destination
// memory, which the kernel serves on every core at once. Small reads, or one
// hardware thread, go straight to read_at. Throws what read_at throws (the
// first error of any piece), after every piece has finished.
void read_at_parallel(const RandomAccessFile& f, uint64_t offset, std::span<std::byte> dst);

// pread-based file (default_env().open_for_read(path, ReadMode::random)).
std::shared_ptr<RandomAccessFile> open_file(const std::string& path);
// open_file for a file that will be read whole, front to back (a copying
// load): tells the kernel so (POSIX_FADV_SEQUENTIAL: a larger readahead
// window) and, for a file of at most a quarter of the RAM, to start reading
// all of it now (POSIX_FADV_WILLNEED, one call per 256 KiB: Linux reads only
// one readahead window per call; skipped when sampled pages show the file
// cached), so that the disk works while the reader parses and copies. Only
// hints; the reads are the same.
std::shared_ptr<RandomAccessFile> open_file_to_read_whole(const std::string& path);
// Read-only private mapping of the whole file (memory() is non-null).
std::shared_ptr<RandomAccessFile> map_file(const std::string& path);
// A caller's buffer; `keepalive` (may be null) keeps it alive.
std::shared_ptr<RandomAccessFile> memory_file(std::span<const std::byte> bytes,
                                              std::shared_ptr<const void> keepalive = nullptr,
                                              std::string name = "<memory>");
// Bytes [offset, offset + length) of `parent` as a file of their own, named
// `name` (a record inside a container file). The caller has checked that the
// range lies inside `parent`; a read past the slice's end throws FormatError
// naming `name` and the offset. memory() views the parent's memory.
std::shared_ptr<RandomAccessFile> slice_file(std::shared_ptr<RandomAccessFile> parent, uint64_t offset,
                                             uint64_t length, std::string name);
class Env;
// The whole of a small file (an index, a manifest, a `.metadata`): throws
// LimitError naming `path` when it holds more than `limit` bytes.
std::string read_small_file(const std::string& path, uint64_t limit);
std::string read_small_file(Env& env, const std::string& path, uint64_t limit);
// The whole of an open small file (LimitError naming it past `limit`).
std::string read_whole(const RandomAccessFile& file, uint64_t limit);

class WritableFile {
 public:
  virtual ~WritableFile() = default;  // closes without syncing; never throws
  virtual void append(std::span<const std::byte> data) = 0;
  virtual void sync() = 0;   // fsync
  virtual void close() = 0;  // flush + close; errors reported here
  virtual uint64_t size() const = 0;  // bytes appended so far
};

// How a file is opened for reading (Env::open_for_read).
enum class ReadMode {
  random,  // pread; no hints
  whole,   // pread, read whole front to back (see open_file_to_read_whole)
  mmap,    // read-only private mapping (memory() is non-null)
};

// What a path names (Env::status), following symbolic links.
struct FileStatus {
  enum class Type { missing, regular, directory, other };
  Type type = Type::missing;  // missing also when it cannot be examined (EACCES on a parent...)
  uint64_t size = 0;          // regular files
  uint64_t device = 0, inode = 0;  // the file's identity (st_dev, st_ino)
  int error = 0;                   // missing: the errno that says why (ENOENT, EACCES...)
  bool regular() const noexcept { return type == Type::regular; }
  bool directory() const noexcept { return type == Type::directory; }
};

// One directory entry (Env::list_dir): its name, whether it is a regular
// file or a directory (following symbolic links; a dangling link is
// neither), and then its size; whether the entry itself is a symbolic link;
// the identity of what it names (st_dev, st_ino; 0 for a dangling link).
struct DirEntry {
  std::string name;
  bool regular = false;
  uint64_t size = 0;
  bool directory = false;
  bool symlink = false;
  uint64_t device = 0, inode = 0;
};

// An exclusive advisory lock on a file, held until destroyed.
class FileLock {
 public:
  virtual ~FileLock() = default;
};

// File-system operations. The read-side calls have the POSIX file system as
// their default, so an Env that only watches writes need not forward them.
class Env {
 public:
  virtual ~Env() = default;
  // Opens `path` for reading. Throws IoError naming the path (ENOENT, EISDIR...).
  virtual std::shared_ptr<RandomAccessFile> open_for_read(const std::string& path, ReadMode mode);
  // What `path` names; never throws (an error reads as missing).
  virtual FileStatus status(const std::string& path);
  // The entries of `dir` (without "." and ".."), in no particular order.
  // Throws IoError naming `dir` when it cannot be listed.
  virtual std::vector<DirEntry> list_dir(const std::string& dir);
  // Takes an exclusive lock on `path` (created if missing) without waiting and
  // writes our pid into it. Returns null when another process holds it, with
  // what that file says (its holder's pid, or empty) in `holder`. Throws
  // IoError naming the path on any other failure.
  virtual std::unique_ptr<FileLock> try_lock(const std::string& path, std::string& holder);
  // Creates a new file (fails if it exists).
  virtual std::unique_ptr<WritableFile> new_writable_file(const std::string& path) = 0;
  virtual void rename_file(const std::string& from, const std::string& to) = 0;
  virtual void remove_file(const std::string& path) = 0;  // never throws on ENOENT
  virtual void sync_dir(const std::string& dir) = 0;
  virtual bool file_exists(const std::string& path) = 0;
  // The process-wide POSIX implementation.
  static Env& posix();
};

// The Env the loaders use: Env::posix() unless a ScopedDefaultEnv is alive.
Env& default_env() noexcept;

// Makes `env` the default_env() while it lives (tests: read-fault injection
// into loads that take no Env). Not for concurrent use from several threads
// with different envs; `env` must outlive it.
class ScopedDefaultEnv {
 public:
  explicit ScopedDefaultEnv(Env& env) noexcept;
  ~ScopedDefaultEnv();
  ScopedDefaultEnv(const ScopedDefaultEnv&) = delete;
  ScopedDefaultEnv& operator=(const ScopedDefaultEnv&) = delete;

 private:
  Env* previous_;
};

// default_env().list_dir(dir), default_env().status(path).
std::vector<DirEntry> list_dir(const std::string& dir);
FileStatus status(const std::string& path);

// Writes `path` atomically: `body` writes a temporary file in the same
// directory, which is then fsynced, closed, renamed over `path`, and the
// directory fsynced. On any failure (an exception from `body` or from the
// file system) the temporary is removed, `path` keeps its previous content
// and the exception propagates.
// `sync` = false skips the fsyncs (scratch files only).
void write_atomically(Env& env, const std::string& path,
                      const std::function<void(WritableFile&)>& body, bool sync = true);

// An Env that forwards every call to `base` and, for each append to a file
// it created, calls `on_write` with the bytes appended (progress reporting).
// `base` must outlive it.
std::unique_ptr<Env> progress_env(Env& base, std::function<void(uint64_t bytes)> on_write);

// A WritableFile that appends into a std::string (saving to memory).
std::unique_ptr<WritableFile> string_writer(std::string& out);

}  // namespace ckpt::io
