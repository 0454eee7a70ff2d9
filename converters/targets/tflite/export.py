"""The .tflite the user gets: per-channel scales, TFLite's sparse format and automatic mixed precision chosen
by what they measure in the written bytes."""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import numpy as np

from ...recipe import Recipe
from ...verify.analysis import analyse, gzip_size
from .convert import to_tflite

SPARSE_EXPORT_MIN_SPARSITY = 0.3  # below this the sparse format cannot win, so it is not tried


def export_tflite(model, recipe: Recipe, calibration, all_clustered: bool, progress,
                  float_layers: Sequence[str] | Mapping[str, np.ndarray] = (),
                  traced: bool = False, float_bytes: bytes | None = None, allow_flex: bool = False,
                  precision_search=None, with_source_biases=None) -> tuple[bytes, list[str]]:
    """Convert, choosing per-channel scales and TFLite's sparse format by what they measure.

    ``traced``: convert a traced function of the model (onnx2tf's models; see ``to_tflite``).
    ``float_bytes``: the model already converted in float32, reused when the recipe quantizes nothing
    (a 90 MB BERT takes ~30 s per conversion).
    ``precision_search`` (a ``search.mixed_precision.PrecisionSearch``) keeps layers float until the recipe's
    fidelity target holds. ``with_source_biases(layers, convert)`` runs ``convert`` with those layers' biases as
    in the source, when bias correction lives in the model's own weights (Keras): a layer kept float must not
    keep a correction made for int8 weights; the model is then calibrated at every step."""
    notes = []
    per_channel = recipe.quantize.per_channel
    if per_channel == "auto":
        per_channel = not all_clustered
        if not per_channel and recipe.quantize.mode != "none":
            notes.append("per-tensor weight scales: every weight layer is clustered, and one scale "
                         "per tensor keeps its shared values shared (per_channel: auto)")
    convert = functools.partial(to_tflite, model, recipe.quantize, calibration, per_channel=per_channel,
                                progress=progress, float_layers=float_layers, traced=traced,
                                allow_flex=allow_flex)
    if float_layers:
        notes.append(f"mixed precision: layer(s) {', '.join(float_layers)} kept in float32, the rest int8")
    reuse = float_bytes is not None and recipe.quantize.mode == "none" and not float_layers
    dense = float_bytes if reuse else convert(sparse=False)
    if precision_search is not None:
        # Calibrate once and re-quantize at each step, unless layers kept float must get their uncorrected
        # biases back: the calibrated model holds the weights it was calibrated with.
        calibrated = None if with_source_biases is not None else {}
        restore = with_source_biases or (lambda layers, run: run())
        dense = precision_search.run(
            dense, lambda layers: restore(layers, lambda: convert(sparse=False, float_layers=layers,
                                                                  calibrated=calibrated)),
            float_layers, recipe.quantize, progress)
        if precision_search.may_widen(recipe.quantize, float_layers):
            wide = dataclasses.replace(recipe.quantize, mode="int16x8")
            dense = precision_search.widen(dense, lambda: to_tflite(
                model, wide, calibration, per_channel=per_channel, progress=progress, traced=traced,
                allow_flex=allow_flex), recipe.quantize)
        record = precision_search.record
        notes.append(record.note())
        if record.activations == "int16":
            return dense, notes + ["sparse format (EXPERIMENTAL_SPARSITY) not tried: the file has int16 activations"]
        if record.kept:
            return dense, notes + ["sparse format (EXPERIMENTAL_SPARSITY) not tried: automatic mixed precision "
                                   "keeps layers float with the converter's selective quantization, which does "
                                   "not support it"]
    if recipe.sparse_export == "off":
        return dense, notes
    if float_layers:  # the selective quantizer's output is wrong with EXPERIMENTAL_SPARSITY (measured: outputs swapped)
        return dense, notes + ["sparse format (EXPERIMENTAL_SPARSITY) not tried: mixed precision (precision: float) "
                               "uses the converter's selective quantization, which does not support it"]
    if recipe.sparse_export == "on":
        return convert(sparse=True), notes + ["exported with Optimize.EXPERIMENTAL_SPARSITY "
                                              "(sparse_export: on)"]
    if analyse(dense, measure_gzip=False).overall_sparsity < SPARSE_EXPORT_MIN_SPARSITY:
        return dense, notes
    sparse = convert(sparse=True)
    sparse_gzip, dense_gzip = gzip_size(sparse), gzip_size(dense)
    sizes = f"raw {len(sparse)} vs {len(dense)} bytes, gzip {sparse_gzip} vs {dense_gzip} bytes"
    if len(sparse) < len(dense) and sparse_gzip < dense_gzip:
        return sparse, notes + [f"sparse format (EXPERIMENTAL_SPARSITY) kept, smaller on both: {sizes}"]
    return dense, notes + [f"sparse format (EXPERIMENTAL_SPARSITY) tried and dropped: {sizes}"]

