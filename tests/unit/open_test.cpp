// ckpt::open (the lazy reader), Hugging Face sharded sets, pickle-free
// training checkpoints in safetensors, Tensor::to and remove_shared_tensors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "ckpt/ckpt.hpp"
#include "test_util.hpp"

using namespace ckpt;
using ckpt::testing::data_path;
using ckpt::testing::slurp;
using ckpt::testing::TempDir;
using ckpt::testing::write_file;

namespace {

Tensor iota(DType dtype, std::vector<int64_t> sizes, float start = 0) {
  Tensor t = Tensor::empty(DType::float32, sizes);
  auto* p = reinterpret_cast<float*>(t.mutable_data());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = start + static_cast<float>(i) * 0.5f;
  return t.to(dtype);
}

StateDict sample_state_dict(int n, int64_t elems) {
  StateDict sd;
  for (int i = 0; i < n; ++i) sd.set("layer" + std::to_string(i) + ".weight", iota(DType::float32, {elems}, float(i)));
  return sd;
}

// The bytes of `t` as they lie in `info.file` at `info.file_offset`.
std::string bytes_in_file(const TensorInfo& info) {
  std::string all = slurp(info.file);
  return all.substr(static_cast<size_t>(info.file_offset), info.nbytes);
}

std::string bytes_of(const Tensor& t) {
  auto b = t.contiguous_bytes();
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

}  // namespace

TEST(Open, TorchZipListsWhatLoadGivesWithFileOffsets) {
  for (const char* version : {"torch113", "torch2"}) {
    const std::string path = data_path(std::string("valid/") + version + "/checkpoint.pt");
    Reader r = open(path);
    EXPECT_EQ(r.format(), Format::torch_zip);
    EXPECT_FALSE(r.sharded());
    Value loaded = load(path);
    std::vector<std::string> paths;
    for_each_tensor(loaded, [&](const std::string& p, const Tensor&) { paths.push_back(p); });
    ASSERT_EQ(r.keys(), paths) << version;
    for (const TensorInfo& info : r.tensors()) {
      Tensor view = r.get(info.name);
      EXPECT_EQ(view.storage().backing(), Storage::Backing::mapped) << info.name;
      EXPECT_FALSE(view.storage().writable());
      Tensor copy = r.copy(info.name);
      EXPECT_TRUE(copy.storage().writable());
      EXPECT_TRUE(copy.equal(view));
      ASSERT_GE(info.file_offset, 0) << info.name;
      if (info.contiguous) {
        EXPECT_EQ(bytes_in_file(info), bytes_of(view)) << info.name;
      }
    }
  }
}

TEST(Open, SafetensorsOffsetsAndMetadata) {
  TempDir dir;
  StateDict sd = sample_state_dict(5, 7);
  sd.set("half", iota(DType::float16, {3, 2}));
  save_safetensors(dir / "m.safetensors", sd, {{"format", "pt"}, {"note", "x"}});
  Reader r = open(dir / "m.safetensors");
  EXPECT_EQ(r.format(), Format::safetensors);
  EXPECT_EQ(r.size(), 6u);
  EXPECT_EQ(r.metadata().at("note"), "x");
  EXPECT_EQ(r.nbytes(), 5u * 7 * 4 + 6 * 2);
  for (const TensorInfo& info : r.tensors()) {
    EXPECT_EQ(bytes_in_file(info), bytes_of(r.get(info.name)));
    EXPECT_TRUE(r.get(info.name).equal(sd.at(info.name)));
  }
  EXPECT_TRUE(r.contains("half"));
  EXPECT_FALSE(r.contains("nope"));
  try {
    (void)r.get("nope");
    FAIL() << "expected TypeError";
  } catch (const TypeError& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor named 'nope'"), std::string::npos) << e.what();
  }
}

TEST(Open, KeySelectsAStateDictInsideACheckpoint) {
  OpenOptions o;
  o.key = "model";
  Reader r = open(data_path("valid/torch2/checkpoint.pt"), o);
  for (const auto& name : r.keys()) EXPECT_EQ(name.find('/'), std::string::npos) << name;
  EXPECT_GT(r.size(), 0u);
}

TEST(Open, MapLocationAppliesToEveryTensor) {
  OpenOptions o;
  o.map_location = MapLocation("meta");
  Reader r = open(data_path("valid/torch2/net_state_dict.pt"), o);
  for (const auto& info : r.tensors()) EXPECT_EQ(info.device, "meta");
}

TEST(Sharded, WritesTransformersLayoutAndReadsBackAsOneStateDict) {
  TempDir dir;
  StateDict sd = sample_state_dict(10, 100);  // 400 bytes each
  ShardOptions so;
  so.max_shard_size = 1000;  // two tensors per shard
  ShardedFiles files = save_sharded(dir.path(), sd, so);
  ASSERT_EQ(files.files.size(), 5u);
  EXPECT_EQ(files.total_size, 4000u);
  EXPECT_EQ(std::filesystem::path(files.files[0]).filename(), "model-00001-of-00005.safetensors");
  EXPECT_EQ(std::filesystem::path(files.index).filename(), "model.safetensors.index.json");
  auto index = nlohmann::json::parse(slurp(files.index));
  EXPECT_EQ(index["metadata"]["total_size"], 4000);
  EXPECT_EQ(index["weight_map"]["layer9.weight"], "model-00005-of-00005.safetensors");
  EXPECT_EQ(slurp(files.index), index.dump(2) + "\n");

  for (const std::string& target : {files.index, dir.path()}) {
    Reader r = open(target);
    EXPECT_TRUE(r.sharded());
    EXPECT_EQ(r.files().size(), 5u);
    EXPECT_EQ(r.metadata().at("total_size"), "4000");
    ASSERT_EQ(r.size(), 10u);
    for (const auto& [name, t] : sd) EXPECT_TRUE(r.get(name).equal(t)) << name;
  }
  // ckpt::load and load_state_dict accept the set too.
  StateDict back = load_state_dict(dir.path());
  EXPECT_EQ(back.size(), 10u);
}

TEST(Sharded, SingleShardHasNoIndexAndBigTensorsGetTheirOwnShard) {
  TempDir a, b;
  ShardedFiles one = save_sharded(a.path(), sample_state_dict(3, 10), {});
  EXPECT_TRUE(one.index.empty());
  ASSERT_EQ(one.files.size(), 1u);
  EXPECT_EQ(std::filesystem::path(one.files[0]).filename(), "model.safetensors");

  StateDict sd = sample_state_dict(3, 10);  // 40 bytes each
  sd.set("big", iota(DType::float32, {100}));
  sd.set("after", iota(DType::float32, {10}));
  ShardOptions so;
  so.max_shard_size = 100;
  so.format = ShardFormat::torch;
  ShardedFiles files = save_sharded(b.path(), sd, so);
  // Greedy, as transformers: [layer0, layer1] then big alone (appended as soon
  // as it is seen), then the still-open shard [layer2, after].
  ASSERT_EQ(files.files.size(), 3u);
  EXPECT_EQ(std::filesystem::path(files.index).filename(), "pytorch_model.bin.index.json");
  Reader r = open(files.index);
  EXPECT_EQ(r.format(), Format::torch_zip);
  EXPECT_EQ(r.size(), 5u);
  EXPECT_EQ(r.info("big").file, files.files[1]);
  EXPECT_EQ(r.info("after").file, files.files[2]);
  EXPECT_EQ(r.info("layer2.weight").file, files.files[2]);
}

TEST(Sharded, HostileOrInconsistentIndexesAreRefused) {
  TempDir dir;
  save_safetensors(dir / "s1.safetensors", sample_state_dict(2, 4));
  auto expect_error = [&](const std::string& index_text, const std::string& needle) {
    write_file(dir / "model.safetensors.index.json", index_text);
    try {
      (void)open(dir / "model.safetensors.index.json");
      ADD_FAILURE() << "expected an error for " << index_text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error(R"({"weight_map": {"layer0.weight": "../s1.safetensors"}})", "not a plain file name");
  expect_error(R"({"weight_map": {"layer0.weight": "/etc/passwd"}})", "not a plain file name");
  expect_error(R"({"weight_map": {"layer0.weight": "s1.safetensors", "x": "s1.safetensors", "layer1.weight": "s1.safetensors"}})",
               "does not hold it");
  expect_error(R"({"weight_map": {"layer0.weight": "s1.safetensors"}})", "does not list");
  expect_error(R"({"weight_map": {"layer0.weight": 3}})", "not a file name");
  expect_error(R"({"weight_map": {"layer0.weight": "missing.safetensors"}})", "missing.safetensors");
  expect_error(R"({"weight_map": {"layer0.weight": "s1.saf)", "offset 0x");  // damaged: a JSON error with its offset
  expect_error(R"({"weight_map": {"layer0.weight": "s1.saf)", "index is not valid JSON");
}

TEST(Sharded, ParseSize) {
  EXPECT_EQ(parse_size("5GB"), 5'000'000'000u);
  EXPECT_EQ(parse_size("10GiB"), uint64_t{10} << 30);
  EXPECT_EQ(parse_size("500MB"), 500'000'000u);
  EXPECT_EQ(parse_size("1.5GB"), 1'500'000'000u);
  EXPECT_EQ(parse_size("4kb"), 4000u);
  EXPECT_EQ(parse_size("123"), 123u);
  for (const char* bad : {"", "GB", "5XB", "-5GB", "0", "1e400GB", "5 G B"}) EXPECT_THROW(parse_size(bad), TypeError) << bad;
}

TEST(Cast, RoundsToNearestEvenLikeTorch) {
  auto one = [](float v, DType to) {
    Tensor t = Tensor::from_bytes(DType::float32, {1}, {reinterpret_cast<const std::byte*>(&v), 4});
    Tensor c = t.to(to);
    uint16_t bits;
    std::memcpy(&bits, c.data(), 2);
    return bits;
  };
  EXPECT_EQ(one(1.0f, DType::float16), 0x3c00);
  EXPECT_EQ(one(65504.0f, DType::float16), 0x7bff);
  EXPECT_EQ(one(65520.0f, DType::float16), 0x7c00);  // rounds up to inf
  EXPECT_EQ(one(65519.0f, DType::float16), 0x7bff);
  EXPECT_EQ(one(std::ldexp(1.0f, -24), DType::float16), 0x0001);  // smallest subnormal
  EXPECT_EQ(one(std::ldexp(1.0f, -25), DType::float16), 0x0000);  // tie -> even (zero)
  EXPECT_EQ(one(1.0f + std::ldexp(1.0f, -11), DType::float16), 0x3c00);  // tie -> even
  EXPECT_EQ(one(1.0f + 3 * std::ldexp(1.0f, -11), DType::float16), 0x3c02);
  EXPECT_EQ(one(-0.0f, DType::float16), 0x8000);
  EXPECT_EQ(one(INFINITY, DType::bfloat16), 0x7f80);
  EXPECT_EQ(one(1.0f + std::ldexp(1.0f, -8), DType::bfloat16), 0x3f80);  // tie -> even
  EXPECT_EQ(one(1.0f + 3 * std::ldexp(1.0f, -8), DType::bfloat16), 0x3f82);
  EXPECT_EQ(one(NAN, DType::bfloat16), 0x7fc0);
  EXPECT_EQ(one(NAN, DType::float16) & 0x7e00, 0x7e00);
  // and back: every half value converts exactly to float32
  Tensor h = iota(DType::float16, {8}, -2);
  Tensor f = h.to(DType::float32);
  EXPECT_TRUE(f.to(DType::float16).equal(h));
  EXPECT_THROW((void)iota(DType::float32, {2}).to(DType::int64), UnsupportedError);
}

TEST(TrainingCheckpoint, SafetensorsRoundTripKeepsTheWholeTree) {
  TempDir dir;
  Value ck = Value::dict();
  Dict& d = ck.as_dict();
  Value model = Value::ordered_dict();
  Tensor w = iota(DType::float32, {3, 4});
  w.set_requires_grad(true);
  w.set_is_parameter(true);
  model.as_dict().set("fc.weight", w);
  model.as_dict().set("head.weight", w);  // tied
  model.as_dict().set("fc.weight_t", Tensor(w.storage(), DType::float32, {4, 3}, {1, 4}));  // another view
  Value meta = Value::ordered_dict();
  meta.as_dict().set("", Value::dict());
  model.as_dict().attributes = meta;
  d.set("model", model);
  Value state = Value::dict();
  state.as_dict().set(Value(0), Value::dict());
  state.as_dict().at(Value(0)).as_dict().set("step", iota(DType::float32, {}));
  d.set("optimizer", state);
  d.set("epoch", Value(int64_t{7}));
  d.set("best", Value(0.125));
  d.set("nan", Value(std::nan("")));
  d.set("inf", Value(-HUGE_VAL));
  d.set("name", Value("run"));
  d.set("blob", Value::bytes(std::string("\0\x01\xff", 3)));
  d.set("tuple", Value::tuple({Value(1), Value("a"), Value()}));
  d.set("$weird", Value(true));
  d.set("dtype", Value(DType::bfloat16));
  d.set("size", Value(Size{{2, 3}}));
  d.set("c", Value(std::complex<double>(1.5, -2)));
  BigInt big{{0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80}};  // -2^71
  d.set("big", Value(big));

  size_t aliases = save_safetensors_checkpoint(dir / "ck.safetensors", ck);
  EXPECT_EQ(aliases, 1u);
  // Plain readers see every tensor by path, tied ones once.
  StateDict plain = load_safetensors(dir / "ck.safetensors");
  EXPECT_EQ(plain.keys(), (std::vector<std::string>{"model/fc.weight", "model/fc.weight_t", "optimizer/0/step"}));
  Value back = load(dir / "ck.safetensors");
  EXPECT_EQ(back.repr(), ck.repr());
  const Dict& bm = back.as_dict().at(Value("model")).as_dict();
  EXPECT_TRUE(bm.ordered);
  EXPECT_TRUE(bm.at(Value("fc.weight")).as_tensor().requires_grad());
  EXPECT_TRUE(bm.at(Value("fc.weight")).as_tensor().is_parameter());
  EXPECT_EQ(bm.at(Value("fc.weight")).as_tensor().storage(), bm.at(Value("head.weight")).as_tensor().storage());
  EXPECT_TRUE(bm.at(Value("fc.weight_t")).as_tensor().equal(model.as_dict().at(Value("fc.weight_t")).as_tensor()));
  EXPECT_TRUE(std::isnan(back.as_dict().at(Value("nan")).as_float()));
  EXPECT_EQ(back.as_dict().at(Value("big")).as_bigint(), big);
  EXPECT_EQ(back.as_dict().at(Value("blob")).as_bytes(), std::string("\0\x01\xff", 3));
  EXPECT_TRUE(back.as_dict().at(Value("optimizer")).as_dict().contains(Value(0)));
  // Inert objects have no JSON form.
  Value obj = Value::dict();
  obj.as_dict().set("g", Value(Global{"argparse", "Namespace"}));
  EXPECT_THROW(save_safetensors_checkpoint(dir / "o.safetensors", obj), UnsupportedError);
  EXPECT_FALSE(std::filesystem::exists(dir / "o.safetensors"));
}

TEST(TrainingCheckpoint, MalformedTreesAreFormatErrors) {
  TempDir dir;
  StateDict sd = sample_state_dict(1, 2);
  for (const char* tree : {"{", R"({"a": {"$tensor": "missing"}})", R"({"$nope": 1})", R"({"a": {"$bytes": "###"}})",
                           R"({"a": {"$dict": [[[1, 2], 1]]}})", R"({"a": {"$int": "12x"}})"}) {
    save_safetensors(dir / "t.safetensors", sd, {{"ckpt.tree", tree}});
    try {
      (void)load(dir / "t.safetensors");
      ADD_FAILURE() << "expected FormatError for " << tree;
    } catch (const FormatError& e) {
      EXPECT_EQ(e.context().record, "__metadata__[\"ckpt.tree\"]") << e.what();
      EXPECT_EQ(e.context().file, dir / "t.safetensors") << e.what();
    }
  }
}

TEST(RemoveShared, KeepsTheFirstNameOfTiedWeightsAndCopiesOverlaps) {
  StateDict sd;
  Tensor w = iota(DType::float32, {4, 4});
  sd.set("emb", w);
  sd.set("head", w);
  sd.set("row", Tensor(w.storage(), DType::float32, {4}, {1}, 4));
  sd.set("other", iota(DType::float32, {2}));
  auto report = remove_shared_tensors(sd);
  ASSERT_EQ(report.size(), 2u);
  EXPECT_EQ(report[0], (std::pair<std::string, std::string>{"head", "emb"}));
  EXPECT_EQ(report[1], (std::pair<std::string, std::string>{"row", ""}));
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"emb", "row", "other"}));
  EXPECT_NE(sd.at("row").storage(), w.storage());
  EXPECT_NO_THROW(save_safetensors_to_buffer(sd));
}

// ---- Reader::read_into: loading into memory that already exists ---------------------

namespace {

// A destination whose bytes live in a caller's buffer (as a model's parameter would).
Tensor external_tensor(std::vector<std::byte>& buf, DType dtype, std::vector<int64_t> sizes,
                       std::vector<int64_t> strides = {}) {
  if (strides.empty()) strides = Tensor::contiguous_strides(sizes);
  return Tensor(Storage::external(buf.data(), buf.size(), nullptr), dtype, std::move(sizes), std::move(strides), 0);
}

}  // namespace

TEST(ReadInto, DirectReadsIntoCallerMemoryForEveryFormat) {
  TempDir dir;
  StateDict sd = sample_state_dict(3, 3000);
  sd.set("big", iota(DType::float16, {1024, 1024}, 1));  // 2 MiB: the parallel read path
  for (const std::string name : {"m.pt", "m.safetensors"}) {
    const std::string path = dir / name;
    if (name.ends_with(".pt")) save_state_dict(path, sd);
    else save_safetensors(path, sd);
    Reader r = open(path);
    StateDict dst;
    std::vector<std::vector<std::byte>> bufs;
    bufs.reserve(sd.size());
    for (const auto& [key, t] : sd) {
      bufs.emplace_back(t.nbytes(), std::byte{0xee});
      dst.set(key, external_tensor(bufs.back(), t.dtype(), t.sizes()));
    }
    EXPECT_EQ(r.read_into(dst), sd.size()) << name;
    for (const auto& [key, t] : sd) EXPECT_TRUE(dst.at(key).equal(t)) << name << " " << key;
    // The destination's memory is the caller's, not a copy.
    EXPECT_EQ(dst.at("big").data(), bufs.back().data());
  }
}

TEST(ReadInto, ConvertsDtypeAndFillsStridedDestinations) {
  TempDir dir;
  StateDict sd;
  sd.set("w", iota(DType::float32, {3, 4}));
  const std::string path = dir / "m.pt";
  save_state_dict(path, sd);
  Reader r = open(path);

  std::vector<std::byte> wide(12 * sizeof(double));
  Tensor as_double = external_tensor(wide, DType::float64, {3, 4});
  EXPECT_FALSE(r.read_into("w", as_double));
  EXPECT_TRUE(as_double.to(DType::float32).equal(sd.at("w")));

  // A transposed destination: dst[i][j] lives at i + 3 * j.
  std::vector<std::byte> tbuf(12 * sizeof(float));
  Tensor transposed = external_tensor(tbuf, DType::float32, {3, 4}, {1, 3});
  EXPECT_FALSE(r.read_into("w", transposed));
  EXPECT_TRUE(transposed.equal(sd.at("w")));
  const auto* raw = reinterpret_cast<const float*>(tbuf.data());
  EXPECT_EQ(raw[1], 2.0f);  // element [1][0] = 4 * 0.5
}

TEST(ReadInto, RefusesMismatchesBeforeWriting) {
  TempDir dir;
  StateDict sd = sample_state_dict(2, 8);
  const std::string path = dir / "m.pt";
  save_state_dict(path, sd);
  Reader r = open(path);

  std::vector<std::byte> buf(9 * sizeof(float), std::byte{0x11});
  Tensor wrong_shape = external_tensor(buf, DType::float32, {9});
  try {
    r.read_into("layer0.weight", wrong_shape);
    FAIL() << "a shape mismatch was accepted";
  } catch (const TypeError& e) {
    EXPECT_NE(std::string(e.what()).find("layer0.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[9]"), std::string::npos) << e.what();
  }
  EXPECT_EQ(buf[0], std::byte{0x11});

  StateDict dst;
  std::vector<std::byte> b0(8 * sizeof(float), std::byte{0x22});
  dst.set("layer0.weight", external_tensor(b0, DType::float32, {8}));
  dst.set("not.there", external_tensor(b0, DType::float32, {8}));
  EXPECT_THROW(r.read_into(dst), TypeError);
  EXPECT_EQ(b0[0], std::byte{0x22});  // nothing written when a name is missing

  Tensor read_only = r.get("layer1.weight");  // a view into the mapping
  EXPECT_THROW(r.read_into("layer0.weight", read_only), Error);
}

// load(path, options, report): what the CLI's ls / info / convert print about
// the files a load read, for each kind of path.
TEST(LoadReport, NamesTheFilesReadForAFileAShardSetAndADirectory) {
  TempDir dir;
  const StateDict sd = sample_state_dict(4, 10);  // 40 bytes each
  const std::string single = dir.path() + "/single.pt";
  save(single, sd.to_value());
  LoadReport report;
  report.files = {"stale"};  // overwritten
  Value root = load(single, {}, report);
  EXPECT_EQ(report.format, Format::torch_zip);
  EXPECT_EQ(report.files, std::vector<std::string>{single});
  EXPECT_EQ(report.file_bytes, std::filesystem::file_size(single));
  EXPECT_EQ(StateDict::from_value(root).size(), 4u);

  TempDir shards;
  ShardOptions so;
  so.max_shard_size = 80;
  ShardedFiles files = save_sharded(shards.path(), sd, so);
  ASSERT_EQ(files.files.size(), 2u);
  for (const std::string& target : {files.index, shards.path()}) {
    SCOPED_TRACE(target);
    root = load(target, {}, report);
    EXPECT_EQ(report.format, Format::safetensors);
    EXPECT_EQ(report.files, files.files);
    EXPECT_EQ(report.file_bytes,
              std::filesystem::file_size(files.files[0]) + std::filesystem::file_size(files.files[1]));
    EXPECT_EQ(StateDict::from_value(root).size(), 4u);
  }

  // A failed load leaves a report of nothing, not the last one's.
  EXPECT_THROW(load(dir.path() + "/missing.pt", {}, report), IoError);
  EXPECT_EQ(report.format, Format::unknown);
  EXPECT_TRUE(report.files.empty());
  EXPECT_EQ(report.file_bytes, 0u);
}

TEST(LoadReport, ArchiveRecordsNameTheWriter) {
  TempDir dir;
  const std::string pt = dir.path() + "/m.pt";
  save(pt, sample_state_dict(1, 4).to_value());
  const auto records = archive_records(pt);
  ASSERT_FALSE(records.empty());
  EXPECT_EQ(records.front().first, "version");
  EXPECT_FALSE(records.front().second.empty());
  EXPECT_EQ(records.front().second.find('\n'), std::string::npos);
  bool byteorder = false;
  for (const auto& [k, v] : records) byteorder |= k == "byteorder" && v == "little";
  EXPECT_TRUE(byteorder);

  const std::string st = dir.path() + "/m.safetensors";
  save_safetensors(st, sample_state_dict(1, 4));
  EXPECT_THROW(archive_records(st), FormatError);
  EXPECT_THROW(archive_records(dir.path() + "/missing.pt"), IoError);
}

TEST(LoadReport, ADistributedCheckpointReportsEveryFileOfItsDirectory) {
  const std::string dcp = std::string(CKPT_TEST_DATA_DIR) + "/dcp/torch2_w2";
  LoadReport report;
  load(dcp, {}, report);
  EXPECT_EQ(report.format, Format::dcp);
  std::vector<std::string> expected;
  uint64_t bytes = 0;
  for (const auto& f : std::filesystem::directory_iterator(dcp)) {
    expected.push_back(f.path().string());
    bytes += f.file_size();
  }
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(report.files, expected);
  EXPECT_EQ(report.file_bytes, bytes);
}

// ckpt::verify: damage is reported, a path that is no checkpoint throws.
TEST(Verify, ReportsDamageAndThrowsOnWhatIsNoCheckpoint) {
  TempDir dir;
  const std::string pt = dir.path() + "/m.pt";
  save(pt, sample_state_dict(3, 16).to_value());
  VerifyReport r = verify(pt);
  EXPECT_TRUE(r.ok) << r.problem;
  EXPECT_EQ(r.format, Format::torch_zip);
  EXPECT_GE(r.records, 4u);  // data.pkl, version, byteorder, data/0...

  // One flipped byte inside a tensor's data: the record's CRC no longer matches.
  std::string bytes = slurp(pt);
  const int64_t at = open(pt).info("layer0.weight").file_offset;
  ASSERT_GT(at, 0);
  bytes[static_cast<size_t>(at) + 5] ^= 0x40;
  const std::string bad = dir.path() + "/bad.pt";
  { std::ofstream(bad, std::ios::binary) << bytes; }
  r = verify(bad);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.format, Format::torch_zip);
  EXPECT_NE(r.problem.find(bad), std::string::npos) << r.problem;

  const std::string st = dir.path() + "/m.safetensors";
  save_safetensors(st, sample_state_dict(2, 4));
  r = verify(st);
  EXPECT_TRUE(r.ok) << r.problem;
  EXPECT_EQ(r.format, Format::safetensors);
  EXPECT_EQ(r.records, 0u);

  const std::string text = dir.path() + "/notes.txt";
  { std::ofstream(text) << "not a checkpoint\n"; }
  EXPECT_THROW(verify(text), FormatError);
  EXPECT_THROW(verify(dir.path() + "/missing.pt"), IoError);

  const std::string dcp = std::string(CKPT_TEST_DATA_DIR) + "/dcp/torch2_w2";
  r = verify(dcp);
  EXPECT_TRUE(r.ok) << r.problem;
  EXPECT_EQ(r.format, Format::dcp);
  EXPECT_GT(r.items, 0u);
  EXPECT_GT(r.records, 0u);
}

// One resolve() under every entry point: open() takes what load() takes,
// a torch.distributed.checkpoint directory (or its .metadata) included.
TEST(Open, ADistributedCheckpointOpensConsolidatedLikeLoad) {
  const std::string dcp = std::string(CKPT_TEST_DATA_DIR) + "/dcp/torch2_w2";
  const Value loaded = load(dcp);
  for (const std::string& path : {dcp, dcp + "/.metadata"}) {
    Reader r = open(path);
    EXPECT_EQ(r.format(), Format::dcp);
    EXPECT_FALSE(r.files().empty());
    size_t n = 0;
    for_each_tensor(loaded, [&](const std::string& name, const Tensor& t) {
      ++n;
      ASSERT_TRUE(r.contains(name)) << name;
      EXPECT_EQ(r.info(name).file, dcp);
      EXPECT_EQ(r.info(name).file_offset, -1) << "assembled tensors have no place in one file";
      EXPECT_EQ(bytes_of(r.get(name)), bytes_of(t)) << name;
    });
    EXPECT_EQ(r.size(), n);
    EXPECT_GT(n, 0u);
  }
}

// SaveOptions::progress (and ShardOptions::progress): called on every write,
// the calls add up to the bytes of every file written.
TEST(SaveProgress, CallsAddUpToTheFilesWritten) {
  TempDir dir;
  const StateDict sd = sample_state_dict(6, 1000);
  uint64_t written = 0;
  size_t calls = 0;
  SaveOptions options;
  options.progress = [&](uint64_t n) {
    written += n;
    ++calls;
  };
  const auto size_of = [](const std::string& p) { return std::filesystem::file_size(p); };

  const std::string pt = dir.path() + "/m.pt";
  save(pt, sd.to_value(), options);
  EXPECT_EQ(written, size_of(pt));
  EXPECT_GT(calls, 0u);

  written = 0;
  const std::string st = dir.path() + "/m.safetensors";
  save_safetensors(st, sd, {{"format", "pt"}}, options);
  EXPECT_EQ(written, size_of(st));
  EXPECT_EQ(load_safetensors(st).size(), sd.size());

  written = 0;
  const std::string tree = dir.path() + "/ckpt.safetensors";
  save_safetensors_checkpoint(tree, Value(sd.to_value()), {{"format", "pt"}}, options);
  EXPECT_EQ(written, size_of(tree));

  written = 0;
  ShardOptions so;
  so.max_shard_size = 9000;
  so.progress = options.progress;
  ShardedFiles files = save_sharded(dir.path() + "/shards", sd, so);
  ASSERT_GT(files.files.size(), 1u);
  uint64_t on_disk = size_of(files.index);
  for (const auto& f : files.files) on_disk += size_of(f);
  EXPECT_EQ(written, on_disk);

  // A callback that throws aborts the save and leaves the previous file.
  const std::string before = slurp(pt);
  SaveOptions failing;
  failing.progress = [](uint64_t) { throw IoError("stop", 0); };
  EXPECT_THROW(save(pt, sample_state_dict(2, 10).to_value(), failing), IoError);
  EXPECT_EQ(slurp(pt), before);
  EXPECT_EQ(load_state_dict(pt).size(), sd.size());
}

// Two tensors that walk to the same path ("a/b" as a key, and "a" -> "b")
// cannot both be named: open() refuses the file rather than hide one.
TEST(Open, TwoTensorsWithOnePathAreRefused) {
  TempDir dir;
  const std::string pt = dir.path() + "/dup.pt";
  Value inner = Value::dict();
  inner.as_dict().set(Value("b"), Value(iota(DType::float32, {2})));
  Value root = Value::dict();
  root.as_dict().set(Value("a/b"), Value(iota(DType::float32, {3})));
  root.as_dict().set(Value("a"), inner);
  save(pt, root);
  try {
    open(pt);
    FAIL() << "opened a file with two tensors named a/b";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor a/b appears twice"), std::string::npos) << e.what();
    EXPECT_EQ(e.context().file, pt);
  }
}
