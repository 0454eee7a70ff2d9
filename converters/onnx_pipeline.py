"""The PyTorch/ONNX conversion pipeline: PyTorch -> ONNX -> compress -> onnx2tf -> TFLite -> verify.

Weights are compressed before onnx2tf (on ONNX initializers after batch-norm
folding, or in PyTorch while fine-tuning), because onnx2tf's Keras model holds
them as constants that tfmot cannot reach.  Inputs that feed convolutions
become channel-last (NHWC/NWC) unless ``keep_nchw``; fidelity is measured per
output against the source model (PyTorch, or onnxruntime for ONNX files).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .targets.tflite import normalisation
from .capabilities import Request, check_supported
from .techniques.adaround_onnx import learned_rounding, rounded_weights
from .techniques.arrays import float_precision_weights
from .techniques.data_aware import check_data_aware, compress_with_data
from .techniques.equalization import equalized
from .techniques.registry import rewrite_graph
from .search.weight_effect import rank_layers
from .data import DataSource, Dataset, InputSpec, random_inputs
from .errors import ConversionError, DataError, FidelityError, RecipeError, first_line
from .verify.fidelity import Fidelity, compare
from .files import check_output_path
from .targets.tflite.flex import FLEX_CONSEQUENCE, flex_nodes, refusal
from .targets.tflite.metadata import MetadataSpec
from .lowering.onnx2tf import onnx_to_keras
from .lowering.onnx_recurrent import RECURRENT_OPS, not_unrolled, prepare_recurrent
from .lowering.onnx_rewrites import rewrite_for_onnx2tf
from .lowering.onnx_layouts import (channel_last_perm, inputs_in_source_layout, matches_probe, output_layouts,
                                    outputs_channel_first)
from .sources.onnx import (CONV_LIKE_OPS, TensorSpec, channel_last_inputs, fix_input_shapes, graph_inputs,
                           index_inputs, input_dtype, join_runs, load_onnx, onnx_weights, run_once, run_onnx,
                           simplify)
from .pipeline import (ConversionResult, Progress, build_info, check_calibration, check_vocab_fits, datasets,
                       embed_metadata, export_tflite, quantization_checks, write_result)
from .verify.layers import fidelity_warnings, quantized_layer_report
from .recipe import QuantizeSettings, Recipe
from .verify.report import Report
from .verify.analysis import analyse, label_weights
from .targets.tflite.convert import to_tflite


# The float32 .tflite may differ from the source by round-off, not more: 1e-3 of the output scale (the
# nine architectures of bench/fidelity.py measure <= 5e-7).
FLOAT_TOLERANCE = 1e-3
# TensorFlow 2.19's int8/int16x8 calibrator dies with SIGSEGV on onnx2tf's recurrent loops (measured).
CALIBRATION_CRASHING_OPS = {"LSTM", "GRU", "RNN", "Loop", "Scan"}


class _Route:
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


def convert_onnx_route(source: Any, output: str | os.PathLike, recipe: Recipe | None = None, *,
                       example_input: Any = None, input_shapes: Sequence[Sequence[int]] | None = None,
                       weights: str | os.PathLike | None = None, keep_nchw: bool = False,
                       keep_intermediates: bool = False, finetune_data: DataSource | None = None,
                       calib_data: DataSource | None = None, eval_data: DataSource | None = None,
                       force: bool = False, progress: Progress | None = None, verbose: bool = False,
                       metadata: MetadataSpec | None = None,
                       input_dtypes: Sequence[str] | None = None, allow_flex: bool = False) -> ConversionResult:
    """Convert a PyTorch module / TorchScript file / factory, or an ONNX file, to ``output`` (.tflite).

    ``input_dtypes`` (PyTorch with ``input_shapes``): each input's dtype, e.g. int64 for token ids.
    ``allow_flex``: keep ops with no TFLite builtin as Select TF ops (the .tflite then needs the Flex
    delegate); without it they are refused before the TFLite converter runs.
    """
    from .sources.torch import FACTORY_SPEC, is_torch_source

    recipe = recipe or Recipe()
    allow_flex = allow_flex or recipe.allow_flex  # the flag or the recipe key
    started = time.perf_counter()
    timings: dict[str, float] = {}
    is_onnx_file = isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() == ".onnx"
    source_files = [Path(p) for p in (source, weights) if isinstance(p, (str, os.PathLike)) and Path(p).exists()]
    check_supported(Request(recipe, finetune=finetune_data is not None), "onnx" if is_onnx_file else "pytorch")
    check_calibration(recipe, calib_data, finetune_data)
    check_data_aware(recipe, calib_data is not None, finetune_data is not None)
    output = check_output_path(output, source_files, force)
    work = Path(tempfile.mkdtemp(prefix="sdk-convert-"))
    log_path = work / "onnx2tf.log"
    notes: list[str] = [f"intermediate files kept in {work}"] if keep_intermediates else []
    log_named_in_error = False
    try:
        if is_onnx_file:
            if input_dtypes:
                raise DataError("--input-dtype applies to PyTorch sources; an ONNX file declares its inputs' dtypes")
            torch_source = None
            onnx_model = load_onnx(source)
            description = str(source)
        elif is_torch_source(source):
            from .sources.torch import load_torch_source

            torch_source = load_torch_source(source, example_input, input_shapes, weights, input_dtypes)
            onnx_model, description = None, torch_source.description
            if isinstance(source, str) and FACTORY_SPEC.match(source) and weights is None:
                notes.append(f"{source} was converted with the weights its factory returns, since no --weights "
                             "state dict was given: random initial weights unless the factory loads trained ones")
            input_shapes = torch_source.input_shapes
        else:
            raise DataError(f"not a PyTorch or ONNX source: {source!r}")
        timings["load"] = time.perf_counter() - started
        return _convert(torch_source, onnx_model, description, source_files, output, recipe, input_shapes,
                        keep_nchw, finetune_data, calib_data, eval_data, progress, verbose, metadata, work,
                        log_path, notes, timings, started, allow_flex)
    except ConversionError as exc:
        log_named_in_error = str(log_path) in str(exc)
        raise
    finally:
        if keep_intermediates:
            pass
        elif log_named_in_error:  # keep onnx2tf's log, which the error tells the user to read
            for path in work.iterdir():
                if path != log_path:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        else:
            shutil.rmtree(work, ignore_errors=True)


def _convert(torch_source, onnx_model, description, source_files, output, recipe, input_shapes, keep_nchw,
             finetune_data, calib_data, eval_data, progress, verbose, metadata, work: Path, log_path: Path, notes,
             timings, started, allow_flex: bool = False) -> ConversionResult:
    mark = time.perf_counter()
    fine_tuned_records = original = None
    graph_records: list = []  # passes that rewrite layers: they run on the PyTorch module before export
    _check_overrides(recipe, torch_source, onnx_model)
    if torch_source is not None:
        from .sources.torch import export_onnx

        # Exported first: its graph tells each input's dtype and vocabulary, which the data must fit.
        exported = export_onnx(torch_source, torch_source.module, work / "model.onnx")
        timings["torch_onnx_export"] = time.perf_counter() - mark
        inputs = input_specs(fix_input_shapes(exported, input_shapes), exported)
        check_vocab_fits(metadata, [(i.name, i.dtype, i.id_limit) for i in inputs])
        known = normalisation.given(metadata, torch_source.input_shapes)
        tune, calib, evaluation, data_notes = _data(inputs, finetune_data, calib_data, eval_data, known)
        module, rewritten = rewrite_graph(torch_source.module, recipe, "pytorch", torch_source.example_inputs)
        graph_records = list(rewritten.values())
        if tune is not None and (recipe.compresses_weights or graph_records or recipe.quantize.qat):
            module, fine_tuned_records, weight_names = _finetune(torch_source, module, recipe, tune, verbose,
                                                                 notes)
            timings["finetune"] = time.perf_counter() - mark
        elif tune is not None:
            notes.append("fine-tuning data given but the recipe neither prunes, clusters, removes channels "
                         "nor factorizes; not fine-tuned")
        if module is torch_source.module:
            onnx_model = exported
        else:  # the float32 baseline is the original, not the student
            mark = time.perf_counter()
            (work / "model.onnx").rename(work / "original.onnx")  # model.onnx is what gets converted
            onnx_model, original = export_onnx(torch_source, module, work / "model.onnx"), exported
            timings["torch_onnx_export"] += time.perf_counter() - mark
    shape_notes: list[str] = prepare_recurrent(onnx_model, input_shapes)
    specs = fix_input_shapes(onnx_model, input_shapes, shape_notes)
    notes += shape_notes
    reference_model = copy.deepcopy(onnx_model) if torch_source is None else None
    if reference_model is not None and (input_shapes is not None or shape_notes):
        _check_runs(reference_model, specs)
    if torch_source is None:
        inputs = input_specs(specs, onnx_model)
        check_vocab_fits(metadata, [(i.name, i.dtype, i.id_limit) for i in inputs])
        known = normalisation.given(metadata, [s.shape for s in specs])
        tune, calib, evaluation, data_notes = _data(inputs, None, calib_data, eval_data, known)
    notes += data_notes

    _check_quantizable(onnx_model, recipe)
    mark = time.perf_counter()
    onnx_model, note = simplify(onnx_model)
    if note:
        notes.append(note)
    notes += _bounded_mask_fills(onnx_model, recipe, calib, inputs, specs)
    if original is None:
        float_model = copy.deepcopy(onnx_model)
    else:
        fix_input_shapes(original, input_shapes)
        float_model = simplify(original)[0]
        _bounded_mask_fills(float_model, recipe, calib, inputs, specs)
    records = fine_tuned_records
    if records is None:
        weights, sources = onnx_weights(onnx_model)
        onnx_model, records = compress_with_data(
            onnx_model, weights, sources, recipe, "pytorch" if torch_source is not None else "onnx",
            None if calib is None else dict(zip([s.name for s in specs], calib.columns([s.name for s in specs]))),
            specs)
        weight_names = [w.name for w in weights]
    for record in graph_records:
        record.fine_tuned = fine_tuned_records is not None
    records = {**{record.name: record for record in graph_records}, **records}
    final_arrays = onnx_weights(onnx_model)[0]
    final_weights = {w.name: w.values for w in final_arrays}
    float_layers = float_precision_weights(final_arrays, recipe)  # mixed precision: found by their final values
    compressed_any = original is not None or any(r.layers for r in records.values())
    channel_last = [] if keep_nchw else channel_last_inputs(onnx_model, specs)
    keep_first = [s.name for s in specs if 3 <= len(s.shape) <= 5 and s.name not in channel_last]
    route = _Route(specs, channel_last, [o.name for o in onnx_model.graph.output])
    route.probe = _probe(float_model, specs)
    route.output_shapes = {name: y.shape for name, y in route.probe[1].items()}
    timings["compress"] = time.perf_counter() - mark

    mark = time.perf_counter()
    # onnx2tf's accuracy correction looks for transpositions broken by NCHW -> NHWC: needed only with them
    strict = bool(channel_last) or any(node.op_type in CONV_LIKE_OPS for node in onnx_model.graph.node)
    float_keras, kept = _onnx2tf(float_model, keep_first, log_path, keep_nchw, route, notes, strict)
    plain = _onnx2tf(onnx_model, keep_first, log_path, keep_nchw, route, notes, strict, kept)[0] \
        if compressed_any else float_keras
    prepared = equalized(onnx_model, recipe.quantize, notes)  # the int8 model's weights only
    rounded = learned_rounding(prepared or onnx_model, recipe.quantize, calib, specs, notes)  # + bias correction
    corrected = rounded if rounded is not None else _bias_correction(prepared or onnx_model, recipe, calib, specs,
                                                                     notes)
    prepared = corrected if corrected is not None else prepared
    converted = _onnx2tf(prepared, keep_first, log_path, keep_nchw, route, notes, strict, kept)[0] \
        if prepared is not None else plain
    timings["onnx2tf"] = time.perf_counter() - mark
    flex = flex_nodes(float_keras, float_model)
    if flex and not allow_flex:
        raise refusal(flex)
    if flex:
        notes.append(f"Select TF ops kept (--allow-flex): {', '.join(flex)}; {FLEX_CONSEQUENCE}")

    mark = time.perf_counter()
    names = [s.name for s in specs]
    float_input = len(inputs) == 1 and not inputs[0].integer
    if calib is None and recipe.quantize.needs_calibration and not float_input:  # random, but valid per input
        calib = Dataset(random_inputs(inputs, recipe.quantize.samples), None, "random valid inputs")
    calibration = [route.runs_in_tflite_layout(s, x) for s, x in zip(specs, calib.columns(names))] \
        if calib is not None else None
    baseline_bytes = to_tflite(float_keras, QuantizeSettings(mode="none"), traced=True, allow_flex=allow_flex)
    all_clustered = bool(weight_names) and set(weight_names) <= set(records["cluster"].layers)
    samples = [_one_per_run(c, s) for c, s in zip(calibration, specs)] if calibration else None
    float_reference, search = quantization_checks(
        plain, recipe, baseline_bytes, compressed_any, calib, samples, [tuple(converted.inputs[0].shape[1:])],
        {name: values for name, values in final_weights.items() if name not in float_layers}, traced=True)
    if search is not None and len(specs) == 1 and calib is not None:  # rank layers by their own error
        search.ranking = functools.partial(rank_layers, onnx_model, corrected, calib.columns([specs[0].name])[0],
                                           list(search.candidates), progress=progress)
    if search is not None and rounded is not None:  # AdaRound moved the weights kept layers are found by
        search.matched = rounded_weights(rounded, onnx_model)
    tflite_bytes, export_notes = export_tflite(converted, recipe, calibration, all_clustered, progress,
                                               float_layers, traced=True,
                                               float_bytes=baseline_bytes if converted is float_keras else None,
                                               allow_flex=allow_flex, precision_search=search)
    same_model = tflite_bytes is baseline_bytes  # a float recipe that changed nothing: verified once
    timings["tflite_convert"] = time.perf_counter() - mark
    notes += export_notes

    source_sha256 = _source_hash(source_files, torch_source)
    stats_of = calibration[0] if calibration and float_input else None  # the monitor watches one float input
    tflite_bytes = embed_metadata(tflite_bytes, build_info(source_sha256, recipe, calib, stats_of, {
        "input_order": [s.name for s in specs], "output_order": route.output_names}), metadata,
                                  Path(description).stem if source_files else "model",
                                  tune or calib or evaluation, notes, (known, (tune, calib, evaluation)))

    mark = time.perf_counter()
    inputs = evaluation.columns(names)
    references = _references(torch_source, reference_model, specs, inputs)
    backend = "tensorflow" if flex else "auto"  # only full TensorFlow's interpreter has the Flex delegate
    by_output = _fidelity(route, references, tflite_bytes, inputs, evaluation, backend)
    float_by_output = by_output if same_model else _fidelity(route, references, baseline_bytes, inputs,
                                                             evaluation, backend)
    _check_float_fidelity(float_by_output)
    reference_weights = final_weights if float_reference is not baseline_bytes else \
        {w.name: w.values for w in onnx_weights(float_model)[0]}  # the reference file holds these weights
    layer_errors = quantized_layer_report(recipe.quantize.mode, tflite_bytes, float_reference,
                                          _one_per_run(route.runs_in_tflite_layout(specs[0], inputs[0]), specs[0]),
                                          evaluation.source,
                                          reference_weights) if len(specs) == 1 else None
    timings["verify"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started

    first = route.output_names[0]
    with ThreadPoolExecutor(2) as pool:  # gzip and numpy release the GIL: both models at once
        baseline_stats, compressed_stats = pool.map(analyse, (baseline_bytes, tflite_bytes))
    label_weights(baseline_stats, {w.name: w.values for w in onnx_weights(float_model)[0]})
    label_weights(compressed_stats, final_weights)
    report = Report(
        source=description, source_sha256=source_sha256, output=str(output),
        output_sha256=hashlib.sha256(tflite_bytes).hexdigest(), recipe=recipe.to_dict(),
        baseline=baseline_stats, compressed=compressed_stats, passes=records,
        fidelity=by_output[first], float_fidelity=float_by_output[first],
        timings={k: round(v, 3) for k, v in timings.items()}, notes=notes,
        io_layout=route.describe(), output_fidelity=by_output if len(by_output) > 1 else {},
        layer_errors=layer_errors, mixed_precision=search.record if search else None,
        warnings=fidelity_warnings(by_output[first].cosine, by_output[first].top1_agreement, layer_errors))
    return write_result(output, tflite_bytes, report)


def _one_per_run(runs: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Runs stacked on a new first axis (``_Route.runs_in_tflite_layout``) as samples of one run each: the
    per-layer report and the mixed-precision search feed the .tflite one sample at a time."""
    return runs.reshape(-1, *runs.shape[2:]) if spec.batch is not None else runs


