"""Lowering ONNX to a TensorFlow model with onnx2tf, in the layouts the .tflite keeps: inputs that feed
convolutions channel-last (unless ``keep_nchw``), every other input as in the source, outputs named and laid out
as the source's, and each choice checked on one run of the source (onnx2tf can transpose a graph's constants
as if an input were channel-last)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConversionError
from ..sources.onnx import TensorSpec, run_once
from .onnx2tf import onnx_to_keras
from .onnx_layouts import (channel_last_perm, inputs_in_source_layout, matches_probe, output_layouts,
                           outputs_channel_first)
from .onnx_rewrites import rewrite_for_onnx2tf

# The float32 .tflite may differ from the source by round-off, not more: 1e-3 of the output scale (the
# nine architectures of bench/fidelity.py measure <= 5e-7).
FLOAT_TOLERANCE = 1e-3


class IoLayout:
    """Everything one conversion learns about its inputs and outputs."""

    def __init__(self, specs: list[TensorSpec], channel_last: list[str], output_names: list[str]):
        self.specs, self.channel_last, self.output_names = specs, set(channel_last), output_names
        self.channel_last_outputs: dict[str, bool] = {}
        self.output_shapes: dict[str, tuple[int, ...]] = {}  # one run's output shapes in the source
        self.probe: tuple[dict, dict] = ({}, {})  # one run of the source: its inputs and outputs

    def to_tflite_layout(self, name: str, x: np.ndarray) -> np.ndarray:
        return x.transpose(channel_last_perm(x.ndim)) if name in self.channel_last else x

    def runs_in_tflite_layout(self, spec: TensorSpec, x: np.ndarray) -> np.ndarray:
        """Samples as the whole inputs one .tflite run takes, stacked on a new first axis."""
        return np.stack([self.to_tflite_layout(spec.name, r) for r in spec.runs(x)])

    def reference_in_tflite_layout(self, name: str, y: np.ndarray, run_rank: int) -> np.ndarray:
        """``y`` as the .tflite gives it; ``run_rank`` is one run's output rank (``y`` may stack runs)."""
        if not self.channel_last_outputs.get(name):
            return y
        perm = channel_last_perm(run_rank)
        return y.transpose(perm if y.ndim == run_rank else (0, *(1 + p for p in perm)))

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for spec in self.specs:
            last = spec.name in self.channel_last
            shape = tuple(spec.shape[i] for i in channel_last_perm(len(spec.shape))) if last else spec.shape
            rows.append({"input": spec.name, "source_shape": list(spec.shape), "tflite_shape": list(shape),
                         "layout": "channels last (transposed)" if last else "as in the source"})
        for name in self.output_names:
            rows.append({"output": name, "layout": "channels last (transposed)"
                         if self.channel_last_outputs.get(name) else "as in the source"})
        return rows


def lower_with_onnx2tf(onnx_model, keep_first: list[str], log_path: Path, keep_nchw: bool, layout: IoLayout,
             notes: list[str], strict: bool, decided: list[str] | None = None):
    """onnx2tf's Keras model in ``layout``'s layouts, and the inputs onnx2tf kept channel-first.

    Non-image inputs of rank 3-5 are first kept channel-first; where onnx2tf then fails or its model
    does not reproduce the source on the probe run (it transposes the graph's constants as if the input
    were channel-last), onnx2tf's own layout is used, behind a transpose that keeps the source layout
    at the .tflite's input.  ``decided`` (a previous call's answer) skips the choice.
    """
    onnx_model, rewrites = rewrite_for_onnx2tf(onnx_model)
    notes += [n for n in rewrites if n not in notes]
    attempts = [decided] if decided is not None else [keep_first, []] if keep_first else [[]]
    first_error = None
    for keep in attempts:
        try:
            result = onnx_to_keras(onnx_model, keep, log_path, strict)
        except ConversionError as exc:
            first_error = first_error or exc
            continue
        if result.blocked_connections:
            notes.append(f"onnx2tf tried to open {result.blocked_connections} network connection(s); all were "
                         "refused")
        model = inputs_in_source_layout(result.model, layout.specs, [n for n in keep_first if n not in keep])
        layouts = output_layouts(model, result.channel_last_outputs, layout)
        if keep is not attempts[-1] and not matches_probe(model, layouts, layout, FLOAT_TOLERANCE):
            continue
        if keep_nchw or not layout.channel_last:  # outputs are channel-last only in a channel-last (image) model
            model = outputs_channel_first(model, layouts, layout.output_names)
        else:
            model = outputs_channel_first(model, {}, layout.output_names)  # only names them
            layout.channel_last_outputs = layouts
        if keep != keep_first:
            note = (f"input(s) {', '.join(n for n in keep_first if n not in keep)} converted in onnx2tf's channel-"
                    "last layout behind a transpose (kept channel-first, onnx2tf's model did not reproduce the "
                    "source); the .tflite takes them as the source does")
            notes += [note] if note not in notes else []
        return model, keep
    raise first_error


def probe_source(onnx_model, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One run of the source on random inputs (source layout): its inputs and outputs, whose shapes
    static shape inference may miss.  Empty when onnxruntime cannot run the graph (a custom op): onnx2tf's
    own check then names the op, and layouts follow onnx2tf's flags."""
    rng = np.random.default_rng(7)
    feeds = {s.name: rng.random(s.shape).astype(s.dtype) if np.issubdtype(np.dtype(s.dtype), np.floating)
             else np.zeros(s.shape, s.dtype) for s in specs}
    try:
        outputs = run_once(onnx_model, specs, feeds)
    except Exception:  # noqa: BLE001 - onnxruntime's own error types, raised at load or at run
        return {}, {}
    return feeds, {o.name: y for o, y in zip(onnx_model.graph.output, outputs)}

