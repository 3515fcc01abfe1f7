// safetensors: reading files that Python's safetensors wrote
// (tests/data/valid/safetensors/, made by tests/data/make_safetensors_fixtures.py),
// writing the same bytes for the same tensors and metadata, and refusing
// hostile headers with ckpt::FormatError.
#include "ckpt/safetensors.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ckpt/ckpt.hpp"
#include "formats/safetensors.hpp"
#include "io/file.hpp"

using namespace ckpt;
using namespace std::string_literals;
using json = nlohmann::ordered_json;
using Items = std::vector<std::pair<std::string, Tensor>>;
using Meta = std::vector<std::pair<std::string, std::string>>;

namespace {

std::string data_path(const std::string& rel) { return std::string(CKPT_TEST_DATA_DIR) + "/" + rel; }

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::span<const std::byte> as_bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

const std::vector<std::string> kFixtures = {
    "all_dtypes", "edge_shapes",         "names", "metadata_one", "metadata_many", "metadata_empty_dict",
    "no_tensors", "no_tensors_metadata", "views",
};

json expected_of(const std::string& fixture) {
  return json::parse(slurp(data_path("valid/safetensors/" + fixture + ".expected.json")));
}

std::string fixture_path(const std::string& fixture) {
  return data_path("valid/safetensors/" + fixture + ".safetensors");
}

// Byte i of a tensor with seed s: (s * 131 + i * 29) & 0xff (& 1 for bool),
// as the fixture script makes them.
std::vector<std::byte> pattern(size_t n, int64_t seed, bool is_bool) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) {
    auto b = static_cast<uint8_t>((seed * 131 + static_cast<int64_t>(i) * 29) & 0xff);
    out[i] = static_cast<std::byte>(is_bool ? (b & 1) : b);
  }
  return out;
}

Tensor build(const json& spec) {
  DType dtype = *dtype_from_name(spec["dtype"].get<std::string>());
  std::vector<int64_t> shape = spec["shape"].get<std::vector<int64_t>>();
  std::vector<int64_t> base =
      spec.contains("base_shape") ? spec["base_shape"].get<std::vector<int64_t>>() : shape;
  int64_t numel = 1;
  for (int64_t d : base) numel *= d;
  auto bytes = pattern(static_cast<size_t>(numel) * itemsize(dtype), spec["seed"].get<int64_t>(),
                       dtype == DType::bool_);
  Tensor t = Tensor::from_bytes(dtype, base, bytes);
  std::string view = spec.value("view", "");
  if (view == "transpose")
    return Tensor(t.storage(), dtype, {base[1], base[0]}, {t.strides()[1], t.strides()[0]}, 0);
  if (view == "expand") {
    std::vector<int64_t> strides = t.strides();
    for (size_t i = 0; i < shape.size(); ++i)
      if (base[i] == 1 && shape[i] != 1) strides[i] = 0;
    return Tensor(t.storage(), dtype, shape, strides, 0);
  }
  return t;
}

Meta metadata_of(const json& expected) {
  Meta m;
  if (!expected["metadata"].is_null())
    for (const auto& kv : expected["metadata"])
      m.emplace_back(kv[0].get<std::string>(), kv[1].get<std::string>());
  return m;
}

std::string write(const Items& items, const Meta& meta = {},
                  size_t chunk = formats::kSafetensorsWriteChunkBytes) {
  std::string out;
  auto w = io::string_writer(out);
  formats::write_safetensors(*w, items, meta, chunk);
  return out;
}

Items read(const std::string& bytes, bool mmap = false) {
  auto f = io::memory_file(as_bytes(bytes));
  return formats::read_safetensors(*f, mmap);
}

Tensor f32(std::vector<float> v, std::vector<int64_t> shape = {}) {
  if (shape.empty()) shape = {static_cast<int64_t>(v.size())};
  return Tensor::from_bytes(DType::float32, shape, std::as_bytes(std::span<const float>(v)));
}

// A file with header `header` (unpadded) followed by `data`.
std::string file_with(const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

LoadOptions mmap_options(bool mmap) {
  LoadOptions o;
  o.mmap = mmap;
  return o;
}

class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("ckpt_st_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  size_t count() const {
    return static_cast<size_t>(std::distance(std::filesystem::directory_iterator(path_), {}));
  }

 private:
  std::filesystem::path path_;
  static inline int counter_ = 0;
};

