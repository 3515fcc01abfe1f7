// Tests of the LibTorch adapter (ckpt::torch). No Python needed; the
// Python-side checks are resume.py.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <unistd.h>

#include "ckpt/error.hpp"
#include "ckpt/torch.hpp"

namespace ct = ckpt::torch;
namespace fs = std::filesystem;

namespace {

class TempDir {
 public:
  TempDir() {
    path_ = fs::temp_directory_path() / ("ckpt_torch_test_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(counter_++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
  static inline int counter_ = 0;
};

ckpt::Tensor arange_f32(std::vector<int64_t> sizes) {
  ckpt::Tensor t = ckpt::Tensor::empty(ckpt::DType::float32, sizes);
  auto* p = reinterpret_cast<float*>(t.mutable_data());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(i);
  return t;
}

// Sequential(BatchNorm1d(3), Linear(3, 2)): parameters and buffers interleave
// per module in Python's order.
torch::nn::Sequential bn_linear() {
  torch::manual_seed(1);
  return torch::nn::Sequential(torch::nn::BatchNorm1d(3), torch::nn::Linear(3, 2));
}

template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const ckpt::Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

// ---- dtypes and tensors -------------------------------------------------------

TEST(TorchDType, RoundTripsEveryCommonDType) {
  using ckpt::DType;
  for (DType d : {DType::float64, DType::float32, DType::float16, DType::bfloat16, DType::int8, DType::int16,
                  DType::int32, DType::int64, DType::uint8, DType::bool_, DType::complex32, DType::complex64,
                  DType::complex128}) {
    EXPECT_EQ(ct::from_scalar_type(ct::to_scalar_type(d)), d) << ckpt::name(d);
    EXPECT_EQ(c10::elementSize(ct::to_scalar_type(d)), ckpt::itemsize(d)) << ckpt::name(d);
  }
  EXPECT_EQ(ct::to_scalar_type(DType::float32), torch::kFloat32);
  EXPECT_THROW(ct::to_scalar_type(DType::qint8), ckpt::UnsupportedError);
#if TORCH_VERSION_MAJOR < 2
  EXPECT_THROW(ct::to_scalar_type(DType::float8_e4m3fn), ckpt::UnsupportedError);
  EXPECT_THROW(ct::to_scalar_type(DType::uint16), ckpt::UnsupportedError);
#else
  EXPECT_EQ(ct::from_scalar_type(ct::to_scalar_type(DType::float8_e4m3fn)), DType::float8_e4m3fn);
  EXPECT_EQ(ct::from_scalar_type(ct::to_scalar_type(DType::uint16)), DType::uint16);
#endif
  EXPECT_THROW(ct::from_scalar_type(torch::kQInt8), ckpt::UnsupportedError);
}

TEST(TorchTensor, ToTorchIsZeroCopyAndKeepsTheStorageAlive) {
  torch::Tensor t;
  const void* data = nullptr;
  {
    ckpt::Tensor c = arange_f32({2, 3});
    data = c.data();
    t = ct::to_torch(c);
    EXPECT_EQ(c.storage().use_count(), 2);  // the torch tensor holds one reference
  }
  EXPECT_EQ(t.data_ptr(), data);
  EXPECT_EQ(t.sizes(), torch::IntArrayRef({2, 3}));
  EXPECT_EQ(t[1][2].item<float>(), 5.0f);
  t[0][0] = 42.0f;  // writable, same memory
  EXPECT_EQ(*static_cast<const float*>(data), 42.0f);
}

TEST(TorchTensor, ToTorchKeepsStridesOffsetAndRequiresGrad) {
  ckpt::Tensor base = arange_f32({12});
  // A transposed 3x2 view starting at element 1 (strides 1, 3): [[1, 4], [2, 5], [3, 6]]
  ckpt::Tensor view(base.storage(), ckpt::DType::float32, {3, 2}, {1, 3}, 1);
  view.set_requires_grad(true);
  torch::Tensor t = ct::to_torch(view);
  EXPECT_EQ(t.strides(), torch::IntArrayRef({1, 3}));
  EXPECT_EQ(t.storage_offset(), 1);
  EXPECT_TRUE(t.requires_grad());
  EXPECT_EQ(t[2][1].item<float>(), 6.0f);
  // Two views of one ckpt storage share memory in torch as well.
  torch::Tensor whole = ct::to_torch(base);
  EXPECT_EQ(static_cast<const char*>(t.data_ptr()), static_cast<const char*>(whole.data_ptr()) + 4);
  // A forced copy has the same values and layout, not the same memory.
  torch::Tensor copy = ct::to_torch(view, {.copy = true});
  EXPECT_NE(copy.data_ptr(), t.data_ptr());
  EXPECT_TRUE(torch::equal(copy, t.detach()));
  EXPECT_EQ(copy.strides(), torch::IntArrayRef({1, 3}));
}

TEST(TorchTensor, ReadOnlyStorageIsCopied) {
  static const float values[] = {1, 2, 3, 4};
  auto bytes = reinterpret_cast<std::byte*>(const_cast<float*>(values));
  ckpt::Storage ro = ckpt::Storage::external(bytes, sizeof values, {}, /*writable=*/false);
  ckpt::Tensor c(ro, ckpt::DType::float32, {2, 2}, {2, 1}, 0);
  torch::Tensor t = ct::to_torch(c);
  EXPECT_NE(t.data_ptr(), static_cast<const void*>(values));
  EXPECT_EQ(t[1][1].item<float>(), 4.0f);
}

TEST(TorchTensor, FromTorchIsZeroCopyAndKeepsTheTorchTensorAlive) {
  ckpt::Tensor c;
  void* data = nullptr;
  {
    torch::Tensor t = torch::arange(12, torch::kFloat64).reshape({3, 4}).t();
    data = t.data_ptr();
    c = ct::from_torch(t);
  }
  EXPECT_EQ(static_cast<const void*>(c.data()), data);
  EXPECT_EQ(c.dtype(), ckpt::DType::float64);
  EXPECT_EQ(c.sizes(), (std::vector<int64_t>{4, 3}));
  EXPECT_EQ(c.strides(), (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(c.device(), "cpu");
  EXPECT_EQ(c.storage().backing(), ckpt::Storage::Backing::external);
  auto bytes = c.contiguous_bytes();
  EXPECT_EQ(reinterpret_cast<const double*>(bytes.data())[1], 4.0);  // row 0: 0, 4, 8

  torch::Tensor p = torch::ones({2}, torch::requires_grad());
  EXPECT_TRUE(ct::from_torch(p).requires_grad());
  torch::Tensor sliced = torch::arange(10, torch::kInt32).slice(0, 3, 7);
  ckpt::Tensor cs = ct::from_torch(sliced);
  EXPECT_EQ(cs.storage_offset(), 3);
  EXPECT_TRUE(torch::equal(ct::to_torch(cs), sliced));
  EXPECT_FALSE(ct::from_torch(torch::Tensor()).defined());
  // Empty tensors cross both ways.
  ckpt::Tensor empty = ct::from_torch(torch::empty({0, 3}));
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_EQ(ct::to_torch(empty).sizes(), torch::IntArrayRef({0, 3}));
  EXPECT_EQ(ct::to_torch(ckpt::Tensor::empty(ckpt::DType::int64, {2, 0})).sizes(), torch::IntArrayRef({2, 0}));
}

// ---- modules ------------------------------------------------------------------

TEST(TorchModule, StateDictUsesPythonOrder) {
  auto m = bn_linear();
  auto sd = ct::state_dict(*m);
  EXPECT_EQ(sd.keys(), (std::vector<std::string>{"0.weight", "0.bias", "0.running_mean", "0.running_var",
                                                 "0.num_batches_tracked", "1.weight", "1.bias"}));
  EXPECT_EQ(sd.at("0.num_batches_tracked").dtype(), ckpt::DType::int64);
  EXPECT_FALSE(sd.at("1.weight").requires_grad());  // detached, as Python's state_dict()
  // A view of the module's memory.
  EXPECT_EQ(static_cast<const void*>(sd.at("1.weight").data()), m[1]->as<torch::nn::Linear>()->weight.data_ptr());
}

TEST(TorchModule, LoadStateDictCopiesEveryTensor) {
  auto a = bn_linear();
  torch::manual_seed(7);
  auto b = torch::nn::Sequential(torch::nn::BatchNorm1d(3), torch::nn::Linear(3, 2));
  {
    torch::NoGradGuard g;
    a[0]->as<torch::nn::BatchNorm1d>()->running_mean.fill_(0.5);
  }
  auto r = ct::load_state_dict(*b, ct::state_dict(*a));
  EXPECT_TRUE(r.empty());
  for (const auto& [k, t] : ct::state_dict(*a)) {
    EXPECT_TRUE(ct::state_dict(*b).at(k).equal(t)) << k;
  }
  // Copies, not aliases; parameters still require grad.
  auto lb = b[1]->as<torch::nn::Linear>();
  EXPECT_NE(lb->weight.data_ptr(), a[1]->as<torch::nn::Linear>()->weight.data_ptr());
  EXPECT_TRUE(lb->weight.requires_grad());
}

TEST(TorchModule, StrictErrorsReadLikePyTorch) {
  auto m = bn_linear();
  ckpt::StateDict sd = ct::state_dict(*m);
  sd.erase("1.bias");
  sd.set("extra", arange_f32({1}));
  sd.set("1.weight", arange_f32({3, 3}));
  std::string msg = error_of([&] { ct::load_state_dict(*m, sd); });
  EXPECT_EQ(msg,
            "Error(s) in loading state_dict for Sequential:\n"
            "\tMissing key(s) in state_dict: \"1.bias\". \n"
            "\tUnexpected key(s) in state_dict: \"extra\". \n"
            "\tsize mismatch for 1.weight: copying a param with shape torch.Size([3, 3]) from checkpoint, "
            "the shape in current model is torch.Size([2, 3]).");

  auto r = ct::load_state_dict(*m, sd, {.strict = false});
  EXPECT_EQ(r.missing_keys, std::vector<std::string>{"1.bias"});
  EXPECT_EQ(r.unexpected_keys, std::vector<std::string>{"extra"});
  ASSERT_EQ(r.mismatched.size(), 1u);
  EXPECT_EQ(r.mismatched[0].key, "1.weight");
  EXPECT_EQ(r.mismatched[0].checkpoint_shape, (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(r.mismatched[0].model_shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ct::module_class_name(*m[1]), "Linear");
}

TEST(TorchModule, RenameRulesAndFilters) {
  auto src = bn_linear();
  ckpt::StateDict ddp;
  for (const auto& [k, t] : ct::state_dict(*src)) ddp.set("module." + k, t);

  torch::manual_seed(3);
  auto m = torch::nn::Sequential(torch::nn::BatchNorm1d(3), torch::nn::Linear(3, 2));
  EXPECT_THROW(ct::load_state_dict(*m, ddp), ckpt::TypeError);
  EXPECT_TRUE(ct::load_state_dict(*m, ddp, {.rename = {ct::strip_data_parallel()}}).empty());
  EXPECT_TRUE(torch::equal(m[1]->as<torch::nn::Linear>()->weight, src[1]->as<torch::nn::Linear>()->weight));

  // Partial loading: only the BatchNorm; the Linear keeps its values.
  torch::manual_seed(4);
  auto p = torch::nn::Sequential(torch::nn::BatchNorm1d(3), torch::nn::Linear(3, 2));
  torch::Tensor before = p[1]->as<torch::nn::Linear>()->weight.clone();
  ckpt::StateDict only_bn = ct::state_dict(*src);
  only_bn.erase("1.weight");
  EXPECT_TRUE(ct::load_state_dict(*p, only_bn, {.only = "^0\\."}).empty());
  EXPECT_TRUE(torch::equal(p[1]->as<torch::nn::Linear>()->weight, before));
  EXPECT_TRUE(ct::load_state_dict(*p, only_bn, {.exclude = "^1\\."}).empty());
  EXPECT_EQ(ct::strip_prefix("a.b(").pattern, "^a\\.b\\(");
  EXPECT_THROW(ct::load_state_dict(*p, only_bn, {.only = "("}), ckpt::Error);
}

TEST(TorchModule, FileRoundTripWithKey) {
  TempDir dir;
  auto a = bn_linear();
  ct::save_state_dict(*a, dir.file("sd.pt"));
  torch::manual_seed(9);
  auto b = torch::nn::Sequential(torch::nn::BatchNorm1d(3), torch::nn::Linear(3, 2));
  EXPECT_TRUE(ct::load_state_dict(*b, dir.file("sd.pt").c_str()).empty());
  EXPECT_TRUE(torch::equal(b[1]->as<torch::nn::Linear>()->bias, a[1]->as<torch::nn::Linear>()->bias));

  ckpt::Value root = ckpt::Value::dict();
  root.as_dict().set("state_dict", ct::state_dict(*a).to_value());
  root.as_dict().set("epoch", int64_t{3});
  ckpt::save(dir.file("ckpt.pt"), root);
  EXPECT_TRUE(ct::load_state_dict(*b, dir.file("ckpt.pt"), {.key = "state_dict"}).empty());
  EXPECT_TRUE(ct::load_state_dict(*b, root, {.key = "state_dict"}).empty());
  std::string msg = error_of([&] { ct::load_state_dict(*b, dir.file("ckpt.pt")); });
  EXPECT_NE(msg.find("ckpt.pt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("state_dict"), std::string::npos) << msg;
}

TEST(TorchModule, LoadFromPathWritesIntoTheExistingParameters) {
  TempDir dir;
  // The file: the weight saved transposed (a non-contiguous view of its
  // storage), the bias as float64 while the model holds float32.
  ckpt::Tensor wt = arange_f32({3, 2});  // Linear(3, 2).weight is [2, 3]
  ckpt::Tensor weight(wt.storage(), ckpt::DType::float32, {2, 3}, {1, 2}, 0);
  ckpt::Tensor bias = arange_f32({2}).to(ckpt::DType::float64);
  ckpt::StateDict sd;
  sd.set("weight", weight);
  sd.set("bias", bias);
  ckpt::save_state_dict(dir.file("sd.pt"), sd);

  torch::nn::Linear lin(3, 2);
  const void* weight_memory = lin->weight.data_ptr();
  const void* bias_memory = lin->bias.data_ptr();
  EXPECT_TRUE(ct::load_state_dict(*lin, dir.file("sd.pt")).empty());
  // The parameters keep their memory: the file was copied into it.
  EXPECT_EQ(lin->weight.data_ptr(), weight_memory);
  EXPECT_EQ(lin->bias.data_ptr(), bias_memory);
  EXPECT_EQ(lin->bias.scalar_type(), torch::kFloat32);
  auto expect_w = torch::arange(6, torch::kFloat32).reshape({3, 2}).t();
  EXPECT_TRUE(torch::equal(lin->weight, expect_w)) << lin->weight;
  EXPECT_TRUE(torch::equal(lin->bias, torch::arange(2, torch::kFloat32))) << lin->bias;
}

// ---- optimizers ---------------------------------------------------------------

namespace {

struct OptCase {
  const char* name;
  std::function<std::unique_ptr<torch::optim::Optimizer>(std::vector<torch::Tensor>)> make;
  std::vector<std::string> state_keys;
};

std::vector<OptCase> opt_cases() {
  using namespace torch::optim;
  return {
      {"SGD", [](auto p) { return std::make_unique<SGD>(p, SGDOptions(0.1).momentum(0.9).nesterov(true)); },
       {"momentum_buffer"}},
      {"Adam", [](auto p) { return std::make_unique<Adam>(p, AdamOptions(0.01).amsgrad(true)); },
       {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}},
      {"AdamW", [](auto p) { return std::make_unique<AdamW>(p, AdamWOptions(0.01)); },
       {"step", "exp_avg", "exp_avg_sq"}},
      {"RMSprop",
       [](auto p) { return std::make_unique<RMSprop>(p, RMSpropOptions(0.01).momentum(0.5).centered(true)); },
       {"step", "square_avg", "momentum_buffer", "grad_avg"}},
      {"Adagrad", [](auto p) { return std::make_unique<Adagrad>(p, AdagradOptions(0.1)); }, {"step", "sum"}},
  };
}

void train(torch::nn::Module& m, torch::optim::Optimizer& o, int steps) {
  torch::manual_seed(5);
  auto x = torch::randn({8, 3});
  for (int i = 0; i < steps; ++i) {
    o.zero_grad();
    auto out = m.as<torch::nn::Sequential>() ? m.as<torch::nn::Sequential>()->forward(x) : x;
    out.pow(2).sum().backward();
    o.step();
  }
}

std::vector<std::string> dict_keys(const ckpt::Value& v) {
  std::vector<std::string> k;
  for (const auto& [key, val] : v.as_dict()) k.push_back(key.as_string());
  return k;
}

}  // namespace

TEST(TorchOptim, StateDictHasPythonLayout) {
  for (const auto& c : opt_cases()) {
    SCOPED_TRACE(c.name);
    auto m = bn_linear();
    auto o = c.make(m->parameters());
    train(*m, *o, 2);
    ckpt::Value sd = ct::optimizer_state_dict(*o);
    EXPECT_EQ(dict_keys(sd), (std::vector<std::string>{"state", "param_groups"}));
    const ckpt::Dict& state = ckpt::lookup(sd, "state").as_dict();
    ASSERT_EQ(state.size(), 4u);  // bn weight, bias; linear weight, bias
    EXPECT_EQ(dict_keys(state.at(int64_t{2})), c.state_keys);
    const ckpt::Value& group = ckpt::lookup(sd, "param_groups/0");
    EXPECT_EQ(ckpt::lookup(group, "params"), ckpt::Value::list({0, 1, 2, 3}));
    EXPECT_EQ(dict_keys(group).back(), "params");
    EXPECT_EQ(dict_keys(group).front(), "lr");
    const ckpt::Value& buf = state.at(int64_t{2}).as_dict().at(c.state_keys.back());
    EXPECT_EQ(buf.as_tensor().sizes(), (std::vector<int64_t>{2, 3}));
    if (c.state_keys.front() == "step") {
      const ckpt::Value& step = state.at(int64_t{2}).as_dict().at("step");
      if (std::string(c.name) == "RMSprop" && TORCH_VERSION_MAJOR < 2) {
        EXPECT_EQ(step, ckpt::Value(int64_t{2}));
      } else {
        ASSERT_TRUE(step.is_tensor());
        EXPECT_EQ(step.as_tensor().dtype(), ckpt::DType::float32);
        EXPECT_EQ(step.as_tensor().dim(), 0);
        EXPECT_EQ(*reinterpret_cast<const float*>(step.as_tensor().data()), 2.0f);
      }
    }
  }
}

TEST(TorchOptim, ParamGroupKeysPerTorchVersion) {
  auto m = bn_linear();
  torch::optim::Adam adam(m->parameters(), torch::optim::AdamOptions(0.01));
  EXPECT_EQ(dict_keys(ckpt::lookup(ct::optimizer_state_dict(adam, ct::PythonLayout::torch1_13), "param_groups/0")),
            (std::vector<std::string>{"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach",
                                      "capturable", "differentiable", "fused", "params"}));
  EXPECT_EQ(dict_keys(ckpt::lookup(ct::optimizer_state_dict(adam, ct::PythonLayout::torch2), "param_groups/0")),
            (std::vector<std::string>{"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach",
                                      "capturable", "differentiable", "fused", "decoupled_weight_decay",
                                      "params"}));
  torch::optim::SGD sgd(m->parameters(), torch::optim::SGDOptions(0.1));
  ckpt::Value g = ckpt::lookup(ct::optimizer_state_dict(sgd, ct::PythonLayout::torch1_13), "param_groups/0");
  EXPECT_EQ(dict_keys(g), (std::vector<std::string>{"lr", "momentum", "dampening", "weight_decay", "nesterov",
                                                    "maximize", "foreach", "differentiable", "params"}));
  EXPECT_TRUE(ckpt::lookup(g, "momentum").is_int());  // Python's default 0 is an int
  EXPECT_TRUE(ckpt::lookup(g, "lr").is_float());
}

TEST(TorchOptim, RoundTripContinuesIdentically) {
  for (const auto& c : opt_cases()) {
    SCOPED_TRACE(c.name);
    // Reference: 3 + 2 steps uninterrupted.
    auto ref = bn_linear();
    auto ref_opt = c.make(ref->parameters());
    train(*ref, *ref_opt, 3);
    // Copy after 3 steps through the Python layout (and a file), then 2 more steps.
    TempDir dir;
    ct::save_checkpoint(dir.file("c.pt"), *ref, ref_opt.get(), {.epoch = 1, .step = 3, .best_metric = 0.25});
    train(*ref, *ref_opt, 2);

    torch::manual_seed(11);
    auto m = torch::nn::Sequential(torch::nn::BatchNorm1d(3), torch::nn::Linear(3, 2));
    // Different hyper-parameters on purpose: the checkpoint's must win.
    auto o = c.make(m->parameters());
    for (auto& g : o->param_groups()) g.options().set_lr(123.0);
    ct::TrainingState st = ct::load_checkpoint(dir.file("c.pt"), *m, o.get());
    EXPECT_EQ(st.epoch, 1);
    EXPECT_EQ(st.step, 3);
    EXPECT_EQ(st.best_metric, 0.25);
    train(*m, *o, 2);
    for (const auto& [k, t] : ct::state_dict(*ref)) {
      EXPECT_TRUE(torch::allclose(ct::to_torch(t), ct::to_torch(ct::state_dict(*m).at(k)), 0, 0)) << k;
    }
    EXPECT_EQ(ct::optimizer_state_dict(*o), ct::optimizer_state_dict(*ref_opt));
  }
}

TEST(TorchOptim, SeveralParamGroupsAreNumberedAcrossGroups) {
  auto m = bn_linear();
  auto bn = m[0]->as<torch::nn::BatchNorm1d>();
  auto fc = m[1]->as<torch::nn::Linear>();
  using torch::optim::Adam, torch::optim::AdamOptions, torch::optim::OptimizerParamGroup;
  auto make = [&] {
    std::vector<OptimizerParamGroup> groups;
    groups.emplace_back(std::vector<torch::Tensor>{bn->weight, bn->bias}, std::make_unique<AdamOptions>(0.1));
    groups.emplace_back(std::vector<torch::Tensor>{fc->weight, fc->bias}, std::make_unique<AdamOptions>(0.01));
    return std::make_unique<Adam>(std::move(groups), AdamOptions(0.5));
  };
  auto adam = make();
  train(*m, *adam, 2);
  ckpt::Value sd = ct::optimizer_state_dict(*adam);
  EXPECT_EQ(ckpt::lookup(sd, "param_groups/0/params"), ckpt::Value::list({0, 1}));
  EXPECT_EQ(ckpt::lookup(sd, "param_groups/1/params"), ckpt::Value::list({2, 3}));
  EXPECT_EQ(ckpt::lookup(sd, "param_groups/1/lr").as_float(), 0.01);
  EXPECT_EQ(ckpt::lookup(sd, "state/3/exp_avg").as_tensor().sizes(), (std::vector<int64_t>{2}));

  auto other = make();
  for (auto& g : other->param_groups()) g.options().set_lr(1.0);
  ct::load_optimizer_state_dict(*other, sd);
  EXPECT_EQ(other->param_groups()[0].options().get_lr(), 0.1);
  EXPECT_EQ(other->param_groups()[1].options().get_lr(), 0.01);
  EXPECT_EQ(ct::optimizer_state_dict(*other), sd);

  torch::optim::Adam one_group(m->parameters(), AdamOptions(0.1));
  EXPECT_NE(error_of([&] { ct::load_optimizer_state_dict(one_group, sd); })
                .find("loaded state dict has a different number of parameter groups (2 in the checkpoint, 1 in "
                      "the Adam optimizer)"),
            std::string::npos);
}

TEST(TorchOptim, MismatchesAreClearErrors) {
  auto m = bn_linear();
  torch::optim::Adam adam(m->parameters(), torch::optim::AdamOptions(0.01));
  train(*m, adam, 1);
  ckpt::Value sd = ct::optimizer_state_dict(adam);

  auto small = torch::nn::Linear(3, 2);
  torch::optim::Adam other(small->parameters(), torch::optim::AdamOptions(0.01));
  EXPECT_NE(error_of([&] { ct::load_optimizer_state_dict(other, sd); })
                .find("loaded state dict contains a parameter group that doesn't match the size of optimizer's group"),
            std::string::npos);
  torch::optim::SGD sgd(m->parameters(), torch::optim::SGDOptions(0.1));
  EXPECT_NO_THROW(ct::load_optimizer_state_dict(sgd, ct::optimizer_state_dict(sgd)));

  // A state tensor of the wrong shape names the parameter and the key.
  auto m2 = torch::nn::Sequential(torch::nn::BatchNorm1d(3), torch::nn::Linear(3, 4));
  torch::optim::Adam adam2(m2->parameters(), torch::optim::AdamOptions(0.01));
  std::string msg = error_of([&] { ct::load_optimizer_state_dict(adam2, sd); });
  EXPECT_NE(msg.find("optimizer state for parameter 2: 'exp_avg' has shape [2, 3], the parameter has shape [4, 3]"),
            std::string::npos)
      << msg;
  // Nothing was changed by the failed load.
  EXPECT_TRUE(adam2.state().empty());
  EXPECT_THROW(ct::load_optimizer_state_dict(adam, ckpt::Value::dict()), ckpt::TypeError);
  ckpt::Value wrapped = ckpt::Value::dict();
  wrapped.as_dict().set("optimizer", sd);
  EXPECT_NO_THROW(ct::load_optimizer_state_dict(adam, wrapped, {.key = "optimizer"}));
}

TEST(TorchCheckpoint, TutorialKeysAndMetadata) {
  TempDir dir;
  auto m = bn_linear();
  torch::optim::SGD sgd(m->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
  train(*m, sgd, 1);
  ckpt::Value meta = ckpt::Value::dict();
  meta.as_dict().set("run", "exp-1");
  ct::CheckpointOptions opts{.keys = ct::CheckpointKeys::pytorch_tutorial()};
  ct::save_checkpoint(dir.file("t.pt"), *m, &sgd, {.epoch = 5, .step = 50, .best_metric = 0.5, .metadata = meta},
                      opts);
  ckpt::Value v = ckpt::load(dir.file("t.pt"));
  EXPECT_EQ(dict_keys(v), (std::vector<std::string>{"model_state_dict", "optimizer_state_dict", "epoch", "step",
                                                    "loss", "metadata"}));
  auto m2 = bn_linear();
  torch::optim::SGD sgd2(m2->parameters(), torch::optim::SGDOptions(0.1));
  ct::TrainingState st = ct::load_checkpoint(dir.file("t.pt"), *m2, &sgd2, opts);
  EXPECT_EQ(st.epoch, 5);
  EXPECT_EQ(st.best_metric, 0.5);
  EXPECT_EQ(ckpt::lookup(st.metadata, "run").as_string(), "exp-1");
  EXPECT_EQ(static_cast<const torch::optim::SGDOptions&>(sgd2.param_groups()[0].options()).momentum(), 0.9);
  std::string msg = error_of([&] { ct::load_checkpoint(dir.file("t.pt"), *m2, &sgd2); });
  EXPECT_NE(msg.find("no key 'model'"), std::string::npos) << msg;
}

TEST(TorchDevice, MapLocationPlacesTensors) {
  ckpt::Tensor c = arange_f32({2});
  c.set_device("cuda:0");
  // use_device = false keeps everything on the CPU whatever the saved device.
  EXPECT_TRUE(ct::to_torch(c, {.use_device = false}).is_cpu());
  c.set_device(ckpt::MapLocation("cpu").apply("cuda:0"));
  EXPECT_TRUE(ct::to_torch(c).is_cpu());
  if (torch::cuda::is_available()) {
    c.set_device("cuda:0");
    torch::Tensor g = ct::to_torch(c);
    EXPECT_TRUE(g.is_cuda());
    EXPECT_EQ(ct::from_torch(g).device(), "cuda:0");
  } else {
    c.set_device("cuda:0");
    EXPECT_ANY_THROW(ct::to_torch(c));  // as torch.load without map_location on a CPU-only machine
  }
}
