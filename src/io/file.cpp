#include "io/file.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "ckpt/error.hpp"

namespace ckpt::io {
namespace {

[[noreturn]] void throw_errno(const std::string& what, const std::string& path, int err) {
  throw IoError(what + ": " + std::strerror(err), err, ErrorContext{path, "", std::nullopt});
}

void check_range(const std::string& name, uint64_t size, uint64_t offset, size_t n) {
  if (offset > size || n > size - offset)
    throw FormatError("file is truncated: needs bytes up to " + std::to_string(offset + n) +
                          " but has " + std::to_string(size),
                      ErrorContext{name, "", offset});
}

class FdHolder {
 public:
  explicit FdHolder(int fd) : fd_(fd) {}
  ~FdHolder() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdHolder(const FdHolder&) = delete;
  FdHolder& operator=(const FdHolder&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

int open_readonly(const std::string& path, uint64_t& size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("cannot open", path, errno);
  FdHolder holder(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) throw_errno("cannot stat", path, errno);
  if (S_ISDIR(st.st_mode)) throw IoError("is a directory", EISDIR, ErrorContext{path, "", std::nullopt});
  size = static_cast<uint64_t>(st.st_size);
  return holder.release();
}

std::shared_ptr<RandomAccessFile> map_fd(int fd, uint64_t size, const std::string& path);

class PosixRandomAccessFile final : public RandomAccessFile {
  // At most the smallest readahead window Linux uses after FADV_SEQUENTIAL
  // (2 x 128 KiB), so that the windows of consecutive calls leave no gap.
  static constexpr uint64_t kWillneedChunk = uint64_t{256} << 10;
  static constexpr int kProbes = 8;

  // Is the file (probably) in the page cache already? One byte at each of
  // kProbes evenly spaced offsets, read only if cached (RWF_NOWAIT): then the
  // warm load skips the WILLNEED calls (~13 ms per GiB of page-cache walks).
  bool probably_cached() const {
    if (size_ == 0) return true;
    for (int i = 0; i < kProbes; ++i) {
      const uint64_t off = size_ / kProbes * static_cast<uint64_t>(i) + (i == kProbes - 1 ? size_ % kProbes : 0);
      char b;
      struct iovec v{&b, 1};
      if (::preadv2(fd_, &v, 1, static_cast<off_t>(std::min(off, size_ - 1)), RWF_NOWAIT) != 1) return false;
    }
    return true;
  }

 public:
  explicit PosixRandomAccessFile(std::string path) : path_(std::move(path)) {
    fd_ = open_readonly(path_, size_);
  }
  ~PosixRandomAccessFile() override { ::close(fd_); }
  void advise_whole_read() const {
    ::posix_fadvise(fd_, 0, 0, POSIX_FADV_SEQUENTIAL);
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0 || size_ > static_cast<uint64_t>(pages) / 4 * static_cast<uint64_t>(page)) return;
    if (probably_cached()) return;
    // Linux reads at most one readahead window (max(read_ahead_kb, the
    // device's largest request), x2 after FADV_SEQUENTIAL) per WILLNEED call,
    // from its start: one call for the whole file queued only its first
    // window (16 MiB of 947 on the bench VM). One call per kWillneedChunk
    // queues all of it; each call only submits reads (~0.17 s per GiB here).
    for (uint64_t off = 0; off < size_; off += kWillneedChunk)
      ::posix_fadvise(fd_, static_cast<off_t>(off), static_cast<off_t>(std::min<uint64_t>(kWillneedChunk, size_ - off)),
                      POSIX_FADV_WILLNEED);
  }
  // Small reads (a record's local header, a small tensor) are then served
  // from a window of the file, read with one pread: a file of 100,000 small
  // records costs a few hundred system calls, not 200,000. The window's size
  // follows what the last one served (twice that, 4 KiB to 1 MiB), so that
  // the lone header read before each large record reads 4 KiB, not 1 MiB.
  void use_read_window() { windowed_ = true; }

  const std::string& name() const override { return path_; }
  uint64_t size() const override { return size_; }
  void read_at(uint64_t offset, std::span<std::byte> dst) const override {
    check_range(path_, size_, offset, dst.size());
    if (windowed_ && dst.size() <= kSmallRead && from_window(offset, dst)) return;
    pread_fully(offset, dst);
  }
  std::shared_ptr<RandomAccessFile> to_memory() const override { return map_fd(fd_, size_, path_); }

 private:
  static constexpr size_t kSmallRead = size_t{64} << 10;
  static constexpr size_t kMinWindow = size_t{4} << 10;
  static constexpr size_t kWindow = size_t{1} << 20;

  // Reads until `dst` is full or the file ends; the bytes read.
  size_t pread_upto(uint64_t offset, std::span<std::byte> dst) const {
    size_t done = 0;
    while (done < dst.size()) {
      // Linux returns at most ~2 GiB per call; loop until complete.
      ssize_t n = ::pread(fd_, dst.data() + done, dst.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        throw_errno("read failed", path_, errno);
      }
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    return done;
  }

  void pread_fully(uint64_t offset, std::span<std::byte> dst) const {
    const size_t done = pread_upto(offset, dst);
    if (done < dst.size()) throw FormatError("file shrank while reading", ErrorContext{path_, "", offset + done});
  }

  // Copies [offset, offset + dst.size()) from the window, refilling it from
  // `offset` when it does not hold the range; false when the file ends
  // before the range does (the caller's pread then reports it).
  bool from_window(uint64_t offset, std::span<std::byte> dst) const {
    std::lock_guard<std::mutex> lock(window_mu_);
    if (offset < window_offset_ || offset + dst.size() > window_offset_ + window_len_) {
      if (window_len_ != 0) next_window_ = std::clamp(2 * served_, kMinWindow, kWindow);
      served_ = 0;
      const size_t capacity = std::max(next_window_, dst.size());
      if (window_.size() < capacity) window_.resize(capacity);
      const size_t want = static_cast<size_t>(std::min<uint64_t>(capacity, size_ - offset));
      window_len_ = 0;  // empty if the read throws
      window_len_ = pread_upto(offset, std::span<std::byte>(window_).first(want));
      window_offset_ = offset;
      if (window_len_ < dst.size()) return false;
    }
    if (!dst.empty()) std::memcpy(dst.data(), window_.data() + (offset - window_offset_), dst.size());
    served_ += dst.size();
    return true;
  }

  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  bool windowed_ = false;
  mutable std::mutex window_mu_;
  mutable std::vector<std::byte> window_;
  mutable uint64_t window_offset_ = 0;
  mutable size_t window_len_ = 0;
  mutable size_t next_window_ = size_t{64} << 10;  // bytes the next refill reads
  mutable size_t served_ = 0;                       // bytes the current window has served
};

struct Mapping {
  void* addr = nullptr;
  size_t len = 0;
  ~Mapping() {
    if (addr && addr != MAP_FAILED) ::munmap(addr, len);
  }
};

class MemoryFile final : public RandomAccessFile {
 public:
  MemoryFile(std::span<const std::byte> bytes, std::shared_ptr<const void> keepalive, std::string name)
      : bytes_(bytes), keepalive_(std::move(keepalive)), name_(std::move(name)) {}
  const std::string& name() const override { return name_; }
  uint64_t size() const override { return bytes_.size(); }
  void read_at(uint64_t offset, std::span<std::byte> dst) const override {
    check_range(name_, bytes_.size(), offset, dst.size());
    if (!dst.empty()) std::memcpy(dst.data(), bytes_.data() + offset, dst.size());
  }
  const std::byte* memory() const override { return bytes_.data(); }
  std::shared_ptr<const void> keepalive() const override { return keepalive_; }

 private:
  std::span<const std::byte> bytes_;
  std::shared_ptr<const void> keepalive_;
  std::string name_;
};

class SliceFile final : public RandomAccessFile {
 public:
  SliceFile(std::shared_ptr<RandomAccessFile> parent, uint64_t offset, uint64_t length, std::string name)
      : parent_(std::move(parent)), offset_(offset), length_(length), name_(std::move(name)) {}
  const std::string& name() const override { return name_; }
  uint64_t size() const override { return length_; }
  void read_at(uint64_t offset, std::span<std::byte> dst) const override {
    if (offset > length_ || dst.size() > length_ - offset)
      throw FormatError("read of " + std::to_string(dst.size()) + " bytes at " + std::to_string(offset) +
                            " passes the end of the " + std::to_string(length_) + "-byte record",
                        ErrorContext{name_, "", offset});
    parent_->read_at(offset_ + offset, dst);
  }
  const std::byte* memory() const override {
    const std::byte* m = parent_->memory();
    return m ? m + offset_ : nullptr;
  }
  std::shared_ptr<const void> keepalive() const override { return parent_->keepalive(); }
  std::shared_ptr<RandomAccessFile> to_memory() const override {
    std::shared_ptr<RandomAccessFile> whole = as_memory(parent_);
    const std::byte* base = whole->memory() + offset_;
    return std::make_shared<MemoryFile>(std::span<const std::byte>(base, length_), std::move(whole), name_);
  }

 private:
  std::shared_ptr<RandomAccessFile> parent_;
  uint64_t offset_, length_;
  std::string name_;
};

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }
  void append(std::span<const std::byte> data) override {
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw_errno("write failed", path_, errno);
      }
      done += static_cast<size_t>(n);
    }
    size_ += data.size();
  }
  void sync() override {
    if (::fdatasync(fd_) != 0) throw_errno("fsync failed", path_, errno);
  }
  void close() override {
    int fd = std::exchange(fd_, -1);
    if (fd >= 0 && ::close(fd) != 0) throw_errno("close failed", path_, errno);
  }
  uint64_t size() const override { return size_; }

