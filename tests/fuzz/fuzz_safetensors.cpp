// fuzz_safetensors: the safetensors reader on raw bytes: the header parser
// (length prefix, JSON with duplicate-key and depth checks, dtype codes,
// shapes, data offsets against the file size), then every tensor read as an
// owned copy and as a view into the buffer, and ckpt::load's dict view.
#include "ckpt/load.hpp"
#include "formats/safetensors.hpp"
#include "fuzz_common.hpp"
#include "io/file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  auto bytes = fuzz::as_bytes(data, size);
  auto file = io::memory_file(bytes);
  fuzz::run_expecting_errors([&] {
    formats::SafetensorsHeader h = formats::read_safetensors_header(*file);
    unsigned acc = static_cast<unsigned>(h.data_start + h.metadata.size());
    for (const auto& e : h.tensors) {
      if (e.begin < h.data_start || e.end < e.begin || e.end > size) __builtin_trap();  // validated range
      acc += fuzz::touch(bytes.subspan(static_cast<size_t>(e.begin), static_cast<size_t>(e.nbytes())));
    }
    fuzz::keep(acc);
  });
  for (bool mmap : {false, true}) {
    fuzz::run_expecting_errors([&] {
      unsigned acc = 0;
      for (const auto& [name, t] : formats::read_safetensors(*file, mmap)) {
        acc += static_cast<unsigned>(name.size());
        if (t.nbytes() <= fuzz::kMaxTouchedTensorBytes) acc += fuzz::touch(t.contiguous_bytes());
      }
      fuzz::keep(acc);
    });
  }
  fuzz::run_expecting_errors([&] {
    LoadOptions o;
    o.mmap = true;
    fuzz::keep(fuzz::touch_tensors(formats::load_safetensors(file, o)));
  });
  return 0;
}
