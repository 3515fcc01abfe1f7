// torch_bench — ckpt's LibTorch adapter measured the way bench/run measures the rest: one
// operation per process, the JSON line of bench_util.hpp on stdout.
//
//   torch_bench OP REPS [--cold] FILE
//     module_into   ckpt::torch::load_state_dict(module, FILE): a torch::nn::Module whose
//                   parameters have the file's names, dtypes and shapes, allocated and
//                   faulted in once before the reps (a model that exists), is filled from
//                   the file on every rep (issue #20's "into an existing LibTorch module")
//
// Built by bench/run (target ckpt_torch_bench) when the venv's LibTorch is found.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "ckpt/ckpt.hpp"
#include "ckpt/torch.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// A module tree with one parameter per dotted name ("layers.0.q.weight" is parameter
// "weight" of submodule layers -> 0 -> q), as a model built in C++ would have.
class Tree {
 public:
  explicit Tree(std::shared_ptr<::torch::nn::Module> root) : root_(std::move(root)) {}

  void add(const std::string& name, const ::torch::Tensor& value) {
    std::shared_ptr<::torch::nn::Module> m = root_;
    std::string prefix;
    size_t start = 0;
    for (size_t dot = name.find('.'); dot != std::string::npos; dot = name.find('.', start)) {
      const std::string part = name.substr(start, dot - start);
      prefix += part + ".";
      auto it = children_.find(prefix);
      if (it == children_.end()) {
        auto child = std::make_shared<::torch::nn::Module>();
        m->register_module(part, child);
        it = children_.emplace(prefix, child).first;
      }
      m = it->second;
      start = dot + 1;
    }
    m->register_parameter(name.substr(start), value, /*requires_grad=*/false);
  }

 private:
  std::shared_ptr<::torch::nn::Module> root_;
  std::map<std::string, std::shared_ptr<::torch::nn::Module>> children_;
};

int run(const bench::Command& c) {
  const std::string& op = c.op;
  const int reps = c.reps;
  const bool cold = c.cold;
  const std::string& path = c.arg(0);
  if (op != "module_into") {
    std::fprintf(stderr, "torch_bench: unknown operation '%s'\n", op.c_str());
    return 2;
  }
  ::torch::NoGradGuard no_grad;
  auto model = std::make_shared<::torch::nn::Module>("Model");
  Tree tree(model);
  bench::Result r;
  {
    ckpt::Reader rd = ckpt::open(path);
    for (const auto& info : rd.tensors()) {
      std::vector<int64_t> shape(info.shape.begin(), info.shape.end());
      ::torch::Tensor t = ::torch::zeros(shape, ::torch::TensorOptions().dtype(ckpt::torch::to_scalar_type(info.dtype)));
      tree.add(info.name, t);
      r.bytes += static_cast<uint64_t>(t.nbytes());
      ++r.tensors;
    }
  }
  r.rss_before_kb = bench::status_kb("VmRSS");
  for (int i = 0; i < reps; ++i) {
    if (cold) bench::evict(path);
    auto t0 = Clock::now();
    const ckpt::torch::IncompatibleKeys keys = ckpt::torch::load_state_dict(*model, path);
    r.times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    if (!keys.empty())
      throw std::runtime_error("the module and " + path + " disagree on names");
  }
  // check: a word of each parameter, so the copies cannot be skipped
  for (const auto& p : model->parameters())
    if (p.numel() > 0) r.check += static_cast<uint64_t>(p.reshape({-1}).slice(0, 0, 1).to(::torch::kFloat).item<float>() != 0);
  r.snapshot();
  r.print();
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return bench::command_main("torch_bench", "FILE", argc, argv, run); }
