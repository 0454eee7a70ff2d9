"""Activation ranges for int8 other than the converter's min/max: percentile or MSE.

TensorFlow 2.19's converter calibrates activations by min/max only; it has no percentile or MSE option. So
the model is calibrated first (``_experimental_calibrate_only``, the route the converter's own
QuantizationDebugger takes), every activation is then measured again in the interpreter on the same
calibration inputs (a random subset of each sample's values), and each calibrated range is narrowed before
``mlir_quantize`` turns it into scales:

- ``percentile``: to [percentile(100 - p), percentile(p)];
- ``mse``: to the range, among the min/max range shrunk by factors 1.0, 0.98, ... 0.2, then geometrically to
  0.001 (both ends alike), whose
  256-level quantization (clipping included) has the least mean squared error on the measured values.

A range never widens and always keeps 0; the model's inputs are narrowed too (values beyond them are clipped
when quantized).
"""

from __future__ import annotations

import numpy as np

VALUES_PER_SAMPLE = 4096
MSE_FACTORS = np.concatenate([np.linspace(1.0, 0.2, 41), np.geomspace(0.19, 1e-3, 40)])
MSE_VALUES = 1 << 16  # values each tensor's MSE is measured on


def narrow_ranges(calibrated: bytes, inputs: list[np.ndarray], percentile: float,
                  method: str = "percentile") -> tuple[bytes, int]:
    """``calibrated`` with its activation ranges narrowed (``method`` percentile or mse); and how many changed."""
    from tensorflow.lite.tools import flatbuffer_utils

    from ..verify.layers import _interpreter, _invoke

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]
    targets = [i for i, t in enumerate(graph.tensors)
               if t.quantization is not None and t.quantization.min is not None and len(t.quantization.min) == 1]
    interpreter = _interpreter(calibrated)
    rng = np.random.default_rng(0)
    samples: dict[int, list[np.ndarray]] = {i: [] for i in targets}
    ranks = [len(detail["shape"]) for detail in interpreter.get_input_details()]
    for s in range(min(len(x) for x in inputs)):
        # samples of a batch-1 input, or whole runs stacked on a new first axis (the PyTorch/ONNX route's)
        _invoke(interpreter, [x[s] if x.ndim == rank + 1 else x[s:s + 1] for x, rank in zip(inputs, ranks)])
        for index in targets:
            values = interpreter.get_tensor(index).ravel()
            if values.size > VALUES_PER_SAMPLE:
                values = values[rng.integers(0, values.size, VALUES_PER_SAMPLE)]
            samples[index].append(values.astype(np.float32))
    changed = 0
    for index in targets:
        values = np.concatenate(samples[index])
        q = graph.tensors[index].quantization
        if method == "mse":
            low, high = mse_range(values, float(q.min[0]), float(q.max[0]), rng)
        else:
            low, high = np.percentile(values, [100.0 - percentile, percentile])
        new_min, new_max = max(float(q.min[0]), min(float(low), 0.0)), min(float(q.max[0]), max(float(high), 0.0))
        if new_max <= new_min:
            continue
        if (new_min, new_max) != (float(q.min[0]), float(q.max[0])):
            changed += 1
        q.min[0], q.max[0] = new_min, new_max
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), changed


def mse_range(values: np.ndarray, low: float, high: float, rng: np.random.Generator | None = None
              ) -> tuple[float, float]:
    """The [low, high] shrunk by one of ``MSE_FACTORS`` whose int8 (256-level, asymmetric) quantization of
    ``values`` has the least mean squared error."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high <= low:
        return low, high
    if values.size > MSE_VALUES:
        values = values[(rng or np.random.default_rng(0)).integers(0, values.size, MSE_VALUES)]
    values = values.astype(np.float64)
    best, chosen = np.inf, (low, high)
    for factor in MSE_FACTORS:
        lo, hi = low * factor, high * factor
        scale = (hi - lo) / 255.0
        zero = np.round(-lo / scale)  # the grid holds 0 exactly, as TFLite's does
        levels = np.clip(np.round(values / scale) + zero, 0, 255)
        error = float(np.mean(((levels - zero) * scale - values) ** 2))
        if error < best:
            best, chosen = error, (lo, hi)
    return chosen