 private:
  std::string path_;
  int fd_;
  uint64_t size_ = 0;
};

class StringWriter final : public WritableFile {
 public:
  explicit StringWriter(std::string& out) : out_(out) {}
  void append(std::span<const std::byte> data) override {
    out_.append(reinterpret_cast<const char*>(data.data()), data.size());
  }
  void sync() override {}
  void close() override {}
  uint64_t size() const override { return out_.size(); }

 private:
  std::string& out_;
};

class PosixFileLock final : public FileLock {
 public:
  explicit PosixFileLock(int fd) : fd_(fd) {}
  ~PosixFileLock() override { ::close(fd_); }  // releases the flock

 private:
  int fd_;
};

class PosixEnv final : public Env {
 public:
  std::unique_ptr<WritableFile> new_writable_file(const std::string& path) override {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) throw_errno("cannot create", path, errno);
    return std::make_unique<PosixWritableFile>(path, fd);
  }
  void rename_file(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0) throw_errno("cannot rename " + from + " to", to, errno);
  }
  void remove_file(const std::string& path) override { ::unlink(path.c_str()); }
  void sync_dir(const std::string& dir) override {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw_errno("cannot open directory", dir, errno);
    FdHolder holder(fd);
    if (::fsync(fd) != 0 && errno != EINVAL) throw_errno("cannot fsync directory", dir, errno);
  }
  bool file_exists(const std::string& path) override { return ::access(path.c_str(), F_OK) == 0; }
};

