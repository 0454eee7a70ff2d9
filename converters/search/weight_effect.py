"""Rank layers for automatic mixed precision by the error their own int8 weights cause at the model output
(``rank_layers``: PyTorch/ONNX, on the ONNX graph; ``keras_ranking``: Keras, on the tf_keras model).

The per-layer report's "added dB" blames a layer for noise it only amplifies, and keeping a layer float in
TFLite only removes its weight rounding (its input and output stay int8 tensors when its neighbours are int8;
bench/ptq.py measured whole-model int16x8 activations at output cosine 0.9982 against 0.9967 for int8, both
93.0% agreement: activations are only part of what EfficientNet-Lite0 loses). So each candidate is measured alone: the float ONNX graph with
only that layer's weights rounded as TFLite rounds them (per output channel, symmetric int8; AdaRound's
choice when it ran), with its bias-corrected bias when bias correction is on, run by onnxruntime on
calibration samples; the layer's error is the mean of 1 - cosine of the model's outputs against the float
graph's. Worst first.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np

SAMPLES = 32


def rank_layers(model, corrected, x: np.ndarray, candidates: list[str],
                progress: Callable[[str, int, int], None] | None = None) -> list[tuple[str, float]]:
    """[(layer, output error)] for ``candidates`` (names of ``onnx_weights(model)``), worst first; ``corrected``
    is the bias-corrected graph (or None), ``x`` calibration inputs in the source layout."""
    from onnx import numpy_helper

    from ..sources.onnx import onnx_weights
    from ..techniques.bias_correction import int8_weight_error

    x = x[:SAMPLES].astype(np.float32)
    expected = _outputs(model, x)
    weights, sources = onnx_weights(model)
    by_name = {w.name: w for w in weights}
    corrected_biases = _biases(corrected) if corrected is not None else {}
    corrected_weights = {init.name: numpy_helper.to_array(init) for init in corrected.graph.initializer
                         if init.name in sources.values()} if corrected is not None else {}
    nodes = {node.input[1]: node for node in model.graph.node if len(node.input) >= 2}
    errors = []
    wanted = [name for name in candidates if name in by_name]
    for step, name in enumerate(wanted):
        weight = by_name[name]
        trial = copy.deepcopy(model)
        inits = {init.name: init for init in trial.graph.initializer}
        initializer = sources[name]
        values = corrected_weights.get(initializer, weight.values).astype(np.float64)  # AdaRound's grid, if any
        rounded = values - int8_weight_error(values, weight.out_axis)
        inits[initializer].CopyFrom(numpy_helper.from_array(rounded.astype(np.float32), initializer))
        node = nodes.get(initializer)
        if node is not None and len(node.input) > 2 and node.name in corrected_biases and node.input[2] in inits:
            bias = inits[node.input[2]]
            bias.CopyFrom(numpy_helper.from_array(corrected_biases[node.name], bias.name))
        got = _outputs(trial, x)
        errors.append((name, float(np.mean(1.0 - _cosines(expected, got)))))
        if progress:
            progress("rank layers", step + 1, len(wanted))
    return sorted(errors, key=lambda item: -item[1])


def _biases(model) -> dict[str, np.ndarray]:
    """{node name: its bias values} for the Conv/Gemm nodes of ``model``."""
    from onnx import numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    return {node.name: numpy_helper.to_array(inits[node.input[2]]) for node in model.graph.node
            if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in inits and node.name}


def _outputs(model, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1]})[0].reshape(1, -1) for i in range(len(x))])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(1) / np.where(norms > 0, norms, 1.0), 1.0)


def keras_ranking(model, inputs: np.ndarray, candidates, progress: Callable[[str, int, int], None] | None = None
                  ) -> Callable[[], list[tuple[str, float]]]:
    """The Keras route's ranking for ``search.mixed_precision`` (measured when the search first needs it):
    [(layer, output error)] worst first, each layer of ``candidates`` alone with its kernel rounded as TFLite
    rounds it, on the tf_keras ``model`` being exported (with its bias-corrected bias, if ``model`` has them,
    and every other layer's bias as before correction); ``inputs``: calibration inputs, channels last."""
    return lambda: rank_keras_layers(model, inputs, list(candidates), progress)


def rank_keras_layers(model, inputs: np.ndarray, candidates: list[str],
                      progress: Callable[[str, int, int], None] | None = None) -> list[tuple[str, float]]:
    """See ``keras_ranking``. Rounding per output channel commutes with the BatchNormalization scale the
    converter folds into a kernel (``Q(k W) = k Q(W)`` per channel), so the unfolded kernel is rounded."""
    from ..techniques.base import kernel_weights, leaf_layers
    from ..techniques.bias_correction_keras import uncorrected

    x = inputs[:SAMPLES].astype(np.float32)
    layers = {layer.name: layer for layer, _ in leaf_layers(model) if kernel_weights(layer)}
    wanted = [name for name in candidates if name in layers]
    corrected = set(getattr(model, "_sdk_bias_originals", {}))

    def outputs() -> np.ndarray:
        return np.asarray(model(x, training=False)).reshape(len(x), -1).astype(np.float64)

    expected = uncorrected(model, corrected, outputs)
    errors = []
    for step, name in enumerate(wanted):
        kernel = kernel_weights(layers[name])[0]
        before = kernel.numpy()
        kernel.assign((before - _int8_kernel_error(layers[name], before)).astype(before.dtype))
        try:
            got = uncorrected(model, corrected - {name}, outputs)
        finally:
            kernel.assign(before)
        errors.append((name, float(np.mean(1.0 - _cosines(expected, got)))))
        if progress:
            progress("rank layers", step + 1, len(wanted))
    return sorted(errors, key=lambda item: -item[1])


def _int8_kernel_error(layer, kernel: np.ndarray) -> np.ndarray:
    """``W - Q(W)`` with TFLite's per-output-channel int8 scales for this layer kind's kernel layout."""
    from ..techniques.bias_correction import int8_weight_error

    kind = type(layer).__name__
    if kind == "DepthwiseConv2D":  # [kh, kw, C, m]: output channel c * m + j
        flat = kernel.reshape(*kernel.shape[:-2], -1)
        return int8_weight_error(flat, axis=flat.ndim - 1).reshape(kernel.shape)
    axis = kernel.ndim - 2 if kind.endswith("Transpose") else kernel.ndim - 1
    return int8_weight_error(kernel, axis=axis)