def _bounded_mask_fills(onnx_model, recipe: Recipe, calib: Dataset | None, inputs: list, specs: list) -> list[str]:
    """For int8/int16x8: attention-mask fills bounded by the scores they mask (``lowering/mask_fill.py``),
    in place, in the float model too (its function is unchanged: masked weights stay below e^-20)."""
    if not recipe.quantize.needs_calibration:
        return []
    from .lowering.mask_fill import SAMPLES, bound_mask_fills

    names = [s.name for s in specs]
    data = dict(zip(names, calib.columns(names))) if calib is not None else random_inputs(inputs, SAMPLES)
    note = bound_mask_fills(onnx_model, data, specs)
    return [note] if note else []


def _bias_correction(onnx_model, recipe: Recipe, calib: Dataset | None, specs: list, notes: list[str]):
    """The model with int8-corrected biases (``quantize.bias_correction``; auto: for int8/int16x8 with
    calibration data for a single input), or None."""
    settings = recipe.quantize
    if settings.bias_correction is False or settings.mode not in ("int8", "int16x8") or \
            (settings.bias_correction == "auto" and (calib is None or len(specs) != 1)):
        return None
    if calib is None or len(specs) != 1:
        notes.append("bias correction skipped: it measures mean layer inputs on calibration data for one input, "
                     "and " + ("none was given" if calib is None else f"the model has {len(specs)} inputs"))
        return None
    from .techniques.bias_correction import correct_biases

    corrected, record = correct_biases(onnx_model, calib.columns([specs[0].name])[0])
    notes.append(record.summary())
    return corrected


