"""Measuring an ONNX graph on calibration data: layer inputs/outputs per channel, and outputs with trial weights.

The data-aware one-shot passes (``data_aware.py``) need three measurements, all in onnxruntime on the
(batch-norm folded) graph that gets converted: each weight layer's input energy per channel (for saliency
and weighted clustering), each layer's mean output per channel (for bias correction), and the model's
output with one layer's weights replaced (for sensitivity). ``Probe`` builds one session for all of them:
intermediate tensors become graph outputs and weight initializers become overridable graph inputs, so a
trial is a ``run`` with a different feed, not a new session.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

CHUNK = 64  # samples per onnxruntime call when the batch axis can be freed


@dataclass(frozen=True)
class Site:
    """Where one weight array sits in the graph: its node's input, output and bias."""

    name: str  # the layer name the recipe and the report use
    op_type: str
    weight: str  # initializer names
    bias: str | None
    input: str  # tensor names
    output: str
    groups: int = 1
    first: bool = False  # no other weight layer between the graph's inputs and this one


def layer_sites(model, sources: dict[str, str]) -> dict[str, Site]:
    """Each compressible weight's node, by layer name (``sources``: layer -> weight initializer)."""
    initializers = {init.name for init in model.graph.initializer}
    by_weight = {weight: name for name, weight in sources.items()}
    upstream_weighted: set[str] = set()  # tensors computed from some weight layer's output
    sites = {}
    for node in model.graph.node:
        name = by_weight.get(node.input[1]) if len(node.input) > 1 else None
        weighted_input = any(t in upstream_weighted for t in node.input)
        if name is not None and name not in sites:
            attrs = {a.name: a for a in node.attribute}
            bias = node.input[2] if len(node.input) > 2 and node.input[2] in initializers else None
            sites[name] = Site(name, node.op_type, node.input[1], bias, node.input[0], node.output[0],
                               attrs["group"].i if "group" in attrs else 1, first=not weighted_input)
        if name is not None or weighted_input:
            upstream_weighted.update(node.output)
    return sites


class Probe:
    """One onnxruntime session that reports chosen intermediate tensors and takes replacement weights."""

    def __init__(self, model, specs, tensors: list[str], weights: list[str]):
        from onnx import TensorProto, helper

        import onnxruntime as ort

        probe = copy.deepcopy(model)
        self.output_names = [o.name for o in model.graph.output]
        existing = set(self.output_names)
        for name in dict.fromkeys(tensors):
            if name not in existing:
                probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        declared = {i.name for i in probe.graph.input}
        for init in probe.graph.initializer:  # an initializer listed as an input can be fed: a trial weight
            if init.name in weights and init.name not in declared:
                probe.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        self.specs = specs
        self.free_batch = _free_batch(probe, specs)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        if self.free_batch:
            try:  # graphs with a batch of 1 baked into a Reshape run only at their exported shapes
                self.session.run(None, {s.name: np.zeros((2, *s.shape[1:]), s.dtype) for s in specs})
            except Exception:  # noqa: BLE001 - onnxruntime's own error types
                for model_input in probe.graph.input:
                    if model_input.name in {s.name for s in specs}:
                        spec = next(s for s in specs if s.name == model_input.name)
                        model_input.type.tensor_type.shape.dim[0].dim_value = spec.shape[0]
                self.free_batch = False
                self.session = ort.InferenceSession(probe.SerializeToString(), options,
                                                    providers=["CPUExecutionProvider"])

    def chunks(self, data: dict[str, np.ndarray]):
        """The data as feeds the session takes: chunks of ``CHUNK`` samples, or the graph's fixed runs."""
        count = len(next(iter(data.values())))
        if self.free_batch:
            for start in range(0, count, CHUNK):
                yield {s.name: data[s.name][start:start + CHUNK].astype(s.dtype, copy=False) for s in self.specs}, \
                    min(CHUNK, count - start)
            return
        runs = [s.runs(data[s.name]) for s in self.specs]
        batch = self.specs[0].batch or 1
        for index in range(len(runs[0])):
            yield {s.name: r[index] for s, r in zip(self.specs, runs)}, min(batch, count - index * batch)

    def run(self, data: dict[str, np.ndarray], tensors: list[str], weights: dict[str, np.ndarray] | None = None,
            reduce=None) -> list:
        """``tensors`` on every sample of ``data``: concatenated arrays, or ``reduce(name, array, real)``
        summed over chunks (``real`` rows are samples; a fixed batch's last run may wrap around)."""
        fed = {k: v.astype(np.float32) for k, v in (weights or {}).items()}
        totals: list = [None] * len(tensors)
        for feeds, real in self.chunks(data):
            values = self.session.run(tensors, {**feeds, **fed})
            for i, (name, value) in enumerate(zip(tensors, values)):
                part = reduce(name, value[:real], real) if reduce is not None else value[:real]
                totals[i] = part if totals[i] is None else (totals[i] + part if reduce is not None else
                                                            np.concatenate([totals[i], part]))
        return totals


def _free_batch(model, specs) -> bool:
    """Make every input's leading axis symbolic (one onnxruntime call per chunk, not per sample)."""
    if not specs or any(s.batch is None for s in specs):
        return False
    names = {s.name for s in specs}
    for model_input in model.graph.input:
        if model_input.name in names:
            dim = model_input.type.tensor_type.shape.dim[0]
            dim.ClearField("dim_value")
            dim.dim_param = "batch"
    del model.graph.value_info[:]  # shapes inferred at batch 1 would contradict the free batch
    for output in model.graph.output:
        if output.type.tensor_type.HasField("shape") and output.type.tensor_type.shape.dim:
            dim = output.type.tensor_type.shape.dim[0]
            dim.ClearField("dim_value")
            dim.dim_param = "batch"
    return True


def channel_sums(value: np.ndarray, axis: int) -> np.ndarray:
    """[sum, sum of squares, count] per channel along ``axis`` (1 for Conv, -1 for Gemm/MatMul): a
    reduction ``Probe.run`` adds up over chunks."""
    flat = np.moveaxis(value.astype(np.float64), axis, 0).reshape(value.shape[axis], -1)
    return np.stack([flat.sum(axis=1), np.square(flat).sum(axis=1), np.full(len(flat), flat.shape[1], float)])


def channel_axis(op_type: str) -> int:
    """Where a layer's channels are in its input and output: axis 1 for convolutions, last for Gemm/MatMul."""
    return 1 if op_type in ("Conv", "ConvTranspose") else -1
