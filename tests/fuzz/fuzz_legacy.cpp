// fuzz_legacy: PyTorch's pre-zip readers on raw bytes, called directly (no
// format detection in front): the legacy multi-pickle format (magic, protocol,
// sys_info, object, storage keys, then raw storages) and the 0.1.x tar
// format. Both global policies; an observer sees the pickle events; the
// tensors of a result are walked and read.
#include "fuzz_common.hpp"
#include "formats/torch_legacy.hpp"
#include "io/file.hpp"

namespace {

using namespace ckpt;

template <class Loader>
void load_and_walk(Loader loader, std::span<const std::byte> bytes, bool weights_only) {
  fuzz::run_expecting_errors([&] {
    LoadOptions o;
    o.weights_only = weights_only;
    fuzz::CountingObserver observer;
    Value v = loader(io::memory_file(bytes), o, &observer);
    fuzz::keep(fuzz::touch_tensors(v) + static_cast<unsigned>(observer.events()));
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bytes = fuzz::as_bytes(data, size);
  for (bool weights_only : {true, false}) {
    load_and_walk(formats::load_torch_legacy, bytes, weights_only);
    load_and_walk(formats::load_torch_tar, bytes, weights_only);
  }
  return 0;
}
