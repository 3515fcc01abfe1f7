// Resumes in C++ the training a Python script started (examples/resume_training).
//
//   train checkpoint.pt resumed.pt [epochs]
//
// Loads the model and the Adam state from a checkpoint that Python saved the way
// PyTorch's tutorial does ({model_state_dict, optimizer_state_dict, epoch, loss}),
// trains more epochs with LibTorch, and saves a checkpoint with the same keys that
// Python resumes from with torch.load(path, weights_only=True).
#include <cstdlib>
#include <iostream>

#include <ckpt/error.hpp>
#include <ckpt/torch.hpp>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: train CHECKPOINT OUTPUT [EPOCHS]\n";
    return 2;
  }
  const int epochs = argc > 3 ? std::atoi(argv[3]) : 200;
  try {
    // The same model as model.py; the names (0.weight, 2.bias...) match Python's.
    torch::nn::Sequential model(torch::nn::Linear(1, 32), torch::nn::Tanh(), torch::nn::Linear(32, 1));
    torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));

    // One call: weights, optimizer state and hyper-parameters (lr comes from the file), counters.
    ckpt::torch::CheckpointOptions options{.keys = ckpt::torch::CheckpointKeys::pytorch_tutorial()};
    ckpt::torch::TrainingState state = ckpt::torch::load_checkpoint(argv[1], *model, &optimizer, options);
    std::cout << "loaded " << argv[1] << ": epoch " << state.epoch << ", loss "
              << state.best_metric.value_or(-1) << "\n";

    torch::Tensor x = torch::linspace(-3, 3, 64).unsqueeze(1);
    torch::Tensor y = torch::sin(x);
    for (int i = 0; i < epochs; ++i) {
      optimizer.zero_grad();
      torch::Tensor loss = torch::mse_loss(model->forward(x), y);
      loss.backward();
      optimizer.step();
      ++state.epoch;
    }
    {
      torch::NoGradGuard no_grad;
      state.best_metric = torch::mse_loss(model->forward(x), y).item<double>();
    }
    ckpt::torch::save_checkpoint(argv[2], *model, &optimizer, state, options);
    std::cout << "trained to epoch " << state.epoch << ", loss " << *state.best_metric << ", saved " << argv[2]
              << "\n";
  } catch (const std::exception& e) {
    std::cerr << "train: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