def _check_runs(onnx_model, specs: list[TensorSpec]) -> None:
    """An --input-shape the ONNX graph cannot run is the user's input, found before onnx2tf fails on it."""
    try:
        run_once(onnx_model, specs)
    except Exception as exc:  # onnxruntime's own error types, raised at load or at run
        shapes = ", ".join(f"{s.name} {s.shape}" for s in specs)
        raise DataError(f"the model cannot run on inputs of shape {shapes} ({first_line(exc, 160)}); check "
                        "--input-shape "
                        "against the shapes the model was exported with") from None


def _check_overrides(recipe: Recipe, torch_source, onnx_model) -> None:
    """Per-layer overrides must name PyTorch modules (or ONNX layers) and their classes or ONNX ops."""
    if not (recipe.layers or recipe.layer_types):
        return
    types = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Linear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d",
             "ConvTranspose2d", "ConvTranspose3d"}  # the aliases weights answer to
    if torch_source is not None:
        from .sources.torch import torch_weights

        modules = list(torch_source.module.named_modules())
        names = [name for name, _ in modules if name]
        types |= {type(module).__name__ for _, module in modules}
        weights = torch_weights(torch_source.module)[0]
    else:
        weights = onnx_weights(onnx_model)[0]
        names = [w.name for w in weights]
        types |= {node.op_type for node in onnx_model.graph.node}
    recipe.check_overrides(names, sorted(types))
    if recipe.keeps_float_layers and not float_precision_weights(weights, recipe):
        raise RecipeError("precision: float keeps layers with weights (Conv, Linear/Gemm, MatMul) in float, and the "
                          "override names none of them; layers with weights: "
                          f"{', '.join(w.name for w in weights[:12])}{' ...' if len(weights) > 12 else ''}")


