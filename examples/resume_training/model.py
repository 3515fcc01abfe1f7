"""The model, data and optimizer of the resume_training example (Python side).

train.cpp builds the same model with LibTorch: nn.Sequential keeps the names
0.weight, 0.bias, 2.weight, 2.bias on both sides.
"""
import torch


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def make_data():
    # Fit y = sin(x) on [-3, 3]: deterministic, no random numbers needed.
    x = torch.linspace(-3, 3, 64).unsqueeze(1)
    return x, torch.sin(x)


def make_optimizer(model):
    return torch.optim.Adam(model.parameters(), lr=0.01)


def loss_of(model, x, y):
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(x), y).item()
