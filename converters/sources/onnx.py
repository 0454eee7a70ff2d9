"""ONNX models: load and check, fix input shapes, simplify, read and write weights, run.

Every PyTorch model also passes through here after ``torch.onnx.export``, so
ONNX is the one graph form the PyTorch/ONNX route compresses and converts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..techniques.arrays import WeightArray
from ..errors import ConversionError, DataError, SourceModelError, first_line

CONV_LIKE_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
                 "BatchNormalization", "InstanceNormalization", "LpPool", "Resize", "Upsample"}
# Ops that keep a tensor's layout, through which an input can reach a convolution.
LAYOUT_PRESERVING_OPS = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "Cast", "Identity", "Pad", "Sigmoid",
                         "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Neg", "Abs"}


# Ops that pass an integer input's values on unchanged, through which token ids reach their embedding table.
VALUE_PRESERVING_OPS = {"Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose",
                        "Slice", "Concat", "Tile"}
# Ops that take an integer tensor as indices (input 1; OneHot: input 0).
INDEX_OPS = {"Gather": 1, "GatherElements": 1, "GatherND": 1, "ScatterND": 1, "ScatterElements": 1, "OneHot": 0}


@dataclass
class TensorSpec:
    """One graph input as the .tflite will take it: its name, fixed shape (source layout) and dtype.

    An input of rank >= 2 has a leading batch axis of size ``shape[0]`` (1, 4, 8...): data gives
    samples of ``sample_shape`` and ``shape[0]`` of them fill one run.  An input of rank 0 or 1 has
    no batch axis: one data sample is one whole input.
    """

    name: str
    shape: tuple[int, ...]  # in the source layout, batch included
    dtype: np.dtype = np.dtype(np.float32)

    @property
    def batch(self) -> int | None:
        return self.shape[0] if len(self.shape) >= 2 else None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:] if len(self.shape) >= 2 else self.shape

    def runs(self, x: np.ndarray) -> list[np.ndarray]:
        """``x`` (samples stacked on axis 0) as whole inputs, one per run; the last batch is filled by
        wrapping around to the first samples, so every sample is used and no run is short."""
        x = x.astype(self.dtype, copy=False)
        if self.batch is None:
            return list(x)
        count = -(-len(x) // self.batch)
        x = np.take(x, np.arange(count * self.batch), axis=0, mode="wrap")
        return [x[i * self.batch:(i + 1) * self.batch] for i in range(count)]


def join_runs(specs: list[TensorSpec], outputs: list[list[np.ndarray]], samples: int) -> list[np.ndarray]:
    """Per-run outputs as one array per output: concatenated along the batch when every input of rank
    >= 2 shares batch B and the output's leading axis is B (trimmed to ``samples`` rows), else stacked
    one run per row."""
    batches = {s.batch for s in specs}
    batch = batches.pop() if len(batches) == 1 else None
    joined = []
    for j in range(len(outputs[0])):
        parts = [np.asarray(run[j]) for run in outputs]
        if batch is not None and parts[0].ndim >= 1 and all(p.shape[:1] == (batch,) for p in parts):
            joined.append(np.concatenate(parts)[:samples])
        else:
            joined.append(np.stack(parts))
    return joined


def load_onnx(path: str | os.PathLike):
    """Parse and check an ONNX file, with one-line errors for missing, corrupt and truncated files."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise SourceModelError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # DecodeError, ValueError, OSError: the file is not a whole ONNX model
        raise SourceModelError(f"{path.name} is not a readable ONNX model ({first_line(exc)}); "
                               "is it truncated? Re-export it with torch.onnx.export") from None
    if not model.graph.node:
        raise SourceModelError(f"{path.name} is not a readable ONNX model: its graph has no nodes; "
                               "is it truncated? Re-export it with torch.onnx.export")
    check_model(model, path.name)
    return model


