// Writing torch zip checkpoints: structure, determinism, faults, ZIP64, and
// (when the interpreters are given) torch itself reading what ckpt wrote.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "api/save_internal.hpp"
#include "ckpt/ckpt.hpp"
#include "container/zip.hpp"
#include "io/fault_env.hpp"

using namespace ckpt;
namespace fs = std::filesystem;

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::span<const std::byte> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("ckpt-writer-" + std::to_string(::getpid()) + "-" +
                                        std::to_string(reinterpret_cast<uintptr_t>(this)));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

Tensor iota(DType dtype, std::vector<int64_t> sizes) {
  Tensor t = Tensor::empty(dtype, std::move(sizes));
  std::byte* p = t.mutable_data();
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<std::byte>(i * 7 + 3);
  return t;
}

// A tree with every kind ckpt writes.
Value sample() {
  Tensor base = iota(DType::float32, {4, 6});
  Value v = Value::dict();
  Dict& d = v.as_dict();
  d.set(Value("base"), Value(base));
  d.set(Value("transposed"), Value(Tensor(base.storage(), DType::float32, {6, 4}, {1, 6}, 0)));
  d.set(Value("offset"), Value(Tensor(base.storage(), DType::float32, {5}, {1}, 7)));
  d.set(Value("scalar"), Value(iota(DType::float64, {})));
  d.set(Value("empty"), Value(Tensor::empty(DType::int16, {0, 3})));
  d.set(Value("u16"), Value(iota(DType::uint16, {3})));
  d.set(Value("f8"), Value(iota(DType::float8_e4m3fn, {2, 2})));
  Tensor p = iota(DType::bfloat16, {2});
  p.set_is_parameter(true);
  p.set_requires_grad(true);
  d.set(Value("param"), Value(p));
  d.set(Value("epoch"), Value(7));
  d.set(Value("big"), Value(int64_t{1} << 40));
  d.set(Value("neg"), Value(-5));
  d.set(Value("lr"), Value(0.001));
  d.set(Value("name"), Value("run-\xc3\xa9"));
  d.set(Value("blob"), Value::bytes(std::string("\x00\xff\x80" "a", 4)));
  d.set(Value("empty_blob"), Value::bytes(""));
  d.set(Value("flags"), Value::tuple({Value(true), Value(false), Value()}));
  d.set(Value("list"), Value::list({Value(1), Value(2.5), Value("x")}));
  Value nested = Value::dict();
  nested.as_dict().set(Value(1), Value("one"));
  nested.as_dict().set(Value::tuple({Value(2), Value(3)}), Value("pair"));
  d.set(Value("nested"), nested);
  d.set(Value("dtype"), Value(DType::bfloat16));
  d.set(Value("size"), Value(Size{{2, 3}}));
  d.set(Value("device"), Value(Device{"cuda:1"}));
  d.set(Value("set"), Value::set({Value(1)}));
  d.set(Value("complex"), Value(std::complex<double>(1.0, -2.0)));
  return v;
}

TEST(Writer, RoundTripsEveryKind) {
  Value v = sample();
  std::string buf = save_to_buffer(v);
  Value back = load(bytes_of(buf));
  EXPECT_EQ(back, v) << back.repr();
  // Views of one storage come back sharing one storage.
  const Dict& d = back.as_dict();
  EXPECT_EQ(d.at(Value("base")).as_tensor().storage(), d.at(Value("transposed")).as_tensor().storage());
  EXPECT_EQ(d.at(Value("offset")).as_tensor().storage_offset(), 7);
  EXPECT_TRUE(d.at(Value("param")).as_tensor().is_parameter());
}

