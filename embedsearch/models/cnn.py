"""The small CNNs of the deep-learning homework (CIFAR-10 from scratch), as `embedsearch pretrain --method supervised
--arch …` trains them and the `ckpt:` backbone loads them.

- `cnn-small`: three 3×3 conv + Mish blocks (32, 64, 128 channels), 2×2 max-pool after the first two, global
  average pool, dropout 0.3, linear classifier (the study's Mish CNN: 76.98 % on CIFAR-10).
- `cnn-bn`: the same with BatchNorm after every convolution (the study: 76.27 %).
- `cnn-deep`: three stages of two conv-BN-Mish blocks (64, 128, 256 channels), max-pool between stages, global
  average pool, dropout 0.3, linear classifier (the study's deeper BatchNorm+Mish CNN: 88.76 %).

`features(x)` is the pooled vector, the classifier's input: the penultimate features the `ckpt:` backbone embeds.
"""

from __future__ import annotations

ARCHS = ("cnn-small", "cnn-bn", "cnn-deep")


def make_cnn(arch: str, n_classes: int):
    import torch
    from torch import nn

    if arch not in ARCHS:
        raise ValueError(arch)

    def block(cin, cout, bn):
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)]
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.Mish())
        return layers

    if arch == "cnn-deep":
        layers, cin = [], 3
        for i, c in enumerate((64, 128, 256)):
            layers += block(cin, c, True) + block(c, c, True)
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            cin = c
        dim = 256
    else:
        bn = arch == "cnn-bn"
        layers = block(3, 32, bn) + [nn.MaxPool2d(2)] + block(32, 64, bn) + [nn.MaxPool2d(2)] + block(64, 128, bn)
        dim = 128

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*layers)
            self.drop = nn.Dropout(0.3)
            self.head = nn.Linear(dim, n_classes)
            self.dim = dim

        def features(self, x):
            return torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1)

        def forward(self, x):
            return self.head(self.drop(self.features(x)))

    return SmallCNN()
