// Shared by the fuzz targets (tests/fuzz/fuzz_*.cpp): what an input may do.
//
// Every target defines LLVMFuzzerTestOneInput. Built with clang and
// -fsanitize=fuzzer it is a libFuzzer binary (scripts/fuzz); built with any
// compiler next to replay_main.cpp it is a replay driver that runs the same
// function over files (the ctest tests fuzz_replay_*). The contract of every
// target: a ckpt::Error (any subclass) is the expected outcome for a bad
// input and is swallowed by run_expecting_errors(); anything else (another
// exception, a sanitizer report, a crash, a hang, runaway memory) escapes and
// is a finding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "ckpt/error.hpp"
#include "ckpt/inspect.hpp"
#include "ckpt/tensor.hpp"
#include "ckpt/value.hpp"
#include "pickle/unpickler.hpp"

namespace ckpt::fuzz {

// A tensor whose elements take more than this is only checked through its
// storage: an expanded view (stride 0) of a few bytes may legally describe
// gigabytes, which a copy would allocate.
inline constexpr size_t kMaxTouchedTensorBytes = size_t{16} << 20;

inline std::span<const std::byte> as_bytes(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const std::byte*>(data), size};
}

// Reads every byte (so ASan sees an out-of-bounds view) and returns a value
// the optimiser cannot drop.
inline unsigned touch(std::span<const std::byte> bytes) {
  unsigned acc = 0;
  for (std::byte b : bytes) acc = acc * 31 + static_cast<unsigned>(b);
  return acc;
}

// What one input may make touch_tensors() read in all: one tensor can be
// reached through many shared paths, which is legal and walked each time.
inline constexpr size_t kMaxTouchedBytesPerInput = size_t{64} << 20;

// Touches the storage of every tensor in the tree and the elements of each
// view (row-major copy), so a view reaching outside its storage is caught.
inline unsigned touch_tensors(const Value& root) {
  unsigned acc = 0;
  size_t budget = kMaxTouchedBytesPerInput;
  for_each_tensor(root, [&](const std::string& path, const Tensor& t) {
    acc += static_cast<unsigned>(path.size());
    if (!t.defined()) return;
    const size_t storage_bytes = t.storage().nbytes();
    if (storage_bytes <= budget) {
      budget -= storage_bytes;
      acc += touch(t.storage().bytes());
    }
    if (t.nbytes() <= kMaxTouchedTensorBytes && t.nbytes() <= budget) {
      budget -= t.nbytes();
      acc += touch(t.contiguous_bytes());
    }
  });
  return acc;
}

// Sees every pickle event and reads its strings.
class CountingObserver : public pickle::Observer {
 public:
  void on_event(const pickle::Event& e) override {
    events_ += 1 + e.module.size() + e.name.size() + (e.allowed ? 1 : 0);
  }
  size_t events() const noexcept { return events_; }

 private:
  size_t events_ = 0;
};

// Runs `fn`; a ckpt::Error is an expected outcome, anything else propagates.
template <class Fn>
void run_expecting_errors(Fn&& fn) {
  try {
    fn();
  } catch (const ckpt::Error& e) {
    (void)e.what();  // the rendered message must be readable
  }
}

// Keeps a value alive past the optimiser.
inline void keep(unsigned v) {
  static volatile unsigned sink;
  sink = sink + v;
}

}  // namespace ckpt::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
