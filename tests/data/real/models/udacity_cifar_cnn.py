"""Three 3x3 conv + max-pool stages (16, 32, 64 channels) and a 1024-500-10 MLP with dropout: the CIFAR-10 CNN of
the corpus artifact udacity_cifar_cnn, written for the test (attribute names follow the checkpoint's keys)."""
from torch import nn
from torch.nn import functional as F


class CifarCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(1024, 500)
        self.fc2 = nn.Linear(500, 10)
        self.dropout = nn.Dropout(0.25)

    def forward(self, x):
        for conv in (self.conv1, self.conv2, self.conv3):
            x = self.pool(F.relu(conv(x)))
        x = self.dropout(x.flatten(1))
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


def build():
    return CifarCNN()