void expect_listing(const json& expected, const std::vector<std::pair<std::string, Tensor>>& got,
                    const std::string& what) {
  // Python returns tensors in data order; empty tensors at the same offset
  // come back in a random order there, so only the offsets must not decrease.
  std::map<std::string, json> want;
  for (const auto& t : expected["tensors"]) want[t["name"].get<std::string>()] = t;
  ASSERT_EQ(got.size(), want.size()) << what;
  std::vector<uint64_t> previous = {0, 0};
  for (const auto& [name_, tensor] : got) {
    SCOPED_TRACE(what + ": tensor " + name_);
    auto it = want.find(name_);
    ASSERT_NE(it, want.end());
    const json& w = it->second;
    EXPECT_EQ(name(tensor.dtype()), w["dtype"].get<std::string>());
    EXPECT_EQ(tensor.sizes(), w["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(tensor_sha256(tensor), w["sha256"].get<std::string>());
    EXPECT_EQ(tensor.device(), "cpu");
    EXPECT_TRUE(tensor.is_contiguous());
    auto offsets = w["data_offsets"].get<std::vector<uint64_t>>();
    EXPECT_LE(previous, offsets) << "not in data order";
    previous = offsets;
  }
}

}  // namespace

// ---------------------------------------------------------------- reading Python's files

TEST(SafetensorsFixtures, ReadMatchesPythonLoadFile) {
  for (const auto& fx : kFixtures) {
    SCOPED_TRACE(fx);
    json expected = expected_of(fx);
    const std::string path = fixture_path(fx);

    expect_listing(expected, formats::read_safetensors(*io::open_file(path), false), "pread");
    auto mapped = formats::read_safetensors(*io::map_file(path), true);
    expect_listing(expected, mapped, "mmap");
    for (const auto& [n, t] : mapped) {
      if (t.nbytes() > 0) {
        EXPECT_EQ(t.storage().backing(), Storage::Backing::mapped) << n;
      }
    }

    for (bool mmap : {false, true}) {
      StateDict sd = load_safetensors(path, LoadOptions{.mmap = mmap});
      expect_listing(expected, sd.items(), mmap ? "load_safetensors mmap" : "load_safetensors");
      StateDict sd2 = load_state_dict(path, mmap_options(mmap));
      expect_listing(expected, sd2.items(), "load_state_dict");
    }
    EXPECT_EQ(detect_format(path), Format::safetensors);

    Value v = load(path);
    ASSERT_TRUE(v.is_dict());
    EXPECT_FALSE(v.as_dict().ordered);
    ASSERT_EQ(v.as_dict().size(), expected["tensors"].size());

    auto md = safetensors_metadata(path);
    Meta want = metadata_of(expected);
    EXPECT_EQ(Meta(md.begin(), md.end()), want);  // fixtures hold sorted keys
    auto header = formats::read_safetensors_header(*io::open_file(path));
    EXPECT_EQ(header.metadata, want);
    for (size_t i = 0; i < header.tensors.size(); ++i) {
      const json& w = expected["tensors"][i];
      EXPECT_EQ(header.tensors[i].code, w["code"].get<std::string>());
      EXPECT_EQ(header.tensors[i].begin - header.data_start, w["data_offsets"][0].get<uint64_t>());
      EXPECT_EQ(header.tensors[i].end - header.data_start, w["data_offsets"][1].get<uint64_t>());
    }
  }
}

TEST(SafetensorsFixtures, LoadFromBufferWithMapLocation) {
  std::string bytes = slurp(fixture_path("metadata_one"));
  LoadOptions options;
  options.map_location = "cuda:1";
  StateDict sd = load_state_dict(as_bytes(bytes), options);
  ASSERT_EQ(sd.size(), 2u);
  EXPECT_EQ(sd.at("w").device(), "cuda:1");
}

TEST(SafetensorsFixtures, HeaderListingIsLazyAndAbsolute) {
  auto file = io::open_file(fixture_path("edge_shapes"));
  auto h = formats::read_safetensors_header(*file);
  std::string bytes = slurp(fixture_path("edge_shapes"));
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(h.data_start, 8 + n);
  EXPECT_EQ(h.data_start % 8, 0u);
  ASSERT_FALSE(h.tensors.empty());
  EXPECT_EQ(h.tensors.front().begin, h.data_start);
  EXPECT_EQ(h.tensors.back().end, bytes.size());
  for (const auto& e : h.tensors) {
    if (e.name == "f4_wide") {
      EXPECT_EQ(e.code, "F4");
      EXPECT_EQ(e.dtype, DType::float4_e2m1fn_x2);
      EXPECT_EQ(e.shape, (std::vector<int64_t>{3, 4}));  // the header says [3, 8]
      EXPECT_EQ(e.nbytes(), 12u);
    }
    auto t = Tensor::from_bytes(e.dtype, e.shape, as_bytes(bytes).subspan(e.begin, e.nbytes()));
    EXPECT_EQ(t.nbytes(), e.nbytes());
  }
}

// ---------------------------------------------------------------- byte identity with Python

TEST(SafetensorsFixtures, WriterIsByteIdenticalToPython) {
  int compared = 0;
  for (const auto& fx : kFixtures) {
    SCOPED_TRACE(fx);
    json expected = expected_of(fx);
    if (!expected["byte_identical"].get<bool>()) continue;
    const std::string want = slurp(fixture_path(fx));
    Items items;
    for (const auto& spec : expected["inputs"])
      items.emplace_back(spec["name"].get<std::string>(), build(spec));
    Meta meta = metadata_of(expected);

    EXPECT_EQ(write(items, meta), want) << "insertion order";
    Items reversed(items.rbegin(), items.rend());
    EXPECT_EQ(write(reversed, meta), want) << "reversed insertion order";
    EXPECT_EQ(write(items, meta, 64), want) << "tiny chunk buffer";

    StateDict sd;
    for (const auto& [n, t] : items) sd.set(n, t);
    std::map<std::string, std::string> md(meta.begin(), meta.end());
    EXPECT_EQ(save_safetensors_to_buffer(sd, md), want) << "public API";

    // What ckpt loads from Python's file saves back to the same bytes.
    EXPECT_EQ(write(formats::read_safetensors(*io::open_file(fixture_path(fx)), false), meta), want);
    EXPECT_EQ(write(formats::read_safetensors(*io::map_file(fixture_path(fx)), true), meta), want);
    ++compared;
  }
  EXPECT_EQ(compared, 8);
}

TEST(SafetensorsFixtures, EmptyMetadataDictIsReadButNotWritten) {
  // Python writes "__metadata__":{} for metadata={}; ckpt omits empty metadata
  // (as metadata=None does), so the files differ only by that entry.
  json expected = expected_of("metadata_empty_dict");
  std::string python = slurp(fixture_path("metadata_empty_dict"));
  EXPECT_NE(python.find("\"__metadata__\":{}"), std::string::npos);
  Items items = {{"w", build(expected["inputs"][0])}};
  std::string ours = write(items);
  EXPECT_EQ(ours.find("__metadata__"), std::string::npos);
  EXPECT_EQ(read(ours).size(), 1u);
  EXPECT_TRUE(safetensors_metadata(fixture_path("metadata_empty_dict")).empty());
}

// ---------------------------------------------------------------- writer

TEST(SafetensorsWriter, LayoutOfAnEmptyFile) {
  EXPECT_EQ(write({}), file_with("{}      "));
  EXPECT_EQ(write({}, {{"format", "pt"}}), slurp(fixture_path("no_tensors_metadata")));
}

TEST(SafetensorsWriter, SortsByDtypeThenNameAndPadsTo8) {
  Items items = {{"b", f32({1})},
                 {"a", f32({2})},
                 {"z8", Tensor::from_bytes(DType::uint8, {1}, pattern(1, 1, false))},
                 {"i64", Tensor::from_bytes(DType::int64, {1}, pattern(8, 1, false))}};
  std::string out = write(items);
  uint64_t n = 0;
  std::memcpy(&n, out.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  std::string header = out.substr(8, n);
  EXPECT_EQ(header.substr(0, header.find_last_not_of(' ') + 1),
            R"({"i64":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
            R"("a":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]},)"
            R"("z8":{"dtype":"U8","shape":[1],"data_offsets":[16,17]}})");
  EXPECT_EQ(out.size(), 8 + n + 17);
}

TEST(SafetensorsWriter, NonContiguousTensorsStreamInBoundedChunks) {
  // [300, 200] transposed: rows of the view are strided.
  std::vector<float> v(300 * 200);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) * 0.5f;
  Tensor base = f32(v, {300, 200});
  Tensor tt(base.storage(), DType::float32, {200, 300}, {1, 200}, 0);
  // 3-d permutation whose innermost row is bigger than the chunk.
  Tensor big = Tensor::from_bytes(DType::int16, {4, 64, 33}, pattern(4 * 64 * 33 * 2, 5, false));
  Tensor perm(big.storage(), DType::int16, {33, 4, 64}, {1, 64 * 33, 33}, 0);
  // Expanded (stride 0) view.
  Tensor row = f32({1, 2, 3});
  Tensor expanded(row.storage(), DType::float32, {1000, 3}, {0, 1}, 0);
  ASSERT_FALSE(tt.is_contiguous());
  ASSERT_FALSE(perm.is_contiguous());
  for (size_t chunk : {size_t{64}, size_t{100}, size_t{4096}, formats::kSafetensorsWriteChunkBytes}) {
    SCOPED_TRACE(chunk);
    std::string a = write({{"t", tt}, {"p", perm}, {"e", expanded}}, {}, chunk);
    std::string b = write({{"t", tt.clone()}, {"p", perm.clone()}, {"e", expanded.clone()}});
    EXPECT_EQ(a, b);
  }
  auto back = read(write({{"t", tt}}));
  EXPECT_TRUE(back[0].second.equal(tt));
}

TEST(SafetensorsWriter, RefusesDtypesWithoutACode) {
  for (DType d : {DType::complex128, DType::complex32, DType::qint8, DType::quint8, DType::qint32,
                  DType::quint4x2, DType::bits8, DType::bits16}) {
    SCOPED_TRACE(std::string(name(d)));
    Tensor t = Tensor::empty(d, {2});
    try {
      write({{"ok", f32({1})}, {"layer.bad", t}});
      FAIL() << "no error";
    } catch (const UnsupportedError& e) {
      EXPECT_NE(std::string(e.what()).find("'layer.bad'"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(std::string(name(d))), std::string::npos) << e.what();
    }
  }
  // Every dtype with a safetensors code in the core table is writable and
  // reads back as itself.
  for (size_t i = 0; i < kNumDTypes; ++i) {
    auto d = static_cast<DType>(i);
    if (info(d).safetensors.empty() && d != DType::float4_e2m1fn_x2) continue;
    SCOPED_TRACE(std::string(name(d)));
    Tensor t = Tensor::from_bytes(d, {2, 2}, pattern(4 * itemsize(d), 3, d == DType::bool_));
    auto back = read(write({{"x", t}}));
    ASSERT_EQ(back.size(), 1u);
    EXPECT_EQ(back[0].second.dtype(), d);
    EXPECT_TRUE(back[0].second.equal(t));
    auto h = formats::read_safetensors_header(*io::memory_file(as_bytes(write({{"x", t}}))));
    EXPECT_EQ(h.tensors[0].code, d == DType::float4_e2m1fn_x2 ? "F4" : info(d).safetensors);
    EXPECT_EQ(dtype_from_safetensors(h.tensors[0].code).value_or(DType::float4_e2m1fn_x2), d);
  }
}

TEST(SafetensorsWriter, RefusesTensorsSharingMemory) {
  Tensor w = f32({1, 2, 3, 4}, {2, 2});
  Tensor tied = w;  // same storage, same view
  try {
    write({{"encoder.weight", w}, {"decoder.weight", tied}});
    FAIL() << "no error";
  } catch (const UnsupportedError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("'decoder.weight', 'encoder.weight'"), std::string::npos) << m;
    EXPECT_NE(m.find("clone"), std::string::npos) << m;
  }
  // Overlapping views of one storage.
  Tensor first3(w.storage(), DType::float32, {3}, {1}, 0);
  Tensor last2(w.storage(), DType::float32, {2}, {1}, 2);
  EXPECT_THROW(write({{"a", first3}, {"b", last2}}), UnsupportedError);
  // Transposed view of the same data.
  Tensor wt(w.storage(), DType::float32, {2, 2}, {1, 2}, 0);
  EXPECT_THROW(write({{"w", w}, {"wt", wt}}), UnsupportedError);
  // Disjoint parts of one storage are fine (Python allows them too).
  Tensor lo(w.storage(), DType::float32, {2}, {1}, 0);
  Tensor hi(w.storage(), DType::float32, {2}, {1}, 2);
  auto back = read(write({{"lo", lo}, {"hi", hi}}));
  ASSERT_EQ(back.size(), 2u);
  EXPECT_TRUE(back[0].second.equal(hi));  // same dtype: sorted by name
  EXPECT_TRUE(back[1].second.equal(lo));
  // Identical contents in separate storages are fine.
  EXPECT_NO_THROW(write({{"w", w}, {"copy", w.clone()}}));
  // An empty view holds no bytes and shares nothing.
  Tensor none(w.storage(), DType::float32, {0}, {1}, 1);
  EXPECT_NO_THROW(write({{"w", w}, {"none", none}}));
}

TEST(SafetensorsWriter, RefusesBadNamesAndKeys) {
  EXPECT_THROW(write({{"__metadata__", f32({1})}}), TypeError);
  EXPECT_THROW(write({{"a", f32({1})}, {"a", f32({2})}}), TypeError);
  EXPECT_THROW(write({{"bad\xff", f32({1})}}), TypeError);
  EXPECT_THROW(write({{"a", f32({1})}}, {{"k", "1"}, {"k", "2"}}), TypeError);
  EXPECT_THROW(write({{"a", f32({1})}}, {{"k", "\xc0\x80"}}), TypeError);
  EXPECT_THROW(write({{"a", Tensor()}}), TypeError);
  Tensor f4 = Tensor::from_bytes(DType::float4_e2m1fn_x2, {}, pattern(1, 1, false));
  EXPECT_THROW(write({{"f4", f4}}), UnsupportedError);
}

TEST(SafetensorsWriter, EscapesLikeSerdeJson) {
  std::string out =
      write({{std::string("a\x01\"\\/\n\x7f\xc3\xa9\x00", 10), f32({1})}}, {{"\t", "\xe2\x80\xa8"}});
  EXPECT_NE(out.find(R"({"__metadata__":{"\t":")"
                     "\xe2\x80\xa8"
                     R"("},"a\u0001\"\\/\n)"
                     "\x7f\xc3\xa9"
                     R"(\u0000")"),
            std::string::npos);
  auto back = read(out);
  EXPECT_EQ(back[0].first, std::string("a\x01\"\\/\n\x7f\xc3\xa9\x00", 10));
}

