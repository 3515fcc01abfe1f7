#include "container/zip.hpp"

#include <isa-l/crc.h>
#include <libdeflate.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "ckpt/error.hpp"
#include "core/checked.hpp"

namespace ckpt::zip {
namespace {

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kEnd64Sig = 0x06064b50;
constexpr uint32_t kEnd64LocatorSig = 0x07064b50;
constexpr uint32_t kDescriptorSig = 0x08074b50;
constexpr size_t kLocalHeaderSize = 30;
constexpr size_t kCentralHeaderSize = 46;
constexpr size_t kEndSize = 22;
constexpr size_t kEnd64Size = 56;
constexpr size_t kEnd64LocatorSize = 20;
constexpr size_t kMaxComment = 0xFFFF;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kPaddingExtraId = 0x4246;  // "FB": PyTorch's alignment padding
// The most deflate can expand: 1032:1 for an all-zero stream, plus slack for headers.
constexpr uint64_t kMaxDeflateRatio = 1032;
constexpr size_t kVerifyChunk = size_t{16} << 20;

uint16_t u16(const std::byte* p) {
  return static_cast<uint16_t>(static_cast<uint16_t>(p[0]) | static_cast<uint16_t>(p[1]) << 8);
}
uint32_t u32(const std::byte* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}
uint64_t u64(const std::byte* p) { return static_cast<uint64_t>(u32(p)) | static_cast<uint64_t>(u32(p + 4)) << 32; }

void put16(std::string& out, uint16_t v) {
  out.push_back(static_cast<char>(v & 0xff));
  out.push_back(static_cast<char>(v >> 8));
}
void put32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// ASCII lower case, as miniz's MZ_TOLOWER compares names.
std::string fold_case(std::string_view s) {
  std::string k(s);
  for (char& c : k)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return k;
}

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

}  // namespace


bool looks_like_zip(std::span<const std::byte> b) noexcept {
  if (b.size() < 4) return false;
  uint32_t sig = u32(b.data());
  return sig == kLocalSig || sig == kEndSig;
}

bool starts_with_local_header(std::span<const std::byte> b) noexcept {
  return b.size() >= 4 && u32(b.data()) == kLocalSig;
}

// ---------------------------------------------------------------- reader

ZipReader::ZipReader(std::shared_ptr<io::RandomAccessFile> file, ReaderLimits limits)
    : file_(std::move(file)), limits_(limits) {
  const std::string& name = file_->name();
  const uint64_t size = file_->size();
  auto fail = [&](const std::string& msg, uint64_t offset) -> FormatError {
    return FormatError("damaged zip archive: " + msg, ErrorContext{name, "", offset});
  };
  if (size < kEndSize) throw FormatError("not a zip archive (file has only " + std::to_string(size) + " bytes)", {name});

  // 1. Find the end record as miniz (torch's zip reader) and Python's zipfile
  //    do: the signature nearest the end with a whole record after it. The
  //    comment length is not consulted, so a second end record hidden inside
  //    the real one's comment is the one that counts.
  const uint64_t tail_len = std::min<uint64_t>(size, kEndSize + kMaxComment);
  std::vector<std::byte> tail(tail_len);
  file_->read_at(size - tail_len, tail);
  int64_t end_pos = -1;
  for (int64_t i = static_cast<int64_t>(tail_len) - static_cast<int64_t>(kEndSize); i >= 0; --i)
    if (u32(tail.data() + i) == kEndSig) {
      end_pos = i;
      break;
    }
  if (end_pos < 0) throw FormatError("not a zip archive (no end-of-central-directory record)", {name});
  const uint64_t end_offset = size - tail_len + static_cast<uint64_t>(end_pos);
  const std::byte* end = tail.data() + end_pos;
  if (u16(end + 4) != 0 || u16(end + 6) != 0) throw UnsupportedError("multi-disk zip archives are not supported", {name});
  uint64_t count = u16(end + 10);
  uint64_t cd_size = u32(end + 12);
  uint64_t cd_offset = u32(end + 16);

  // 2. ZIP64: the locator sits right before the end record. As in miniz, a
  //    locator whose record lacks the ZIP64 signature is ignored.
  if (end_offset >= kEnd64LocatorSize) {
    std::byte loc[kEnd64LocatorSize];
    file_->read_at(end_offset - kEnd64LocatorSize, loc);
    if (u32(loc) == kEnd64LocatorSig) {
      uint64_t e64_off = u64(loc + 8);
      if (e64_off > size || size - e64_off < kEnd64Size) throw fail("ZIP64 end record offset is outside the file", end_offset);
      std::byte e64[kEnd64Size];
      file_->read_at(e64_off, e64);
      if (u32(e64) == kEnd64Sig) {
        count = u64(e64 + 32);
        cd_size = u64(e64 + 40);
        cd_offset = u64(e64 + 48);
      }
    }
  }
  if (count > limits_.max_entries)
    throw LimitError("zip archive claims " + std::to_string(count) + " entries (limit " +
                         std::to_string(limits_.max_entries) + ")",
                     ErrorContext{name, "", end_offset});
  if (cd_offset > size || cd_size > size - cd_offset) throw fail("central directory lies outside the file", end_offset);
  if (count > cd_size / kCentralHeaderSize) throw fail("central directory is too small for its entry count", cd_offset);

  // 3. Central directory, read in one piece.
  std::vector<std::byte> cd(cd_size);
  file_->read_at(cd_offset, cd);
  entries_.reserve(count);
  by_name_.reset(count);
  size_t pos = 0;
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t here = cd_offset + pos;
    if (cd.size() - pos < kCentralHeaderSize) throw fail("central directory entry is truncated", here);
    const std::byte* h = cd.data() + pos;
    if (u32(h) != kCentralSig) throw fail("central directory entry signature is wrong", here);
    Entry e;
    e.flags = u16(h + 8);
    e.method = u16(h + 10);
    e.crc32 = u32(h + 16);
    e.compressed_size = u32(h + 20);
    e.uncompressed_size = u32(h + 24);
    const size_t name_len = u16(h + 28), extra_len = u16(h + 30), comment_len = u16(h + 32);
    e.local_header_offset = u32(h + 42);
    if (cd.size() - pos - kCentralHeaderSize < name_len + extra_len + comment_len)
      throw fail("central directory entry runs past the directory", here);
    e.name.assign(reinterpret_cast<const char*>(h + kCentralHeaderSize), name_len);
    // ZIP64 extra: u64 values for exactly the 32-bit fields that are saturated, in order.
    const std::byte* x = h + kCentralHeaderSize + name_len;
    size_t xp = 0;
    while (xp + 4 <= extra_len) {
      uint16_t id = u16(x + xp), len = u16(x + xp + 2);
      if (xp + 4 + len > extra_len) throw fail("extra field of '" + e.name + "' is truncated", here);
      if (id == kZip64ExtraId) {
        size_t fp = xp + 4, fend = xp + 4 + len;
        auto take = [&](uint64_t& field) {
          if (fp + 8 > fend) throw fail("ZIP64 extra field of '" + e.name + "' is too short", here);
          field = u64(x + fp);
          fp += 8;
        };
        if (e.uncompressed_size == 0xFFFFFFFF) take(e.uncompressed_size);
        if (e.compressed_size == 0xFFFFFFFF) take(e.compressed_size);
        if (e.local_header_offset == 0xFFFFFFFF) take(e.local_header_offset);
      }
      xp += 4 + len;
    }
    pos += kCentralHeaderSize + name_len + extra_len + comment_len;
    // Built only for an error: two string copies per entry otherwise.
    const auto where = [&] { return ErrorContext{name, e.name, here}; };
    if (e.flags & 0x1) throw UnsupportedError("encrypted zip entries are not supported", where());
    if (e.method != 0 && e.method != 8)
      throw UnsupportedError("zip compression method " + std::to_string(e.method) + " is not supported (only stored and deflate)", where());
    if (e.method == 0 && e.compressed_size != e.uncompressed_size)
      throw FormatError("damaged zip archive: stored entry has compressed size " + std::to_string(e.compressed_size) +
                            " but uncompressed size " + std::to_string(e.uncompressed_size),
                        where());
    // The local header is read lazily (data_offset()); here only what the
    // central directory alone proves: the header's fixed part lies in the
    // file, and so does the payload at its earliest possible start.
    if (e.local_header_offset > size || size - e.local_header_offset < kLocalHeaderSize)
      throw FormatError("damaged zip archive: local header lies outside the file", where());
    if (e.compressed_size > size - e.local_header_offset - kLocalHeaderSize) {
      // Damaged whatever the local header says; it is read only for the
      // message (and its own damage, reported first as before).
      std::byte lh[kLocalHeaderSize];
      file_->read_at(e.local_header_offset, lh);
      if (u32(lh) != kLocalSig)
        throw FormatError("damaged zip archive: local header signature is wrong", ErrorContext{name, e.name, e.local_header_offset});
      const uint64_t data_offset = e.local_header_offset + kLocalHeaderSize + u16(lh + 26) + u16(lh + 28);
      throw FormatError("damaged zip archive: entry data (" + std::to_string(e.compressed_size) + " bytes at offset " +
                            std::to_string(data_offset) + ") passes the end of the file (" + std::to_string(size) + " bytes)",
                        where());
    }
    if (!by_name_.insert(e.name, entries_.size(), name_of()))
      throw FormatError("damaged zip archive: duplicate entry name", where());
    entries_.push_back(std::move(e));
  }

