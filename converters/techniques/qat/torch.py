"""Quantization-aware fine-tuning for PyTorch sources: int8 fake quantization while training, then PTQ.

The route to TFLite goes through ONNX and onnx2tf, which take float graphs, so
QAT here trains the float model to be robust to int8: every Conv/Linear
weight is fake-quantized symmetric per output channel (as TFLite quantizes
them) and every Conv/Linear output per tensor with running min/max, both with
straight-through gradients, under the usual distillation loss.  Afterwards the
weights are left on their int8 grid, and the TFLite converter calibrates the
activation ranges on the data as in post-training int8.  Zeros from pruning
stay zero.  Clustered layers keep their shared values (cluster-preserving QAT,
as tfmot's PCQAT): only the centroids train, under the same fake quantization,
so each output channel ends with at most as many values as clusters.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...data import Dataset
from ..base import PassRecord
from ...recipe import FinetuneSettings

EMA = 0.99


def _weight_fake_quant():
    import torch

    class WeightFakeQuant(torch.nn.Module):
        """Symmetric per-output-channel int8 of a weight, straight-through in the backward pass."""

        def forward(self, weight):
            flat = weight.detach().reshape(weight.shape[0], -1)
            scale = (flat.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
            zero = torch.zeros(weight.shape[0], dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)

    return WeightFakeQuant()


class _ActivationFakeQuant:
    """A forward hook: per-tensor affine int8 of a layer's output, with running min/max."""

    def __init__(self):
        self.low = self.high = None

    def __call__(self, module, _inputs, output):
        import torch

        if module.training:
            low, high = float(output.detach().min()), float(output.detach().max())
            self.low = low if self.low is None else EMA * self.low + (1 - EMA) * low
            self.high = high if self.high is None else EMA * self.high + (1 - EMA) * high
        low, high = min(self.low, 0.0), max(self.high, 0.0)
        scale = max((high - low) / 255.0, 1e-12)
        zero = int(round(-128 - low / scale))
        return torch.fake_quantize_per_tensor_affine(output, scale, zero, -128, 127)


def quantization_aware_finetune(student, teacher, data: Dataset, settings: FinetuneSettings,
                                verbose: bool, clustered: dict[str, Any] | None = None) -> PassRecord:
    """Fine-tune ``student`` in place under int8 fake quantization; its weights end on the int8 grid.

    ``clustered`` ({name: module}) are layers whose weights share values: they train only those values.
    """
    import torch
    from torch.nn.utils import parametrize

    from ...training.torch import Trainer, share_values

    clustered = clustered or {}
    layers = [m for m in student.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear))]
    zeros = {m: m.weight.detach() == 0 for m in layers}
    for module in clustered.values():
        share_values(module, module.weight.detach().numpy().copy())
    for module in layers:
        parametrize.register_parametrization(module, "weight", _weight_fake_quant())
    hooks = [m.register_forward_hook(_ActivationFakeQuant()) for m in layers]

    def keep_zeros(step: int, total: int) -> None:
        with torch.no_grad():
            for module, mask in zeros.items():
                if mask.any():
                    module.parametrizations.weight.original[mask] = 0.0

    try:
        trainer = Trainer(student, teacher, data, settings, verbose)
        trainer.train(keep_zeros, "qat")
    finally:
        for hook in hooks:
            hook.remove()
        for module in layers:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    record = PassRecord("qat", fine_tuned=True)
    scheme = "fake-quant fine-tuning (int8 per-channel weights, per-tensor activations), then PTQ calibration"
    if clustered:
        scheme = f"cluster-preserving {scheme}: {len(clustered)} clustered layer(s) train only their shared values"
    record.summary = {"scheme": scheme, "layers": len(layers), "epochs": settings.epochs}
    if clustered:
        record.summary["values_per_channel_max"] = max(
            int(max(len(np.unique(row)) for row in m.weight.detach().numpy().reshape(m.weight.shape[0], -1)))
            for m in clustered.values())
    return record