// ---------------------------------------------------------------- public API

TEST(SafetensorsApi, SaveLoadFileRoundTrip) {
  TempDir dir;
  StateDict sd;
  sd.set("layer.weight", f32({1, 2, 3, 4, 5, 6}, {2, 3}));
  sd.set("layer.bias", Tensor::from_bytes(DType::bfloat16, {2}, pattern(4, 2, false)));
  sd.set("step", Tensor::from_bytes(DType::int64, {}, pattern(8, 3, false)));
  const std::string path = dir.file("model.safetensors");
  save_safetensors(path, sd, {{"format", "pt"}, {"epoch", "3"}});
  EXPECT_EQ(dir.count(), 1u);  // no temporary left behind
  EXPECT_EQ(slurp(path), save_safetensors_to_buffer(sd, {{"format", "pt"}, {"epoch", "3"}}));
  for (bool mmap : {false, true}) {
    StateDict back = load_safetensors(path, LoadOptions{.mmap = mmap});
    ASSERT_EQ(back.size(), 3u);
    // data order: I64, F32, BF16
    EXPECT_EQ(back.keys(), (std::vector<std::string>{"step", "layer.weight", "layer.bias"}));
    for (const auto& [n, t] : sd) EXPECT_TRUE(back.at(n).equal(t)) << n;
    EXPECT_EQ(back.at("layer.weight").storage().backing(),
              mmap ? Storage::Backing::mapped : Storage::Backing::owned);
  }
  auto md = safetensors_metadata(path);
  EXPECT_EQ(md, (std::map<std::string, std::string>{{"epoch", "3"}, {"format", "pt"}}));
  // Overwrite keeps atomicity; a failing save leaves the old file.
  StateDict bad;
  bad.set("c", Tensor::empty(DType::complex128, {1}));
  EXPECT_THROW(save_safetensors(path, bad), UnsupportedError);
  EXPECT_EQ(dir.count(), 1u);
  EXPECT_EQ(load_safetensors(path).size(), 3u);
}

