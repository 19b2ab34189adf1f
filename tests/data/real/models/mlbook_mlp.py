"""784-32-16-10 ReLU MLP for 28x28 grayscale digits, kept under `model` as the Lightning module did (so the
checkpoint's `model.N.*` keys fit), written for the test. Takes the first channel of the RGB input."""
from torch import nn


class DigitMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                                   nn.Linear(16, 10))

    def forward(self, x):
        return self.model(x[:, :1])


def build():
    return DigitMLP()
