"""The conversion: one driver for every framework.

    detect -> check -> load -> compress -> lower -> float baseline -> export -> metadata -> verify -> report -> write

The order is written here once; a ``routes.Route`` per framework does what differs at each stage (Keras
layers, or PyTorch modules and ONNX initializers lowered through onnx2tf). Everything the user gave is checked
before any work starts (options, recipe, capabilities, calibration, output path), outputs are written
atomically, and the report is measured from the written bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import DataSource
from .errors import DataError, RecipeError
from .files import atomic_write, check_output_path
from .recipe import QuantizeSettings, Recipe
from .routes.base import Conversion, ConvertOptions, Progress, Route
from .search.mixed_precision import quantization_checks
from .targets.tflite.convert import to_tflite
from .targets.tflite.embed import build_info, embed_metadata
from .targets.tflite.export import export_tflite
from .verify.layers import fidelity_warnings
from .verify.report import Report

__all__ = ["ConversionResult", "ConvertOptions", "Progress", "convert", "route_for", "write_result"]


@dataclass
class ConversionResult:
    path: Path
    report_path: Path
    report: Report
    exports: dict[str, Any] = field(default_factory=dict)  # the target's files: {"mcu": McuExport, ...}
    budget: Any = None  # accuracy-budget mode's search (search.budget.BudgetResult)


def convert(source: Any, output: str | os.PathLike, recipe: Recipe | None = None, *,
            finetune_data: DataSource | None = None, calib_data: DataSource | None = None,
            eval_data: DataSource | None = None, **options: Any) -> ConversionResult:
    """Compress and convert ``source`` (Keras, PyTorch or ONNX) to ``output`` (.tflite) with a report beside it.

    ``options``: the other fields of ``routes.base.ConvertOptions`` (force, progress, verbose, metadata,
    custom_objects for Keras; example_input, input_shapes, weights, keep_nchw, keep_intermediates,
    input_dtypes, allow_flex for PyTorch/ONNX). Image classifiers also get standard TFLite metadata (name from
    the source, labels from an image folder, the input normalisation when known).
    """
    recipe = recipe or Recipe()
    started = time.perf_counter()
    settings = ConvertOptions(finetune_data=finetune_data, calib_data=calib_data, eval_data=eval_data, **options)
    route = route_for(source, settings)
    route.check(recipe)
    check_calibration(recipe, calib_data, finetune_data)
    output = check_output_path(output, route.source_files, settings.force)
    run = Conversion(recipe, settings)
    with route.workspace():
        with _timed(run, "load"):
            route.load(run)
        with _timed(run, "compress"):
            records = route.compress(run)
        with _timed(run, route.lowering_step):
            lowered = route.lower(run, records)

        with _timed(run, "tflite_convert"):
            baseline_bytes = to_tflite(lowered.float_model, QuantizeSettings(mode="none"), traced=lowered.traced,
                                       allow_flex=lowered.allow_flex)
            float_reference, search = quantization_checks(
                lowered.plain, recipe, baseline_bytes, lowered.changed, run.calib, lowered.search_samples,
                lowered.search_input_shapes, lowered.candidates, traced=lowered.traced)
            if search is not None:
                route.rank_layers(search, run, settings.progress)
            tflite_bytes, notes = export_tflite(
                lowered.quantizable, recipe, lowered.calibration, lowered.all_clustered, settings.progress,
                lowered.float_layers, traced=lowered.traced,
                float_bytes=baseline_bytes if lowered.quantizable is lowered.float_model else None,
                allow_flex=lowered.allow_flex, precision_search=search,
                with_source_biases=lowered.with_source_biases)
            run.notes += notes
            source_sha256 = route.source_sha256()
            tflite_bytes = embed_metadata(
                tflite_bytes, build_info(source_sha256, recipe, run.calib, lowered.stats_input, lowered.io_order),
                settings.metadata, route.metadata_name, run.any_data, run.notes, (run.known, run.datasets))

        with _timed(run, "verify"):
            verified = route.verify(run, lowered, tflite_bytes, baseline_bytes, float_reference)
        run.timings["total"] = time.perf_counter() - started
        baseline_stats, compressed_stats = route.analyse(baseline_bytes, tflite_bytes)

    report = Report(
        source=route.description, source_sha256=source_sha256, output=str(output),
        output_sha256=hashlib.sha256(tflite_bytes).hexdigest(), recipe=recipe.to_dict(),
        baseline=baseline_stats, compressed=compressed_stats, passes=records,
        fidelity=verified.fidelity, float_fidelity=verified.float_fidelity,
        timings={k: round(v, 3) for k, v in run.timings.items()}, notes=run.notes, io_layout=route.io_layout(),
        output_fidelity=verified.output_fidelity, layer_errors=verified.layer_errors,
        mixed_precision=search.record if search else None,
        warnings=fidelity_warnings(verified.fidelity.cosine, verified.fidelity.top1_agreement,
                                   verified.layer_errors))
    return write_result(output, tflite_bytes, report)


def route_for(source: Any, options: ConvertOptions) -> Route:
    """The route of ``source``'s framework (``sources.framework_of`` is the one place that tells it)."""
    from .sources import framework_of

    if framework_of(source) == "keras":
        from .routes.keras import KerasRoute

        return KerasRoute(source, options)
    from .routes.onnx import OnnxRoute

    return OnnxRoute(source, options)


class _timed:
    """Adds the time spent in a stage to ``run.timings[step]``."""

    def __init__(self, run: Conversion, step: str):
        self.run, self.step = run, step

    def __enter__(self) -> None:
        self.mark = time.perf_counter()

    def __exit__(self, *exc_info) -> None:
        self.run.timings[self.step] = self.run.timings.get(self.step, 0.0) + time.perf_counter() - self.mark


def check_calibration(recipe: Recipe, calib_data, finetune_data) -> None:
    """Refuse, before any work, quantization that lacks the data it needs."""
    if recipe.quantize.qat and finetune_data is None:
        raise DataError("quantize.qat (quantization-aware training) needs --finetune DATA; without data, "
                        "drop qat for post-training int8")
    if recipe.quantize.needs_calibration and calib_data is None and finetune_data is None \
            and not recipe.quantize.allow_random_calibration:
        raise RecipeError(f"quantize {recipe.quantize.mode} needs calibration data: pass --calib DATA "
                          "(or --finetune DATA, which is reused), or --allow-random-calibration to "
                          "calibrate on random inputs (inaccurate)")
    if recipe.quantize.rounding == "adaround" and calib_data is None and finetune_data is None:
        raise RecipeError("quantize.rounding adaround learns each layer's rounding on calibration data, and none "
                          "was given; pass --calib DATA, or set rounding nearest")


def report_path_for(output: Path) -> Path:
    return output.with_name(output.stem + ".report.json")


def write_result(output: Path, tflite_bytes: bytes, report: Report) -> ConversionResult:
    """The model, then its report, each written atomically."""
    report_path = report_path_for(output)
    atomic_write(output, tflite_bytes)
    atomic_write(report_path, json.dumps(report.to_dict(), indent=2).encode())
    return ConversionResult(output, report_path, report)
