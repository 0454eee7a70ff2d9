"""Facts measured in a written .tflite: sizes, ops, and per-weight sparsity and unique values.

The report must prove what the file holds, not what the recipe asked for, so
everything here is read back from the flatbuffer (``device_runtime``'s reader).
"""

from __future__ import annotations

import gzip
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np

from device_runtime.tflite_format import Subgraph, Tensor, TFLiteModel, read_model

# Ops whose input 1 is a weight tensor.
WEIGHT_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D",
              "EMBEDDING_LOOKUP", "BATCH_MATMUL"}
PASS_THROUGH_OPS = {"DEQUANTIZE", "DENSIFY"}  # weights stored compressed, expanded at load time
FLOAT_TYPES = {"float32", "float16", "float64"}


@dataclass
class WeightStats:
    layer: str
    op: str
    tensor: str
    shape: list[int]
    dtype: str
    stored_as: str  # dense, sparse (TFLite sparse format) or float16->dequantize
    size: int
    nonzero: int
    sparsity: float
    unique_values: int
    unique_per_channel_max: int | None
    bytes: int


@dataclass
class OpStats:
    counts: dict[str, int]
    float_ops: dict[str, int]


@dataclass
class ModelStats:
    file_size: int
    gzip_size: int
    ops: OpStats
    inputs: list[dict]
    outputs: list[dict]
    weights: list[WeightStats] = field(default_factory=list)

    @property
    def total_weights(self) -> int:
        return sum(w.size for w in self.weights)

    @property
    def overall_sparsity(self) -> float:
        total = self.total_weights
        return 1.0 - sum(w.nonzero for w in self.weights) / total if total else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["overall_sparsity"] = self.overall_sparsity
        out["total_weights"] = self.total_weights
        return out


def read_single_io_model(path, purpose: str) -> tuple[bytes, TFLiteModel]:
    """A .tflite's bytes and parsed form, refusing models without exactly one input and one output."""
    from device_runtime.loading import read_model_bytes

    from ..errors import UserInputError

    data = read_model_bytes(path)
    model = read_model(data)
    sg = model.main
    if len(sg.inputs) != 1 or len(sg.outputs) != 1:
        raise UserInputError(f"{purpose} handles one input and one output; the model has "
                             f"{len(sg.inputs)} and {len(sg.outputs)}")
    return data, model


def gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


WEIGHT_OP_NAMES = ("Conv2D", "depthwise", "MatMul", "BiasAdd", "Conv1D", "conv1d", "Tensordot", "BatchMatMul")


def analyse(data: bytes, layer_names: Iterable[str] = (), measure_gzip: bool = True) -> ModelStats:
    """Measure a .tflite; ``layer_names`` (the source model's) label each weight tensor.

    ``measure_gzip=False`` leaves ``gzip_size`` 0: gzip -9 takes 12 s on a 90 MB model, and a caller
    that only needs the weights' sparsity need not wait for it."""
    model = read_model(data)
    sg = model.main
    producers = {out: op for op in sg.operators for out in op.outputs}
    known = set(layer_names)
    weights = []
    for op in sg.operators:
        if op.op_name not in WEIGHT_OPS or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        tensor, stored_as = _stored_constant(model, sg, op.inputs[1], producers)
        if tensor is None:
            continue
        weights.append(_weight_stats(model, tensor, stored_as, op.op_name,
                                     layer_of(sg.tensors[op.outputs[0]].name, known)))
    return ModelStats(len(data), gzip_size(data) if measure_gzip else 0, _op_stats(sg),
                      [_io(sg.tensors[i]) for i in sg.inputs], [_io(sg.tensors[i]) for i in sg.outputs],
                      weights)


def _stored_constant(model: TFLiteModel, sg: Subgraph, index: int, producers
                     ) -> tuple[Tensor | None, str]:
    tensor = sg.tensors[index]
    if len(model.buffer_bytes(tensor)):
        return tensor, "sparse" if tensor.sparsity is not None else "dense"
    op = producers.get(index)
    if op is not None and op.op_name in PASS_THROUGH_OPS and op.inputs:
        source, _ = _stored_constant(model, sg, op.inputs[0], producers)
        if source is not None:
            how = "sparse" if source.sparsity is not None else f"{source.dtype_name}->{op.op_name.lower()}"
            return source, how
    return None, ""