TEST(Writer, RecordsAreAlignedAndCrcChecked) {
  std::string buf = save_to_buffer(sample());
  zip::ZipReader z(io::memory_file(bytes_of(buf)));
  std::vector<std::string> names;
  for (const auto& e : z.entries()) {
    names.push_back(e.name);
    EXPECT_EQ(z.data_offset(e) % 64, 0u) << e.name;
    EXPECT_NO_THROW(z.verify(e, /*strict=*/true)) << e.name;
  }
  ASSERT_GE(names.size(), 7u);
  EXPECT_EQ(names[0], "archive/data.pkl");
  EXPECT_EQ(names[1], "archive/.format_version");
  EXPECT_EQ(names[2], "archive/.storage_alignment");
  EXPECT_EQ(names[3], "archive/byteorder");
  EXPECT_EQ(names[4], "archive/data/0");
  EXPECT_EQ(names[names.size() - 2], "archive/version");
  EXPECT_EQ(names.back(), "archive/.data/serialization_id");
  EXPECT_EQ(z.read_string(*z.find("archive/version")), "3\n");
}

TEST(Writer, OutputIsDeterministic) { EXPECT_EQ(save_to_buffer(sample()), save_to_buffer(sample())); }

TEST(Writer, ArchiveNameFollowsTheFileName) {
  TempDir dir;
  save(dir / "model.v2.pt", sample());
  zip::ZipReader z(io::open_file(dir / "model.v2.pt"));
  EXPECT_EQ(z.entries().front().name, "model.v2/data.pkl");
}

TEST(Writer, RefusesWhatTorchCannotLoad) {
  Value v = Value::dict();
  v.as_dict().set(Value("x"), Value(Global{"os", "system"}));
  EXPECT_THROW(save_to_buffer(v), Error);
  // One storage viewed as two dtypes.
  Tensor a = iota(DType::float32, {4});
  Value w = Value::list({Value(a), Value(Tensor(a.storage(), DType::int32, {4}, {1}, 0))});
  EXPECT_THROW(save_to_buffer(w), Error);
}

TEST(Writer, Zip64ForcedByALowThresholdStillLoads) {
  TempDir dir;
  io::Env& env = io::Env::posix();
  detail::save(env, dir / "z64.pt", sample(), SaveOptions{}, /*zip64_threshold=*/16);
  Value back = load(dir / "z64.pt");
  EXPECT_EQ(back, sample());
  zip::ZipReader z(io::open_file(dir / "z64.pt"));
  for (const auto& e : z.entries()) EXPECT_NO_THROW(z.verify(e, true));
}

TEST(Writer, FaultAtEveryCallKeepsThePreviousFile) {
  TempDir dir;
  const std::string path = dir / "ckpt.pt";
  Value old_value = Value::dict();
  old_value.as_dict().set(Value("old"), Value(iota(DType::int64, {3})));
  save(path, old_value);
  const std::string old_bytes = slurp(path);

  // Count the calls of a successful save, then fail each one in turn.
  io::FaultInjectionEnv counter(io::Env::posix());
  detail::save(counter, dir / "probe.pt", sample(), SaveOptions{});
  fs::remove(dir / "probe.pt");
  const int64_t total = counter.calls();
  ASSERT_GT(total, 5);
  for (int err : {ENOSPC, EIO}) {
    for (int64_t n = 0; n < total; ++n) {
      for (bool short_write : {false, true}) {
        SCOPED_TRACE("errno " + std::to_string(err) + " at call " + std::to_string(n));
        io::FaultInjectionEnv env(io::Env::posix());
        env.fail_at = n;
        env.error = err;
        env.short_write = short_write;
        bool threw = false;
        try {
          detail::save(env, path, sample(), SaveOptions{});
        } catch (const IoError& e) {
          threw = true;
          EXPECT_EQ(e.code(), err);
          EXPECT_NE(std::string(e.what()).find("injected"), std::string::npos);
        }
        EXPECT_TRUE(threw);
        if (n + 1 < total) {
          EXPECT_TRUE(slurp(path) == old_bytes);  // the previous file, byte for byte
          EXPECT_EQ(load(path), old_value);
        } else {
          // The last call is the directory fsync after the rename: the new file
          // is complete and in place, but its durability is not confirmed, so
          // the save still reports the error.
          EXPECT_EQ(load(path), sample());
          save(path, old_value);
        }
        EXPECT_EQ(dir.names(), (std::vector<std::string>{"ckpt.pt"}));  // no temporary left behind
      }
    }
  }
}

