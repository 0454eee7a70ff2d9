"""The PyTorch twin of the bundled digits CNN, for the PyTorch route's accuracy tests and benchmarks.

Same data and split as ``examples.digits_cnn`` but NCHW, as PyTorch models take it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from examples.digits_cnn import DigitsSplits, load_digits_splits

SEED = 0


class DigitsNet(nn.Module):
    """Conv-BN-ReLU x2, max-pool, two Linear layers: 151,466 parameters, logits over 10 classes."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.fc1, self.fc2 = nn.Linear(64 * 4 * 4, 128), nn.Linear(128, 10)

    def forward(self, image):
        x = F.relu(self.bn1(self.conv1(image)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class DigitsConvNet(nn.Module):
    """The Keras digits CNN's layers in PyTorch with a BatchNorm after the first conv (issue #24's one-shot
    model): Conv-BN-ReLU (288 weights), two more convs, max-pool, two Linear layers; 188,234 weights."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(64 * 4 * 4, 128), nn.Linear(128, 10)

    def forward(self, image):
        x = F.relu(self.bn1(self.conv1(image)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def nchw_splits() -> DigitsSplits:
    splits = load_digits_splits()
    return DigitsSplits(splits.x_train.transpose(0, 3, 1, 2).copy(), splits.y_train,
                        splits.x_test.transpose(0, 3, 1, 2).copy(), splits.y_test)


def train_digits_net(splits: DigitsSplits, epochs: int = 20, architecture: type[nn.Module] = DigitsNet,
                     seed: int = SEED) -> nn.Module:
    torch.manual_seed(seed)
    model = architecture()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean() * 100)
