// libtorch_peer — the LibTorch loaders bench/run compares ckpt with, one
// measurement per process, printing the same JSON line as ckpt_bench.
//
//   libtorch_peer OP REPS [--cold] FILE
//     pickle_load   read the file, torch::pickle_load (what LibTorch offers for torch.save files)
//     jit_load      torch::jit::load (TorchScript archives; a torch.save file is refused)
//
// Built by bench/run with g++ -std=c++20 against the venv's LibTorch (not part of the CMake
// project: LibTorch is optional there).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "bench_util.hpp"

#include <torch/script.h>
#include <torch/serialize.h>

namespace {

// Tensors and their bytes in an IValue tree (dicts, lists, tuples, modules' attributes).
void count(const c10::IValue& v, uint64_t& tensors, uint64_t& bytes) {
  if (v.isTensor()) {
    ++tensors;
    bytes += v.toTensor().nbytes();
  } else if (v.isGenericDict()) {
    for (const auto& e : v.toGenericDict()) count(e.value(), tensors, bytes);
  } else if (v.isList()) {
    for (const auto& e : v.toListRef()) count(e, tensors, bytes);
  } else if (v.isTuple()) {
    for (const auto& e : v.toTupleRef().elements()) count(e, tensors, bytes);
  } else if (v.isObject()) {
    for (const auto& e : v.toObjectRef().slots()) count(e, tensors, bytes);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: libtorch_peer pickle_load|jit_load REPS [--cold] FILE\n");
    return 2;
  }
  const std::string op = argv[1];
  const int reps = std::atoi(argv[2]);
  const bool cold = std::string(argv[3]) == "--cold";
  const std::string path = argv[cold ? 4 : 3];
  try {
    bench::Result r;
    r.rss_before_kb = bench::status_kb("VmRSS");
    for (int i = 0; i < reps; ++i) {
      if (cold) bench::evict(path);
      auto t0 = std::chrono::steady_clock::now();
      c10::IValue v;
      if (op == "pickle_load") {
        std::ifstream in(path, std::ios::binary);
        std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        v = torch::pickle_load(data);
      } else if (op == "jit_load") {
        v = torch::jit::load(path)._ivalue();
      } else {
        std::fprintf(stderr, "libtorch_peer: unknown operation '%s'\n", op.c_str());
        return 2;
      }
      r.tensors = r.bytes = 0;
      count(v, r.tensors, r.bytes);
      r.times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      if (i + 1 == reps) r.snapshot();
    }
    r.print();
    return 0;
  } catch (const std::exception& e) {
    // The first line of LibTorch's message (the rest is a C++ backtrace).
    std::string msg = e.what();
    std::fprintf(stderr, "libtorch_peer %s: %s\n", op.c_str(), msg.substr(0, msg.find('\n')).c_str());
    return 1;
  }
}
