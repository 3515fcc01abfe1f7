// ckpt::open cost: a file with many small tensors against one with few large
// tensors of the same total size, for safetensors and torch zip files.
//
//   open_time [TOTAL_MIB] [DIR]      (defaults: 256 MiB, /tmp)
//
// Prints the median of 15 opens (each: open, list every tensor's info) and
// the ratio; the files are written once and removed at the end.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "ckpt/ckpt.hpp"

namespace {

ckpt::StateDict make(size_t tensors, size_t total_bytes) {
  ckpt::StateDict sd;
  const int64_t elems = static_cast<int64_t>(total_bytes / tensors / 4);
  for (size_t i = 0; i < tensors; ++i) {
    ckpt::Tensor t = ckpt::Tensor::empty(ckpt::DType::float32, {elems});
    std::fill_n(reinterpret_cast<float*>(t.mutable_data()), elems, static_cast<float>(i));
    sd.set("model.layers." + std::to_string(i) + ".weight", t);
  }
  return sd;
}

double median_open_ms(const std::string& path, size_t expect) {
  std::vector<double> ms;
  for (int rep = 0; rep < 15; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    ckpt::Reader r = ckpt::open(path);
    uint64_t sum = 0;
    for (const auto& info : r.tensors()) sum += info.nbytes;
    auto t1 = std::chrono::steady_clock::now();
    if (r.size() != expect || sum == 0) std::abort();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const size_t total = (argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 256) << 20;
  const std::string dir = argc > 2 ? argv[2] : "/tmp";
  std::printf("ckpt::open, %zu MiB in total, median of 15 (open + list)\n", total >> 20);
  std::printf("%-12s %10s %12s %12s %8s\n", "format", "tensors", "file MiB", "open ms", "ratio");
  for (const char* fmt : {"safetensors", "torch"}) {
    double base = 0;
    for (size_t n : {size_t{100}, size_t{10000}}) {
      const std::string path = dir + "/ckpt_open_bench_" + std::to_string(n) + (fmt[0] == 's' ? ".safetensors" : ".pt");
      {
        ckpt::StateDict sd = make(n, total);
        if (fmt[0] == 's') ckpt::save_safetensors(path, sd);
        else ckpt::save_state_dict(path, sd);
      }
      double ms = median_open_ms(path, n);
      if (n == 100) base = ms;
      std::printf("%-12s %10zu %12.1f %12.3f %8.1fx\n", fmt, n,
                  static_cast<double>(std::filesystem::file_size(path)) / (1 << 20), ms, ms / base);
      std::filesystem::remove(path);
    }
  }
  return 0;
}
