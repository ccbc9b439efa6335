"""Test-wide settings and the tiny networks and data the unit tests share.

The suite runs under pytest-xdist (``make test`` uses ``-n 2`` on 2 cores): one torch thread per
worker keeps the small tensors of unit tests from fighting over the cores. Tests marked ``slow``
(training, notebooks, the browser) are left out by ``pytest -m "not slow"``.
"""

import os

import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("REPAIR_DOWNLOAD", "0")
os.environ.setdefault("REPAIR_EVAL_CACHE", "")  # the book runner's evaluation cache stays off (test_evalcache turns it on)
torch.set_num_threads(1)


# ---------------------------------------------------------------- tiny networks
class TinyCNN(nn.Module):
    """conv-relu-conv-relu-conv-relu-pool-linear, biases everywhere; [B, 1, 8, 8] -> [B, 3]."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = nn.Conv2d(1, 6, 3), nn.Conv2d(6, 8, 3), nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


class TinyBN(nn.Module):
    """Bias-free convs each followed by BatchNorm2d; [B, 1, 8, 8] -> [B, 3]."""

    def __init__(self, width=8):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, width, 3, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, bias=False), nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


class TinyResNet(nn.Module):
    """Stem, two identity-shortcut blocks (`+` then ReLU module; torch.add with no activation),
    a broadcasting scalar bias (not a residual add); [B, 1, 8, 8] -> [B, 3]."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.conv_a, self.conv_b = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.scalar = nn.Parameter(torch.tensor([0.1]))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.relu(self.stem(x))
        x = self.relu(x + self.conv_a(x))
        x = torch.add(x, self.conv_b(x)) + self.scalar
        return self.fc(x.mean((2, 3)))


def pair(make, seed=0, double=True):
    torch.manual_seed(seed)
    a, b = make(), make()
    if double:
        a, b = a.double(), b.double()
    return a.eval(), b.eval()


def image_data(n=96, batch=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g) * 2 + 0.5
    y = torch.randint(0, 3, (n,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]