  // Case-insensitive index (torch's lookups ignore case), built only when a
  // name has an upper-case letter: otherwise by_name_ already serves.
  const bool any_upper = std::any_of(entries_.begin(), entries_.end(), [](const Entry& e) {
    return std::any_of(e.name.begin(), e.name.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
  });
  if (any_upper)
    for (size_t i = 0; i < entries_.size(); ++i) by_folded_.emplace(fold_case(entries_[i].name), i);

  // 4. Payloads must not overlap each other or the central directory. Each
  //    payload is checked here at its earliest possible end (header's fixed
  //    part + payload), and against its actual end (after the local header's
  //    name and extra fields) when data_offset() resolves it.
  std::vector<std::pair<uint64_t, size_t>> order;
  order.reserve(entries_.size());
  for (size_t i = 0; i < entries_.size(); ++i) order.emplace_back(entries_[i].local_header_offset, i);
  std::sort(order.begin(), order.end());
  bounds_.assign(entries_.size(), Bound{cd_offset, kNoNext});
  uint64_t prev_end = 0;
  const std::string* prev_name = nullptr;
  for (size_t k = 0; k < order.size(); ++k) {
    const auto& [off, i] = order[k];
    const Entry& e = entries_[i];
    if (off < prev_end)
      throw FormatError("damaged zip archive: entry overlaps '" + *prev_name + "'", ErrorContext{name, e.name, off});
    prev_end = off + kLocalHeaderSize + e.compressed_size;  // no overflow: both checked against the file size
    prev_name = &e.name;
    if (k + 1 < order.size()) bounds_[i] = Bound{order[k + 1].first, order[k + 1].second};
  }
  if (prev_end > cd_offset)
    throw FormatError("damaged zip archive: entry data overlaps the central directory", ErrorContext{name, *prev_name, cd_offset});
  data_offsets_ = std::make_unique<std::atomic<uint64_t>[]>(entries_.size());
}

uint64_t ZipReader::data_offset(const Entry& e) const { return data_offset(e, {}); }

uint64_t ZipReader::data_offset(const Entry& e, std::span<const std::byte> header) const {
  size_t index;
  if (!entries_.empty() && &e >= entries_.data() && &e < entries_.data() + entries_.size()) {
    index = static_cast<size_t>(&e - entries_.data());
  } else {  // a copy: the entry of that name
    const Entry* same = find(e.name);
    if (same == nullptr)
      throw Error("zip entry is not in this archive", ErrorContext{file_->name(), e.name, std::nullopt});
    index = static_cast<size_t>(same - entries_.data());
  }
  uint64_t off = data_offsets_[index].load(std::memory_order_relaxed);
  if (off != 0) return off;
  off = resolve_data_offset(index, header);
  data_offsets_[index].store(off, std::memory_order_relaxed);  // racing resolvers store the same value
  return off;
}

uint64_t ZipReader::resolve_data_offset(size_t index, std::span<const std::byte> header) const {
  const Entry& e = entries_[index];
  const std::string& name = file_->name();
  const uint64_t size = file_->size();
  const auto where = [&] { return ErrorContext{name, e.name, e.local_header_offset}; };  // only for errors
  // The constructor checked that the header's fixed part lies in the file.
  std::byte read[kLocalHeaderSize];
  const std::byte* lh = header.data();
  if (header.size() < kLocalHeaderSize) {
    file_->read_at(e.local_header_offset, read);
    lh = read;
  }
  if (u32(lh) != kLocalSig) throw FormatError("damaged zip archive: local header signature is wrong", where());
  const uint64_t data_offset = e.local_header_offset + kLocalHeaderSize + u16(lh + 26) + u16(lh + 28);
  if (data_offset > size || e.compressed_size > size - data_offset)
    throw FormatError("damaged zip archive: entry data (" + std::to_string(e.compressed_size) + " bytes at offset " +
                          std::to_string(data_offset) + ") passes the end of the file (" + std::to_string(size) + " bytes)",
                      where());
  const Bound& b = bounds_[index];
  if (data_offset + e.compressed_size > b.end) {
    if (b.next == kNoNext)
      throw FormatError("damaged zip archive: entry data overlaps the central directory", ErrorContext{name, e.name, b.end});
    throw FormatError("damaged zip archive: entry overlaps '" + e.name + "'",
                      ErrorContext{name, entries_[b.next].name, b.end});
  }
  return data_offset;
}

std::vector<const Entry*> ZipReader::find_all_icase(std::string_view name) const {
  std::vector<const Entry*> out;
  const std::string key = fold_case(name);
  if (by_folded_.empty()) {  // no name has an upper-case letter: folding is the identity
    if (const Entry* e = find(key)) out.push_back(e);
    return out;
  }
  auto [lo, hi] = by_folded_.equal_range(key);
  for (auto it = lo; it != hi; ++it) out.push_back(&entries_[it->second]);
  std::sort(out.begin(), out.end());  // central-directory order
  return out;
}

const Entry* ZipReader::find_torch(std::string_view name) const {
  if (by_folded_.empty()) {
    const bool upper = std::any_of(name.begin(), name.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
    return upper ? find(fold_case(name)) : find(name);  // no copy when folding changes nothing
  }
  auto all = find_all_icase(name);
  if (all.empty()) return nullptr;
  if (all.size() > 1)
    throw FormatError("archive has " + std::to_string(all.size()) + " records named '" + std::string(name) +
                          "' up to letter case; torch's reader may take any of them",
                      ErrorContext{file_->name(), std::string(name), std::nullopt});
  return all.front();
}

const Entry* ZipReader::find_torch(std::string_view name, size_t hint) const {
  // With no upper-case letter in any name, an exact match is what the
  // case-insensitive lookup returns (names are unique).
  if (by_folded_.empty() && hint < entries_.size() && entries_[hint].name == name) return &entries_[hint];
  return find_torch(name);
}

const Entry* ZipReader::find(std::string_view name) const noexcept {
  const size_t i = by_name_.find(name, name_of());
  return i == NameTable::npos ? nullptr : &entries_[i];
}

// Deflate: bound the output before anything is allocated for it (zip bombs,
// and central directories that claim terabytes: read() and read_string()
// allocate the declared size, so they check first).
void ZipReader::check_inflated_size(const Entry& e, uint64_t data_offset) const {
  if (e.method == 0) return;  // stored: the size was checked against the file
  if (e.uncompressed_size > limits_.max_inflated_size ||
      e.uncompressed_size > kMaxDeflateRatio * e.compressed_size + 1024)
    throw LimitError("deflated entry claims " + std::to_string(e.uncompressed_size) + " bytes from " +
                         std::to_string(e.compressed_size) + " compressed bytes (more than deflate can produce)",
                     ErrorContext{file_->name(), e.name, data_offset});
}

void ZipReader::read_into(const Entry& e, std::span<std::byte> dst) const {
  const uint64_t data_offset = this->data_offset(e);
  ErrorContext where{file_->name(), e.name, data_offset};
  if (dst.size() != e.uncompressed_size)
    throw Error("read_into: destination has " + std::to_string(dst.size()) + " bytes, entry has " +
                std::to_string(e.uncompressed_size), where);
  if (e.method == 0) {
    io::read_at_parallel(*file_, data_offset, dst);
    return;
  }
  check_inflated_size(e, data_offset);
  std::vector<std::byte> compressed;
  std::span<const std::byte> in;
  if (file_->memory() != nullptr) {
    in = {file_->memory() + data_offset, e.compressed_size};
  } else {
    compressed.resize(e.compressed_size);
    file_->read_at(data_offset, compressed);
    in = compressed;
  }
  std::unique_ptr<libdeflate_decompressor, decltype(&libdeflate_free_decompressor)> d(
      libdeflate_alloc_decompressor(), libdeflate_free_decompressor);
  if (!d) throw std::bad_alloc();
  size_t actual = 0;
  auto r = libdeflate_deflate_decompress(d.get(), in.data(), in.size(), dst.data(), dst.size(), &actual);
  if (r != LIBDEFLATE_SUCCESS || actual != dst.size())
    throw FormatError(r == LIBDEFLATE_INSUFFICIENT_SPACE ? "deflated data is longer than the declared size"
                      : r == LIBDEFLATE_BAD_DATA     ? "deflated data is corrupt"
                                                     : "deflated data is shorter than the declared size",
                      where);
}

Storage ZipReader::read(const Entry& e, Storage::HugePages huge) const {
  check_inflated_size(e, data_offset(e));
  Storage s = Storage::allocate(e.uncompressed_size, huge);
  read_into(e, {s.mutable_data(), s.nbytes()});
  return s;
}

std::string ZipReader::read_string(const Entry& e) const {
  check_inflated_size(e, data_offset(e));
  std::string out(e.uncompressed_size, '\0');
  read_into(e, std::as_writable_bytes(std::span<char>(out)));
  return out;
}

Storage ZipReader::view(const Entry& e) const {
  if (e.method != 0) throw Error("cannot view a deflated zip entry in place", ErrorContext{file_->name(), e.name});
  if (file_->memory() == nullptr) throw Error("cannot view a zip entry of a file that is not mapped", ErrorContext{file_->name(), e.name});
  return Storage::mapped(file_->keepalive(), file_->memory() + data_offset(e), e.uncompressed_size);
}

void ZipReader::verify(const Entry& e, bool strict) const {
  const uint64_t data_offset = this->data_offset(e);
  uint32_t crc = 0;
  if (e.method == 0 && file_->memory() != nullptr) {
    crc = crc32({file_->memory() + data_offset, e.uncompressed_size});
  } else if (e.method == 0) {
    std::vector<std::byte> buf(std::min<uint64_t>(e.uncompressed_size, kVerifyChunk));
    for (uint64_t done = 0; done < e.uncompressed_size;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), e.uncompressed_size - done));
      file_->read_at(data_offset + done, {buf.data(), n});
      crc = crc32({buf.data(), n}, crc);
      done += n;
    }
  } else {
    Storage s = read(e);
    crc = crc32(s.bytes());
  }
  if (e.crc32 == 0 && e.uncompressed_size > 0 && !strict) return;  // torch's "CRC not recorded"
  if (crc != e.crc32) {
    char msg[96];
    std::snprintf(msg, sizeof msg, "CRC mismatch: stored 0x%08x, computed 0x%08x", e.crc32, crc);
    throw FormatError(msg, ErrorContext{file_->name(), e.name, data_offset});
  }
}

