// The package check's ckpt::torch consumer (find_package(ckpt COMPONENTS torch)):
// a LibTorch module's state dict through ckpt and back, public headers only.
#include <ckpt/ckpt.hpp>
#include <ckpt/torch.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <exception>

int main() {
  try {
    torch::manual_seed(0);
    torch::nn::Linear a(3, 2), b(3, 2);
    ckpt::StateDict sd = ckpt::torch::state_dict(*a);
    ckpt::torch::load_state_dict(*b, sd);
    if (sd.size() != 2 || !torch::equal(a->weight, b->weight) || !torch::equal(a->bias, b->bias)) {
      std::fprintf(stderr, "consumer_torch: the state dict did not go across\n");
      return 1;
    }
    std::printf("consumer_torch: ckpt %s, LibTorch module -> %zu tensors -> LibTorch module\n", ckpt::version(),
                sd.size());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "consumer_torch: %s\n", e.what());
    return 1;
  }
  return 0;
}