TEST(SafetensorsApi, OtherFormatsAreNamed) {
  try {
    load_safetensors(data_path("valid/torch2/net_state_dict.pt"));
    FAIL() << "no error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("not a safetensors file"), std::string::npos) << e.what();
  } catch (const Error& e) {
    // The zip reader may not be built yet in every configuration.
    GTEST_SKIP() << e.what();
  }
}

TEST(SafetensorsReader, MisalignedMmapTensorsAreCopied) {
  std::string file = write({{"d", Tensor::from_bytes(DType::float64, {3}, pattern(24, 1, false))},
                            {"b", Tensor::from_bytes(DType::uint8, {3}, pattern(3, 2, false))}});
  // Place the file at an odd address.
  std::vector<std::byte> buf(file.size() + 64);
  size_t shift = 1;
  while ((reinterpret_cast<uintptr_t>(buf.data()) + shift) % 8 != 1) ++shift;
  std::memcpy(buf.data() + shift, file.data(), file.size());
  std::span<const std::byte> odd(buf.data() + shift, file.size());
  StateDict sd = load_state_dict(odd, mmap_options(true));
  EXPECT_EQ(sd.at("d").storage().backing(), Storage::Backing::owned);   // 8-byte type at odd address
  EXPECT_EQ(sd.at("b").storage().backing(), Storage::Backing::mapped);  // bytes are always aligned
  EXPECT_EQ(tensor_sha256(sd.at("d")), tensor_sha256(read(file)[0].second));
  StateDict copied = load_state_dict(odd);
  EXPECT_EQ(copied.at("b").storage().backing(), Storage::Backing::owned);
}

