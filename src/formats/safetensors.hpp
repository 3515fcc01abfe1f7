// Private: reading and writing safetensors files (Hugging Face).
//
// A safetensors file is an 8-byte little-endian header length N, N bytes of
// UTF-8 JSON describing every tensor (dtype code, shape, [begin, end) in the
// data section) plus optional string metadata, then the data section: every
// tensor's bytes, row-major, little-endian, back to back, ending exactly at
// EOF. See docs/formats/safetensors.md for the byte layout and for what the
// reader rejects.
//
// The reader validates exactly what the reference Rust reader validates (and
// additionally refuses duplicate JSON keys anywhere and headers that do not
// start with '{'). The writer produces the same bytes as Python's
// safetensors.torch.save_file for the same tensors and metadata (metadata in
// the order given; Python's order is that of a randomly seeded Rust HashMap).
// All functions are thread-safe; they share nothing between calls.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ckpt/options.hpp"
#include "ckpt/tensor.hpp"
#include "ckpt/value.hpp"
#include "io/file.hpp"

namespace ckpt::formats {

// Largest header the reference reader accepts (safetensors' MAX_HEADER_SIZE):
// a bound on what a hostile length field can make us allocate.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// Deepest JSON nesting accepted in a header: serde_json's default recursion
// limit, so the same headers are refused as by the reference reader. Bounds
// the parser's per-level state.
inline constexpr size_t kSafetensorsMaxJsonDepth = 128;

// What the non-contiguous-tensor path of the writer copies at a time.
inline constexpr size_t kSafetensorsWriteChunkBytes = size_t{4} << 20;

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::uint8;  // the torch dtype
  std::string_view code;       // the header's dtype code ("F32"); static storage
  // The torch shape. For F4 (float4_e2m1fn_x2, two 4-bit values per torch
  // element) the header counts 4-bit values, so its last dimension is twice
  // this one, as safetensors' torch binding does it.
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // absolute file offset of the first data byte
  uint64_t end = 0;    // absolute file offset one past the last data byte
  uint64_t nbytes() const noexcept { return end - begin; }
};

struct SafetensorsHeader {
  // In data order (by data_offsets), which is also the order in which
  // Python's safetensors.torch.load_file returns them; empty tensors sharing
  // an offset keep their header order.
  std::vector<SafetensorsEntry> tensors;
  // `__metadata__` in header order (keys are unique).
  std::vector<std::pair<std::string, std::string>> metadata;
  uint64_t data_start = 0;  // 8 + N: where the data section begins
};

// Reads and validates the header (only the first 8 + N bytes are read; the
// file size is used to check that the data section ends exactly at EOF).
// Throws ckpt::FormatError (ckpt::LimitError for an oversized header) for a
// damaged file and ckpt::UnsupportedError for valid files that hold dtypes
// torch cannot represent (F6_E2M3, F6_E3M2, F4 with an odd last dimension).
SafetensorsHeader read_safetensors_header(const io::RandomAccessFile& file);

// Every tensor, in data order. Tensors get their own owned storage (one
// positioned read each), or with `mmap` on a memory-resident file a
// read-only view of the file's memory when the data is aligned to the
// element size (else a copy). Devices are `device` ("cpu").
std::vector<std::pair<std::string, Tensor>> read_safetensors(const io::RandomAccessFile& file, bool mmap,
                                                             const std::string& device = "cpu");
// The same from a header already read (and consumed).
std::vector<std::pair<std::string, Tensor>> read_safetensors(const io::RandomAccessFile& file,
                                                             SafetensorsHeader header, bool mmap,
                                                             const std::string& device = "cpu",
                                                             Storage::HugePages huge = Storage::HugePages::on);

// ckpt::load()'s view: a plain dict name -> Tensor in data order, with
// options.mmap and options.map_location applied (saved device: "cpu").
Value load_safetensors(const std::shared_ptr<io::RandomAccessFile>& file, const LoadOptions& options);

// Writes `tensors` with `metadata` (emitted in the given order; omitted when
// empty) in the exact layout of safetensors.torch.save_file: tensors sorted
// by dtype (descending in the reference's enum order) then name, header
// padded with spaces to a multiple of 8, data streamed contiguously.
// Non-contiguous tensors are written in row-major order through a bounded
// buffer of `chunk_bytes`. Throws ckpt::UnsupportedError for dtypes without
// a safetensors code and for tensors that share memory, ckpt::TypeError for
// duplicate or malformed names/keys; nothing useful is written then.
void write_safetensors(io::WritableFile& out, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::vector<std::pair<std::string, std::string>>& metadata,
                       size_t chunk_bytes = kSafetensorsWriteChunkBytes);

}  // namespace ckpt::formats
