"""LeNet-style CIFAR-10 net (5x5 convs with 6 and 16 channels, 400-120-84-10 MLP): the corpus artifact
captum_cifar_net's architecture, written for the test (attribute names follow the checkpoint's keys)."""
from torch import nn
from torch.nn import functional as F


class SmallCifarNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def build():
    return SmallCifarNet()
