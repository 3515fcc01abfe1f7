// The C++ half of the resume-equivalence test (tests/torch/resume.py) and of
// examples/resume_training: loads a training checkpoint (written by Python or
// by this program), trains `--steps` more steps on the data stored in it, and
// saves a checkpoint Python loads with torch.load(weights_only=True).
//
//   ckpt_torch_resume --in start.pt --out resumed.pt --optimizer adam --steps 5
//                     [--state-dict-out model.pt]
//
// The checkpoint is a dict {model, optimizer, epoch, step, data: {x, y}}; the
// model is Python's
//   nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
// in float64, trained full-batch on mean squared error.
#include <cstdlib>
#include <iostream>
#include <string>

#include "ckpt/error.hpp"
#include "ckpt/torch.hpp"

namespace {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& name,
                                                        const std::vector<torch::Tensor>& params) {
  // Hyper-parameters come from the checkpoint's param_groups; these are placeholders.
  if (name == "sgd") return std::make_unique<torch::optim::SGD>(params, torch::optim::SGDOptions(0.1));
  if (name == "adam") return std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions());
  if (name == "adamw") return std::make_unique<torch::optim::AdamW>(params, torch::optim::AdamWOptions());
  if (name == "rmsprop") return std::make_unique<torch::optim::RMSprop>(params, torch::optim::RMSpropOptions());
  if (name == "adagrad") return std::make_unique<torch::optim::Adagrad>(params, torch::optim::AdagradOptions());
  throw std::invalid_argument("unknown optimizer '" + name + "'");
}

}  // namespace

int main(int argc, char** argv) {
  std::string in, out, sd_out, opt_name = "adam";
  int steps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--in") in = argv[i + 1];
    else if (a == "--out") out = argv[i + 1];
    else if (a == "--optimizer") opt_name = argv[i + 1];
    else if (a == "--steps") steps = std::atoi(argv[i + 1]);
    else if (a == "--state-dict-out") sd_out = argv[i + 1];
    else {
      std::cerr << "usage: ckpt_torch_resume --in FILE --out FILE [--optimizer NAME] [--steps N]\n";
      return 2;
    }
  }
  if (in.empty() || out.empty()) {
    std::cerr << "usage: ckpt_torch_resume --in FILE --out FILE [--optimizer NAME] [--steps N]\n";
    return 2;
  }
  try {
    torch::manual_seed(0);
    torch::nn::Sequential model(torch::nn::Linear(4, 8), torch::nn::BatchNorm1d(8), torch::nn::Tanh(),
                                torch::nn::Linear(8, 3));
    model->to(torch::kFloat64);
    model->train();
    auto optimizer = make_optimizer(opt_name, model->parameters());

    // The model, the optimizer (hyper-parameters and state) and the counters.
    ckpt::torch::TrainingState state = ckpt::torch::load_checkpoint(in, *model, optimizer.get());
    // The data travels in the same file.
    ckpt::Value file = ckpt::load(in);
    torch::Tensor x = ckpt::torch::to_torch(ckpt::lookup(file, "data/x").as_tensor());
    torch::Tensor y = ckpt::torch::to_torch(ckpt::lookup(file, "data/y").as_tensor());

    for (int s = 0; s < steps; ++s) {
      optimizer->zero_grad();
      auto loss = torch::mse_loss(model->forward(x), y);
      loss.backward();
      optimizer->step();
      ++state.step;
    }
    state.epoch += 1;
    // Keep the data in the output, so that the next run (either side) can go on.
    ckpt::torch::save_checkpoint(out, *model, optimizer.get(), state);
    ckpt::Value saved = ckpt::load(out);
    saved.as_dict().set("data", ckpt::lookup(file, "data"));
    ckpt::save(out, saved);
    // The model alone, as torch.save(model.state_dict()) would write it.
    if (!sd_out.empty()) ckpt::torch::save_state_dict(*model, sd_out);
    std::cout << "resumed at step " << state.step - steps << ", trained " << steps << " steps with "
              << opt_name << ", saved " << out << "\n";
  } catch (const std::exception& e) {
    std::cerr << "ckpt_torch_resume: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