def check_model(model, what: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise SourceModelError(f"{what} is not a valid ONNX model: {first_line(exc)}") from None


def graph_inputs(model) -> list:
    """The real inputs (older exporters also list initializers as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def fix_input_shapes(model, shapes: Sequence[Sequence[int]] | None, notes: list[str] | None = None
                     ) -> list[TensorSpec]:
    """Give every input a static shape: ``shapes`` overrides, a dynamic dimension becomes 1 (said in
    ``notes``).  Any rank and any batch is kept as it is."""
    inputs = graph_inputs(model)
    if shapes is not None and len(shapes) != len(inputs):
        raise DataError(f"--input-shape given {len(shapes)} time(s) but the model has {len(inputs)} "
                        f"input(s): {', '.join(i.name for i in inputs)}")
    specs = []
    for index, graph_input in enumerate(inputs):
        tensor_type = graph_input.type.tensor_type
        dims = tensor_type.shape.dim
        if shapes is not None:
            shape = tuple(int(d) for d in shapes[index])
            if any(d <= 0 for d in shape):
                raise DataError(f"--input-shape for {graph_input.name!r} must be positive integers; got {shape}")
        else:
            shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims)
            if -1 in shape:
                fixed = tuple(1 if d == -1 else d for d in shape)
                if notes is not None:
                    shown = ",".join("?" if d == -1 else str(d) for d in shape)
                    notes.append(f"input {graph_input.name!r} has dynamic shape ({shown}); converted with "
                                 f"{','.join(map(str, fixed))} (each dynamic dimension 1): give --input-shape "
                                 "to choose")
                shape = fixed
        del dims[:]
        for d in shape:
            dims.add().dim_value = d
        specs.append(TensorSpec(graph_input.name, shape, input_dtype(graph_input)))
    return specs


def input_dtype(graph_input) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(graph_input.type.tensor_type.elem_type))


def index_inputs(model) -> dict[str, int | None]:
    """Integer inputs used as indices: {name: rows of the smallest constant table they index (an embedding's
    vocabulary), or None when they index a tensor the model computes}.  Inputs not listed (attention masks)
    index nothing."""
    constants = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants.update({out: tuple(a.t.dims) for out in node.output for a in node.attribute if a.name == "value"})
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in set(node.input):
            consumers.setdefault(name, []).append(node)
    found: dict[str, int | None] = {}
    for graph_input in graph_inputs(model):
        if not np.issubdtype(input_dtype(graph_input), np.integer):
            continue
        limits, unknown, frontier, seen = [], False, [graph_input.name], {graph_input.name}
        while frontier:
            tensor = frontier.pop()
            for node in consumers.get(tensor, []):
                slots = [i for i, name in enumerate(node.input) if name == tensor]
                onward = node.op_type in VALUE_PRESERVING_OPS and (node.op_type == "Concat" or 0 in slots)
                if INDEX_OPS.get(node.op_type) in slots:
                    table = constants.get(node.input[0]) if node.op_type == "Gather" else None
                    if table:
                        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                        limits.append(table[axis % len(table)])
                    else:
                        unknown = True
                    onward = False
                if node.op_type == "Gather" and 0 in slots:  # selecting from the ids keeps their values
                    onward = True
                for out in node.output if onward else ():
                    if out not in seen:
                        seen.add(out)
                        frontier.append(out)
        if limits or unknown:
            found[graph_input.name] = min(limits) if limits else None
    return found


def simplify(model) -> tuple[object, str | None]:
    """onnxsim: constant folding and batch-norm folding into convolutions, so weights are final."""
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises whatever its passes raise
        return model, f"onnxsim could not simplify the graph ({first_line(exc)}); converted as exported"
    if not ok:
        return model, "onnxsim's check of the simplified graph failed; converted as exported"
    return simplified, None


def output_names(model) -> list[str]:
    return [o.name for o in model.graph.output]


def layer_name(node_name: str) -> str:
    """The PyTorch module path of an exported node: '/features/features.3/conv/Conv' -> 'features.3.conv'."""
    parts = node_name.strip("/").split("/")[:-1]
    path: list[str] = []
    for part in parts:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part  # Sequential children repeat their parent's path
        else:
            path.append(part)
    return ".".join(path) or node_name


def onnx_weights(model) -> tuple[list[WeightArray], dict[str, str]]:
    """The Conv/ConvTranspose/Gemm/MatMul weight initializers, and which initializer each layer name reads."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    weights, sources, seen = [], {}, set()
    for index, node in enumerate(model.graph.node):
        if len(node.input) < 2 or node.input[1] not in initializers or node.input[1] in seen:
            continue
        values = numpy_helper.to_array(initializers[node.input[1]])
        if not np.issubdtype(values.dtype, np.floating):
            continue
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Conv" and values.ndim >= 3:
            axes, types = (1, 0), ("Conv", f"Conv{values.ndim - 2}d")
        elif node.op_type == "ConvTranspose" and values.ndim >= 3:  # (C_in, C_out / group, k...)
            axes, types = (0, 1), ("ConvTranspose", f"ConvTranspose{values.ndim - 2}d")
        elif node.op_type == "Gemm" and values.ndim == 2:
            trans_b = "transB" in attrs and attrs["transB"].i == 1
            axes, types = ((1, 0) if trans_b else (0, 1)), ("Gemm", "Linear")
        elif node.op_type == "MatMul" and values.ndim == 2:
            axes, types = (0, 1), ("MatMul", "Linear")
        else:
            continue
        name = layer_name(node.name) if node.name else f"{node.op_type}_{index}"
        if name in sources:
            name = f"{name}.{node.op_type}_{index}"
        seen.add(node.input[1])
        sources[name] = node.input[1]
        weights.append(WeightArray(name, types, values, in_axis=axes[0], out_axis=axes[1]))
    return weights, sources


def set_weights(model, weights: list[WeightArray], sources: dict[str, str]) -> None:
    from onnx import numpy_helper

    by_initializer = {sources[w.name]: w for w in weights}
    for init in model.graph.initializer:
        weight = by_initializer.get(init.name)
        if weight is not None:
            dtype = numpy_helper.to_array(init).dtype
            init.CopyFrom(numpy_helper.from_array(weight.values.astype(dtype), init.name))


def channel_last_inputs(model, specs: list[TensorSpec]) -> list[str]:
    """Inputs of rank 3-5 that reach a convolution or pooling: these are image/audio-like, so NHWC/NWC."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    chosen = []
    for spec in specs:
        if not 3 <= len(spec.shape) <= 5:
            continue
        frontier, visited = [spec.name], set()
        while frontier:
            tensor = frontier.pop()
            for node in consumers.get(tensor, []):
                if node.op_type in CONV_LIKE_OPS:
                    chosen.append(spec.name)
                    frontier = []
                    break
                if node.op_type in LAYOUT_PRESERVING_OPS and node.name not in visited:
                    visited.add(node.name)
                    frontier.extend(node.output)
    return chosen


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ConversionError(f"onnxruntime cannot run the source model: {first_line(exc)}") from None


def run_once(model, specs: list[TensorSpec], feeds: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """The outputs of one run on ``feeds`` (default zeros) at the specs' shapes (onnxruntime's errors
    propagate)."""
    return _session(model).run(None, feeds or {s.name: np.zeros(s.shape, s.dtype) for s in specs})


def run_onnx(model, inputs: dict[str, np.ndarray], specs: list[TensorSpec] | None = None) -> list[np.ndarray]:
    """Reference outputs from onnxruntime on samples stacked on axis 0, run as the graph's fixed
    shapes take them (``specs``; by default every input has batch 1), joined as ``join_runs`` does."""
    session = _session(model)
    specs = specs or [TensorSpec(name, (1, *x.shape[1:]), x.dtype) for name, x in inputs.items()]
    runs = [spec.runs(inputs[spec.name]) for spec in specs]
    results = [session.run(None, {s.name: r[i] for s, r in zip(specs, runs)}) for i in range(len(runs[0]))]
    return join_runs(specs, results, len(next(iter(inputs.values()))))
