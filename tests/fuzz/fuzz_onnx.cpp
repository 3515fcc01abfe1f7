// fuzz_onnx: the ONNX initializer reader on raw bytes: the protobuf wire
// reader over ModelProto -> GraphProto -> TensorProto (varints, lengths,
// wire types, dims, typed fields), then every initializer read as an owned
// copy and as a view into the buffer through ckpt::load's dict view.
// External data cannot resolve from memory and must be refused cleanly.
#include "ckpt/load.hpp"
#include "formats/onnx.hpp"
#include "fuzz_common.hpp"
#include "io/file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ckpt;
  auto bytes = fuzz::as_bytes(data, size);
  auto file = io::memory_file(bytes);
  fuzz::run_expecting_errors([&] {
    formats::OnnxModelRecord m = formats::parse_onnx(bytes, "<memory>");
    unsigned acc = static_cast<unsigned>(m.graph_entries.size());
    for (const auto& r : m.initializers) {
      if (r.entry.end > size || r.payload.begin < r.entry.begin || r.payload.end != r.entry.end) __builtin_trap();
      if (r.has_raw) {
        if (r.raw.begin > r.raw.end || r.raw.end > size) __builtin_trap();  // validated range
        acc += fuzz::touch(bytes.subspan(static_cast<size_t>(r.raw.begin), static_cast<size_t>(r.raw.size())));
      }
    }
    fuzz::keep(acc);
  });
  for (bool mmap : {false, true}) {
    fuzz::run_expecting_errors([&] {
      LoadOptions o;
      o.mmap = mmap;
      fuzz::keep(fuzz::touch_tensors(formats::load_onnx(file, o)));
    });
  }
  return 0;
}