def _weight_stats(model: TFLiteModel, tensor: Tensor, stored_as: str, op: str, layer: str) -> WeightStats:
    stored = model.constant(tensor)
    size = tensor.size
    q = tensor.quantization
    if tensor.sparsity is not None:
        values = stored
        nonzero = int(np.count_nonzero(values))
        unique = int(np.unique(values).size) + (1 if nonzero < size and 0 not in values else 0)
        per_channel = None
    else:
        nonzero = int(np.count_nonzero(stored))
        real = stored.astype(np.float64)
        if q is not None:
            shape = [1] * stored.ndim
            if q.per_channel:
                shape[q.axis] = -1
            real = (real - q.zero_point.reshape(shape)) * q.scale.reshape(shape)
        unique = int(np.unique(real).size)
        per_channel = None
        if q is not None and q.per_channel:
            moved = np.moveaxis(stored, q.axis, 0).reshape(stored.shape[q.axis], -1)
            per_channel = max(int(np.unique(row).size) for row in moved)
    return WeightStats(layer, op, tensor.name, list(tensor.shape), tensor.dtype_name, stored_as, size,
                       nonzero, 1.0 - nonzero / size if size else 0.0, unique, per_channel,
                       len(model.buffer_bytes(tensor)))


def layer_of(output_name: str, known: set[str]) -> str:
    """The source layer an op came from, read from its output tensor's name.

    A fused op's name lists each TF op fused into it (``m/block_1_expand_relu/Relu6;m/block_1_expand/Conv2D``):
    the layer whose weights it applies is the one named with a weight op, else the first known name."""
    fused = output_name.split(";")
    for part in fused[1:]:
        pieces = part.split("/")
        if len(pieces) > 1 and pieces[-1].startswith(WEIGHT_OP_NAMES):
            found = _known_in(pieces[:-1], known)
            if found is not None:
                return found
    pieces = fused[0].split("/")
    found = _known_in(pieces, known)
    return found if found is not None else pieces[1] if len(pieces) > 1 else pieces[0]


def _known_in(pieces: list[str], known: set[str]) -> str | None:
    for piece in pieces:
        if piece in known:
            return piece
        if piece.startswith("quant_") and piece[6:] in known:  # tfmot's QAT wrapper around the layer
            return piece[6:]
    return None


def _op_stats(sg: Subgraph) -> OpStats:
    counts = Counter(op.op_name for op in sg.operators)
    computed = {i for op in sg.operators for i in op.outputs} | set(sg.inputs)  # everything not a constant
    float_ops = Counter(
        op.op_name for op in sg.operators
        if op.op_name not in ("QUANTIZE", "DEQUANTIZE")
        and any(sg.tensors[i].dtype_name in FLOAT_TYPES and i in computed
                for i in (*op.inputs, *op.outputs) if i >= 0))
    return OpStats(dict(sorted(counts.items())), dict(sorted(float_ops.items())))


def _io(tensor: Tensor) -> dict:
    q = tensor.quantization
    return {"name": tensor.name, "shape": list(tensor.shape_signature), "dtype": tensor.dtype_name,
            "scale": float(q.scale[0]) if q is not None else None,
            "zero_point": int(q.zero_point[0]) if q is not None else None}


def label_weights(stats: ModelStats, arrays: dict[str, np.ndarray]) -> None:
    """Name each .tflite weight after the source array it came from, where tensor names cannot tell.

    onnx2tf's tensor names do not carry the source layer, so weights are matched
    to source arrays by element count, then by the closest sparsity, in order.
    """
    unused = dict(arrays)
    for weight in stats.weights:
        candidates = [name for name, values in unused.items() if values.size == weight.size]
        if not candidates:
            continue
        best = min(candidates, key=lambda n: abs((1.0 - np.count_nonzero(unused[n]) / weight.size)
                                                 - weight.sparsity))
        weight.layer = best
        del unused[best]
