"""AdaRound (``quantize.rounding: adaround``) on the Keras route: learned rounding of tf_keras kernels.

The converter folds a BatchNormalization that directly follows a Conv/Dense into its kernel
(``W * gamma / sqrt(var + eps)``, the same folding ``bias_correction_keras`` accounts for) and then rounds the
folded kernel per output channel. So the rounding is learned on the folded kernel, snapped there, and divided
back by the BatchNormalization's scale; the converter's folding multiplies it onto the grid again (exactly up
to float32 rounding, far below half a grid step). Each layer's input patches are measured in the float model
on the calibration inputs (its ``call`` watched, nested models included). With bias correction on, the mean
output shift of the chosen rounding goes into the BatchNormalization's beta, or else the layer's bias.
"""

from __future__ import annotations

import time
from collections.abc import Collection

import numpy as np

from .. import _tf
from ..errors import first_line
from .adaround import PatchStats, RoundingRecord, conv_patches, round_layer
from .base import leaf_layers
from .bias_correction_keras import folded_norm, remember_originals, watch_inputs

ROUNDED = ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense")


def maybe_round(model, settings, calibration: np.ndarray | None, notes: list[str]):
    """The model to export with AdaRound kernels (and corrected biases unless ``settings.bias_correction`` is
    false) when ``settings.rounding`` is adaround, else None. The recipe checks refused the cases it cannot
    apply to before any work."""
    if getattr(settings, "rounding", "nearest") != "adaround" or settings.mode not in ("int8", "int16x8"):
        return None
    try:
        rounded, record = adaround_keras(model, calibration[:settings.samples], settings.rounding_iterations,
                                         settings.bias_correction is not False)
    except (NotImplementedError, TypeError, ValueError) as exc:  # a custom layer that cannot be cloned
        notes.append(f"adaround skipped: the model could not be copied ({first_line(exc, 120)})")
        return None
    notes.append(record.summary())
    return rounded


def adaround_keras(model, x: np.ndarray, iterations: int, correct_bias: bool = True,
                   keep: Collection[str] = ()) -> tuple[object, RoundingRecord]:
    """A copy of the tf_keras ``model`` (one input) with AdaRound kernels learned on ``x``; layers named in
    ``keep`` are left as they are."""
    tfk = _tf.keras()
    started = time.perf_counter()
    copy = tfk.models.clone_model(model)
    copy.set_weights(model.get_weights())
    record = RoundingRecord(samples=len(x), iterations=iterations)
    layers = []
    for layer, within in leaf_layers(copy):
        if type(layer).__name__ not in ROUNDED or {layer.name, *within} & set(keep):
            continue
        if getattr(layer, "groups", 1) != 1:
            record.skipped[layer.name] = "grouped convolution"
            continue
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            record.skipped[layer.name] = "channels_first convolution"
            continue
        layers.append(_Layer(layer, within))
    _measure(copy, layers, x)
    for layer in layers:
        if layer.stats.count == 0:
            record.skipped[layer.layer.name] = "not reached by the input"
            continue
        result, shift, errors = round_layer(layer.rows(), layer.stats, iterations)
        target = layer.norm.beta if layer.norm is not None else \
            (layer.layer.bias if getattr(layer.layer, "use_bias", False) else None)
        remember_originals(copy, layer.layer.name, [layer.layer.weights[0], *([target] if target is not None else [])],
                           layer.within)  # a layer kept float (mixed precision) gets its float weights back
        layer.write(result)
        record.layers[layer.layer.name] = errors
        if correct_bias and target is not None:
            target.assign(target.numpy() + shift.reshape(-1).astype(np.float32))
            record.bias_corrected += 1
    record.seconds = time.perf_counter() - started
    return copy, record


