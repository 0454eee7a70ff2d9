"""A MobileNetV2 (Sandler et al. 2018) in plain PyTorch, for channel-removal latency benchmarks.

Random weights are enough where only latency and structure are measured; the
inverted-residual blocks come from ``examples.torch_zoo``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from examples.torch_zoo import InvertedResidual, _conv_bn

# (expansion, output channels, repeats, first stride), as in the paper's Table 2
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = 1000, width: float = 1.0):
        super().__init__()
        channels = int(32 * width)
        layers: list[nn.Module] = [_conv_bn(3, channels, stride=2), nn.ReLU6()]
        for expand, out, repeats, stride in SETTINGS:
            out = max(8, int(out * width))
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, expand))
                channels = out
        self.features = nn.Sequential(*layers, nn.Conv2d(channels, 1280, 1, bias=False), nn.BatchNorm2d(1280),
                                      nn.ReLU6())
        self.classifier = nn.Linear(1280, classes)

    def forward(self, image):
        return self.classifier(self.features(image).mean((2, 3)))


def build(width: float = 1.0, classes: int = 1000, seed: int = 0) -> MobileNetV2:
    torch.manual_seed(seed)
    return MobileNetV2(classes, width).eval()
