// Reading files that real PyTorch (1.13 and 2.x) wrote: tests/data/valid/,
// made by tests/data/make_torch_fixtures.py, each with the listing torch
// itself produced (<name>.expected.json).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "ckpt/ckpt.hpp"

using namespace ckpt;

namespace {

std::string data_path(const std::string& rel) { return std::string(CKPT_TEST_DATA_DIR) + "/" + rel; }

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Fixture {
  std::string version;  // torch113 / torch2
  std::string name;     // net_state_dict / views / checkpoint
};

void PrintTo(const Fixture& f, std::ostream* os) { *os << f.version << "/" << f.name; }

class TorchFixture : public ::testing::TestWithParam<std::tuple<Fixture, bool>> {};

TEST_P(TorchFixture, MatchesWhatTorchLoaded) {
  auto [fx, mmap] = GetParam();
  std::string base = data_path("valid/" + fx.version + "/" + fx.name);
  auto expected = nlohmann::json::parse(slurp(base + ".expected.json"));
  LoadOptions opts;
  opts.mmap = mmap;
  Value root = load(base + ".pt", opts);

  std::vector<std::pair<std::string, Tensor>> got;
  for_each_tensor(root, [&](const std::string& p, const Tensor& t) { got.emplace_back(p, t); });
  ASSERT_EQ(got.size(), expected["tensors"].size());
  std::map<std::string, const void*> storage_of;
  for (size_t i = 0; i < got.size(); ++i) {
    const auto& e = expected["tensors"][i];
    const auto& [path, t] = got[i];
    SCOPED_TRACE(path);
    EXPECT_EQ(path, e["path"].get<std::string>());
    EXPECT_EQ(std::string(name(t.dtype())), e["dtype"].get<std::string>());
    EXPECT_EQ(t.sizes(), e["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(tensor_sha256(t), e["sha256"].get<std::string>());
    EXPECT_EQ(t.requires_grad(), e["requires_grad"].get<bool>());
    EXPECT_EQ(t.is_parameter(), e["is_parameter"].get<bool>());
    EXPECT_EQ(t.device(), "cpu");
    // Zip records are aligned and mapped in place; legacy storages are read
    // once into owned memory (they are referenced before their bytes appear).
    bool zip = fx.name.find("legacy") == std::string::npos && fx.name.find("tar") == std::string::npos;
    EXPECT_EQ(t.storage().backing(), mmap && zip ? Storage::Backing::mapped : Storage::Backing::owned);
    storage_of[path] = t.storage().id();
  }
  // Tensors that shared a storage in Python share one here, and no others do.
  std::set<std::string> in_group;
  for (const auto& group : expected["shared_groups"]) {
    const void* id = storage_of.at(group[0].get<std::string>());
    for (const auto& p : group) {
      EXPECT_EQ(storage_of.at(p.get<std::string>()), id) << p;
      in_group.insert(p.get<std::string>());
    }
  }
  std::map<const void*, std::string> seen;
  for (const auto& [path, id] : storage_of) {
    if (in_group.count(path)) continue;
    EXPECT_TRUE(seen.emplace(id, path).second) << path << " shares storage with " << seen[id];
  }
}

std::vector<std::tuple<Fixture, bool>> all_fixtures() {
  std::vector<std::tuple<Fixture, bool>> out;
  for (const char* v : {"torch113", "torch2"})
    for (const char* n : {"net_state_dict", "views", "checkpoint", "net_state_dict_legacy", "views_legacy",
                          "checkpoint_legacy", "scripted"})
      for (bool mmap : {false, true}) out.emplace_back(Fixture{v, n}, mmap);
  for (bool mmap : {false, true}) out.emplace_back(Fixture{"torch113", "old_tar"}, mmap);
  // Early TorchScript's 6-field persistent ids (tests/data/make_torchscript_pid6.py).
  for (bool mmap : {false, true}) out.emplace_back(Fixture{"torch113", "scripted_pid6"}, mmap);
  return out;
}

std::string fixture_name(const ::testing::TestParamInfo<std::tuple<Fixture, bool>>& p) {
  const Fixture& fx = std::get<0>(p.param);
  return fx.version + "_" + fx.name + (std::get<1>(p.param) ? "_mmap" : "_copy");
}

INSTANTIATE_TEST_SUITE_P(RealTorchFiles, TorchFixture, ::testing::ValuesIn(all_fixtures()), fixture_name);

TEST(Load, StateDictKeepsMetadataAndOrder) {
  for (const char* v : {"torch113/net_state_dict", "torch2/net_state_dict", "torch113/net_state_dict_legacy",
                        "torch2/net_state_dict_legacy"}) {
    StateDict sd = load_state_dict(data_path(std::string("valid/") + v + ".pt"));
    EXPECT_EQ(sd.keys().front(), "conv.weight");
    EXPECT_EQ(sd.at("bn.num_batches_tracked").dtype(), DType::int64);
    EXPECT_EQ(sd.at("bn.num_batches_tracked").dim(), 0);
    ASSERT_TRUE(sd.metadata.is_dict()) << v;
    const Value& bn = sd.metadata.as_dict().at(Value("bn"));
    EXPECT_EQ(bn.as_dict().at(Value("version")).as_int(), 2);
    EXPECT_EQ(sd.at("fc.weight").storage(), sd.at("head.weight").storage());
  }
}

TEST(Load, ManySmallTensorsAreIndependentWritableCopies) {
  // Small records are read into slices of shared blocks: each tensor must
  // still be its own storage, writable, exact, and alive without the others.
  StateDict sd;
  for (int i = 0; i < 3000; ++i) {
    Tensor t = Tensor::empty(DType::float32, {1 + (i * 37) % 700});
    auto* f = reinterpret_cast<float*>(t.mutable_data());
    for (int64_t j = 0; j < t.numel(); ++j) f[j] = static_cast<float>(i) + static_cast<float>(j) / 1024.0f;
    sd.set("p." + std::to_string(i), t);
  }
  sd.set("big", Tensor::empty(DType::uint8, {int64_t{200} << 10}));
  const std::string file = save_to_buffer(sd.to_value());
  StateDict in = load_state_dict(std::as_bytes(std::span<const char>(file)));
  ASSERT_EQ(in.size(), sd.size());
  std::set<const void*> storages;
  for (const auto& [name, t] : in) {
    EXPECT_TRUE(t.equal(sd.at(name))) << name;
    EXPECT_TRUE(t.storage().writable()) << name;
    EXPECT_EQ(t.storage().nbytes(), t.nbytes()) << name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % Storage::kAlignment, 0u) << name;
    storages.insert(t.storage().id());
  }
  EXPECT_EQ(storages.size(), in.size());
  // Writing one tensor leaves its neighbours alone.
  std::memset(in.at("p.1").mutable_data(), 0xff, in.at("p.1").nbytes());
  EXPECT_TRUE(in.at("p.0").equal(sd.at("p.0")));
  EXPECT_TRUE(in.at("p.2").equal(sd.at("p.2")));
  // One tensor outlives the state dict it came from.
  Tensor keep = in.at("p.2999");
  in = StateDict();
  EXPECT_TRUE(keep.equal(sd.at("p.2999")));
}

TEST(Load, CheckpointValuesAreExact) {
  for (const char* v : {"torch113/checkpoint", "torch2/checkpoint", "torch113/checkpoint_legacy",
                        "torch2/checkpoint_legacy"}) {
    SCOPED_TRACE(v);
    Value c = load(data_path(std::string("valid/") + v + ".pt"));
    const Dict& d = c.as_dict();
    EXPECT_FALSE(d.ordered);
    EXPECT_EQ(d.at(Value("epoch")).as_int(), 7);
    EXPECT_EQ(d.at(Value("step")).as_int(), 123456789012);
    EXPECT_EQ(d.at(Value("best_val")).as_float(), 0.125);
    EXPECT_EQ(d.at(Value("names")).repr(), "['a', 'b']");
    EXPECT_EQ(d.at(Value("flags")).repr(), "(True, False, None)");
    EXPECT_EQ(d.at(Value("blob")).as_bytes(), std::string("\x00\xff" "bytes", 7));
    EXPECT_EQ(lookup(c, "optimizer/param_groups/0/lr").as_float(), 1e-3);
    EXPECT_TRUE(lookup(c, "optimizer/state/0/exp_avg").is_tensor());
    EXPECT_TRUE(lookup(c, "nested/1").is_tensor());
  }
}

TEST(Load, StateDictErrorSaysWhatTheFileHolds) {
  std::string path = data_path("valid/torch2/checkpoint.pt");
  try {
    load_state_dict(path);
    FAIL() << "expected TypeError";
  } catch (const TypeError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("a dict with keys 'model'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("key 'model' holds a state dict"), std::string::npos) << msg;
  }
  LoadOptions opts;
  opts.key = "model";
  EXPECT_EQ(load_state_dict(path, opts).size(), 11u);
  opts.key = "nope";
  EXPECT_THROW(load_state_dict(path, opts), TypeError);
}

TEST(Load, MapLocationRewritesDevices) {
  std::string path = data_path("valid/torch2/views.pt");
  LoadOptions opts;
  opts.map_location = MapLocation(std::map<std::string, std::string>{{"cpu", "cuda:1"}});
  Value v = load(path, opts);
  for_each_tensor(v, [](const std::string&, const Tensor& t) { EXPECT_EQ(t.device(), "cuda:1"); });
  opts.map_location = MapLocation([](const std::string& d) { return d + "!"; });
  for_each_tensor(load(path, opts), [](const std::string&, const Tensor& t) { EXPECT_EQ(t.device(), "cpu!"); });
}

TEST(Load, DetectsFormatsFromBytes) {
  EXPECT_EQ(detect_format(data_path("valid/torch2/views.pt")), Format::torch_zip);
  EXPECT_EQ(detect_format(data_path("valid/torch2/views_legacy.pt")), Format::torch_legacy);
  EXPECT_EQ(detect_format(data_path("valid/torch113/old_tar.pt")), Format::torch_tar);
  EXPECT_EQ(detect_format(data_path("valid/torch113/scripted.pt")), Format::torchscript);
}

TEST(Load, LegacyTruncationIsAnErrorNeverACrash) {
  std::string bytes = slurp(data_path("valid/torch2/views_legacy.pt"));
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::span<const std::byte> cut(reinterpret_cast<const std::byte*>(bytes.data()), n);
    EXPECT_THROW(load(cut), Error) << "truncated at " << n;
  }
}

TEST(Load, FromMemoryBuffer) {
  std::string bytes = slurp(data_path("valid/torch113/net_state_dict.pt"));
  StateDict sd = load_state_dict(std::as_bytes(std::span<const char>(bytes)));
  EXPECT_EQ(sd.size(), 11u);
  EXPECT_EQ(detect_format(std::as_bytes(std::span<const char>(bytes))), Format::torch_zip);
}

TEST(Load, TruncationAtEveryOffsetIsAnErrorNeverACrash) {
  std::string bytes = slurp(data_path("valid/torch2/views.pt"));
  for (size_t n = 0; n < bytes.size(); n += (n < 200 || bytes.size() - n < 600) ? 1 : 7) {
    std::span<const std::byte> cut(reinterpret_cast<const std::byte*>(bytes.data()), n);
    EXPECT_THROW(load(cut), Error) << "truncated at " << n;
  }
}

TEST(Load, UnknownFormatErrorShowsTheBytes) {
  std::string junk = "hello, this is not a checkpoint";
  try {
    load(std::as_bytes(std::span<const char>(junk)));
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("first bytes: 68 65 6c 6c"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load(data_path("does/not/exist.pt")), IoError);
}

}  // namespace

// ls --digest of a non-contiguous view streams it (bounded buffer): the
// digest must equal the sha256 of the materialised t.contiguous() bytes.
TEST(TensorDigest, StridedAndExpandedViewsHashLikeTheirContiguousCopy) {
  std::vector<std::byte> bytes(4 * 6 * 4);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>(i * 7 + 1);
  ckpt::Storage s = ckpt::Storage::copy_of(bytes);
  const std::vector<ckpt::Tensor> views = {
      ckpt::Tensor(s, ckpt::DType::float32, {6, 4}, {1, 6}),                // transposed
      ckpt::Tensor(s, ckpt::DType::float32, {3, 2, 5}, {8, 0, 1}, 1),       // stride 0 in the middle
      ckpt::Tensor(s, ckpt::DType::float32, {1 << 19}, {0}, 3),             // one float expanded (2 MiB view)
      ckpt::Tensor(s, ckpt::DType::float32, {300000, 2}, {0, 1}, 2),        // rows of 8 bytes, several chunks
      ckpt::Tensor(s, ckpt::DType::float32, {2, 0, 3}, {3, 3, 1}),          // empty
  };
  for (const auto& v : views) {
    ASSERT_FALSE(v.numel() > 0 && v.is_contiguous());
    ckpt::Tensor copy = v.contiguous();
    ASSERT_TRUE(copy.is_contiguous());
    EXPECT_EQ(ckpt::tensor_sha256(v), ckpt::tensor_sha256(copy)) << v.numel();
  }
  // An expanded view of 2^50 floats is refused, not hashed for hours or copied.
  ckpt::Tensor huge(s, ckpt::DType::float32, {int64_t{1} << 50}, {0});
  EXPECT_THROW(ckpt::tensor_sha256(huge), ckpt::LimitError);
}