// Counts the appends a writer makes and their sizes; keeps the bytes.
class CountingFile final : public io::WritableFile {
 public:
  void append(std::span<const std::byte> data) override {
    sizes.push_back(data.size());
    bytes.append(reinterpret_cast<const char*>(data.data()), data.size());
  }
  void sync() override {}
  void close() override {}
  uint64_t size() const override { return bytes.size(); }
  std::vector<size_t> sizes;
  std::string bytes;
};

// Small records, headers and descriptors are coalesced into large writes; a
// large piece is handed to the file whole; the archive reads back, CRCs right.
TEST(Writer, ZipWriterCoalescesSmallPiecesAndPassesLargeOnes) {
  CountingFile f;
  {
    zip::ZipWriter z(f);
    for (int i = 0; i < 20000; ++i) {
      const std::string data = "record " + std::to_string(i);
      z.add("r/" + std::to_string(i), bytes_of(data));
    }
    std::string big(size_t{3} << 20, 'b');
    z.add("big", bytes_of(big));
    z.add("tail", bytes_of(std::string("t")));
    z.finish();
  }
  EXPECT_LT(f.sizes.size(), 20u);  // not ~60,000 small writes
  EXPECT_NE(std::find(f.sizes.begin(), f.sizes.end(), size_t{3} << 20), f.sizes.end());
  zip::ZipReader r(io::memory_file(bytes_of(f.bytes)));
  ASSERT_EQ(r.entries().size(), 20002u);
  for (const auto& e : r.entries()) EXPECT_NO_THROW(r.verify(e, /*strict=*/true)) << e.name;
  EXPECT_EQ(r.read_string(*r.find("r/12345")), "record 12345");
  EXPECT_EQ(r.read_string(*r.find("tail")), "t");
}

// Records the offset of every read of a wrapped file.
class ReadLog final : public io::RandomAccessFile {
 public:
  explicit ReadLog(std::shared_ptr<io::RandomAccessFile> f) : f_(std::move(f)) {}
  const std::string& name() const override { return f_->name(); }
  uint64_t size() const override { return f_->size(); }
  void read_at(uint64_t offset, std::span<std::byte> dst) const override {
    offsets.push_back(offset);
    f_->read_at(offset, dst);
  }
  mutable std::vector<uint64_t> offsets;

 private:
  std::shared_ptr<io::RandomAccessFile> f_;
};

std::string archive_of(int records) {
  CountingFile f;
  zip::ZipWriter z(f);
  for (int i = 0; i < records; ++i) z.add("r/" + std::to_string(i), bytes_of("record " + std::to_string(i)));
  z.finish();
  return f.bytes;
}

std::string hex(uint64_t v) {  // as error messages write offsets
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const FormatError& e) {
    return e.what();
  }
  return "(no FormatError)";
}

// Opening reads the end records and the central directory, no local header
// (issue #20: scattered header reads queued behind a cold read-ahead); a
// record's local header is read when the record is, so reads in record
// order go in file order, each header once.
TEST(Zip, OpenReadsNoLocalHeaderAndRecordsReadInFileOrder) {
  const std::string bytes = archive_of(500);
  auto log = std::make_shared<ReadLog>(io::memory_file(bytes_of(bytes)));
  zip::ZipReader z(log);
  ASSERT_EQ(z.entries().size(), 500u);
  EXPECT_LE(log->offsets.size(), 4u);  // tail, ZIP64 locator, ZIP64 end record, central directory
  const uint64_t first_local = z.entries().front().local_header_offset;
  for (const auto& e : z.entries())
    EXPECT_EQ(std::count(log->offsets.begin(), log->offsets.end(), e.local_header_offset), 0) << e.name;
  log->offsets.clear();
  for (const auto& e : z.entries()) EXPECT_EQ(z.read_string(e), "record " + e.name.substr(2));
  EXPECT_EQ(log->offsets.size(), 1000u);  // per record: its local header, then its data
  EXPECT_EQ(log->offsets.front(), first_local);
  EXPECT_TRUE(std::is_sorted(log->offsets.begin(), log->offsets.end()));
  log->offsets.clear();
  for (const auto& e : z.entries()) {
    EXPECT_EQ(z.data_offset(e) % 64, 0u);
    z.verify(e, /*strict=*/true);
  }
  EXPECT_EQ(log->offsets.size(), 500u);  // data only: the headers were read once
}

