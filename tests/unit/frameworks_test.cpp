// Checkpoints that frameworks and old code leave behind, written by the real
// torch 1.13 and 2.x (tests/data/make_framework_fixtures.py): whole-model
// pickles, Lightning .ckpt files, files saved on GPUs (patched location tags,
// and real ones from tests/data/make_gpu_fixtures.py).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "ckpt/ckpt.hpp"
#include "test_util.hpp"

using namespace ckpt;
using ckpt::testing::data_path;
using ckpt::testing::slurp;

namespace {

nlohmann::json expected(const std::string& version, const std::string& name) {
  return nlohmann::json::parse(slurp(data_path("valid/" + version + "/" + name + ".expected.json")));
}

void expect_listing(const StateDict& sd, const nlohmann::json& tensors, const std::string& what) {
  ASSERT_EQ(sd.size(), tensors.size()) << what;
  size_t i = 0;
  for (const auto& [name, t] : sd) {
    const auto& e = tensors[i++];
    EXPECT_EQ(name, e["path"].get<std::string>()) << what;
    EXPECT_EQ(std::string(ckpt::name(t.dtype())), e["dtype"].get<std::string>()) << what << " " << name;
    EXPECT_EQ(t.sizes(), e["shape"].get<std::vector<int64_t>>()) << what << " " << name;
    EXPECT_EQ(tensor_sha256(t), e["sha256"].get<std::string>()) << what << " " << name;
  }
}

class Frameworks : public ::testing::TestWithParam<std::string> {};

TEST_P(Frameworks, FullModelPickleGivesModelStateDict) {
  const std::string path = data_path("valid/" + GetParam() + "/full_model.pt");
  auto exp = expected(GetParam(), "full_model");
  // Without the option: an error naming every class and the way out.
  try {
    (void)load_state_dict(path);
    FAIL() << "expected UnsafeError";
  } catch (const UnsafeError& e) {
    const std::string msg = e.what();
    for (const auto& cls : exp["classes"]) EXPECT_NE(msg.find(cls.get<std::string>()), std::string::npos) << msg;
    EXPECT_NE(msg.find("--objects"), std::string::npos) << msg;
  }
  LoadOptions o;
  o.weights_only = false;
  StateDict sd = load_state_dict(path, o);
  expect_listing(sd, exp["tensors"], path);
  EXPECT_EQ(sd.at("embed.weight").storage(), sd.at("head.weight").storage());  // tied
  EXPECT_FALSE(sd.at("embed.weight").is_parameter());
  EXPECT_FALSE(sd.contains("block.cache"));  // non-persistent buffer
  Value tree = load(path, o);
  EXPECT_TRUE(is_module_object(tree));
  EXPECT_EQ(tree.as_object().qualified(), "torch.nn.modules.container.Sequential");
  EXPECT_THROW(module_state_dict(Value(1)), TypeError);
}

TEST_P(Frameworks, LightningCheckpointReadsEveryKey) {
  const std::string path = data_path("valid/" + GetParam() + "/lightning.ckpt");
  auto exp = expected(GetParam(), "lightning");
  try {
    (void)load(path);
    FAIL() << "expected UnsafeError";
  } catch (const UnsafeError& e) {
    for (const auto& cls : exp["classes"])
      EXPECT_NE(std::string(e.what()).find(cls.get<std::string>()), std::string::npos) << e.what();
  }
  LoadOptions o;
  o.weights_only = false;
  Value root = load(path, o);
  std::vector<std::string> keys;
  for (const auto& [k, v] : root.as_dict()) keys.push_back(k.as_string());
  EXPECT_EQ(keys, exp["keys"].get<std::vector<std::string>>());
  EXPECT_EQ(lookup(root, "epoch").as_int(), exp["epoch"].get<int64_t>());
  EXPECT_EQ(lookup(root, "global_step").as_int(), exp["global_step"].get<int64_t>());
  o.key = "state_dict";
  expect_listing(load_state_dict(path, o), exp["state_dict"], path);
  // optimizer_states / lr_schedulers / loops / callbacks are plain data
  const Value& opt = lookup(root, "optimizer_states/0");
  std::vector<std::string> state_keys;
  for (const auto& [k, v] : lookup(opt, "state").as_dict()) state_keys.push_back(std::to_string(k.as_int()));
  std::sort(state_keys.begin(), state_keys.end());
  EXPECT_EQ(state_keys, exp["optimizer_state_keys"].get<std::vector<std::string>>());
  EXPECT_TRUE(lookup(opt, "state/0/exp_avg").is_tensor());
  EXPECT_EQ(lookup(root, "lr_schedulers/0/last_epoch").as_int(), exp["lr_schedulers_last_epoch"].get<int64_t>());
  EXPECT_EQ(lookup(root, "loops/fit_loop/epoch_progress/total/completed").as_int(), 3);
  const Value& cb = lookup(root, "callbacks").as_dict().begin()->second;
  const Tensor score = lookup(cb, "best_model_score").as_tensor();
  ASSERT_EQ(score.dtype(), DType::float32);
  float score_value = 0;
  std::memcpy(&score_value, score.data(), sizeof score_value);
  EXPECT_FLOAT_EQ(score_value, exp["best_model_score"].get<float>());
  // hyper_parameters: Lightning's AttributeDict (a dict subclass) holding an
  // argparse.Namespace, both inert objects.
  const Value& hp = lookup(root, "hyper_parameters");
  ASSERT_TRUE(hp.is_object());
  EXPECT_EQ(hp.as_object().qualified(), "pytorch_lightning.utilities.parsing.AttributeDict");
  const Object& ad = hp.as_object();
  const Value* args = nullptr;
  for (const auto& [k, v] : ad.dict_items)
    if (k.is_string() && k.as_string() == "args") args = &v;
  ASSERT_NE(args, nullptr);
  ASSERT_TRUE(args->is_object());
  EXPECT_EQ(args->as_object().qualified(), "argparse.Namespace");
  EXPECT_EQ(lookup(args->as_object().state, "batch_size").as_int(), 32);
}

TEST_P(Frameworks, CudaSavedFileKeepsDevicesAndMapLocationMovesThem) {
  const std::string path = data_path("valid/" + GetParam() + "/cuda_locations.pt");
  auto exp = expected(GetParam(), "cuda_locations");
  StateDict sd = load_state_dict(path);
  expect_listing(sd, exp["tensors"], path);
  for (const auto& [name, dev] : exp["devices"].items()) EXPECT_EQ(sd.at(name).device(), dev.get<std::string>()) << name;
  EXPECT_EQ(sd.at("b.bias").storage(), sd.at("a.weight").storage());

  LoadOptions o;
  o.map_location = MapLocation(std::map<std::string, std::string>{{"cuda:1", "cuda:0"}});
  for (const auto& [name, t] : load_state_dict(path, o)) EXPECT_EQ(t.device(), "cuda:0") << name;
  o.map_location = MapLocation("cpu");
  for (const auto& [name, t] : load_state_dict(path, o)) EXPECT_EQ(t.device(), "cpu") << name;
  o.map_location = MapLocation([](const std::string& d) { return d == "cuda:1" ? std::string("cuda:3") : d; });
  StateDict moved = load_state_dict(path, o);
  EXPECT_EQ(moved.at("a.bias").device(), "cuda:3");
  EXPECT_EQ(moved.at("a.weight").device(), "cuda:0");
  OpenOptions oo;
  oo.map_location = MapLocation("cpu");
  const Reader reader = open(path, oo);  // keep the Reader alive while iterating its tensors
  for (const auto& info : reader.tensors()) EXPECT_EQ(info.device, "cpu");
}

// Files saved from a real GPU (tests/data/make_gpu_fixtures.py, run on an
// NVIDIA H200 with torch 2.11 and PyTorch Lightning 2.6.6): a training
// checkpoint mixing cuda:0 and CPU tensors (AdamW keeps `step` on the CPU), and
// the .ckpt Lightning's ModelCheckpoint wrote. Expectations are torch.load's.
nlohmann::json gpu_listing(const Value& root) {
  nlohmann::json out = nlohmann::json::array();
  for_each_tensor(root, [&](const std::string& path, const Tensor& t) {
    out.push_back({{"path", path},
                   {"device", t.device()},
                   {"dtype", std::string(ckpt::name(t.dtype()))},
                   {"shape", t.sizes()},
                   {"sha256", tensor_sha256(t)}});
  });
  return out;
}

class GpuFiles : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuFiles, DevicesDtypesAndBytesAsTorchReadsThem) {
  const std::string path = data_path("valid/torch2_gpu/" + GetParam());
  const auto exp = expected("torch2_gpu", GetParam().substr(0, GetParam().rfind('.')));
  // torch 2.11 finds no global outside its weights-only allow-list: neither does ckpt.
  ASSERT_TRUE(exp["unsafe_globals"].empty());
  const Value root = load(path);
  std::vector<std::string> keys;
  for (const auto& [k, v] : root.as_dict()) keys.push_back(k.as_string());
  EXPECT_EQ(keys, exp["keys"].get<std::vector<std::string>>());
  EXPECT_EQ(lookup(root, "epoch").as_int(), exp["epoch"].get<int64_t>());
  const nlohmann::json got = gpu_listing(root);
  ASSERT_EQ(got.size(), exp["tensors"].size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], exp["tensors"][i]) << path;

  // map_location="cpu" and mmap: the same bytes, every tensor on the CPU.
  LoadOptions o;
  o.map_location = MapLocation("cpu");
  o.mmap = true;
  const nlohmann::json mapped = gpu_listing(load(path, o));
  ASSERT_EQ(mapped.size(), exp["tensors"].size());
  for (size_t i = 0; i < mapped.size(); ++i) {
    EXPECT_EQ(mapped[i]["device"], "cpu") << mapped[i]["path"];
    EXPECT_EQ(mapped[i]["sha256"], exp["tensors"][i]["sha256"]) << mapped[i]["path"];
  }
}

