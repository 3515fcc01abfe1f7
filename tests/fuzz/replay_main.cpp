// The replay driver: runs a fuzz target's LLVMFuzzerTestOneInput over files,
// without libFuzzer (any compiler). Each argument is a file or a directory
// (walked recursively, in sorted order). An input that makes the target
// throw (anything not a ckpt::Error escapes the targets) is reported with its
// path and the run fails; a sanitizer report or a crash fails it too.
//
//   fuzz_replay_zip tests/fuzz/regressions/zip build/tests/fuzz/seeds/zip
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
    return 2;
  }
  std::vector<fs::path> inputs;
  for (int i = 1; i < argc; ++i) {
    fs::path p(argv[i]);
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      for (const auto& e : fs::recursive_directory_iterator(p))
        if (e.is_regular_file()) inputs.push_back(e.path());
    } else if (fs::is_regular_file(p, ec)) {
      inputs.push_back(p);
    } else {
      std::fprintf(stderr, "%s: no such file or directory\n", argv[i]);
      return 2;
    }
  }
  std::sort(inputs.begin(), inputs.end());
  if (inputs.empty()) {
    std::fprintf(stderr, "no inputs found\n");
    return 2;
  }
  for (const fs::path& p : inputs) {
    std::ifstream in(p, std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!in.good() && !in.eof()) {
      std::fprintf(stderr, "%s: cannot read\n", p.c_str());
      return 2;
    }
    try {
      // A copy of exactly the input's size, so ASan sees reads past its end.
      std::vector<uint8_t> data(bytes.begin(), bytes.end());
      LLVMFuzzerTestOneInput(data.data(), data.size());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "FINDING: %s: uncaught %s\n", p.c_str(), e.what());
      return 1;
    } catch (...) {
      std::fprintf(stderr, "FINDING: %s: uncaught non-standard exception\n", p.c_str());
      return 1;
    }
  }
  std::printf("replayed %zu inputs, no finding\n", inputs.size());
  return 0;
}
