"""LeNet-5 with tanh for 32x32 grayscale digits (features: 5x5 convs 6 and 16 ch with 2x2 max-pool; classifier
400-120-84-10), written for the test. embedsearch hands the model RGB; a grayscale image converted to RGB has three
equal channels, so the first one is the original image."""
from torch import nn


class LeNet5Gray(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5), nn.Tanh(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.Tanh(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(400, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
                                        nn.Linear(84, 10))

    def forward(self, x):
        return self.classifier(self.features(x[:, :1]).flatten(1))


def build():
    return LeNet5Gray()
