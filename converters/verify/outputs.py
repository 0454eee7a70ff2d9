"""Every output of a written .tflite against the source's (PyTorch, or onnxruntime for ONNX files), in the
layouts the .tflite keeps."""

from __future__ import annotations

import numpy as np

from ..data import Dataset
from ..errors import FidelityError
from ..lowering.onnx_io import FLOAT_TOLERANCE, IoLayout
from ..sources.onnx import TensorSpec, join_runs, run_onnx
from .fidelity import Fidelity, compare


def source_outputs(torch_source, reference_model, specs: list[TensorSpec], inputs: list[np.ndarray]
                ) -> list[np.ndarray]:
    """The source's outputs on ``inputs``, run at the shapes the graph was exported with."""
    if torch_source is None:
        return run_onnx(reference_model, {s.name: x for s, x in zip(specs, inputs)}, specs)
    from ..sources.torch import _as_tuple, reference_outputs, run_module

    if all(s.batch == 1 for s in specs):  # batch-1 exports take any batch in PyTorch: batched, fast
        return reference_outputs(torch_source.module, inputs)
    import torch

    runs = [s.runs(x) for s, x in zip(specs, inputs)]
    outputs = [[o.detach().numpy() for o in _as_tuple(run_module(
        torch_source.module, tuple(torch.from_numpy(np.ascontiguousarray(r[i])) for r in runs)))]
        for i in range(len(runs[0]))]
    return join_runs(specs, outputs, len(inputs[0]))


def check_float_fidelity(by_output: dict[str, Fidelity]) -> None:
    """The float32 .tflite must reproduce the source: another output shape, or errors beyond float32
    round-off, mean the conversion is wrong, whatever the recipe."""
    for name, fid in by_output.items():
        if fid.mismatch:
            raise FidelityError(f"the converted model does not reproduce the source: output {name!r} has "
                                f"{fid.mismatch}; nothing written (convert with --keep-intermediates to inspect)")
        tolerance = FLOAT_TOLERANCE * fid.output_scale + 1e-5
        if not fid.max_abs_error <= tolerance:
            raise FidelityError(f"the converted model does not reproduce the source: output {name!r} float32 "
                                f"max abs error {fid.max_abs_error:.3g} > {tolerance:.3g} "
                                f"({FLOAT_TOLERANCE:g} of the output scale {fid.output_scale:.3g}), cosine "
                                f"{fid.cosine:.6f} on {fid.samples} samples ({fid.data}); nothing written "
                                "(try --keep-nchw, or convert with --keep-intermediates to inspect)")


def output_fidelity(layout: IoLayout, references: list[np.ndarray], tflite_bytes: bytes, inputs: list[np.ndarray],
                    evaluation: Dataset, backend: str = "auto") -> dict[str, Fidelity]:
    """Each output of the .tflite, run at its fixed input shapes, against the source's."""
    from device_runtime import Model

    model = Model(tflite_bytes, backend=backend)
    runs = [[layout.to_tflite_layout(s.name, r) for r in s.runs(x)] for s, x in zip(layout.specs, inputs)]
    per_run = [model.run({s.name: r[i] for s, r in zip(layout.specs, runs)}) for i in range(len(runs[0]))]
    present = [name for name in layout.output_names if name in per_run[0]]
    outputs = join_runs(layout.specs, [[run[name] for name in present] for run in per_run], len(inputs[0])) \
        if present else []
    got = dict(zip(present, outputs))
    labels, data_name = evaluation.y, evaluation.source
    by_output = {}
    for name, ref in zip(layout.output_names, references):
        if name not in got:  # onnx2tf dropped it (e.g. BatchNormalization's training-mode statistics)
            nan = float("nan")
            by_output[name] = Fidelity(len(ref), data_name, nan, nan, float(np.abs(ref).max(initial=0.0)), nan, None,
                                       None, None, f"no such output in the .tflite (it has {sorted(per_run[0])})")
            continue
        by_output[name] = compare(layout.reference_in_tflite_layout(name, ref, per_run[0][name].ndim), got[name],
                                  labels if labels is not None and len(labels) == len(ref) else None, data_name)
    return by_output

