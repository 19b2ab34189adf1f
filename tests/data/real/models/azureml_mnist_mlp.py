"""784-256-128-10 ReLU MLP on raw 0..255 grayscale pixels, written for the test (attribute names follow the
checkpoint's keys). Takes the first channel of the RGB input; the 0..255 scale comes from --mean 0 --std 1/255."""
from torch import nn
from torch.nn import functional as F


class RawPixelMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.fc2 = nn.Linear(256, 128)
        self.out = nn.Linear(128, 10)

    def forward(self, x):
        x = x[:, :1].flatten(1)
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


def build():
    return RawPixelMLP()
