"""Small PyTorch architectures covering what the PyTorch/ONNX route must convert faithfully.

Random weights (seeded): they measure conversion fidelity, not accuracy.  Each
entry is (builder, example input shapes); ``bench/fidelity.py`` and the tests
convert every one of them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.a, self.b = _conv_bn(channels, channels), _conv_bn(channels, channels)

    def forward(self, x):
        return F.relu(x + self.b(F.relu(self.a(x))))


class ResNetStyle(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = _conv_bn(3, 16, stride=2)
        self.blocks = nn.Sequential(ResidualBlock(16), ResidualBlock(16))
        self.down = _conv_bn(16, 32, stride=2)
        self.head = nn.Linear(32, classes)

    def forward(self, image):
        x = F.relu(self.stem(image))
        x = F.relu(self.down(self.blocks(x)))
        return self.head(x.mean((2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.body(x) if self.use_residual else self.body(x)


class MobileNetV2Style(nn.Module):
    def __init__(self, classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, width, stride=2), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(width, width, 1), InvertedResidual(width, 2 * width, 2),
                                    InvertedResidual(2 * width, 2 * width, 1))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, image):
        return self.head(self.blocks(self.stem(image)).mean((2, 3)))


class UNetStyle(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.enc1 = nn.Sequential(_conv_bn(3, 8), nn.ReLU())
        self.enc2 = nn.Sequential(_conv_bn(8, 16), nn.ReLU())
        self.dec = nn.Sequential(_conv_bn(24, 8), nn.ReLU())
        self.out = nn.Conv2d(8, classes, 1)

    def forward(self, image):
        skip = self.enc1(image)
        deep = self.enc2(F.max_pool2d(skip, 2))
        up = F.interpolate(deep, scale_factor=2.0, mode="nearest")
        return self.out(self.dec(torch.cat([up, skip], dim=1)))


class RecurrentSequence(nn.Module):
    """An LSTM or GRU over (batch, time, features), classifying from the last step."""

    def __init__(self, cell: type = nn.LSTM, features: int = 8, hidden: int = 16, classes: int = 4):
        super().__init__()
        self.rnn = cell(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, sequence):
        out, _ = self.rnn(sequence)
        return self.head(out[:, -1])


class TransformerEncoder(nn.Module):
    """One pre-norm encoder block with hand-written attention (what the exporter sees in real models)."""

    def __init__(self, dim: int = 32, heads: int = 4, classes: int = 5):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        batch, length, dim = tokens.shape
        q, k, v = self.qkv(self.norm1(tokens)).chunk(3, dim=-1)

        def split(t):
            return t.reshape(batch, length, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = split(q), split(k), split(v)
        attention = torch.softmax(q @ k.transpose(-2, -1) / (dim // self.heads) ** 0.5, dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, length, dim)
        x = tokens + self.proj(mixed)
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


class AudioConv1d(nn.Module):
    def __init__(self, classes: int = 6):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(1, 8, 9, stride=4, padding=4), nn.BatchNorm1d(8), nn.ReLU(),
            nn.Conv1d(8, 16, 5, stride=2, padding=2), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, waveform):
        return self.head(self.body(waveform).mean(2))


class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(_conv_bn(3, 8, stride=2), nn.ReLU(), _conv_bn(8, 16, stride=2), nn.ReLU())
        self.side = nn.Linear(10, 16)
        self.classes, self.embedding = nn.Linear(32, 7), nn.Linear(32, 12)

    def forward(self, image, side):
        joint = torch.cat([self.image(image).mean((2, 3)), F.relu(self.side(side))], dim=1)
        return {"classes": self.classes(joint), "embedding": self.embedding(joint)}


class NonSquareCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(3, 8), nn.ReLU(), nn.MaxPool2d(2), _conv_bn(8, 16, stride=2), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, classes)

    def forward(self, image):
        return self.head(self.body(image))


ZOO = {
    "resnet_block": (ResNetStyle, [(1, 3, 32, 32)]),
    "mobilenetv2_block": (MobileNetV2Style, [(1, 3, 32, 32)]),
    "unet": (UNetStyle, [(1, 3, 32, 32)]),
    "lstm": (lambda: RecurrentSequence(nn.LSTM), [(1, 20, 8)]),
    "gru": (lambda: RecurrentSequence(nn.GRU), [(1, 20, 8)]),
    "transformer_encoder": (TransformerEncoder, [(1, 16, 32)]),
    "audio_conv1d": (AudioConv1d, [(1, 1, 1000)]),
    "two_in_two_out": (TwoInTwoOut, [(1, 3, 24, 24), (1, 10)]),
    "non_square": (NonSquareCNN, [(1, 3, 24, 40)]),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The named architecture in eval mode, with seeded weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = ZOO[name][0]()
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()