std::string temp_name_for(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  std::filesystem::path p(path);
  std::random_device rd;
  std::string name = "." + p.filename().string() + ".tmp." + std::to_string(::getpid()) + "." +
                     std::to_string(counter++) + "." + std::to_string(rd() % 100000);
  return (p.parent_path() / name).string();
}

std::shared_ptr<RandomAccessFile> map_fd(int fd, uint64_t size, const std::string& path) {
  auto mapping = std::make_shared<Mapping>();
  if (size > 0) {
    void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED) throw_errno("cannot map", path, errno);
    mapping->addr = addr;
    mapping->len = size;
  }
  auto* base = static_cast<const std::byte*>(mapping->addr);
  static const std::byte kEmpty[1] = {};
  return std::make_shared<MemoryFile>(std::span<const std::byte>(size ? base : kEmpty, size),
                                      std::move(mapping), path);
}

std::shared_ptr<RandomAccessFile> posix_map(const std::string& path) {
  uint64_t size = 0;
  FdHolder fd(open_readonly(path, size));
  return map_fd(fd.get(), size, path);
}

std::atomic<Env*> g_default_env{nullptr};

}  // namespace

std::shared_ptr<RandomAccessFile> Env::open_for_read(const std::string& path, ReadMode mode) {
  switch (mode) {
    case ReadMode::mmap:
      return posix_map(path);
    case ReadMode::whole: {
      auto f = std::make_shared<PosixRandomAccessFile>(path);
      f->advise_whole_read();
      f->use_read_window();
      return f;
    }
    case ReadMode::random:
      break;
  }
  return std::make_shared<PosixRandomAccessFile>(path);
}

FileStatus Env::status(const std::string& path) {
  FileStatus out;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    out.error = errno;
    return out;
  }
  out.device = static_cast<uint64_t>(st.st_dev);
  out.inode = static_cast<uint64_t>(st.st_ino);
  if (S_ISREG(st.st_mode)) {
    out.type = FileStatus::Type::regular;
    out.size = static_cast<uint64_t>(st.st_size);
  } else {
    out.type = S_ISDIR(st.st_mode) ? FileStatus::Type::directory : FileStatus::Type::other;
  }
  return out;
}

