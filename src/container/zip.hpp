// Private: the zip container used by torch.save, TorchScript and LibTorch.
//
// ZipReader parses the central directory (ZIP64 aware) at open, and hands out
// entry bytes either as an
// owned copy (stored entries: one positioned read; deflated entries: inflated
// with libdeflate into a buffer of the declared size) or, for stored entries
// of a memory-resident file, as a zero-copy view. CRC32 (ISA-L) is checked on
// request. Every offset and size is validated against the file size before use.
//
// Local headers are read lazily, as torch's reader (miniz) does: an entry's
// data offset (which depends on the local header's name and extra lengths) is
// resolved the first time the entry is read, viewed or verified, or
// data_offset() is asked, then cached. Opening an archive reads only its end
// records and central directory: reading hundreds of scattered local headers
// at open would queue behind a whole-file read-ahead on a cold cache (issue
// #20). The local header checks (signature, data inside the file, no overlap
// with the next entry or the central directory) therefore fail when the
// damaged entry is first used, naming it and the offset, as at open before.
//
// ZipWriter streams a store-only archive the way PyTorch's writer lays it out:
// local headers with flag 0x0808 and zero CRC/sizes, an "FB" extra field that
// pads each payload to `alignment` bytes, a data descriptor after each
// payload, then the central directory, ZIP64 end record + locator and the end
// record. ZIP64 fields are used for entries at or past `zip64_threshold`.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ckpt/checksum.hpp"
#include "ckpt/storage.hpp"
#include "core/name_table.hpp"
#include "io/file.hpp"

namespace ckpt::zip {

// CRC-32 (IEEE, as zip and gzip use): ckpt/checksum.hpp.
using ckpt::crc32;

// Does this look like a zip file (local header signature at offset 0)?
bool looks_like_zip(std::span<const std::byte> first_bytes) noexcept;
// torch.serialization._is_zipfile: the local header magic "PK\3\4" at offset
// 0, nothing else (an empty archive, "PK\5\6", takes torch's legacy path).
bool starts_with_local_header(std::span<const std::byte> first_bytes) noexcept;

struct Entry {
  std::string name;
  uint16_t method = 0;  // 0 stored, 8 deflated
  uint16_t flags = 0;
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_header_offset = 0;
  // The first payload byte is not here: ZipReader::data_offset(entry)
  // resolves it from the local header on first use.
};

struct ReaderLimits {
  size_t max_entries = 1 << 22;                       // 4M entries
  uint64_t max_inflated_size = uint64_t{1} << 40;     // also capped at 1032x compressed (deflate's max ratio)
};

class ZipReader {
 public:
  // Throws ckpt::FormatError: "not a zip file" when no end record is found,
  // otherwise a message naming the damaged structure and its offset.
  explicit ZipReader(std::shared_ptr<io::RandomAccessFile> file, ReaderLimits limits = {});

  const std::vector<Entry>& entries() const noexcept { return entries_; }
  const Entry* find(std::string_view name) const noexcept;
  // Every entry whose name equals `name` ignoring ASCII letter case: what
  // torch's reader (miniz's mz_zip_reader_locate_file without
  // MZ_ZIP_FLAG_CASE_SENSITIVE) may resolve `name` to.
  std::vector<const Entry*> find_all_icase(std::string_view name) const;
  // The entry torch's reader resolves `name` to (case-insensitive), null if
  // none; throws FormatError when several names match (torch may take any).
  const Entry* find_torch(std::string_view name) const;
  // The same, trying the entry at position `hint` first: torch.save writes
  // data/0, data/1, ... in the order its pickle refers to them, so a reader
  // going through them guesses the next one right without hashing the name.
  const Entry* find_torch(std::string_view name, size_t hint) const;
  const io::RandomAccessFile& file() const noexcept { return *file_; }
  const std::shared_ptr<io::RandomAccessFile>& file_ptr() const noexcept { return file_; }

  // The entry's first payload byte in the file, from its local header (read
  // on the first call for the entry, then cached; safe to call from several
  // threads). Throws FormatError naming the entry when the local header is
  // damaged or the payload passes the end of the file or overlaps the next
  // entry or the central directory. `e` must be one of entries().
  uint64_t data_offset(const Entry& e) const;
  // The same, from the local header's bytes when the caller has already read
  // them: `header` starts at e.local_header_offset and holds at least
  // kLocalHeaderSize bytes (else it is read here, as above).
  uint64_t data_offset(const Entry& e, std::span<const std::byte> header) const;
  static constexpr size_t kLocalHeaderSize = 30;  // a local header's fixed part

