"""Bias correction for int8 on the PyTorch/ONNX route: move each layer's mean int8 weight error into its bias.

Rounding a layer's weights to int8 (per output channel, symmetric, [-127, 127]: TFLite's scheme) shifts the
mean of its output by ``(W - Q(W)) . E[x]``, where ``E[x]`` is the layer's mean input per channel. With
unlabelled calibration data, ``E[x]`` is measured in the float ONNX graph (onnxruntime), and that shift is
added to the bias, so the int8 layer's mean output matches float (Nagel et al. 2019, empirical bias
correction). The float model's outputs move by the same shift; the int8 file's move back.
Conv (any groups) and Gemm with a bias initializer are corrected; others are left and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BATCH = 16


@dataclass
class BiasCorrection:
    corrected: dict[str, float] = field(default_factory=dict)  # layer -> largest |bias shift|
    skipped: dict[str, str] = field(default_factory=dict)
    samples: int = 0

    def to_dict(self) -> dict:
        return {"corrected": self.corrected, "skipped": self.skipped, "samples": self.samples}

    def summary(self) -> str:
        return (f"bias correction: {len(self.corrected)} layer(s) corrected on {self.samples} calibration samples"
                + (f", {len(self.skipped)} left ({next(iter(self.skipped.values()))})" if self.skipped else ""))


def int8_weight_error(weights: np.ndarray, axis: int = 0) -> np.ndarray:
    """``W - Q(W)`` for TFLite's per-channel symmetric int8 weights along ``axis``."""
    moved = np.moveaxis(weights.astype(np.float64), axis, 0)
    flat = moved.reshape(len(moved), -1)
    scale = np.abs(flat).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    quantized = np.clip(np.round(flat / scale[:, None]), -127, 127) * scale[:, None]
    return np.moveaxis((flat - quantized).reshape(moved.shape), 0, axis)


def correct_biases(model, x: np.ndarray) -> tuple[object, BiasCorrection]:
    """A copy of the ONNX ``model`` (one input) with corrected biases, measured on ``x`` (source layout)."""
    import copy

    from onnx import numpy_helper

    model = copy.deepcopy(model)
    initializers = {init.name: init for init in model.graph.initializer}
    record = BiasCorrection(samples=len(x))
    targets = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        name = node.name or f"{node.op_type}_{index}"
        if len(node.input) < 3 or node.input[2] not in initializers:
            record.skipped[name] = "no bias to correct"
            continue
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Gemm" and (attrs.get("transA") and attrs["transA"].i):
            record.skipped[name] = "Gemm with transA"
            continue
        targets.append((node, name, attrs))
    means = _input_means(model, [node.input[0] for node, _, _ in targets], x)
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for tensor in node.input:
            uses[tensor] = uses.get(tensor, 0) + 1
    for index, (node, name, attrs) in enumerate(targets):
        weights = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float64)
        bias_init = own_bias(model, node, initializers, uses, index, "corrected")
        bias = numpy_helper.to_array(bias_init).astype(np.float64)
        mean = means[node.input[0]]
        if node.op_type == "Conv":
            error = int8_weight_error(weights, 0)  # [O, I/groups, k...]
            groups = attrs["group"].i if "group" in attrs else 1
            per_group = error.shape[1]
            summed = error.reshape(error.shape[0], per_group, -1).sum(axis=2)  # [O, I/groups]
            out_per_group = error.shape[0] // groups
            shift = np.array([summed[o] @ mean[(o // out_per_group) * per_group:(o // out_per_group + 1) * per_group]
                              for o in range(error.shape[0])])
        else:
            trans_b = bool(attrs.get("transB") and attrs["transB"].i)
            error = int8_weight_error(weights, 0 if trans_b else 1)
            shift = (error @ mean) if trans_b else (mean @ error)
            if "alpha" in attrs:
                shift = shift * attrs["alpha"].f
            if "beta" in attrs and attrs["beta"].f != 0:
                shift = shift / attrs["beta"].f
        if shift.shape != bias.shape:
            record.skipped[name] = f"bias shape {bias.shape} does not match its {shift.shape} channels"
            continue
        bias_init.CopyFrom(numpy_helper.from_array((bias + shift).astype(np.float32), bias_init.name))
        record.corrected[name] = float(np.abs(shift).max())
    return model, record


def own_bias(model, node, initializers: dict, uses: dict[str, int], index: int, tag: str):
    """``node``'s bias initializer, made its own first: exporters share equal initializers (e.g. zero biases),
    and a correction for this layer must not move the others'. ``uses`` counts the graph's tensor uses."""
    bias_init = initializers[node.input[2]]
    if uses[bias_init.name] > 1:
        uses[bias_init.name] -= 1
        bias_init = model.graph.initializer.add()
        bias_init.CopyFrom(initializers[node.input[2]])
        bias_init.name = f"{node.input[2]}.{tag}_{index}"
        node.input[2] = bias_init.name
    return bias_init


def _input_means(model, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """Each named tensor's mean per channel (axis 1; the last axis of 2-D tensors) over ``x``, by onnxruntime."""
    import copy

    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = copy.deepcopy(model)
    existing = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(names):
        if name not in existing:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = list(dict.fromkeys(names))
    input_name = session.get_inputs()[0].name
    batch = session.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) and batch > 0 else BATCH
    sums: dict[str, np.ndarray] = {}
    for start in range(0, len(x), step):
        chunk = x[start:start + step].astype(np.float32)
        if len(chunk) < step and isinstance(batch, int):  # a fixed batch: pad, and weigh only the real rows
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - len(chunk), axis=0)])
        values = session.run(wanted, {input_name: chunk})
        real = min(step, len(x) - start)
        for name, value in zip(wanted, values):
            value = value[:real].astype(np.float64)
            per_channel = value.reshape(real, value.shape[1], -1).mean(axis=2).sum(axis=0) if value.ndim > 2 \
                else value.sum(axis=0)
            sums[name] = sums.get(name, 0) + per_channel
    return {name: total / len(x) for name, total in sums.items()}