std::vector<DirEntry> Env::list_dir(const std::string& dir) {
  std::vector<DirEntry> out;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    DirEntry e;
    e.name = it->path().filename().string();
    const std::string path = it->path().string();
    struct stat lst {}, st {};
    if (::lstat(path.c_str(), &lst) != 0) continue;  // vanished meanwhile
    e.symlink = S_ISLNK(lst.st_mode);
    if (::stat(path.c_str(), &st) == 0) {  // else a dangling link: neither regular nor a directory
      e.regular = S_ISREG(st.st_mode);
      e.directory = S_ISDIR(st.st_mode);
      e.size = e.regular ? static_cast<uint64_t>(st.st_size) : 0;
      e.device = static_cast<uint64_t>(st.st_dev);
      e.inode = static_cast<uint64_t>(st.st_ino);
    }
    out.push_back(std::move(e));
  }
  if (ec) throw IoError("cannot list the directory: " + ec.message(), ec.value(), ErrorContext{dir, "", std::nullopt});
  return out;
}

std::unique_ptr<FileLock> Env::try_lock(const std::string& path, std::string& holder) {
  holder.clear();
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw_errno("cannot open lock file", path, errno);
  FdHolder guard(fd);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err != EWOULDBLOCK) throw_errno("cannot lock", path, err);
    char buf[32] = {};
    ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    if (n > 0) holder.assign(buf, static_cast<size_t>(n));
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    return nullptr;
  }
  // Who holds it, for the next one's message. Best effort.
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) == 0) {
    ssize_t ignored = ::pwrite(fd, pid.data(), pid.size(), 0);
    (void)ignored;
  }
  return std::make_unique<PosixFileLock>(guard.release());
}

Env& default_env() noexcept {
  Env* e = g_default_env.load(std::memory_order_acquire);
  return e ? *e : Env::posix();
}

ScopedDefaultEnv::ScopedDefaultEnv(Env& env) noexcept
    : previous_(g_default_env.exchange(&env, std::memory_order_acq_rel)) {}

ScopedDefaultEnv::~ScopedDefaultEnv() { g_default_env.store(previous_, std::memory_order_release); }

std::vector<DirEntry> list_dir(const std::string& dir) { return default_env().list_dir(dir); }

FileStatus status(const std::string& path) { return default_env().status(path); }

std::string read_small_file(const std::string& path, uint64_t limit) {
  return read_small_file(default_env(), path, limit);
}

std::string read_small_file(Env& env, const std::string& path, uint64_t limit) {
  return read_whole(*env.open_for_read(path, ReadMode::random), limit);
}

std::string read_whole(const RandomAccessFile& file, uint64_t limit) {
  if (file.size() > limit)
    throw LimitError("the file is " + std::to_string(file.size()) + " bytes; the limit is " + std::to_string(limit),
                     ErrorContext{file.name(), "", std::nullopt});
  std::string text(static_cast<size_t>(file.size()), '\0');
  file.read_at(0, std::as_writable_bytes(std::span<char>(text)));
  return text;
}

std::shared_ptr<RandomAccessFile> slice_file(std::shared_ptr<RandomAccessFile> parent, uint64_t offset,
                                             uint64_t length, std::string name) {
  return std::make_shared<SliceFile>(std::move(parent), offset, length, std::move(name));
}

std::shared_ptr<RandomAccessFile> open_file(const std::string& path) {
  return default_env().open_for_read(path, ReadMode::random);
}

std::shared_ptr<RandomAccessFile> open_file_to_read_whole(const std::string& path) {
  return default_env().open_for_read(path, ReadMode::whole);
}

std::shared_ptr<RandomAccessFile> map_file(const std::string& path) {
  return default_env().open_for_read(path, ReadMode::mmap);
}

std::shared_ptr<RandomAccessFile> RandomAccessFile::to_memory() const {
  auto buffer = std::make_shared<std::vector<std::byte>>(static_cast<size_t>(size()));
  read_at_parallel(*this, 0, *buffer);
  const std::span<const std::byte> bytes(*buffer);
  return memory_file(bytes, std::move(buffer), name());
}

std::shared_ptr<RandomAccessFile> as_memory(const std::shared_ptr<RandomAccessFile>& file) {
  return file->memory() ? file : file->to_memory();
}

