// ckpt_bench — one measurement of ckpt (or of a hardware limit) per process,
// driven by bench/run (bench/driver.py), which reads the JSON line it prints
// and takes the peak RSS of the process from wait4().
//
//   ckpt_bench OP REPS [--cold] ARGS...
//
// ckpt operations (public API only):
//   open FILE             ckpt::open + every tensor's info (no tensor byte read)
//   load FILE             ckpt::load_state_dict: owned copies of every tensor
//   load_small_pages FILE the same with LoadOptions::huge_pages = false (4 KiB pages)
//   load_into FILE        ckpt::open + Reader::read_into a StateDict of existing, faulted-in
//                         buffers (a model's parameters): the bytes go from the file straight
//                         into them (the buffers are allocated once, before the reps)
//   mmap FILE             ckpt::load_state_dict(mmap = true), then every byte read
//   save FILE OUT [nofsync]        load FILE, then save_state_dict(OUT) per rep
//   save_st FILE OUT      load FILE, then save_safetensors(OUT) per rep (always fsyncs)
// limits:
//   read FILE             read() of the whole file into one buffer, 8 MiB per call (the buffer
//                         is allocated and faulted in once, before the reps)
//   read_fresh FILE [huge]  the same into a buffer allocated (aligned_alloc) per rep, as a loader
//                         that returns new memory must: page faults and the kernel's zeroing
//                         included; huge: madvise(MADV_HUGEPAGE) on the buffer first
//   memcpy MIB            memcpy of MIB MiB between two faulted-in buffers
//   write OUT MIB [fsync] sequential write() of MIB MiB in 8 MiB blocks (+ fsync)
//   pwrite OUT MIB THREADS  the same MIB MiB split into THREADS ranges, each written with
//                         pwrite() by its own thread (what parallel record writes could reach)
//   crc32 MIB             CRC-32 of MIB MiB with ISA-L (the library ckpt uses) and libdeflate
//
// --cold: posix_fadvise(DONTNEED) on FILE before every rep (the page cache
// loses the file's pages when nothing else maps them; /proc/sys/vm/drop_caches
// needs privileges this does not).
//
// Output, one line of JSON: {"times": [s, ...], "bytes": N, "tensors": N,
// "check": N, "rss_anon_kb": N, "rss_file_kb": N, "rss_before_kb": N}; rss_* are
// read from /proc/self/status while the last rep's result is still alive.
// Errors go to stderr with exit status 1.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <isa-l/crc.h>
#include <libdeflate.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.hpp"
#include "ckpt/ckpt.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using bench::Result;

// Reads every byte (sum of 64-bit words, then the tail), so that lazily
// mapped pages are faulted in and the compiler cannot skip the reads.
uint64_t touch(const std::byte* p, size_t n) {
  uint64_t s = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    s += w;
  }
  for (; i < n; ++i) s += static_cast<uint64_t>(p[i]);
  return s;
}

uint64_t touch_all(const ckpt::StateDict& sd) {
  uint64_t s = 0;
  for (const auto& [name, t] : sd) s += touch(t.data(), t.nbytes());
  return s;
}

uint64_t file_size(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) throw std::runtime_error("cannot stat " + path);
  return static_cast<uint64_t>(st.st_size);
}

// Runs `body` REPS times, timing each; `body(last)` keeps its result alive
// until the RSS snapshot when `last` is true (it calls `snapshot`).
void repeat(Result& r, int reps, const std::function<void()>& before, const std::function<void(bool)>& body) {
  r.rss_before_kb = bench::status_kb("VmRSS");
  for (int i = 0; i < reps; ++i) {
    if (before) before();
    auto t0 = Clock::now();
    body(i + 1 == reps);
    r.times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
}

std::vector<std::byte> faulted(size_t n, int v) {
  std::vector<std::byte> b(n);
  std::memset(b.data(), v, n);
  return b;
}

void read_into(const std::string& path, std::byte* buf, uint64_t size) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error("cannot open " + path);
  for (uint64_t done = 0; done < size;) {
    ssize_t n = ::read(fd, buf + done, std::min<uint64_t>(8 << 20, size - done));
    if (n <= 0) throw std::runtime_error("read failed on " + path);
    done += static_cast<uint64_t>(n);
  }
  ::close(fd);
}

