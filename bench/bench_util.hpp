// bench/bench_util.hpp — what ckpt_bench and libtorch_peer share: memory
// figures from /proc, evicting a file from the page cache, and the JSON line
// that bench/driver.py reads. Header-only: libtorch_peer is built by
// bench/run with g++ outside the CMake project.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {

// A "Field:  N kB" line of /proc/self/status (VmRSS, RssAnon, RssFile), -1 when absent.
inline long status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(field);
  while (std::getline(in, line))
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':') return std::atol(line.c_str() + n + 1);
  return -1;
}

// Drops the file's clean pages from the page cache (those nothing else maps).
inline void evict(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error("cannot open " + path);
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

struct Result {
  std::vector<double> times;  // seconds, one per rep
  uint64_t bytes = 0;
  uint64_t tensors = 0;
  uint64_t check = 0;
  long rss_anon_kb = 0, rss_file_kb = 0, rss_before_kb = 0;

  // RssAnon and RssFile now (called while the last rep's result is alive).
  void snapshot() {
    rss_anon_kb = status_kb("RssAnon");
    rss_file_kb = status_kb("RssFile");
  }

  void print() const {
    std::printf("{\"times\": [");
    for (size_t i = 0; i < times.size(); ++i) std::printf("%s%.9f", i ? ", " : "", times[i]);
    std::printf("], \"bytes\": %llu, \"tensors\": %llu, \"check\": %llu, \"rss_anon_kb\": %ld, "
                "\"rss_file_kb\": %ld, \"rss_before_kb\": %ld}\n",
                static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(tensors),
                static_cast<unsigned long long>(check), rss_anon_kb, rss_file_kb, rss_before_kb);
  }
};

// The command line every measuring program takes: OP REPS [--cold] ARGS...
struct Command {
  std::string op;
  int reps = 0;
  bool cold = false;
  std::vector<std::string> args;

  const std::string& arg(size_t i) const {
    if (i >= args.size()) throw std::runtime_error(op + ": missing argument " + std::to_string(i + 1));
    return args[i];
  }
};

// Runs run(Command) for `program`: 2 with a usage line on too few arguments, 1 with
// "PROGRAM OP: what()" on an exception.
template <class Run>
int command_main(const char* program, const char* usage_args, int argc, char** argv, Run run) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s OP REPS [--cold] %s\n", program, usage_args);
    return 2;
  }
  Command c;
  c.op = argv[1];
  try {
    c.reps = std::atoi(argv[2]);
    int a = 3;
    c.cold = std::string(argv[a]) == "--cold";
    if (c.cold) ++a;
    c.args.assign(argv + a, argv + argc);
    return run(c);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s %s: %s\n", program, c.op.c_str(), e.what());
    return 1;
  }
}

}  // namespace bench
