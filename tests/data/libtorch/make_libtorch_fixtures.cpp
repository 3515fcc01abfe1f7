// Writes the files LibTorch's C++ serialization produces, for ckpt's tests:
//   module.pt     torch::save(module)        (an OutputArchive: a TorchScript archive)
//   tensor.pt     torch::save(tensor)
//   tensors.pt    torch::save(std::vector<torch::Tensor>)
//   optimizer.pt  torch::save(optimizer)     (Adam after one step)
//   pickle.pt     torch::pickle_save(dict)   (the torch.save zip format)
// Built and run by tests/data/libtorch/make.sh against a LibTorch; the
// expectations come from Python (make_expected.py), not from this program.
#include <torch/torch.h>

#include <fstream>
#include <iostream>

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(4, 3));
    bn = register_module("bn", torch::nn::BatchNorm1d(3));
    fc2 = register_module("fc2", torch::nn::Linear(3, 2));
    register_buffer("scale", torch::tensor({2.0f, 3.0f}));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(bn(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};
TORCH_MODULE(Net);

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: make_libtorch_fixtures OUTDIR\n";
    return 2;
  }
  const std::string out = argv[1];
  torch::manual_seed(0);
  Net net;
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(0.01));
  auto loss = net->forward(torch::randn({5, 4})).sum();
  loss.backward();
  opt.step();
  torch::save(net, out + "/module.pt");
  torch::save(torch::arange(12, torch::kFloat32).reshape({3, 4}), out + "/tensor.pt");
  torch::save(std::vector<torch::Tensor>{torch::ones({2}, torch::kInt64), torch::eye(3, torch::kFloat64)},
              out + "/tensors.pt");
  torch::save(opt, out + "/optimizer.pt");
  c10::Dict<std::string, torch::Tensor> dict;
  dict.insert("weight", torch::linspace(0, 1, 6).reshape({2, 3}));
  dict.insert("bias", torch::zeros({2}, torch::kFloat16));
  std::vector<char> bytes = torch::pickle_save(dict);
  std::ofstream(out + "/pickle.pt", std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  std::cout << "wrote " << out << "\n";
  return 0;
}