TEST(SafetensorsReader, AcceptsWhatTheReferenceAccepts) {
  // Offsets in any JSON order, metadata anywhere, null metadata, unknown
  // fields, trailing whitespace that is not a multiple of 8, "-0".
  std::string f =
      file_with(R"({"z":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"__metadata__":null,)"
                R"("a":{"extra":[1,{"x":null}],"dtype":"U8","shape":[-0],"data_offsets":[0,0],"more":true},)"
                R"("m":{"data_offsets":[0,1],"shape":[1],"dtype":"U8"}} )"
                "\n\t",
                "\x01\x02");
  auto t = read(f);
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[0].first, "a");  // [0,0]
  EXPECT_EQ(t[1].first, "m");  // [0,1]
  EXPECT_EQ(t[2].first, "z");  // [1,2]
  EXPECT_EQ(t[1].second.sizes(), std::vector<int64_t>{1});
  EXPECT_EQ(static_cast<int>(t[2].second.data()[0]), 2);
  auto md = formats::read_safetensors_header(*io::memory_file(as_bytes(f))).metadata;
  EXPECT_TRUE(md.empty());
  EXPECT_EQ(read(file_with(R"({"__metadata__":{"k":"v"}})")).size(), 0u);
}

// ---------------------------------------------------------------- hostile headers

