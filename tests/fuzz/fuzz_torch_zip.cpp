// fuzz_torch_zip: ckpt::load from a memory buffer, the public entry point
// (format detection, then whichever reader the bytes select; the seeds are
// torch.save zip archives). Each input is loaded with weights_only on and off,
// copying storages and (mmap = true) as views into the buffer; every tensor
// of the result is then walked with for_each_tensor and its bytes read. Then
// load_state_dict (the state-dict checks) and, for zip archives, what
// `ckpt verify` runs (verify_torch_zip: CRCs, structure, storage sizes).
#include "ckpt/load.hpp"
#include "container/zip.hpp"
#include "formats/torch_zip.hpp"
#include "fuzz_common.hpp"
#include "io/file.hpp"

namespace {

using namespace ckpt;

void load_and_walk(std::span<const std::byte> bytes, bool weights_only, bool mmap) {
  fuzz::run_expecting_errors([&] {
    LoadOptions o;
    o.weights_only = weights_only;
    o.mmap = mmap;
    Value v = load(bytes, o);
    fuzz::keep(fuzz::touch_tensors(v));
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bytes = fuzz::as_bytes(data, size);
  fuzz::run_expecting_errors([&] { fuzz::keep(static_cast<unsigned>(detect_format(bytes))); });
  load_and_walk(bytes, /*weights_only=*/true, /*mmap=*/false);
  load_and_walk(bytes, /*weights_only=*/false, /*mmap=*/false);
  load_and_walk(bytes, /*weights_only=*/true, /*mmap=*/true);
  fuzz::run_expecting_errors([&] {
    unsigned acc = 0;
    for (const auto& [name, t] : load_state_dict(bytes)) {
      acc += static_cast<unsigned>(name.size());
      if (t.defined() && t.nbytes() <= fuzz::kMaxTouchedTensorBytes) acc += fuzz::touch(t.contiguous_bytes());
    }
    fuzz::keep(acc);
  });
  if (zip::looks_like_zip(bytes))
    fuzz::run_expecting_errors([&] { formats::verify_torch_zip(zip::ZipReader(io::memory_file(bytes))); });
  return 0;
}