// A damaged local header no longer fails the open: the record fails when it
// is read (as in torch's reader), naming file, record and header offset; the
// other records read.
TEST(Zip, DamagedLocalHeaderFailsItsRecordWhenRead) {
  std::string bytes = archive_of(50);
  uint64_t lho = 0;
  {
    zip::ZipReader z(io::memory_file(bytes_of(bytes)));
    lho = z.find("r/17")->local_header_offset;
  }
  bytes[lho] = 'X';
  auto file = io::memory_file(bytes_of(bytes), nullptr, "damaged.pt");
  zip::ZipReader z(file);
  const zip::Entry& bad = *z.find("r/17");
  const std::string msg = error_of([&] { z.read_string(bad); });
  EXPECT_NE(msg.find("local header signature is wrong"), std::string::npos) << msg;
  EXPECT_NE(msg.find("damaged.pt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("r/17"), std::string::npos) << msg;
  EXPECT_NE(msg.find("offset " + hex(lho)), std::string::npos) << msg;
  // Every path to the data resolves the header the same way.
  EXPECT_EQ(error_of([&] { z.verify(bad); }), msg);
  EXPECT_EQ(error_of([&] { z.data_offset(bad); }), msg);
  EXPECT_EQ(error_of([&] { z.view(bad); }), msg);  // a memory file: zero-copy views too
  EXPECT_EQ(error_of([&] { z.read(bad); }), msg);  // and again: failures are not cached as offsets
  EXPECT_EQ(z.read_string(*z.find("r/16")), "record 16");
  EXPECT_EQ(z.read_string(*z.find("r/18")), "record 18");
  EXPECT_EQ(z.view(*z.find("r/18")).nbytes(), std::string("record 18").size());
}

// A local header whose name/extra lengths push the payload into the next
// record (or past the end of the file) fails that record when it is read.
TEST(Zip, LocalHeaderLengthsPushingDataOntoTheNextRecordFailWhenRead) {
  std::string bytes = archive_of(3);
  uint64_t lho1 = 0, lho2 = 0;
  {
    zip::ZipReader z(io::memory_file(bytes_of(bytes)));
    lho1 = z.find("r/1")->local_header_offset;
    lho2 = z.find("r/2")->local_header_offset;
  }
  // Each record: a 30-byte header, a 3-byte name, the extra field, 8 bytes of data.
  auto set_extra = [&](uint64_t lho, uint64_t len) {
    bytes[lho + 28] = static_cast<char>(len & 0xff);
    bytes[lho + 29] = static_cast<char>(len >> 8);
  };
  set_extra(lho1, lho2 - (lho1 + 33) - 8 + 1);  // data ends 1 byte into r/2's header
  zip::ZipReader z(io::memory_file(bytes_of(bytes)));
  std::string msg = error_of([&] { z.read_string(*z.find("r/1")); });
  EXPECT_NE(msg.find("entry overlaps 'r/1'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("r/2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("offset " + hex(lho2)), std::string::npos) << msg;
  EXPECT_EQ(z.read_string(*z.find("r/0")), "record 0");
  // The last record: its payload would run into the central directory, or past the end.
  const uint64_t cd = bytes.find("PK\x01\x02");
  set_extra(lho2, cd - (lho2 + 33) - 8 + 1);
  zip::ZipReader z2(io::memory_file(bytes_of(bytes)));
  msg = error_of([&] { z2.read_string(*z2.find("r/2")); });
  EXPECT_NE(msg.find("overlaps the central directory"), std::string::npos) << msg;
  ASSERT_LT(bytes.size(), 0xFFFFu);
  set_extra(lho2, 0xFFFF);
  zip::ZipReader z3(io::memory_file(bytes_of(bytes)));
  msg = error_of([&] { z3.read_string(*z3.find("r/2")); });
  EXPECT_NE(msg.find("passes the end of the file"), std::string::npos) << msg;
  EXPECT_NE(msg.find("r/2"), std::string::npos) << msg;
}

// A save of many small tensors (written through the buffer) that fails part
// way, at each of its writes in turn: the previous file stays, no temporary.
TEST(Writer, ManySmallTensorsFaultKeepsThePreviousFile) {
  TempDir dir;
  const std::string path = dir / "many.pt";
  Value old_value = Value::dict();
  old_value.as_dict().set(Value("old"), Value(iota(DType::int64, {3})));
  save(path, old_value);
  const std::string old_bytes = slurp(path);
  Value many = Value::dict();
  for (int i = 0; i < 30000; ++i) many.as_dict().set(Value("t" + std::to_string(i)), Value(iota(DType::float32, {16})));
  io::FaultInjectionEnv counter(io::Env::posix());
  detail::save(counter, dir / "probe.pt", many, SaveOptions{});
  fs::remove(dir / "probe.pt");
  const int64_t total = counter.calls();
  ASSERT_GT(total, 8);  // create, several 1 MiB writes, fsync, close, rename, fsync directory
  for (int64_t n = 1; n + 3 < total; ++n) {  // up to the rename (then the directory fsyncs)
    SCOPED_TRACE("at call " + std::to_string(n) + " of " + std::to_string(total));
    io::FaultInjectionEnv env(io::Env::posix());
    env.fail_at = n;
    env.error = ENOSPC;
    try {
      detail::save(env, path, many, SaveOptions{});
      ADD_FAILURE() << "the save did not report the failure";
    } catch (const IoError& e) {
      EXPECT_EQ(e.code(), ENOSPC);
      EXPECT_NE(std::string(e.what()).find("many.pt"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(slurp(path) == old_bytes);
    EXPECT_EQ(dir.names(), (std::vector<std::string>{"many.pt"}));
  }
}

// torch itself reads what ckpt wrote: CKPT_PYTHON_TORCH2 / CKPT_PYTHON_TORCH113
// name interpreters (set by ctest; see tests/CMakeLists.txt).
void check_with_python(const char* env_var, const char* fallback) {
  const char* py = std::getenv(env_var);
  if (py == nullptr || *py == '\0') py = fallback;
  if (py == nullptr || *py == '\0') GTEST_SKIP() << env_var << " is not set and no interpreter was found at configure time";
  TempDir dir;
  Value v = sample();
  // torch 1.13 has no uint16 / float8 dtypes.
  bool old = std::string(env_var).find("113") != std::string::npos;
  if (old) {
    v.as_dict().erase(Value("u16"));
    v.as_dict().erase(Value("f8"));
  }
  save(dir / "ours.pt", v);
  std::string script = std::string(CKPT_SOURCE_DIR) + "/tests/interop/check_saved.py";
  std::string cmd = std::string(py) + " " + script + " " + (dir / "ours.pt") + (old ? " --torch113" : "");
  int rc = std::system(cmd.c_str());
  EXPECT_EQ(rc, 0) << cmd;
}

#ifndef CKPT_PYTHON_TORCH2_DEFAULT
#define CKPT_PYTHON_TORCH2_DEFAULT nullptr
#endif
#ifndef CKPT_PYTHON_TORCH113_DEFAULT
#define CKPT_PYTHON_TORCH113_DEFAULT nullptr
#endif
TEST(WriterInterop, Torch2LoadsWeightsOnlyAndMmap) { check_with_python("CKPT_PYTHON_TORCH2", CKPT_PYTHON_TORCH2_DEFAULT); }
TEST(WriterInterop, Torch113Loads) { check_with_python("CKPT_PYTHON_TORCH113", CKPT_PYTHON_TORCH113_DEFAULT); }

}  // namespace
