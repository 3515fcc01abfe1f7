// io::read_at_parallel: the same bytes as one read_at, whatever the size and
// the number of pieces; errors of any piece reach the caller.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "ckpt/checksum.hpp"
#include "ckpt/error.hpp"
#include "io/file.hpp"
#include "test_util.hpp"

using namespace ckpt;

namespace {

std::vector<std::byte> pattern(size_t n) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 2654435761u) >> 13);
  return v;
}

TEST(ReadAtParallel, SameBytesAsOneReadForEverySize) {
  const size_t mib = size_t{1} << 20;
  const auto data = pattern(40 * mib + 12345);
  ckpt::testing::TempDir dir;
  const std::string path = dir.path() + "/data.bin";
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(std::fwrite(data.data(), 1, data.size(), f), data.size());
    std::fclose(f);
  }
  auto file = io::open_file(path);
  auto mem = io::memory_file(data);
  // Below, at and above the threshold (8 MiB), odd sizes and offsets, the whole file.
  for (size_t len : {size_t{0}, size_t{1}, 8 * mib - 1, 8 * mib, 8 * mib + 4097, 17 * mib + 3, 40 * mib + 12345}) {
    for (size_t off : {size_t{0}, size_t{7}}) {
      if (off + len > data.size()) continue;
      for (const auto& f : {file, mem}) {
        std::vector<std::byte> out(len, std::byte{0xAA});
        io::read_at_parallel(*f, off, out);
        EXPECT_TRUE(std::equal(out.begin(), out.end(), data.begin() + static_cast<ptrdiff_t>(off)))
            << "len " << len << " offset " << off << " " << f->name();
      }
    }
  }
}

TEST(ReadAtParallel, ReadPastTheEndIsAnErrorFromAnyPiece) {
  const auto data = pattern(size_t{20} << 20);
  auto mem = io::memory_file(data);
  std::vector<std::byte> out(size_t{12} << 20);
  // The last piece runs past the end; the first ones do not.
  EXPECT_THROW(io::read_at_parallel(*mem, data.size() - out.size() + 1, out), FormatError);
  EXPECT_NO_THROW(io::read_at_parallel(*mem, data.size() - out.size(), out));
}

}  // namespace

// io::status, io::slice_file, io::read_small_file: the small pieces the
// loaders share.
TEST(IoHelpers, StatusNamesFilesDirectoriesAndWhatIsMissing) {
  ckpt::testing::TempDir dir;
  const std::string f = dir.path() + "/f.bin";
  ckpt::testing::write_file(f, "12345");
  EXPECT_TRUE(io::status(f).regular());
  EXPECT_EQ(io::status(f).size, 5u);
  EXPECT_TRUE(io::status(dir.path()).directory());
  EXPECT_EQ(io::status(dir.path() + "/nope").type, io::FileStatus::Type::missing);
  EXPECT_EQ(io::status(f + "/below-a-file").type, io::FileStatus::Type::missing);
}

TEST(IoHelpers, SliceReadsItsRangeAndNamesItselfPastTheEnd) {
  const auto data = pattern(1000);
  auto parent = io::memory_file(data);
  auto slice = io::slice_file(parent, 100, 50, "rec");
  EXPECT_EQ(slice->size(), 50u);
  EXPECT_EQ(slice->memory(), parent->memory() + 100);
  std::vector<std::byte> got(50);
  slice->read_at(0, got);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin() + 100));
  try {
    slice->read_at(40, got);  // 40 + 50 > 50
    FAIL() << "read past the slice";
  } catch (const FormatError& e) {
    EXPECT_EQ(e.context().file, "rec");
    EXPECT_NE(std::string(e.what()).find("50-byte record"), std::string::npos) << e.what();
  }
}

TEST(IoHelpers, ReadSmallFileRefusesWhatIsOverItsLimit) {
  ckpt::testing::TempDir dir;
  const std::string f = dir.path() + "/index.json";
  ckpt::testing::write_file(f, std::string(100, 'x'));
  EXPECT_EQ(io::read_small_file(f, 100), std::string(100, 'x'));
  try {
    io::read_small_file(f, 99);
    FAIL() << "over the limit";
  } catch (const LimitError& e) {
    EXPECT_EQ(e.context().file, f);
  }
  EXPECT_THROW(io::read_small_file(dir.path() + "/missing", 10), IoError);
}

TEST(Checksum, Crc32IsZlibsAndContinuesAcrossPieces) {
  const std::string s = "123456789";
  const auto bytes = std::as_bytes(std::span<const char>(s));
  EXPECT_EQ(crc32(bytes), 0xCBF43926u);  // the CRC-32/ISO-HDLC check value
  EXPECT_EQ(crc32(bytes.subspan(4), crc32(bytes.first(4))), 0xCBF43926u);
  EXPECT_EQ(crc32({}), 0u);
}

