"""A CNN that probe's own model zoo does not contain, for tests on an "unseen" architecture.

It exercises what a user's CNN typically has and the zoo's ResNet does not combine the same way:
a conv with bias followed by BN, a residual add around two convs, a strided conv, max-pool, tanh
and two Linear layers. `models/reference.py hidden-cnn` exports it and trains a checkpoint;
`reference.py eval/grad --model models/hidden_cnn.py` evaluates it (this file defines `build()`).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class HiddenCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(1, 8, 3, padding=1)  # with bias, then BN
        self.bn_in = nn.BatchNorm2d(8)
        self.res_a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.res_bn_a = nn.BatchNorm2d(8)
        self.res_b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.res_bn_b = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)  # 28 -> 14
        self.bn_down = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)  # 14 -> 7
        self.fc1 = nn.Linear(16 * 7 * 7, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn_in(self.conv_in(x)))
        r = F.relu(self.res_bn_a(self.res_a(x)))
        x = F.relu(x + self.res_bn_b(self.res_b(r)))
        x = self.pool(F.relu(self.bn_down(self.down(x))))
        x = torch.tanh(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def build(seed=0):
    """Fixed initial weights, eval mode."""
    torch.manual_seed(seed)
    return HiddenCNN().eval()


def example_input(n=2):
    return torch.randn(n, 1, 28, 28)