TEST(GpuLightning, TrainerCheckpointFromTheGpu) {
  const std::string path = data_path("valid/torch2_gpu/lightning_gpu.ckpt");
  const auto exp = expected("torch2_gpu", "lightning_gpu");
  const Value root = load(path);
  EXPECT_EQ(lookup(root, "global_step").as_int(), exp["global_step"].get<int64_t>());
  EXPECT_EQ(lookup(root, "pytorch-lightning_version").as_string(), exp["lightning"].get<std::string>());
  for (const auto& [k, v] : exp["hyper_parameters"].items()) {
    const Value& got = lookup(root, "hyper_parameters/" + k);
    if (v.is_string()) EXPECT_EQ(got.as_string(), v.get<std::string>()) << k;
    else if (v.is_number_integer()) EXPECT_EQ(got.as_int(), v.get<int64_t>()) << k;
    else EXPECT_DOUBLE_EQ(got.as_float(), v.get<double>()) << k;
  }
  // The monitored score is a 0-d float32 tensor left on the GPU.
  const Value& cb = lookup(root, "callbacks").as_dict().begin()->second;
  const Tensor score = lookup(cb, "best_model_score").as_tensor();
  EXPECT_EQ(score.device(), "cuda:0");
  float value = 0;
  std::memcpy(&value, score.data(), sizeof value);
  EXPECT_FLOAT_EQ(value, exp["best_model_score"].get<float>());
  // The model's weights, with Lightning's key, on the device they trained on.
  LoadOptions o;
  o.key = "state_dict";
  const StateDict sd = load_state_dict(path, o);
  EXPECT_EQ(sd.size(), 4u);
  for (const auto& [name, t] : sd) EXPECT_EQ(t.device(), "cuda:0") << name;
}