def _check_quantizable(onnx_model, recipe: Recipe) -> None:
    if not recipe.quantize.needs_calibration:
        return
    graph_in = graph_inputs(onnx_model)
    names = [i.name for i in graph_in]
    integer = [f"{i.name} {input_dtype(i)}" for i in graph_in if not np.issubdtype(input_dtype(i), np.floating)]
    if recipe.quantize.mode == "int16x8" and integer:  # measured on all-MiniLM-L6-v2 and a small encoder
        raise RecipeError(f"quantize int16x8 is not available for models with integer inputs ({', '.join(integer)}): "
                          "TensorFlow 2.19's int16 quantizer fails on them (it asks for a calibrated range of the "
                          "token ids) and its MLIR quantizer cannot type the mask arithmetic; use --quantize "
                          "dynamic or int8")
    if recipe.quantize.searches_precision and len(names) > 1:  # the search feeds and ranks one input
        raise RecipeError(f"quantize.min_cosine/min_agreement (automatic mixed precision) measures models with one "
                          f"input; this model has {len(names)} ({', '.join(names)}): keep layers float by name "
                          "(layers: {NAME: {precision: float}}), or use --quantize dynamic")
    left = not_unrolled(onnx_model)  # the others become plain ops before onnx2tf
    for index, node in enumerate(onnx_model.graph.node):
        if node.op_type in CALIBRATION_CRASHING_OPS and (node.op_type not in RECURRENT_OPS or index in left):
            why = f" (not unrolled: {left[index]})" if index in left else ""
            raise ConversionError(f"quantize {recipe.quantize.mode} is not available for this recurrent model: "
                                  f"TensorFlow's calibrator crashes on {node.op_type} (node {node.name}){why}; use "
                                  "--quantize dynamic or float16 for this model")