class _Layer:
    """A Conv1D/Conv2D/DepthwiseConv2D/Dense: its folded kernel as AdaRound's [G, O, K] rows and back, and its
    input patch statistics."""

    def __init__(self, layer, within: tuple[str, ...] = ()):
        self.layer, self.kind, self.norm, self.within = layer, type(layer).__name__, folded_norm(layer), within
        self.stats = PatchStats()
        kernel = layer.get_weights()[0]
        self.shape = kernel.shape
        out = kernel.shape[-1] * (kernel.shape[-2] if self.kind == "DepthwiseConv2D" else 1)
        self.scale = np.ones(out)
        if self.norm is not None:
            gamma = self.norm.gamma.numpy().astype(np.float64) if self.norm.scale else 1.0
            self.scale = gamma / np.sqrt(self.norm.moving_variance.numpy().astype(np.float64) + self.norm.epsilon)
        self.scale = np.where(self.scale == 0, 1.0, self.scale)  # a zeroed channel: its kernel is kept

    def rows(self) -> np.ndarray:
        kernel = self.layer.get_weights()[0].astype(np.float64)
        if self.kind == "DepthwiseConv2D":  # [kh, kw, C, m] -> output channel c * m + j -> [C, m, kh * kw]
            kh, kw, channels, multiplier = kernel.shape
            folded = (kernel.reshape(kh, kw, channels * multiplier) * self.scale).reshape(kernel.shape)
            return folded.transpose(2, 3, 0, 1).reshape(channels, multiplier, kh * kw)
        folded = kernel * self.scale  # [..., in, out]
        order = (kernel.ndim - 1, kernel.ndim - 2, *range(kernel.ndim - 2))  # [out, in, k...]
        return folded.transpose(order).reshape(1, kernel.shape[-1], -1)

    def write(self, rows: np.ndarray) -> None:
        if self.kind == "DepthwiseConv2D":
            kh, kw, channels, multiplier = self.shape
            folded = rows.reshape(channels, multiplier, kh, kw).transpose(2, 3, 0, 1)
            kernel = (folded.reshape(kh, kw, -1) / self.scale).reshape(self.shape)
        else:
            ndim = len(self.shape)
            moved = rows.reshape(self.shape[-1], self.shape[-2], *self.shape[:-2])
            kernel = moved.transpose(*range(2, ndim), 1, 0) / self.scale
        weights = self.layer.get_weights()
        self.layer.set_weights([kernel.astype(np.float32), *weights[1:]])

    def add(self, inputs: np.ndarray) -> None:
        """Add a batch of this layer's input (channels last, as Keras runs it)."""
        if self.kind == "Dense":
            self.stats.add(inputs.reshape(-1, 1, inputs.shape[-1]))
            return
        layer = self.layer
        kernel = tuple(self.shape[:-2])
        spatial = len(kernel)
        x = np.moveaxis(inputs, -1, 1)  # channels first
        strides, dilations = tuple(layer.strides), tuple(layer.dilation_rate)
        pads = [0] * 2 * spatial
        for axis in range(spatial):
            size, span = x.shape[2 + axis], (kernel[axis] - 1) * dilations[axis] + 1
            if layer.padding == "same":  # TensorFlow's: the odd pixel at the end
                total = max((-(-size // strides[axis]) - 1) * strides[axis] + span - size, 0)
                pads[axis], pads[spatial + axis] = total // 2, total - total // 2
            elif layer.padding == "causal":
                pads[axis] = span - 1
        groups = x.shape[1] if self.kind == "DepthwiseConv2D" else 1
        self.stats.add(conv_patches(x, kernel, strides, dilations, tuple(pads), groups))


def _measure(model, layers: list[_Layer], x: np.ndarray) -> None:
    """Every layer's input patch statistics over ``x``, by watching its ``call`` in the float model."""
    entries = {id(entry.layer): entry for entry in layers}
    watch_inputs(model, [entry.layer for entry in layers], x,
                 lambda layer, inputs: entries[id(layer)].add(np.asarray(inputs, dtype=np.float32)))
