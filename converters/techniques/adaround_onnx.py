"""AdaRound (``quantize.rounding: adaround``) on the PyTorch/ONNX route: learned rounding of the ONNX initializers.

Each Conv (1-D/2-D, any groups) and Gemm with constant weights gets its input patches measured in the float ONNX
graph (onnxruntime, the same measurement as bias correction's), its rounding learned by ``adaround`` and its
weights snapped to the chosen int8 grid points, so that onnx2tf and the TFLite converter reproduce the choice.
With bias correction on (its default), each layer's mean output shift from the chosen rounding
(``(W - W_q) . E[patch]``) goes into its bias, as ``bias_correction`` does for nearest rounding.
"""

from __future__ import annotations

import copy
import time

import numpy as np

from .adaround import PatchStats, RoundingRecord, conv_patches, round_layer
from .bias_correction import own_bias

BATCH = 16


def learned_rounding(model, settings, calib, specs: list, notes: list[str]):
    """The ONNX ``model`` with AdaRound weights (and corrected biases unless ``settings.bias_correction`` is
    false) when ``settings.rounding`` is adaround, else None. The recipe checks have refused, before any
    work, the cases it cannot apply to (no calibration data, several inputs, modes without int8 weights)."""
    if getattr(settings, "rounding", "nearest") != "adaround":
        return None
    if len(specs) != 1:
        from ..errors import RecipeError

        raise RecipeError(f"quantize.rounding adaround measures layer inputs for a model with one input, and this "
                          f"one has {len(specs)}; set rounding nearest")
    x = calib.columns([specs[0].name])[0][:settings.samples]
    rounded, record = adaround(model, x, settings.rounding_iterations, settings.bias_correction is not False)
    notes.append(record.summary())
    return rounded


def adaround(model, x: np.ndarray, iterations: int, correct_bias: bool = True) -> tuple[object, RoundingRecord]:
    """A copy of the ONNX ``model`` (one input) with AdaRound-rounded Conv/Gemm weights, learned on ``x``."""
    from onnx import numpy_helper

    started = time.perf_counter()
    model = copy.deepcopy(model)
    initializers = {init.name: init for init in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for tensor in node.input:
            uses[tensor] = uses.get(tensor, 0) + 1
    record = RoundingRecord(samples=len(x), iterations=iterations)
    layers = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        name = node.name or f"{node.op_type}_{index}"
        attrs = {a.name: a for a in node.attribute}
        weights = numpy_helper.to_array(initializers[node.input[1]])
        if uses[node.input[1]] > 1:
            record.skipped[name] = "weights shared with another layer"
        elif node.op_type == "Gemm" and attrs.get("transA") and attrs["transA"].i:
            record.skipped[name] = "Gemm with transA"
        elif node.op_type == "Conv" and weights.ndim not in (3, 4):
            record.skipped[name] = f"{weights.ndim - 2}-D convolution"
        else:
            layers.append(_Layer(node, name, attrs, weights))
    _measure(model, layers, x)
    for index, layer in enumerate(layers):
        rows = layer.rows()
        result, shift, errors = round_layer(rows, layer.stats, iterations)
        weight_name = layer.node.input[1]
        initializers[weight_name].CopyFrom(numpy_helper.from_array(layer.back(result).astype(np.float32), weight_name))
        record.layers[layer.name] = errors
        if correct_bias and len(layer.node.input) > 2 and layer.node.input[2] in initializers:
            bias_init = own_bias(model, layer.node, initializers, uses, index, "rounded")
            shift = shift.reshape(-1)
            if layer.node.op_type == "Gemm":
                alpha = layer.attrs["alpha"].f if "alpha" in layer.attrs else 1.0
                beta = layer.attrs["beta"].f if "beta" in layer.attrs else 1.0
                shift = shift * alpha / (beta or 1.0)
            bias = numpy_helper.to_array(bias_init).astype(np.float64)
            bias_init.CopyFrom(numpy_helper.from_array((bias + shift).astype(np.float32), bias_init.name))
            record.bias_corrected += 1
    record.seconds = time.perf_counter() - started
    return model, record


def rounded_weights(rounded, model) -> dict[str, np.ndarray]:
    """{layer: its weights in the ``rounded`` graph} for the layers of ``model`` (the graph before AdaRound):
    automatic mixed precision finds a kept layer's ops by the weights the converted file holds."""
    from onnx import numpy_helper

    from ..sources.onnx import onnx_weights

    inits = {init.name: init for init in rounded.graph.initializer}
    sources = onnx_weights(model)[1]
    return {name: numpy_helper.to_array(inits[init]) for name, init in sources.items() if init in inits}


class _Layer:
    """One Conv/Gemm node: its weights as AdaRound's [G, O, K] rows and back, and its input patch statistics."""

    def __init__(self, node, name: str, attrs: dict, weights: np.ndarray):
        self.node, self.name, self.attrs, self.weights = node, name, attrs, weights
        self.stats = PatchStats()
        self.groups = attrs["group"].i if "group" in attrs else 1
        self.trans_b = bool(node.op_type == "Gemm" and attrs.get("transB") and attrs["transB"].i)

    def rows(self) -> np.ndarray:
        if self.node.op_type == "Gemm":
            return (self.weights if self.trans_b else self.weights.T)[None].astype(np.float64)
        out = self.weights.shape[0]
        return self.weights.reshape(self.groups, out // self.groups, -1).astype(np.float64)

    def back(self, rows: np.ndarray) -> np.ndarray:
        if self.node.op_type == "Gemm":
            return rows[0] if self.trans_b else rows[0].T
        return rows.reshape(self.weights.shape)

    def add(self, value: np.ndarray) -> None:
        """Add a batch of this layer's input (channels first)."""
        if self.node.op_type == "Gemm":
            self.stats.add(value.reshape(len(value), 1, -1))
            return
        kernel = tuple(self.weights.shape[2:])
        spatial = len(kernel)
        ints = {k: list(a.ints) for k, a in self.attrs.items() if a.ints}
        strides = tuple(ints.get("strides", [1] * spatial))
        dilations = tuple(ints.get("dilations", [1] * spatial))
        pads = ints.get("pads", [0] * 2 * spatial)
        auto_pad = self.attrs["auto_pad"].s.decode() if "auto_pad" in self.attrs else "NOTSET"
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * 2 * spatial
            for axis in range(spatial):
                size = value.shape[2 + axis]
                total = max((-(-size // strides[axis]) - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis]
                            + 1 - size, 0)
                small, large = total // 2, total - total // 2
                pads[axis], pads[spatial + axis] = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
        self.stats.add(conv_patches(value, kernel, strides, dilations, tuple(pads), self.groups))


def _measure(model, layers: list[_Layer], x: np.ndarray) -> None:
    """Every layer's input patch statistics on ``x``, from one onnxruntime session over the float graph."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = copy.deepcopy(model)
    existing = {o.name for o in probe.graph.output}
    wanted = list(dict.fromkeys(layer.node.input[0] for layer in layers))
    for name in wanted:
        if name not in existing:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    batch = session.get_inputs()[0].shape[0]
    step = batch if isinstance(batch, int) and batch > 0 else BATCH
    for start in range(0, len(x), step):
        chunk = x[start:start + step].astype(np.float32)
        real = len(chunk)
        if real < step and isinstance(batch, int):  # a fixed batch: pad, and use only the real rows
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - real, axis=0)])
        values = dict(zip(wanted, session.run(wanted, {input_name: chunk})))
        for layer in layers:
            layer.add(values[layer.node.input[0]][:real])