namespace {

struct Hostile {
  const char* name;
  std::string bytes;
  const char* message;  // a part of the error message
};

std::string u64le(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, uint64_t b,
                  uint64_t e) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(b) + "," + std::to_string(e) + "]}";
}

std::vector<Hostile> hostile_cases() {
  const std::string u8a = entry("a", "U8", "[1]", 0, 1);
  return {
      {"empty file", "", "too small"},
      {"7 bytes", std::string(7, '\0'), "too small"},
      {"header length 0", u64le(0), "header length is 0"},
      {"header past EOF", u64le(100) + "{}", "runs past the end"},
      {"header over 100 MB", u64le(100'000'001) + "{}", "over the limit"},
      {"header length 2^64-1", u64le(UINT64_MAX) + "{}", "over the limit"},
      {"not starting with {", file_with(" {}"), "does not start with '{'"},
      {"array header", file_with("[]"), "does not start with '{'"},
      {"invalid UTF-8", file_with("{\"\xff\":1}"), "not valid UTF-8"},
      {"overlong UTF-8", file_with("{\"\xc0\xaf\":1}"), "not valid UTF-8"},
      {"UTF-16 surrogate", file_with("{\"\xed\xa0\x80\":1}"), "not valid UTF-8"},
      {"invalid JSON", file_with("{\"a\":"), "not valid JSON"},
      {"trailing garbage", file_with("{}x"), "not valid JSON"},
      {"trailing NUL", file_with("{}\0"s), "not valid JSON"},
      {"lone surrogate escape", file_with(R"({"\ud800":1})"), "not valid JSON"},
      {"unknown dtype", file_with("{" + entry("a", "X8", "[1]", 0, 1) + "}", "x"), "unknown dtype 'X8'"},
      {"lower-case dtype", file_with("{" + entry("a", "f32", "[1]", 0, 4) + "}", "xxxx"), "unknown dtype"},
      {"dtype not a string", file_with(R"({"a":{"dtype":1,"shape":[1],"data_offsets":[0,1]}})", "x"),
       "'dtype' must be a string"},
      {"negative shape", file_with("{" + entry("a", "U8", "[-1]", 0, 1) + "}", "x"), "non-negative"},
      {"float shape", file_with("{" + entry("a", "U8", "[1.0]", 0, 1) + "}", "x"), "non-negative integers"},
      {"shape 2^64", file_with("{" + entry("a", "U8", "[18446744073709551616]", 0, 1) + "}", "x"),
       "non-negative integers"},
      {"shape numel overflow", file_with("{" + entry("a", "U8", "[4294967296,4294967296]", 0, 1) + "}", "x"),
       "more elements than fit"},
      {"shape bytes overflow", file_with("{" + entry("a", "U64", "[4294967296,1073741824]", 0, 1) + "}", "x"),
       "more bytes than fit"},
      {"dim beyond int64", file_with("{" + entry("a", "U8", "[9223372036854775808,0]", 0, 0) + "}"),
       "does not fit a torch size"},
      {"shape not an array", file_with(R"({"a":{"dtype":"U8","shape":1,"data_offsets":[0,1]}})", "x"),
       "must be an array"},
      {"nested shape", file_with(R"({"a":{"dtype":"U8","shape":[[1]],"data_offsets":[0,1]}})", "x"),
       "non-negative integers"},
      {"missing dtype", file_with(R"({"a":{"shape":[1],"data_offsets":[0,1]}})", "x"), "no 'dtype'"},
      {"missing shape", file_with(R"({"a":{"dtype":"U8","data_offsets":[0,1]}})", "x"), "no 'shape'"},
      {"missing offsets", file_with(R"({"a":{"dtype":"U8","shape":[1]}})", "x"), "no 'data_offsets'"},
      {"offsets 1 element", file_with(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", "x"),
       "[begin, end]"},
      {"offsets 3 elements", file_with(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})", "x"),
       "[begin, end]"},
      {"entry not an object", file_with(R"({"a":1})"), "must be an object"},
      {"entry is an array", file_with(R"({"a":[]})"), "must be an object"},
      {"end before begin", file_with("{" + entry("a", "U8", "[0]", 1, 0) + "}", "x"), "end is before begin"},
      {"not starting at 0", file_with("{" + entry("a", "U8", "[1]", 1, 2) + "}", "xx"), "must start at 0"},
      {"gap", file_with("{" + u8a + "," + entry("b", "U8", "[1]", 2, 3) + "}", "xxx"), "gap of 1 bytes"},
      {"overlap",
       file_with("{" + entry("a", "U8", "[2]", 0, 2) + "," + entry("b", "U8", "[2]", 1, 3) + "}", "xxx"),
       "overlaps tensor 'a'"},
      {"size mismatch", file_with("{" + entry("a", "F32", "[2]", 0, 4) + "}", "xxxx"), "needs 8"},
      {"F4 odd count", file_with("{" + entry("a", "F4", "[3]", 0, 2) + "}", "xx"), "byte boundary"},
      {"F4 0-dim", file_with("{" + entry("a", "F4", "[]", 0, 1) + "}", "x"), "byte boundary"},
      {"trailing bytes", file_with("{" + u8a + "}", "xy"), "1 unexpected bytes"},
      {"data shorter", file_with("{" + entry("a", "U8", "[2]", 0, 2) + "}", "x"), "truncated"},
      {"huge end",
       file_with("{" + entry("a", "U8", "[2305843009213693951]", 0, 2305843009213693951ull) + "}", "x"),
       "truncated"},
      {"duplicate tensor", file_with("{" + u8a + "," + u8a + "}", "x"), "twice"},
      {"duplicate metadata", file_with(R"({"__metadata__":{},"__metadata__":{}})"), "two '__metadata__'"},
      {"duplicate metadata key", file_with(R"({"__metadata__":{"k":"1","k":"2"}})"), "key 'k' twice"},
      {"duplicate field",
       file_with(R"({"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x"),
       "field 'dtype' twice"},
      {"duplicate in unknown field",
       file_with(R"({"a":{"x":{"y":1,"y":2},"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x"),
       "duplicate JSON key 'y'"},
      {"metadata int value", file_with(R"({"__metadata__":{"k":1}})"), "must be a string"},
      {"metadata nested", file_with(R"({"__metadata__":{"k":{}}})"), "must be a string"},
      {"metadata list", file_with(R"({"__metadata__":["k"]})"), "must be an object"},
      {"metadata string", file_with(R"({"__metadata__":"k"})"), "must be an object"},
      {"deep nesting",
       file_with(R"({"a":{"x":)" + std::string(200, '[') + std::string(200, ']') +
                     R"(,"dtype":"U8","shape":[1],"data_offsets":[0,1]}})",
                 "x"),
       "deeper than 128"},
  };
}

}  // namespace

TEST(SafetensorsHostile, EveryCaseThrowsFormatError) {
  for (const auto& c : hostile_cases()) {
    SCOPED_TRACE(c.name);
    try {
      read(c.bytes);
      ADD_FAILURE() << "no error";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
      EXPECT_EQ(e.context().file, "<memory>");
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a FormatError: " << e.what();
    }
    // Through the generic entry point too (detection may already refuse).
    EXPECT_THROW(load(as_bytes(c.bytes)), FormatError);
  }
}

TEST(SafetensorsHostile, ErrorsNameTheTensorAndTheOffset) {
  std::string f =
      file_with("{" + entry("a", "U8", "[1]", 0, 1) + "," + entry("b", "U8", "[1]", 2, 3) + "}", "xyz");
  uint64_t n = f.size() - 8 - 3;
  try {
    read(f);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_EQ(e.context().record, "b");
    EXPECT_EQ(e.context().offset, 8 + n + 2);
  }
  // Schema errors point into the header.
  try {
    read(file_with(R"({"a":{"dtype":"X8","shape":[1],"data_offsets":[0,1]}})", "x"));
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_EQ(e.context().record, "a");
    ASSERT_TRUE(e.context().offset.has_value());
    EXPECT_EQ(*e.context().offset, 8 + std::string(R"({"a":{"dtype":"X8")").size());
  }
}

TEST(SafetensorsHostile, UnrepresentableDtypesAreUnsupported) {
  for (const char* code : {"F6_E2M3", "F6_E3M2"}) {
    std::string f = file_with("{" + entry("fp6", code, "[4]", 0, 3) + "}", "xyz");
    try {
      read(f);
      FAIL() << code;
    } catch (const UnsupportedError& e) {
      EXPECT_NE(std::string(e.what()).find(code), std::string::npos) << e.what();
      EXPECT_EQ(e.context().record, "fp6");
    }
  }
  // F4 [2, 1]: whole bytes, but torch's float4_e2m1fn_x2 cannot split the last dim.
  EXPECT_THROW(read(file_with("{" + entry("f", "F4", "[2,1]", 0, 1) + "}", "x")), UnsupportedError);
  auto ok = read(file_with("{" + entry("f", "F4", "[1,2]", 0, 1) + "}", "x"));
  EXPECT_EQ(ok[0].second.sizes(), (std::vector<int64_t>{1, 1}));
}

TEST(SafetensorsHostile, TruncatedAtEveryByte) {
  for (const char* fx : {"edge_shapes", "metadata_many", "no_tensors"}) {
    std::string full = slurp(fixture_path(fx));
    for (size_t n = 0; n < full.size(); ++n) {
      std::string cut = full.substr(0, n);
      EXPECT_THROW(read(cut), FormatError) << fx << " cut at " << n;
      EXPECT_THROW(read(cut, true), FormatError) << fx << " cut at " << n;
      EXPECT_THROW(load(as_bytes(cut)), FormatError) << fx << " cut at " << n;
    }
    EXPECT_NO_THROW(read(full));
    EXPECT_THROW(read(full + " "), FormatError);
  }
}

TEST(SafetensorsHostile, ByteFlipsNeverCrash) {
  std::string full = slurp(fixture_path("edge_shapes"));
  uint64_t n = 0;
  std::memcpy(&n, full.data(), 8);
  size_t loaded = 0, refused = 0;
  for (size_t i = 0; i < 8 + n; ++i) {
    for (uint8_t x : {0x01, 0x20, 0x80, 0xff}) {
      std::string bad = full;
      bad[i] = static_cast<char>(bad[i] ^ x);
      try {
        auto t = read(bad, (i & 1) != 0);
        for (const auto& [name, tensor] : t) (void)tensor_sha256(tensor);
        ++loaded;
      } catch (const Error&) {
        ++refused;
      }
    }
  }
  EXPECT_GT(refused, 0u);
  EXPECT_GT(loaded, 0u);  // e.g. a flipped letter inside a name
}