INSTANTIATE_TEST_SUITE_P(Torch2, GpuFiles, ::testing::Values("cuda_training.pt", "lightning_gpu.ckpt"),
                         [](const auto& p) { return p.param.substr(0, p.param.rfind('.')); });

// Files LibTorch's C++ API writes (tests/data/libtorch/make.sh, expectations
// from the same version's Python: torch.jit.load(f).state_dict() / torch.load).
class LibTorchFiles : public ::testing::TestWithParam<std::string> {};

TEST_P(LibTorchFiles, ReadAsTheSameVersionsPythonReadsThem) {
  const std::string dir = "valid/" + GetParam() + "/";
  for (const char* name : {"module", "tensor", "tensors", "optimizer"}) {
    const std::string path = data_path(dir + name + ".pt");
    EXPECT_EQ(detect_format(path), Format::torchscript) << path;
    expect_listing(load_state_dict(path), expected(GetParam(), name)["tensors"], path);
  }
  // torch::save(optimizer): Adam's state tensors are attributes of submodules,
  // listed in the module tree that weights_only=false gives.
  LoadOptions o;
  o.weights_only = false;
  std::vector<std::string> state;
  for_each_tensor(load(data_path(dir + "optimizer.pt"), o), [&](const std::string& p, const Tensor&) {
    auto slash = p.rfind('/');
    std::string leaf = p.substr(slash + 1);
    if (leaf == "exp_avg" || leaf == "exp_avg_sq") state.push_back(leaf);
  });
  std::sort(state.begin(), state.end());
  EXPECT_EQ(state, expected(GetParam(), "optimizer")["state_tensors"].get<std::vector<std::string>>());
  // torch::pickle_save: the torch.save zip format, typed containers wrapped in
  // torch.jit._pickle.restore_type_tag (an identity function, read inertly).
  const std::string pickle = data_path(dir + "pickle.pt");
  EXPECT_EQ(detect_format(pickle), Format::torch_zip);
  expect_listing(load_state_dict(pickle), expected(GetParam(), "pickle")["tensors"], pickle);
}

INSTANTIATE_TEST_SUITE_P(LibTorch, LibTorchFiles, ::testing::Values("libtorch113", "libtorch2"),
                         [](const auto& p) { return p.param; });

INSTANTIATE_TEST_SUITE_P(Torch, Frameworks, ::testing::Values("torch113", "torch2"),
                         [](const auto& p) { return p.param; });

}  // namespace