def input_specs(specs: list[TensorSpec], onnx_model) -> list[InputSpec]:
    """What data must fit: each input's per-sample shape and dtype, and for token ids the vocabulary size
    (rows of the embedding table the graph indexes with them)."""
    indexed = index_inputs(onnx_model)
    return [InputSpec(s.name, tuple(s.sample_shape), s.dtype, indexed.get(s.name),
                      s.name in indexed and indexed[s.name] is None) for s in specs]


def _data(inputs: list[InputSpec], finetune_data, calib_data, eval_data, known=None):
    """Datasets in the source layout ((C, H, W) images load channels-first, with the ``known``
    normalisation), keyed by input name for multi-input and integer models."""
    return datasets(inputs[0].shape, finetune_data, calib_data, eval_data, channels_first=len(inputs[0].shape) == 3,
                    pixels=known, specs=inputs)


def _finetune(torch_source, module, recipe: Recipe, tune: Dataset, verbose: bool, notes: list[str]):
    from .training.torch import finetune_torch
    from .sources.torch import fold_batchnorm, torch_weights

    import torch

    if len(torch_source.output_names) != 1:
        raise DataError("fine-tuning supports single-output models; compress without --finetune data "
                        "(one-shot) or fine-tune the model yourself")
    if isinstance(module, torch.jit.ScriptModule):  # its layers are compiled: masks cannot be attached
        raise DataError("fine-tuning needs the nn.Module, not a TorchScript file: give a package.module:factory "
                        "source with --weights, or compress one-shot without --finetune data")
    student, note = fold_batchnorm(module)
    if note:
        notes.append(note)
    weights, owners = torch_weights(student)
    qat = recipe.quantize.qat
    records = finetune_torch(student, torch_source.module, weights, owners, recipe, tune, verbose,
                             train_unchanged=not qat)
    if qat:
        from .techniques.qat.torch import quantization_aware_finetune

        clustered = {name: owners[name] for name in records["cluster"].layers}
        records["qat"] = quantization_aware_finetune(student, torch_source.module, tune, recipe.finetune, verbose,
                                                     clustered)
    return student.eval(), records, [w.name for w in weights]


