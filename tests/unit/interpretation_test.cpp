// How ckpt interprets a file: the same decision as torch.load (issue #18),
// shared by load, open, ls and scan. Each test builds its bytes by hand; the
// pickles below were written by torch 2.x and Python's pickle module.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ckpt/error.hpp"
#include "ckpt/load.hpp"
#include "ckpt/open.hpp"
#include "ckpt/scan.hpp"
#include "formats/torch_legacy.hpp"
#include "test_util.hpp"

namespace {

// torch.save({'a': (2,)}) (torch 2.x): archive/data.pkl
const std::string kPickleA("\x80\x02\x7d\x71\x00\x58\x01\x00\x00\x00\x61\x71\x01\x63\x74\x6f\x72\x63\x68\x2e\x5f\x75\x74\x69\x6c\x73\x0a\x5f\x72\x65\x62\x75\x69\x6c\x64\x5f\x74\x65\x6e\x73\x6f\x72\x5f\x76\x32\x0a\x71\x02\x28\x28\x58\x07\x00\x00\x00\x73\x74\x6f\x72\x61\x67\x65\x71\x03\x63\x74\x6f\x72\x63\x68\x0a\x46\x6c\x6f\x61\x74\x53\x74\x6f\x72\x61\x67\x65\x0a\x71\x04\x58\x01\x00\x00\x00\x30\x71\x05\x58\x03\x00\x00\x00\x63\x70\x75\x71\x06\x4b\x02\x74\x71\x07\x51\x4b\x00\x4b\x02\x85\x71\x08\x4b\x01\x85\x71\x09\x89\x63\x63\x6f\x6c\x6c\x65\x63\x74\x69\x6f\x6e\x73\x0a\x4f\x72\x64\x65\x72\x65\x64\x44\x69\x63\x74\x0a\x71\x0a\x29\x52\x71\x0b\x74\x71\x0c\x52\x71\x0d\x73\x2e", 162);
// torch.save({'b': (3,), 'c': (1,)}) (torch 2.x): archive/data.pkl
const std::string kPickleB("\x80\x02\x7d\x71\x00\x28\x58\x01\x00\x00\x00\x62\x71\x01\x63\x74\x6f\x72\x63\x68\x2e\x5f\x75\x74\x69\x6c\x73\x0a\x5f\x72\x65\x62\x75\x69\x6c\x64\x5f\x74\x65\x6e\x73\x6f\x72\x5f\x76\x32\x0a\x71\x02\x28\x28\x58\x07\x00\x00\x00\x73\x74\x6f\x72\x61\x67\x65\x71\x03\x63\x74\x6f\x72\x63\x68\x0a\x46\x6c\x6f\x61\x74\x53\x74\x6f\x72\x61\x67\x65\x0a\x71\x04\x58\x01\x00\x00\x00\x30\x71\x05\x58\x03\x00\x00\x00\x63\x70\x75\x71\x06\x4b\x03\x74\x71\x07\x51\x4b\x00\x4b\x03\x85\x71\x08\x4b\x01\x85\x71\x09\x89\x63\x63\x6f\x6c\x6c\x65\x63\x74\x69\x6f\x6e\x73\x0a\x4f\x72\x64\x65\x72\x65\x64\x44\x69\x63\x74\x0a\x71\x0a\x29\x52\x71\x0b\x74\x71\x0c\x52\x71\x0d\x58\x01\x00\x00\x00\x63\x71\x0e\x68\x02\x28\x28\x68\x03\x68\x04\x58\x01\x00\x00\x00\x31\x71\x0f\x68\x06\x4b\x01\x74\x71\x10\x51\x4b\x00\x4b\x01\x85\x71\x11\x4b\x01\x85\x71\x12\x89\x68\x0a\x29\x52\x71\x13\x74\x71\x14\x52\x71\x15\x75\x2e", 220);
const std::string kMagicProto0("\x4c\x31\x31\x39\x35\x34\x37\x30\x33\x37\x31\x34\x36\x30\x33\x38\x38\x30\x31\x33\x33\x33\x33\x35\x36\x4c\x0a\x2e", 28);
const std::string kMagicProto1("\x4c\x31\x31\x39\x35\x34\x37\x30\x33\x37\x31\x34\x36\x30\x33\x38\x38\x30\x31\x33\x33\x33\x33\x35\x36\x4c\x0a\x2e", 28);
const std::string kMagicProto4("\x80\x04\x95\x0d\x00\x00\x00\x00\x00\x00\x00\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e", 24);
const std::string kMagicProto5("\x80\x05\x95\x0d\x00\x00\x00\x00\x00\x00\x00\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e", 24);
// pickle.dumps(1001) + pickle.dumps(sys_info), protocol 2
const std::string kLegacyProtoAndSysInfo("\x80\x02\x4d\xe9\x03\x2e\x80\x02\x7d\x71\x00\x28\x58\x10\x00\x00\x00\x70\x72\x6f\x74\x6f\x63\x6f\x6c\x5f\x76\x65\x72\x73\x69\x6f\x6e\x71\x01\x4d\xe9\x03\x58\x0d\x00\x00\x00\x6c\x69\x74\x74\x6c\x65\x5f\x65\x6e\x64\x69\x61\x6e\x71\x02\x88\x58\x0a\x00\x00\x00\x74\x79\x70\x65\x5f\x73\x69\x7a\x65\x73\x71\x03\x7d\x71\x04\x28\x58\x05\x00\x00\x00\x73\x68\x6f\x72\x74\x71\x05\x4b\x02\x58\x03\x00\x00\x00\x69\x6e\x74\x71\x06\x4b\x04\x58\x04\x00\x00\x00\x6c\x6f\x6e\x67\x71\x07\x4b\x04\x75\x75\x2e", 122);

// os.system("true") as Python pickles it on Linux (posix.system), protocol 2.
const std::string kEvil("\x80\x02\x63posix\nsystem\nX\x04\x00\x00\x00true\x85R.", 29);

std::string le(uint64_t v, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return s;
}

struct Rec {
  std::string name, data;
};

std::string local_header(const Rec& r) {
  return le(0x04034b50, 4) + le(20, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(0, 4) + le(r.data.size(), 4) +
         le(r.data.size(), 4) + le(r.name.size(), 2) + le(0, 2) + r.name;
}
std::string central_header(const Rec& r, uint64_t offset) {
  return le(0x02014b50, 4) + le(20, 2) + le(20, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(0, 4) +
         le(r.data.size(), 4) + le(r.data.size(), 4) + le(r.name.size(), 2) + le(0, 2) + le(0, 2) + le(0, 2) +
         le(0, 2) + le(0, 4) + le(offset, 4) + r.name;
}
std::string end_record(size_t count, size_t cd_size, size_t cd_offset, const std::string& comment = "") {
  return le(0x06054b50, 4) + le(0, 2) + le(0, 2) + le(count, 2) + le(count, 2) + le(cd_size, 4) + le(cd_offset, 4) +
         le(comment.size(), 2) + comment;
}
std::string write_zip(const std::vector<Rec>& recs) {
  std::string out, cd;
  for (const Rec& r : recs) {
    cd += central_header(r, out.size());
    out += local_header(r) + r.data;
  }
  const size_t cd_offset = out.size();
  return out + cd + end_record(recs.size(), cd.size(), cd_offset);
}

std::string floats(size_t n) { return std::string(4 * n, '\0'); }

// torch.save({'a': tensor of 2 floats})
std::vector<Rec> records_a(const std::string& pkl = kPickleA, const std::string& pkl_name = "archive/data.pkl") {
  return {{pkl_name, pkl}, {"archive/data/0", floats(2)}, {"archive/version", "3\n"}};
}
// torch.save({'b': 3 floats, 'c': 1 float})
std::vector<Rec> records_b(const std::string& pkl = kPickleB) {
  return {{"archive/data.pkl", pkl}, {"archive/data/0", floats(3)}, {"archive/data/1", floats(1)}, {"archive/version", "3\n"}};
}

std::span<const std::byte> as_span(const std::string& s) { return std::as_bytes(std::span<const char>(s.data(), s.size())); }

ckpt::ScanReport scan(const std::string& bytes) { return ckpt::scan_bytes(as_span(bytes), "mem"); }

std::vector<std::string> keys_of(const std::string& bytes) {
  ckpt::testing::TempDir dir;
  const std::string path = dir.path() + "/f";
  ckpt::testing::write_file(path, bytes);
  auto keys = ckpt::open(path).keys();
  std::sort(keys.begin(), keys.end());
  return keys;
}

bool has_pickle(const ckpt::ScanReport& r, const std::string& name) {
  return std::find(r.pickles.begin(), r.pickles.end(), name) != r.pickles.end();
}

// A record name that is not UTF-8 reaches the error message escaped (found by the
// differential campaign: the raw bytes broke Python's str() of the exception).
TEST(TorchInterpretation, ErrorsQuoteHostileRecordNamesEscaped) {
  const std::string bytes = write_zip(records_a(kPickleA, std::string("archive\xb7" "data.pkl")));
  ckpt::testing::TempDir dir;
  const std::string path = dir.path() + "/f";
  ckpt::testing::write_file(path, bytes);
  try {
    ckpt::load_state_dict(path);
    FAIL() << "loaded";
  } catch (const ckpt::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("\\xb7"), std::string::npos) << what;
    EXPECT_EQ(what.find('\xb7'), std::string::npos) << what;
  }
}

// (a) torch's reader finds data.pkl ignoring case.
TEST(TorchInterpretation, DataPklIsLocatedIgnoringCase) {
  const std::string evil = write_zip(records_a(kEvil, "archive/DATA.PKL"));
  auto r = scan(evil);
  EXPECT_EQ(r.verdict, ckpt::ScanVerdict::dangerous);
  EXPECT_TRUE(has_pickle(r, "archive/DATA.PKL"));
  EXPECT_EQ(ckpt::detect_format(as_span(evil)), ckpt::Format::torch_zip);
  // The benign file under that name loads as torch loads it.
  const std::string benign = write_zip(records_a(kPickleA, "archive/Data.Pkl"));
  EXPECT_EQ(scan(benign).verdict, ckpt::ScanVerdict::safe);
  EXPECT_EQ(keys_of(benign), std::vector<std::string>{"a"});
  EXPECT_EQ(ckpt::load_state_dict(as_span(benign)).size(), 1u);
}

TEST(TorchInterpretation, EveryCaseVariantOfDataPklIsScannedAndLoadRefusesTheAmbiguity) {
  for (bool evil_first : {true, false}) {
    auto recs = records_a();
    Rec evil{"archive/data.PKL", kEvil};
    recs.insert(evil_first ? recs.begin() + 1 : recs.end(), evil);
    const std::string bytes = write_zip(recs);
    auto r = scan(bytes);
    EXPECT_EQ(r.verdict, ckpt::ScanVerdict::dangerous) << evil_first;
    EXPECT_TRUE(has_pickle(r, "archive/data.pkl"));
    EXPECT_TRUE(has_pickle(r, "archive/data.PKL"));
    ckpt::LoadOptions lo;
    lo.weights_only = false;
    EXPECT_THROW(ckpt::load(as_span(bytes), lo), ckpt::FormatError);
  }
}

// (b) A second end record inside the real one's comment: torch (miniz) and
// Python's zipfile take the last signature.
std::string two_directories(const std::vector<Rec>& shown, const std::vector<Rec>& hidden) {
  std::string out, cds[2];
  const std::vector<Rec>* sets[2] = {&shown, &hidden};
  for (int i = 0; i < 2; ++i)
    for (const Rec& r : *sets[i]) {
      cds[i] += central_header(r, out.size());
      out += local_header(r) + r.data;
    }
  const size_t off0 = out.size();
  out += cds[0];
  const size_t off1 = out.size();
  out += cds[1];
  return out + end_record(shown.size(), cds[0].size(), off0, end_record(hidden.size(), cds[1].size(), off1));
}

// Storage records are found by name whatever their order in the archive
// (the loader guesses the next record first, then looks the name up), and
// ignoring letter case as torch's reader does.
TEST(TorchInterpretation, StorageRecordsInAnyOrderAndAnyCase) {
  const std::string b(4 * 3, '\x01'), c(4, '\x02');
  const std::vector<std::vector<Rec>> archives = {
      {{"archive/data.pkl", kPickleB}, {"archive/data/0", b}, {"archive/data/1", c}, {"archive/version", "3\n"}},
      {{"archive/version", "3\n"}, {"archive/data/1", c}, {"archive/data/0", b}, {"archive/data.pkl", kPickleB}},
      {{"archive/data.pkl", kPickleB}, {"archive/data/1", c}, {"archive/version", "3\n"}, {"archive/data/0", b}},
      {{"archive/data.pkl", kPickleB}, {"archive/DATA/0", b}, {"archive/Data/1", c}, {"archive/version", "3\n"}},
  };
  for (const auto& recs : archives) {
    for (bool mmap : {false, true}) {
      ckpt::testing::TempDir dir;
      const std::string path = dir.path() + "/f";
      ckpt::testing::write_file(path, write_zip(recs));
      ckpt::LoadOptions o;
      o.mmap = mmap;
      auto sd = ckpt::load_state_dict(path, o);
      ASSERT_EQ(sd.size(), 2u);
      EXPECT_EQ(sd.at("b").sizes(), std::vector<int64_t>{3});
      EXPECT_EQ(std::memcmp(sd.at("b").data(), b.data(), b.size()), 0);
      EXPECT_EQ(sd.at("c").sizes(), std::vector<int64_t>{1});
      EXPECT_EQ(std::memcmp(sd.at("c").data(), c.data(), c.size()), 0);
    }
  }
}

TEST(TorchInterpretation, TheLastEndRecordWins) {
  const std::string benign = two_directories(records_a(), records_b());
  EXPECT_EQ(keys_of(benign), (std::vector<std::string>{"b", "c"}));
  EXPECT_EQ(scan(benign).verdict, ckpt::ScanVerdict::safe);
  const std::string evil = two_directories(records_a(), records_b(kEvil));
  EXPECT_EQ(scan(evil).verdict, ckpt::ScanVerdict::dangerous);
  EXPECT_THROW(ckpt::load_state_dict(as_span(evil)), ckpt::UnsafeError);
}

// (c) A valid safetensors file whose first bytes are also a pickle:
// torch.load runs it (legacy path) before checking the magic number.
std::string safetensors_polyglot() {
  const std::string mod = "multiprocessing.popen_spawn_posix", attr = "os.path.os.path.os.path.os.system";
  std::string p = "q\xc2\x8c" + std::string(1, static_cast<char>(mod.size())) + mod;
  p += "q\xc2\x8c" + std::string(1, static_cast<char>(attr.size())) + attr;
  p += "q\xd3\x93";                                  // STACK_GLOBAL
  p += "U\x20touch canary                    ";      // 32 bytes
  p += "q\xc2\x85R.";                                // TUPLE1 REDUCE STOP
  const uint64_t header_len = 0x4700 + 'N';          // bytes 0..1: 'N', 'G' (BINFLOAT eats 2..9)
  std::string hdr = "{\"" + p + "\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
  hdr.append(header_len - hdr.size(), ' ');
  return le(header_len, 8) + hdr + floats(1);
}

TEST(TorchInterpretation, SafetensorsPolyglotIsScannedOnTorchsLegacyPath) {
  const std::string bytes = safetensors_polyglot();
  ASSERT_EQ(bytes.substr(0, 2), "NG");
  EXPECT_EQ(ckpt::detect_format(as_span(bytes)), ckpt::Format::safetensors);
  EXPECT_EQ(keys_of(bytes).size(), 1u);  // still a valid safetensors file
  auto r = scan(bytes);
  EXPECT_EQ(r.verdict, ckpt::ScanVerdict::dangerous);
  EXPECT_TRUE(has_pickle(r, "torch.load legacy path"));
}

// (d) A V7 tar (no "ustar"): Python's tarfile decides by checksum.
std::string tar_member(const std::string& name, const std::string& data, bool ustar) {
  std::string h(512, '\0');
  std::memcpy(h.data(), name.data(), name.size());
  std::memcpy(h.data() + 100, "0000644", 8);
  std::memcpy(h.data() + 108, "0000000", 8);
  std::memcpy(h.data() + 116, "0000000", 8);
  char num[13];
  std::snprintf(num, sizeof num, "%011o", static_cast<unsigned>(data.size()));
  std::memcpy(h.data() + 124, num, 12);
  std::memcpy(h.data() + 136, "00000000000", 12);
  h[156] = '0';
  if (ustar) std::memcpy(h.data() + 257, "ustar\0" "00", 8);
  std::memset(h.data() + 148, ' ', 8);
  unsigned sum = 0;
  for (char c : h) sum += static_cast<unsigned char>(c);
  char chk[8];
  std::snprintf(chk, sizeof chk, "%06o", sum);
  std::memcpy(h.data() + 148, chk, 7);
  std::string pad((512 - data.size() % 512) % 512, '\0');
  return h + data + pad;
}

TEST(TorchInterpretation, V7TarIsATarWhateverItsFirstNameSays) {
  const std::string storages = std::string("\x80\x02K\x00.", 5) + "\x80\x02]." ;
  const std::string tensors("\x80\x02K\x00.", 5);
  for (bool ustar : {false, true}) {
    const std::string bytes = tar_member("N.", "x", ustar) + tar_member("storages", storages, ustar) +
                              tar_member("tensors", tensors, ustar) + tar_member("pickle", kEvil, ustar) +
                              std::string(1024, '\0');
    EXPECT_EQ(ckpt::detect_format(as_span(bytes)), ckpt::Format::torch_tar) << ustar;
    EXPECT_EQ(scan(bytes).verdict, ckpt::ScanVerdict::dangerous) << ustar;
  }
  // From a BytesIO torch skips the tar reader and unpickles from offset 0:
  // a first member named by an evil pickle is scanned on that path too.
  const std::string name_pickle = "cos\nsystem\n(S'true'\ntR.";
  const std::string named = tar_member(name_pickle, "x", false) + tar_member("storages", storages, false) +
                            tar_member("tensors", tensors, false) + tar_member("pickle", "\x80\x02N.", false) +
                            std::string(1024, '\0');
  ASSERT_EQ(ckpt::detect_format(as_span(named)), ckpt::Format::torch_tar);
  auto r = scan(named);
  EXPECT_EQ(r.verdict, ckpt::ScanVerdict::dangerous);
  EXPECT_TRUE(has_pickle(r, "torch.load legacy path"));
  // A "ustar" block with a wrong checksum is no tar to Python: torch reads
  // it as a pickle stream.
  std::string bad = tar_member("N.", "x", true);
  bad[148] = '7';
  EXPECT_NE(ckpt::detect_format(as_span(bad)), ckpt::Format::torch_tar);
}

// Python's tarfile.TarInfo.frombuf, edge by edge.
TEST(TorchInterpretation, TarHeaderFollowsPythonsChecksumRules) {
  auto block = [](const std::string& b) { return as_span(b); };
  std::string h = tar_member("N.", "", false).substr(0, 512);
  EXPECT_TRUE(ckpt::formats::is_tar_header(block(h)));
  EXPECT_FALSE(ckpt::formats::is_tar_header(block(h.substr(0, 511))));  // truncated: ReadError
  EXPECT_TRUE(ckpt::formats::is_tar_header(block(std::string(512, '\0'))));  // opens as an empty tar
  // A byte with the high bit set: the signed sum differs; either is accepted.
  std::string hi = h;
  hi[10] = '\xe9';
  unsigned usum = 0;
  int ssum = 0;
  for (size_t i = 0; i < 512; ++i) {
    const char c = (i >= 148 && i < 156) ? ' ' : hi[i];
    usum += static_cast<unsigned char>(c);
    ssum += static_cast<signed char>(c);
  }
  char chk[8];
  for (unsigned sum : {usum, static_cast<unsigned>(ssum)}) {
    std::snprintf(chk, sizeof chk, "%06o", sum);
    std::memcpy(hi.data() + 148, chk, 7);
    EXPECT_TRUE(ckpt::formats::is_tar_header(block(hi))) << sum;
  }
  std::snprintf(chk, sizeof chk, "%06o", usum + 1);
  std::memcpy(hi.data() + 148, chk, 7);
  EXPECT_FALSE(ckpt::formats::is_tar_header(block(hi)));
  // A number field that int(s, 8) refuses makes the header invalid.
  std::string bad_mode = h;
  bad_mode[100] = '9';
  EXPECT_FALSE(ckpt::formats::is_tar_header(block(bad_mode)));
  // Base-256 sizes (0x80 first byte) are numbers to Python, whatever their width.
  std::string b256 = h;
  b256[124] = '\x80';
  unsigned sum = 0;
  for (size_t i = 0; i < 512; ++i) sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(b256[i]);
  std::snprintf(chk, sizeof chk, "%06o", sum);
  std::memcpy(b256.data() + 148, chk, 7);
  EXPECT_TRUE(ckpt::formats::is_tar_header(block(b256)));
}

// (e) The legacy magic number is compared by value: any protocol will do.
TEST(TorchInterpretation, LegacyMagicUnderAnyProtocol) {
  for (const std::string* magic : {&kMagicProto0, &kMagicProto1, &kMagicProto4, &kMagicProto5}) {
    const std::string bytes = *magic + kLegacyProtoAndSysInfo + kEvil + "\x80\x02].";
    EXPECT_EQ(ckpt::detect_format(as_span(bytes)), ckpt::Format::torch_legacy) << magic->size();
    auto r = scan(bytes);
    EXPECT_EQ(r.verdict, ckpt::ScanVerdict::dangerous) << magic->size();
    EXPECT_EQ(ckpt::format_name(r.format), "torch_legacy");
  }
}

// Issue #19 item 6: data records are data, whatever their first bytes.
TEST(TorchInterpretation, DataRecordsAreNeverUnpickled) {
  auto recs = records_a();
  recs[1].data = std::string("\x80\x02\x00\x00\x28\x00\x00\x00", 8);  // a quantized int8 storage, say
  const std::string bytes = write_zip(recs);
  auto r = scan(bytes);
  EXPECT_EQ(r.verdict, ckpt::ScanVerdict::safe);
  EXPECT_TRUE(r.errors.empty()) << (r.errors.empty() ? "" : r.errors[0]);
  EXPECT_EQ(r.pickles, std::vector<std::string>{"archive/data.pkl"});
}

// torch.serialization._is_zipfile: only "PK\3\4" at offset 0 makes a zip.
TEST(TorchInterpretation, OnlyALocalHeaderMakesAZip) {
  const std::string empty_zip = end_record(0, 0, 0);
  EXPECT_NE(ckpt::detect_format(as_span(empty_zip)), ckpt::Format::torch_zip);
  EXPECT_EQ(ckpt::detect_format(as_span(write_zip(records_a()))), ckpt::Format::torch_zip);
}

}  // namespace
