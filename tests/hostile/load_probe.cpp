// ckpt_load_probe FILE: ckpt::load(FILE) and nothing else, for
// tests/hostile/check_budget.py to measure the peak RSS of the library call
// (issue #18: ckpt::load stays within 256 MiB + 4x the file size).
// Exit 0: loaded; 1: refused with a ckpt::Error (printed on stderr); 2: usage.
#include <cstdio>
#include <exception>

#include "ckpt/error.hpp"
#include "ckpt/load.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: ckpt_load_probe FILE\n");
    return 2;
  }
  try {
    ckpt::Value v = ckpt::load(argv[1]);
    std::printf("%s\n", std::string(v.kind_name()).c_str());
    return 0;
  } catch (const ckpt::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
