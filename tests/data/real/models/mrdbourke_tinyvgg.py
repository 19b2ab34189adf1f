"""TinyVGG (the CNN Explainer net) with 10 channels for 64x64 RGB and 3 classes: two blocks of two unpadded 3x3
conv+ReLU and a 2x2 max-pool, then flatten (10x13x13) and one linear layer; written for the test (attribute names
follow the checkpoint's keys)."""
from torch import nn


def _block(c_in: int, c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c, 3), nn.ReLU(), nn.Conv2d(c, c, 3), nn.ReLU(), nn.MaxPool2d(2))


class TinyVGG10(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_block_1 = _block(3, 10)
        self.conv_block_2 = _block(10, 10)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(10 * 13 * 13, 3))

    def forward(self, x):
        return self.classifier(self.conv_block_2(self.conv_block_1(x)))


def build():
    return TinyVGG10()