  // The entry's bytes in owned, 64-byte aligned memory.
  Storage read(const Entry& e, Storage::HugePages huge = Storage::HugePages::on) const;
  // Small records (data.pkl, version): the bytes as a string.
  std::string read_string(const Entry& e) const;
  // Reads a stored entry straight into `dst` (dst.size() == uncompressed_size).
  void read_into(const Entry& e, std::span<std::byte> dst) const;
  // A read-only view into the file's memory for a stored entry; requires
  // file().memory() != nullptr. Throws for deflated entries.
  Storage view(const Entry& e) const;
  // Recomputes the CRC32 and compares with the central directory. A stored
  // CRC of 0 on a non-empty entry is "not recorded" (torch can write such
  // files) and passes unless `strict`. Throws ckpt::FormatError on mismatch.
  void verify(const Entry& e, bool strict = false) const;

 private:
  // Throws LimitError when a deflated entry claims more than deflate can
  // produce from its compressed size or more than limits_ allow.
  void check_inflated_size(const Entry& e, uint64_t data_offset) const;
  uint64_t resolve_data_offset(size_t index, std::span<const std::byte> header) const;
  std::shared_ptr<io::RandomAccessFile> file_;
  ReaderLimits limits_;
  std::vector<Entry> entries_;
  // Exact names -> entry index (core/name_table.hpp: names compared in
  // entries_, no node or key copy per entry; a torch file of 100,000
  // tensors has 100,000 records).
  NameTable by_name_;
  auto name_of() const {
    return [this](size_t i) -> std::string_view { return entries_[i].name; };
  }
  std::unordered_multimap<std::string, size_t> by_folded_;  // lower-cased name -> index (empty: all lower case)
  // Per entry: where the next thing in the file (the next entry's local
  // header, or the central directory) starts, and that entry's index
  // (kNoNext: the central directory). A payload must end at or before it.
  static constexpr size_t kNoNext = ~size_t{0};
  struct Bound {
    uint64_t end;
    size_t next;
  };
  std::vector<Bound> bounds_;
  // Resolved data offsets, 0 while unresolved (a payload starts at least 30
  // bytes into the file).
  std::unique_ptr<std::atomic<uint64_t>[]> data_offsets_;
};

struct WriterOptions {
  uint32_t alignment = 64;                    // payload alignment (torch: 64)
  uint64_t zip64_threshold = 0xFFFFFFFFull;   // lower only in tests to force ZIP64
  bool compute_crc = true;
};

class ZipWriter {
 public:
  ZipWriter(io::WritableFile& out, WriterOptions options = {});
  // One record from memory.
  void add(std::string_view name, std::span<const std::byte> data);
  // A record streamed in pieces: begin_entry(name, total size), write()...,
  // end_entry(). The pieces must add up to `size`.
  void begin_entry(std::string_view name, uint64_t size);
  void write(std::span<const std::byte> piece);
  void end_entry();
  // Central directory and end records. Must be called once, last. Until it
  // returns, what was given may still sit in the writer's buffer, not in `out`.
  void finish();
  // The CRC-32 of the last record ended (with WriterOptions::compute_crc).
  uint32_t last_crc() const { return written_.empty() ? 0 : written_.back().crc; }

 private:
  static constexpr size_t kWriteBuffer = size_t{1} << 20;
  static constexpr size_t kDirectWrite = size_t{64} << 10;
  void emit(std::span<const std::byte> bytes);
  void flush();
  std::vector<std::byte> buffer_;
  struct Written {
    std::string name;
    uint32_t crc;
    uint64_t size;
    uint64_t offset;
  };
  io::WritableFile& out_;
  WriterOptions options_;
  std::vector<Written> written_;
  bool in_entry_ = false;
  bool finished_ = false;
  uint64_t pos_ = 0;
  Written current_{};
  uint64_t current_written_ = 0;
  bool current_zip64_ = false;
};

}  // namespace ckpt::zip
