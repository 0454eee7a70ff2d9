"""Bias correction for int8 on the Keras route: the same correction as ``bias_correction`` (PyTorch/ONNX), on
a tf_keras model.

TFLite's converter folds a BatchNormalization that directly follows a Conv2D/DepthwiseConv2D/Dense into that
layer's weights (``W * gamma / sqrt(var + eps)``), then rounds the folded weights to int8 per output channel.
So the error to correct is the folded weights' ``W' - Q(W')``, and the shift ``(W' - Q(W')) . E[x]`` goes into
the BatchNormalization's beta (added after the scale, so in folded units) or, without one, into the layer's
bias. ``E[x]``, each corrected layer's mean input per channel, is measured in the float model on the
calibration inputs (nested models included: each layer's ``call`` is watched while the model runs).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar

import numpy as np

from .. import _tf
from ..errors import first_line
from .base import leaf_layers
from .bias_correction import BiasCorrection, int8_weight_error

T = TypeVar("T")

BATCH = 16
CORRECTED = ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense")


def correct_keras_biases(model, x: np.ndarray, keep_float: Collection[str] = ()) -> tuple[object, BiasCorrection]:
    """A copy of the tf_keras ``model`` (one input) with int8-corrected biases, measured on ``x``; the layers
    named in ``keep_float`` (mixed precision) are left as they are."""
    tfk = _tf.keras()
    copy = tfk.models.clone_model(model)
    copy.set_weights(model.get_weights())
    record = BiasCorrection(samples=len(x))
    targets = []
    for layer, within in leaf_layers(copy):
        kind = type(layer).__name__
        if kind not in CORRECTED or {layer.name, *within} & set(keep_float):
            continue
        if getattr(layer, "groups", 1) != 1:
            record.skipped[layer.name] = "grouped convolution"
            continue
        norm = folded_norm(layer)
        if norm is None and not getattr(layer, "use_bias", False):
            record.skipped[layer.name] = "no bias to correct"
            continue
        targets.append((layer, norm, within))
    means = _input_means(copy, [layer for layer, _, _ in targets], x)
    for layer, norm, within in targets:
        if layer.name not in means:
            record.skipped[layer.name] = "not reached by the input"
            continue
        shift = _shift(layer, norm, means[layer.name])
        variable = norm.beta if norm is not None else layer.bias
        remember_originals(copy, layer.name, [variable], within)
        variable.assign(variable.numpy() + shift.astype(np.float32))
        record.corrected[layer.name] = float(np.abs(shift).max())
    return copy, record


def remember_originals(model, name: str, variables: list, within: Collection[str] = (),
                       values: list[np.ndarray] | None = None) -> None:
    """Keep the float values of ``variables`` (those of layer ``name``, inside the models ``within``; by default
    their current values, before they are changed for int8), so ``uncorrected`` can give a layer kept float
    its float values back."""
    originals = getattr(model, "_sdk_bias_originals", None)
    if originals is None:
        originals = {}  # layer -> ([(variable, its float value)], the models around the layer)
        object.__setattr__(model, "_sdk_bias_originals", originals)  # not tracked by Keras: see uncorrected()
    kept, _ = originals.setdefault(name, ([], tuple(within)))
    known = {id(variable) for variable, _ in kept}
    values = values if values is not None else [variable.numpy() for variable in variables]
    kept += [(variable, value) for variable, value in zip(variables, values) if id(variable) not in known]


def has_corrections(model) -> bool:
    """Whether ``model``'s biases were corrected (and ``uncorrected`` can undo some)."""
    return bool(getattr(model, "_sdk_bias_originals", {}))


def uncorrected(model, names: Collection[str], work: Callable[[], T]) -> T:
    """``work()`` with the layers named in ``names`` (or inside the models named) back to their uncorrected
    biases (and float kernels, after AdaRound): layers that a mixed-precision search keeps float compute in
    float, where the correction for int8 rounding would be an error."""
    originals = getattr(model, "_sdk_bias_originals", {})
    chosen = [pair for name, (pairs, within) in originals.items() if {name, *within} & set(names) for pair in pairs]
    corrected = [variable.numpy() for variable, _ in chosen]
    for variable, before in chosen:
        variable.assign(before)
    try:
        return work()
    finally:
        for (variable, _), value in zip(chosen, corrected):
            variable.assign(value)