def _onnx2tf(onnx_model, keep_first: list[str], log_path: Path, keep_nchw: bool, route: _Route,
             notes: list[str], strict: bool, decided: list[str] | None = None):
    """onnx2tf's Keras model in the route's layouts, and the inputs onnx2tf kept channel-first.

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
        model = inputs_in_source_layout(result.model, route.specs, [n for n in keep_first if n not in keep])
        layouts = output_layouts(model, result.channel_last_outputs, route)
        if keep is not attempts[-1] and not matches_probe(model, layouts, route, FLOAT_TOLERANCE):
            continue
        if keep_nchw or not route.channel_last:  # outputs are channel-last only in a channel-last (image) model
            model = outputs_channel_first(model, layouts, route.output_names)
        else:
            model = outputs_channel_first(model, {}, route.output_names)  # only names them
            route.channel_last_outputs = layouts
        if keep != keep_first:
            note = (f"input(s) {', '.join(n for n in keep_first if n not in keep)} converted in onnx2tf's channel-"
                    "last layout behind a transpose (kept channel-first, onnx2tf's model did not reproduce the "
                    "source); the .tflite takes them as the source does")
            notes += [note] if note not in notes else []
        return model, keep
    raise first_error




def _probe(onnx_model, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
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




def _references(torch_source, reference_model, specs: list[TensorSpec], inputs: list[np.ndarray]
                ) -> list[np.ndarray]:
    """The source's outputs on ``inputs``, run at the shapes the graph was exported with."""
    if torch_source is None:
        return run_onnx(reference_model, {s.name: x for s, x in zip(specs, inputs)}, specs)
    from .sources.torch import _as_tuple, reference_outputs, run_module

    if all(s.batch == 1 for s in specs):  # batch-1 exports take any batch in PyTorch: batched, fast
        return reference_outputs(torch_source.module, inputs)
    import torch

    runs = [s.runs(x) for s, x in zip(specs, inputs)]
    outputs = [[o.detach().numpy() for o in _as_tuple(run_module(
        torch_source.module, tuple(torch.from_numpy(np.ascontiguousarray(r[i])) for r in runs)))]
        for i in range(len(runs[0]))]
    return join_runs(specs, outputs, len(inputs[0]))




