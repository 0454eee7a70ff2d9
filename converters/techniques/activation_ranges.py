"""Percentile activation ranges for int8: narrow the calibrated min/max of each activation to a percentile.

TensorFlow 2.19's converter calibrates activations by min/max only; it has no percentile or MSE option. So
the model is calibrated first (``_experimental_calibrate_only``, the route the converter's own
QuantizationDebugger takes), every activation is then measured again in the interpreter on the same
calibration inputs (a random subset of each sample's values), and each calibrated range is narrowed to
[percentile(100 - p), percentile(p)] before ``mlir_quantize`` turns it into scales. A range never widens
and always keeps 0; the model's inputs are narrowed too (values beyond them are clipped when quantized).
"""

from __future__ import annotations

import numpy as np

VALUES_PER_SAMPLE = 4096


def narrow_ranges(calibrated: bytes, inputs: list[np.ndarray], percentile: float) -> tuple[bytes, int]:
    """``calibrated`` with its activation ranges narrowed to ``percentile``; and how many ranges changed."""
    from tensorflow.lite.tools import flatbuffer_utils

    from ..verify.layers import _interpreter, _invoke

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]
    targets = [i for i, t in enumerate(graph.tensors)
               if t.quantization is not None and t.quantization.min is not None and len(t.quantization.min) == 1]
    interpreter = _interpreter(calibrated)
    rng = np.random.default_rng(0)
    samples: dict[int, list[np.ndarray]] = {i: [] for i in targets}
    for s in range(min(len(x) for x in inputs)):
        _invoke(interpreter, [x[s:s + 1] for x in inputs])
        for index in targets:
            values = interpreter.get_tensor(index).ravel()
            if values.size > VALUES_PER_SAMPLE:
                values = values[rng.integers(0, values.size, VALUES_PER_SAMPLE)]
            samples[index].append(values.astype(np.float32))
    changed = 0
    for index in targets:
        values = np.concatenate(samples[index])
        low, high = np.percentile(values, [100.0 - percentile, percentile])
        q = graph.tensors[index].quantization
        new_min, new_max = max(float(q.min[0]), min(float(low), 0.0)), min(float(q.max[0]), max(float(high), 0.0))
        if new_max <= new_min:
            continue
        if (new_min, new_max) != (float(q.min[0]), float(q.max[0])):
            changed += 1
        q.min[0], q.max[0] = new_min, new_max
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), changed