def folded_norm(layer):
    """The BatchNormalization the converter folds into ``layer``: its only consumer, on the last axis."""
    consumers = [node.layer for node in layer._outbound_nodes]
    if len(consumers) != 1 or type(consumers[0]).__name__ != "BatchNormalization":
        return None
    norm = consumers[0]
    if not norm.center:
        return None  # no beta to take the shift
    axis = norm.axis if isinstance(norm.axis, (list, tuple)) else [norm.axis]
    return norm if list(axis) in ([-1], [len(layer.output_shape) - 1]) else None


def _shift(layer, norm, mean: np.ndarray) -> np.ndarray:
    """``(W' - Q(W')) . E[x]`` per output channel, ``W'`` the weights as the converter folds and quantizes them."""
    kernel = layer.get_weights()[0].astype(np.float64)
    scale = 1.0
    if norm is not None:
        gamma = norm.gamma.numpy().astype(np.float64) if norm.scale else 1.0
        scale = gamma / np.sqrt(norm.moving_variance.numpy().astype(np.float64) + norm.epsilon)
    mean = mean.astype(np.float64)
    if type(layer).__name__ == "DepthwiseConv2D":  # [kh, kw, C, m] -> output channel c * m + j
        kh, kw, channels, multiplier = kernel.shape
        folded = kernel.reshape(kh, kw, channels * multiplier) * scale
        error = int8_weight_error(folded, axis=2).reshape(kernel.shape)
        return (error.sum(axis=(0, 1)) * mean[:, None]).reshape(-1)
    folded = kernel * scale  # [..., in, out]: the output channel is the last axis
    error = int8_weight_error(folded, axis=kernel.ndim - 1)
    return mean @ error.reshape(-1, error.shape[-2], error.shape[-1]).sum(axis=0)


def _input_means(model, layers: list, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each layer's mean input per channel (last axis) over ``x``, by watching its ``call`` in the float model."""
    sums: dict[str, np.ndarray] = {}

    def add(layer, inputs) -> None:
        values = np.asarray(inputs, dtype=np.float64)
        sums[layer.name] = sums.get(layer.name, 0) + values.reshape(-1, values.shape[-1]).mean(axis=0) * len(values)

    watch_inputs(model, layers, x, add)
    return {name: total / len(x) for name, total in sums.items()}


def watch_inputs(model, layers: list, x: np.ndarray, seen: Callable[[Any, Any], None]) -> None:
    """Run ``model`` on ``x`` in batches, handing each of ``layers`` and its input to ``seen`` as it is called
    (an instance ``call`` over the class's, removed after): layer inputs inside nested models too."""
    def watch(layer):
        call = layer.call

        def watched(inputs, *args, **kwargs):
            seen(layer, inputs)
            return call(inputs, *args, **kwargs)

        layer.call = watched

    for layer in layers:
        watch(layer)
    try:
        for start in range(0, len(x), BATCH):
            model(x[start:start + BATCH].astype(np.float32), training=False)
    finally:
        for layer in layers:
            del layer.call  # the class's call again


def maybe_correct(model, settings, calibration: np.ndarray | None, per_channel: bool, keep_float: Collection[str],
                  notes: list[str]):
    """The model to export: bias-corrected for int8 when ``quantize.bias_correction`` asks (auto: int8 with
    calibration data and per-channel scales, no QAT), else ``model`` itself. Notes say what was done."""
    if settings.bias_correction is False or settings.mode not in ("int8", "int16x8"):
        return model
    reason = ("QAT trained the weights for int8 already" if settings.qat else
              "no calibration data was given" if calibration is None else
              "the model has several inputs" if len(model.inputs) != 1 else
              "every weight layer is clustered, so weights are quantized per tensor" if not per_channel else None)
    if reason:
        if settings.bias_correction is True:
            notes.append(f"bias correction skipped: {reason}")
        return model
    try:
        corrected, record = correct_keras_biases(model, calibration[:settings.samples], keep_float)
    except (NotImplementedError, TypeError, ValueError) as exc:  # a custom layer that cannot be cloned from its config
        notes.append(f"bias correction skipped: the model could not be copied ({first_line(exc, 120)})")
        return model
    notes.append(record.summary())
    return corrected