// A copying read of a file that another process truncates: an error with the
// offset, never a signal (docs/security.md, "a file that changes").
TEST(IoHelpers, AFileThatShrinksUnderAReadIsAFormatError) {
  ckpt::testing::TempDir dir;
  const std::string f = dir.path() + "/shrinks.bin";
  ckpt::testing::write_file(f, std::string(8192, 'x'));
  auto file = io::open_file_to_read_whole(f);
  ASSERT_EQ(::truncate(f.c_str(), 100), 0);
  std::vector<std::byte> buf(8192);
  try {
    file->read_at(0, buf);
    FAIL() << "read past the new end";
  } catch (const FormatError& e) {
    EXPECT_EQ(e.context().file, f);
    EXPECT_EQ(e.context().offset, std::optional<uint64_t>(100));
  }
}

// io::as_memory: the open file itself as memory, never the path reopened
// (the path may name another file by now).
TEST(IoHelpers, AsMemoryMapsTheOpenFileNotItsName) {
  ckpt::testing::TempDir dir;
  const std::string f = dir.path() + "/a.bin";
  const auto data = pattern(10000);
  ckpt::testing::write_file(f, std::string(reinterpret_cast<const char*>(data.data()), data.size()));
  auto file = io::open_file(f);
  ASSERT_EQ(file->memory(), nullptr);
  // The name now names another file.
  ASSERT_EQ(::unlink(f.c_str()), 0);
  ckpt::testing::write_file(f, "other");
  auto mem = io::as_memory(file);
  ASSERT_NE(mem->memory(), nullptr);
  ASSERT_EQ(mem->size(), data.size());
  EXPECT_TRUE(std::equal(data.begin(), data.end(), mem->memory()));
  EXPECT_EQ(mem->name(), f);
  EXPECT_EQ(io::as_memory(mem), mem);  // memory already: itself

  // A slice of a pread file: its own bytes, under its own name.
  auto slice = io::slice_file(file, 1000, 300, "rec");
  auto smem = io::as_memory(slice);
  ASSERT_EQ(smem->size(), 300u);
  EXPECT_TRUE(std::equal(data.begin() + 1000, data.begin() + 1300, smem->memory()));
  EXPECT_EQ(smem->name(), "rec");

  // A file that is neither (the default): read whole through read_at.
  struct Plain final : io::RandomAccessFile {
    std::shared_ptr<io::RandomAccessFile> base;
    const std::string& name() const override { return base->name(); }
    uint64_t size() const override { return base->size(); }
    void read_at(uint64_t off, std::span<std::byte> dst) const override { base->read_at(off, dst); }
  };
  auto plain = std::make_shared<Plain>();
  plain->base = file;
  auto pmem = io::as_memory(plain);
  ASSERT_NE(pmem->memory(), nullptr);
  EXPECT_TRUE(std::equal(data.begin(), data.end(), pmem->memory()));
}

// A file opened to be read whole serves small reads from a window of the
// file: any pattern of reads (forward, backward, straddling the window's
// end, at the file's end, large and small mixed) returns the file's bytes.
TEST(IoHelpers, AWholeReadFileReturnsTheBytesForAnyPatternOfReads) {
  ckpt::testing::TempDir dir;
  const std::string f = dir.path() + "/w.bin";
  const auto data = pattern((size_t{3} << 20) + 1234);
  ckpt::testing::write_file(f, std::string(reinterpret_cast<const char*>(data.data()), data.size()));
  auto file = io::open_file_to_read_whole(f);
  uint32_t x = 12345;
  const auto next = [&] {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return x;
  };
  for (int i = 0; i < 5000; ++i) {
    const size_t len = i % 7 == 0 ? next() % (size_t{200} << 10) : next() % 5000;
    const size_t off = i % 11 == 0 ? data.size() - std::min(len, data.size()) : next() % (data.size() - len + 1);
    std::vector<std::byte> got(len);
    file->read_at(off, got);
    ASSERT_TRUE(std::equal(got.begin(), got.end(), data.begin() + static_cast<ptrdiff_t>(off)))
        << "read " << i << ": " << len << " bytes at " << off;
  }
  // Sequential small records, as a zip of small tensors is read.
  for (size_t off = 0; off + 100 <= data.size(); off += 2100) {
    std::vector<std::byte> got(100);
    file->read_at(off, got);
    ASSERT_TRUE(std::equal(got.begin(), got.end(), data.begin() + static_cast<ptrdiff_t>(off))) << off;
  }
  std::vector<std::byte> one(1);
  EXPECT_THROW(file->read_at(data.size(), one), FormatError);
}