// ---------------------------------------------------------------- writer

ZipWriter::ZipWriter(io::WritableFile& out, WriterOptions options) : out_(out), options_(options) {
  if (options_.alignment == 0 || options_.alignment > 0x8000)
    throw Error("zip alignment must be in 1..32768, not " + std::to_string(options_.alignment));
  pos_ = out_.size();
}

void ZipWriter::emit(std::span<const std::byte> bytes) {
  // Small pieces (headers, descriptors, small records) are gathered into one
  // buffer written kWriteBuffer bytes at a time; large ones go straight
  // through (after what is buffered), without a copy.
  if (bytes.size() >= kDirectWrite) {
    flush();
    out_.append(bytes);
    return;
  }
  if (buffer_.size() + bytes.size() > kWriteBuffer) flush();
  if (buffer_.capacity() < kWriteBuffer) buffer_.reserve(kWriteBuffer);
  buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
}

void ZipWriter::flush() {
  if (buffer_.empty()) return;
  out_.append(buffer_);
  buffer_.clear();
}

void ZipWriter::add(std::string_view name, std::span<const std::byte> data) {
  begin_entry(name, data.size());
  write(data);
  end_entry();
}

void ZipWriter::begin_entry(std::string_view name, uint64_t size) {
  if (finished_ || in_entry_) throw Error("zip writer: begin_entry called out of order");
  if (name.size() > 0xFFFF) throw Error("zip entry name is longer than 65535 bytes");
  current_ = Written{std::string(name), 0, size, pos_};
  current_written_ = 0;
  const uint64_t limit = options_.zip64_threshold;
  current_zip64_ = size >= limit || pos_ >= limit;
  // Payload start = header + name + [zip64 extra] + FB header, padded to the alignment.
  uint64_t start = pos_ + kLocalHeaderSize + name.size() + 4;
  std::string zip64_extra;
  if (current_zip64_) {
    put16(zip64_extra, kZip64ExtraId);
    uint16_t len = static_cast<uint16_t>((size >= limit ? 16 : 0) + (pos_ >= limit ? 8 : 0));
    put16(zip64_extra, len);
    if (size >= limit) {
      put64(zip64_extra, size);
      put64(zip64_extra, size);
    }
    if (pos_ >= limit) put64(zip64_extra, pos_);
    start += zip64_extra.size();
  }
  const uint64_t pad = (options_.alignment - start % options_.alignment) % options_.alignment;
  std::string h;
  h.reserve(kLocalHeaderSize + name.size() + zip64_extra.size() + 4 + pad);
  put32(h, kLocalSig);
  put16(h, current_zip64_ ? 45 : 0);  // version needed
  put16(h, 0x0808);                   // sizes in the data descriptor; UTF-8 names
  put16(h, 0);                        // stored
  put32(h, 0);                        // time, date
  put32(h, 0);                        // crc (in the descriptor)
  put32(h, 0);                        // compressed size
  put32(h, 0);                        // uncompressed size
  put16(h, static_cast<uint16_t>(name.size()));
  put16(h, static_cast<uint16_t>(zip64_extra.size() + 4 + pad));
  h.append(name);
  h += zip64_extra;
  put16(h, kPaddingExtraId);
  put16(h, static_cast<uint16_t>(pad));
  h.append(pad, 'Z');
  emit(as_bytes(h));
  pos_ += h.size();
  in_entry_ = true;
}

