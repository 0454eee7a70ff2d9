"""Model-zoo-style ONNX graphs built offline, as ONNX backend test cases (``model.onnx`` + ``test_data_set_0``).

Each architecture is built in PyTorch with seeded random weights (no download: coverage does not need
trained weights), exported with ``torch.onnx.export`` (TorchScript exporter, opset 17, eval mode, as a
user would export it: BatchNorm nodes kept, no simplification), and written with one seeded input and
onnxruntime's output on it as the expected output.  ``bench.onnx_coverage --corpus zoo`` runs them.

torchvision's architectures need ``pip install --no-deps torchvision`` of the installed torch's version
(bench only); its compiled ops are not needed, so a wheel built for another device still works here.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np

IMAGE = (1, 3, 64, 64)  # small enough for a shared 2-core machine; every architecture pools adaptively
# efficientnet_b0 (257 nodes) is left out to keep a run near 30 minutes on a busy 2-core machine
TORCHVISION = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5")


def _torchvision():
    """torchvision's model definitions; a CUDA wheel next to CPU torch cannot load its compiled ops, whose
    registration then fails on import, so that registration is skipped (the models do not use them)."""
    try:
        import torchvision
    except RuntimeError:
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision
    return torchvision


def _transformer():
    from torch import nn

    class Encoder(nn.Module):
        """nn.TransformerEncoder (2 layers, d_model 32, 4 heads) over 16 tokens, mean-pooled into 5 classes."""

        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(32, 5)

        def forward(self, tokens):
            return self.head(self.encoder(tokens).mean(1))

    return Encoder(), (1, 16, 32)


def _recurrent():
    from torch import nn

    class Sequence(nn.Module):
        """A 2-layer LSTM into a bidirectional GRU over 16 steps, classifying from the last step."""

        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(12, 24, num_layers=2, batch_first=True)
            self.gru = nn.GRU(24, 16, batch_first=True, bidirectional=True)
            self.head = nn.Linear(32, 4)

        def forward(self, sequence):
            y, _ = self.lstm(sequence)
            y, _ = self.gru(y)
            return self.head(y[:, -1])

    return Sequence(), (1, 16, 12)


def _audio():
    from examples.torch_zoo import AudioConv1d

    return AudioConv1d(), (1, 1, 1600)


def _unet():
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    class UNet(nn.Module):
        """Two down steps, two ConvTranspose up steps with skip concatenations, a 1x1 head."""

        def __init__(self):
            super().__init__()
            self.e1, self.e2, self.e3 = block(3, 8), block(8, 16), block(16, 32)
            self.u2, self.u1 = nn.ConvTranspose2d(32, 16, 2, stride=2), nn.ConvTranspose2d(16, 8, 2, stride=2)
            self.d2, self.d1 = block(32, 16), block(16, 8)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, image):
            s1 = self.e1(image)
            s2 = self.e2(nn.functional.max_pool2d(s1, 2))
            deep = self.e3(nn.functional.max_pool2d(s2, 2))
            x = self.d2(torch.cat([self.u2(deep), s2], 1))
            return self.out(self.d1(torch.cat([self.u1(x), s1], 1)))

    return UNet(), (1, 3, 64, 64)


def builders() -> dict:
    """{case name: () -> (module, input shape)}."""
    table = {"zoo_audio_conv1d": _audio, "zoo_unet_convtranspose": _unet, "zoo_lstm_gru": _recurrent,
             "zoo_transformer_encoder": _transformer}
    table.update({f"zoo_{name}": (lambda name=name: (getattr(_torchvision().models, name)(weights=None), IMAGE))
                  for name in TORCHVISION})
    return table


def build_cases(root: Path, only: list[str] | None = None) -> list[Path]:
    """Each case folder under ``root`` (made once, reused), in the table's order."""
    folders = []
    for name, make in builders().items():
        if only and not any(o in name for o in only):
            continue
        folder = root / name
        if not (folder / "test_data_set_0" / "output_0.pb").is_file():
            _export(make, folder)
        folders.append(folder)
    return folders


def _export(make, folder: Path) -> None:
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper

    torch.manual_seed(0)
    module, shape = make()
    module = module.eval()
    for m in module.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    data = folder / "test_data_set_0"
    data.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(module, (torch.from_numpy(x),), str(folder / "model.onnx"), input_names=["input"],
                      output_names=["output"], opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": x})[0]
    (data / "input_0.pb").write_bytes(numpy_helper.from_array(x, "input").SerializeToString())
    (data / "output_0.pb").write_bytes(numpy_helper.from_array(y, "output").SerializeToString())
    onnx.checker.check_model(str(folder / "model.onnx"))