void write_file(const std::string& out, const std::vector<std::byte>& buf, uint64_t total, bool sync) {
  int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + out);
  for (uint64_t done = 0; done < total;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), total - done));
    ssize_t w = ::write(fd, buf.data(), n);
    if (w <= 0) throw std::runtime_error("write failed on " + out);
    done += static_cast<uint64_t>(w);
  }
  if (sync && ::fsync(fd) != 0) throw std::runtime_error("fsync failed on " + out);
  ::close(fd);
}

// `total` bytes of `buf` (repeated) written by `threads` threads, each pwrite()ing its own range.
void pwrite_file(const std::string& out, const std::vector<std::byte>& buf, uint64_t total, int threads) {
  int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + out);
  if (::ftruncate(fd, static_cast<off_t>(total)) != 0) throw std::runtime_error("cannot size " + out);
  const uint64_t piece = total / static_cast<uint64_t>(threads);
  std::vector<std::thread> pool;
  std::atomic<bool> failed{false};
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      uint64_t off = piece * static_cast<uint64_t>(t);
      const uint64_t end = t == threads - 1 ? total : off + piece;
      while (off < end && !failed) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), end - off));
        ssize_t w = ::pwrite(fd, buf.data(), n, static_cast<off_t>(off));
        if (w <= 0) failed = true;
        else off += static_cast<uint64_t>(w);
      }
    });
  }
  for (auto& th : pool) th.join();
  ::close(fd);
  if (failed) throw std::runtime_error("pwrite failed on " + out);
}