def _check_float_fidelity(by_output: dict[str, Fidelity]) -> None:
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




def _fidelity(route: _Route, references: list[np.ndarray], tflite_bytes: bytes, inputs: list[np.ndarray],
              evaluation: Dataset, backend: str = "auto") -> dict[str, Fidelity]:
    """Each output of the .tflite, run at its fixed input shapes, against the source's."""
    from device_runtime import Model

    model = Model(tflite_bytes, backend=backend)
    runs = [[route.to_tflite_layout(s.name, r) for r in s.runs(x)] for s, x in zip(route.specs, inputs)]
    per_run = [model.run({s.name: r[i] for s, r in zip(route.specs, runs)}) for i in range(len(runs[0]))]
    present = [name for name in route.output_names if name in per_run[0]]
    outputs = join_runs(route.specs, [[run[name] for name in present] for run in per_run], len(inputs[0])) \
        if present else []
    got = dict(zip(present, outputs))
    labels, data_name = evaluation.y, evaluation.source
    by_output = {}
    for name, ref in zip(route.output_names, references):
        if name not in got:  # onnx2tf dropped it (e.g. BatchNormalization's training-mode statistics)
            nan = float("nan")
            by_output[name] = Fidelity(len(ref), data_name, nan, nan, float(np.abs(ref).max(initial=0.0)), nan, None,
                                       None, None, f"no such output in the .tflite (it has {sorted(per_run[0])})")
            continue
        by_output[name] = compare(route.reference_in_tflite_layout(name, ref, per_run[0][name].ndim), got[name],
                                  labels if labels is not None and len(labels) == len(ref) else None, data_name)
    return by_output




def _source_hash(files: list[Path], torch_source) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    if not files and torch_source is not None:
        for name, tensor in torch_source.module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().numpy().tobytes())
    return digest.hexdigest()
