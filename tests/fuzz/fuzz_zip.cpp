// fuzz_zip: the zip reader (central directory, ZIP64, local headers) on raw
// bytes. Every entry is found by name, read as an owned copy (deflated
// entries inflated), read as a string, read into a caller's buffer and
// viewed zero-copy when stored, and CRC-checked leniently and strictly.
#include <vector>

#include "container/zip.hpp"
#include "fuzz_common.hpp"
#include "io/file.hpp"

namespace {

using namespace ckpt;

// Entries larger than this are only CRC-checked and read once: the reader
// bounds inflation at 1032x the compressed size, which stays well under the
// fuzzer's memory limit for its inputs, but reading the same large entry four
// ways only slows the search.
constexpr uint64_t kMaxReadAllWays = uint64_t{4} << 20;

void each_entry(const zip::ZipReader& z, const zip::Entry& e) {
  fuzz::run_expecting_errors([&] {
    if (z.find(e.name) == nullptr) __builtin_trap();  // every listed entry is findable
  });
  fuzz::run_expecting_errors([&] { fuzz::keep(fuzz::touch(z.read(e).bytes())); });
  if (e.uncompressed_size > kMaxReadAllWays) return;
  fuzz::run_expecting_errors([&] { fuzz::keep(static_cast<unsigned>(z.read_string(e).size())); });
  fuzz::run_expecting_errors([&] {
    std::vector<std::byte> buf(static_cast<size_t>(e.uncompressed_size));
    z.read_into(e, buf);
    fuzz::keep(fuzz::touch(buf));
  });
  fuzz::run_expecting_errors([&] { fuzz::keep(fuzz::touch(z.view(e).bytes())); });
  fuzz::run_expecting_errors([&] { z.verify(e); });
  fuzz::run_expecting_errors([&] { z.verify(e, /*strict=*/true); });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bytes = fuzz::as_bytes(data, size);
  fuzz::keep(zip::looks_like_zip(bytes) ? 1u : 0u);
  fuzz::keep(zip::crc32(bytes));
  fuzz::run_expecting_errors([&] {
    zip::ZipReader z(io::memory_file(bytes));
    for (const zip::Entry& e : z.entries()) each_entry(z, e);
  });
  return 0;
}
