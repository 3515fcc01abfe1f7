// fuzz_torchscript: the TorchScript archive reader (data.pkl with inert
// __torch__ classes, constants.pkl, the code/ sources that name parameters
// and buffers) on raw bytes behind the zip reader. read_torchscript and
// load_torchscript under both policies; the state dict, constants and module
// tree are walked and their tensors read.
#include "container/zip.hpp"
#include "formats/torchscript.hpp"
#include "fuzz_common.hpp"
#include "io/file.hpp"

namespace {

using namespace ckpt;

void read_all(std::span<const std::byte> bytes, bool weights_only) {
  fuzz::run_expecting_errors([&] {
    LoadOptions o;
    o.weights_only = weights_only;
    fuzz::CountingObserver observer;
    zip::ZipReader z(io::memory_file(bytes));
    formats::TorchScriptModule m = formats::read_torchscript(z, o, &observer);
    unsigned acc = fuzz::touch_tensors(m.root) + fuzz::touch_tensors(m.constants);
    for (const auto& [name, t] : m.state_dict) {
      acc += static_cast<unsigned>(name.size());
      if (t.defined() && t.nbytes() <= fuzz::kMaxTouchedTensorBytes) acc += fuzz::touch(t.contiguous_bytes());
    }
    fuzz::keep(acc + static_cast<unsigned>(observer.events()));
  });
  fuzz::run_expecting_errors([&] {
    LoadOptions o;
    o.weights_only = weights_only;
    zip::ZipReader z(io::memory_file(bytes));
    fuzz::keep(fuzz::touch_tensors(formats::load_torchscript(z, o, nullptr)));
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bytes = fuzz::as_bytes(data, size);
  read_all(bytes, /*weights_only=*/true);
  read_all(bytes, /*weights_only=*/false);
  return 0;
}