void ZipWriter::write(std::span<const std::byte> piece) {
  if (!in_entry_) throw Error("zip writer: write outside an entry");
  if (piece.size() > current_.size - current_written_)
    throw Error("zip writer: entry '" + current_.name + "' receives more than its declared " +
                std::to_string(current_.size) + " bytes");
  if (options_.compute_crc) current_.crc = crc32(piece, current_.crc);
  emit(piece);
  current_written_ += piece.size();
  pos_ += piece.size();
}

void ZipWriter::end_entry() {
  if (!in_entry_) throw Error("zip writer: end_entry without begin_entry");
  if (current_written_ != current_.size)
    throw Error("zip writer: entry '" + current_.name + "' got " + std::to_string(current_written_) + " of " +
                std::to_string(current_.size) + " bytes");
  std::string d;
  put32(d, kDescriptorSig);
  put32(d, current_.crc);
  if (current_zip64_) {
    put64(d, current_.size);
    put64(d, current_.size);
  } else {
    put32(d, static_cast<uint32_t>(current_.size));
    put32(d, static_cast<uint32_t>(current_.size));
  }
  emit(as_bytes(d));
  pos_ += d.size();
  written_.push_back(std::move(current_));
  in_entry_ = false;
}

void ZipWriter::finish() {
  if (finished_ || in_entry_) throw Error("zip writer: finish called out of order");
  const uint64_t limit = options_.zip64_threshold;
  const uint64_t cd_offset = pos_;
  std::string cd;
  for (const auto& w : written_) {
    const bool big_size = w.size >= limit, big_off = w.offset >= limit;
    std::string extra;
    if (big_size || big_off) {
      put16(extra, kZip64ExtraId);
      put16(extra, static_cast<uint16_t>((big_size ? 16 : 0) + (big_off ? 8 : 0)));
      if (big_size) {
        put64(extra, w.size);
        put64(extra, w.size);
      }
      if (big_off) put64(extra, w.offset);
    }
    put32(cd, kCentralSig);
    put16(cd, (big_size || big_off) ? 45 : 0);  // made by
    put16(cd, (big_size || big_off) ? 45 : 0);  // needed
    put16(cd, 0x0808);
    put16(cd, 0);
    put32(cd, 0);
    put32(cd, w.crc);
    put32(cd, big_size ? 0xFFFFFFFF : static_cast<uint32_t>(w.size));
    put32(cd, big_size ? 0xFFFFFFFF : static_cast<uint32_t>(w.size));
    put16(cd, static_cast<uint16_t>(w.name.size()));
    put16(cd, static_cast<uint16_t>(extra.size()));
    put16(cd, 0);  // comment
    put16(cd, 0);  // disk
    put16(cd, 0);  // internal attributes
    put32(cd, 0);  // external attributes
    put32(cd, big_off ? 0xFFFFFFFF : static_cast<uint32_t>(w.offset));
    cd += w.name;
    cd += extra;
    if (cd.size() >= (size_t{1} << 24)) {  // stream large directories
      emit(as_bytes(cd));
      pos_ += cd.size();
      cd.clear();
    }
  }
  emit(as_bytes(cd));
  pos_ += cd.size();
  const uint64_t cd_size = pos_ - cd_offset;
  const uint64_t n = written_.size();
  // ZIP64 end record + locator, always (as PyTorch's writer does), then the end record.
  std::string e;
  const uint64_t e64_offset = pos_;
  put32(e, kEnd64Sig);
  put64(e, kEnd64Size - 12);
  put16(e, 0x031E);  // made by
  put16(e, 45);      // needed
  put32(e, 0);
  put32(e, 0);
  put64(e, n);
  put64(e, n);
  put64(e, cd_size);
  put64(e, cd_offset);
  put32(e, kEnd64LocatorSig);
  put32(e, 0);
  put64(e, e64_offset);
  put32(e, 1);
  const bool many = n >= 0xFFFF;
  put32(e, kEndSig);
  put16(e, 0);
  put16(e, 0);
  put16(e, many ? 0xFFFF : static_cast<uint16_t>(n));
  put16(e, many ? 0xFFFF : static_cast<uint16_t>(n));
  put32(e, cd_size >= 0xFFFFFFFF ? 0xFFFFFFFF : static_cast<uint32_t>(cd_size));
  put32(e, cd_offset >= 0xFFFFFFFF ? 0xFFFFFFFF : static_cast<uint32_t>(cd_offset));
  put16(e, 0);
  emit(as_bytes(e));
  flush();
  pos_ += e.size();
  finished_ = true;
}

}  // namespace ckpt::zip