std::shared_ptr<RandomAccessFile> memory_file(std::span<const std::byte> bytes,
                                              std::shared_ptr<const void> keepalive, std::string name) {
  return std::make_shared<MemoryFile>(bytes, std::move(keepalive), std::move(name));
}

Env& Env::posix() {
  static PosixEnv env;
  return env;
}

namespace {

class ProgressEnv final : public Env {
 public:
  ProgressEnv(Env& base, std::function<void(uint64_t)> on_write) : base_(base), on_write_(std::move(on_write)) {}
  std::shared_ptr<RandomAccessFile> open_for_read(const std::string& path, ReadMode mode) override {
    return base_.open_for_read(path, mode);
  }
  FileStatus status(const std::string& path) override { return base_.status(path); }
  std::vector<DirEntry> list_dir(const std::string& dir) override { return base_.list_dir(dir); }
  std::unique_ptr<FileLock> try_lock(const std::string& path, std::string& holder) override {
    return base_.try_lock(path, holder);
  }
  std::unique_ptr<WritableFile> new_writable_file(const std::string& path) override {
    return std::make_unique<File>(base_.new_writable_file(path), on_write_);
  }
  void rename_file(const std::string& from, const std::string& to) override { base_.rename_file(from, to); }
  void remove_file(const std::string& path) override { base_.remove_file(path); }
  void sync_dir(const std::string& dir) override { base_.sync_dir(dir); }
  bool file_exists(const std::string& path) override { return base_.file_exists(path); }

 private:
  class File final : public WritableFile {
   public:
    File(std::unique_ptr<WritableFile> f, const std::function<void(uint64_t)>& on_write)
        : f_(std::move(f)), on_write_(on_write) {}
    void append(std::span<const std::byte> data) override {
      f_->append(data);
      on_write_(data.size());
    }
    void sync() override { f_->sync(); }
    void close() override { f_->close(); }
    uint64_t size() const override { return f_->size(); }

   private:
    std::unique_ptr<WritableFile> f_;
    const std::function<void(uint64_t)>& on_write_;
  };
  Env& base_;
  std::function<void(uint64_t)> on_write_;
};

}  // namespace

std::unique_ptr<Env> progress_env(Env& base, std::function<void(uint64_t bytes)> on_write) {
  return std::make_unique<ProgressEnv>(base, std::move(on_write));
}

std::unique_ptr<WritableFile> string_writer(std::string& out) {
  return std::make_unique<StringWriter>(out);
}

void write_atomically(Env& env, const std::string& path,
                      const std::function<void(WritableFile&)>& body, bool sync) {
  const std::string tmp = temp_name_for(path);
  std::unique_ptr<WritableFile> file = env.new_writable_file(tmp);
  try {
    body(*file);
    if (sync) file->sync();
    file->close();
    file.reset();
    env.rename_file(tmp, path);
  } catch (...) {
    file.reset();
    env.remove_file(tmp);
    throw;
  }
  if (!sync) return;
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  env.sync_dir(dir.empty() ? "." : dir.string());
}

void read_at_parallel(const RandomAccessFile& f, uint64_t offset, std::span<std::byte> dst) {
  constexpr size_t kMinParallel = size_t{8} << 20;
  constexpr size_t kMinPiece = size_t{4} << 20;
  constexpr size_t kPage = 4096;
  if (dst.size() < kMinParallel) return f.read_at(offset, dst);  // first: most records are small
  // hardware_concurrency() reads /sys on Linux: once per process, not per record.
  static const size_t hw = std::max(1u, std::thread::hardware_concurrency());
  const size_t n = std::min({hw, size_t{4}, dst.size() / kMinPiece});
  if (n < 2) return f.read_at(offset, dst);
  const size_t step = (dst.size() / n + kPage - 1) / kPage * kPage;
  std::vector<std::exception_ptr> errors(n);
  auto piece = [&](size_t i) {
    try {
      const size_t begin = std::min(i * step, dst.size());
      const size_t len = std::min(step, dst.size() - begin);
      if (len > 0) f.read_at(offset + begin, dst.subspan(begin, len));
    } catch (...) {
      errors[i] = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  size_t started = 1;
  try {
    for (; started < n; ++started) threads.emplace_back(piece, started);
  } catch (const std::system_error&) {  // no thread to be had: read the rest here
  }
  piece(0);
  for (size_t i = started; i < n; ++i) piece(i);
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace ckpt::io
