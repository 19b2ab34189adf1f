"""CIFAR-10 ResNet-20/56 (He et al. 2016, section 4.2) with option-A shortcuts, written for the corpus test.

Attribute names follow the checkpoint's keys (conv1, bn1, layer1..3.N.{conv1,bn1,conv2,bn2}, linear); the
identity shortcut that changes shape subsamples by 2 and zero-pads the new channels (no parameters).
"""
import torch
from torch import nn
from torch.nn import functional as F


class _PadShortcut(nn.Module):
    def __init__(self, extra: int):
        super().__init__()
        self.extra = extra

    def forward(self, x):
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.extra, self.extra))


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = _PadShortcut((c_out - c_in) // 2) if (stride != 1 or c_in != c_out) else nn.Identity()

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        widths, c = (16, 32, 64), 16
        for i, w in enumerate(widths):
            stage = [_Block(c if j == 0 else w, w, 2 if (j == 0 and i > 0) else 1) for j in range(blocks_per_stage)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            c = w
        self.linear = nn.Linear(64, n_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.linear(x)


def resnet20():
    return CifarResNet(3)


def resnet56():
    return CifarResNet(9)