int run(const bench::Command& c) {
  const std::string& op = c.op;
  const int reps = c.reps;
  const bool cold = c.cold;
  const std::vector<std::string>& args = c.args;
  auto arg = [&](size_t i) -> const std::string& { return c.arg(i); };
  auto flag = [&](size_t i, const char* name) { return args.size() > i && args[i] == name; };
  std::function<void()> before;
  if (cold) before = [&] { bench::evict(arg(0)); };
  const uint64_t mib = 1 << 20;

  Result r;
  if (op == "open") {
    repeat(r, reps, before, [&](bool last) {
      ckpt::Reader rd = ckpt::open(arg(0));
      uint64_t n = 0;
      for (const auto& info : rd.tensors()) n += info.nbytes + info.shape.size();
      r.tensors = rd.size();
      r.bytes = rd.nbytes();
      r.check = n;
      if (last) r.snapshot();
    });
  } else if (op == "load_into") {
    ckpt::StateDict dst;
    {
      ckpt::Reader rd = ckpt::open(arg(0));
      for (const auto& info : rd.tensors()) {
        ckpt::Tensor t = ckpt::Tensor::empty(info.dtype, info.shape);
        if (t.nbytes() > 0) std::memset(t.mutable_data(), 0, t.nbytes());  // faulted in, as parameters are
        dst.set(info.name, t);
      }
    }
    repeat(r, reps, before, [&](bool last) {
      ckpt::Reader rd = ckpt::open(arg(0));
      r.check = rd.read_into(dst);
      r.tensors = dst.size();
      r.bytes = dst.nbytes();
      if (last) r.snapshot();
    });
  } else if (op == "load" || op == "mmap" || op == "load_small_pages") {
    ckpt::LoadOptions o;
    o.mmap = op == "mmap";
    o.huge_pages = op != "load_small_pages";
    repeat(r, reps, before, [&](bool last) {
      ckpt::StateDict sd = ckpt::load_state_dict(arg(0), o);
      r.check = o.mmap ? touch_all(sd) : sd.size();
      r.tensors = sd.size();
      r.bytes = sd.nbytes();
      if (last) r.snapshot();
    });
  } else if (op == "save" || op == "save_st") {
    const ckpt::StateDict sd = ckpt::load_state_dict(arg(0));
    ckpt::SaveOptions o;
    o.fsync = !flag(2, "nofsync");
    r.tensors = sd.size();
    r.bytes = sd.nbytes();
    repeat(r, reps, nullptr, [&](bool last) {
      if (op == "save") ckpt::save_state_dict(arg(1), sd, o);
      else ckpt::save_safetensors(arg(1), sd);
      if (last) r.snapshot();
    });
    r.check = file_size(arg(1));
  } else if (op == "read") {
    const uint64_t size = file_size(arg(0));
    std::vector<std::byte> buf(size);
    repeat(r, reps, before, [&](bool last) {
      read_into(arg(0), buf.data(), size);
      r.check = static_cast<uint64_t>(buf[size / 2]);
      if (last) r.snapshot();
    });
    r.bytes = size;
  } else if (op == "read_fresh") {
    const uint64_t size = file_size(arg(0));
    const bool huge = flag(1, "huge");
    repeat(r, reps, before, [&](bool last) {
      const size_t align = huge ? 2 * mib : 64;
      std::unique_ptr<std::byte, decltype(&std::free)> buf(
          static_cast<std::byte*>(std::aligned_alloc(align, (size + align - 1) / align * align)), &std::free);
      if (!buf) throw std::bad_alloc();
      if (huge) ::madvise(buf.get(), size, MADV_HUGEPAGE);
      read_into(arg(0), buf.get(), size);
      r.check = static_cast<uint64_t>(buf.get()[size / 2]);
      if (last) r.snapshot();
    });
    r.bytes = size;
  } else if (op == "memcpy") {
    r.bytes = std::stoull(arg(0)) * mib;
    auto src = faulted(r.bytes, 1), dst = faulted(r.bytes, 2);
    repeat(r, reps, nullptr, [&](bool last) {
      std::memcpy(dst.data(), src.data(), r.bytes);
      r.check = static_cast<uint64_t>(dst[r.bytes / 2]);
      if (last) r.snapshot();
    });
  } else if (op == "write") {
    r.bytes = std::stoull(arg(1)) * mib;
    auto buf = faulted(8 * mib, 3);
    const bool sync = flag(2, "fsync");
    repeat(r, reps, nullptr, [&](bool last) {
      write_file(arg(0), buf, r.bytes, sync);
      if (last) r.snapshot();
    });
    r.check = file_size(arg(0));
  } else if (op == "pwrite") {
    r.bytes = std::stoull(arg(1)) * mib;
    const int threads = std::max(1, std::stoi(arg(2)));
    auto buf = faulted(8 * mib, 3);
    repeat(r, reps, nullptr, [&](bool last) {
      pwrite_file(arg(0), buf, r.bytes, threads);
      if (last) r.snapshot();
    });
    r.check = file_size(arg(0));
  } else if (op == "crc32_isal" || op == "crc32_libdeflate") {
    r.bytes = std::stoull(arg(0)) * mib;
    auto buf = faulted(r.bytes, 5);
    for (size_t i = 0; i < buf.size(); i += 4093) buf[i] = static_cast<std::byte>(i);
    const auto* p = reinterpret_cast<const unsigned char*>(buf.data());
    repeat(r, reps, nullptr, [&](bool last) {
      r.check = op == "crc32_isal" ? crc32_gzip_refl(0, p, r.bytes)
                                   : libdeflate_crc32(0, p, r.bytes);
      if (last) r.snapshot();
    });
  } else {
    std::fprintf(stderr, "ckpt_bench: unknown operation '%s'\n", op.c_str());
    return 2;
  }

  r.print();
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return bench::command_main("ckpt_bench", "ARGS...", argc, argv, run); }
