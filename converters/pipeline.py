"""The Keras conversion pipeline: load -> compress (passes) -> export -> measure -> write.

Everything the user gave is checked before any work starts (recipe, data
shapes, output path), outputs are written atomically, and the report is
measured from the written bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from device_runtime.metadata import BUILD_INFO_NAME, METADATA_NAME
from device_runtime.monitor import channel_rows

from .capabilities import Request, check_supported
from .data import Dataset, DataSource, InputSpec, load_data, load_inputs, random_inputs
from .errors import ConversionError, DataError, RecipeError, first_line
from .labels import LabelsError
from .verify.fidelity import compare, run_tflite
from .files import atomic_write, check_output_path
from .training.keras import finetune, steps_per_epoch
from .sources.keras import load_keras_model
from .targets.tflite.metadata import MetadataSpec, populate, standard_metadata
from .targets.tflite.normalisation import Normalisation
from .techniques.base import WEIGHTS, PassRecord, kernel_weights, leaf_layers
from .techniques.registry import in_stage, rewrite_graph
from .recipe import QuantizeSettings, Recipe
from .verify.layers import fidelity_warnings, quantized_layer_report
from .verify.report import Report
from .verify.analysis import analyse, gzip_size
from .targets.tflite.convert import to_tflite

HELD_OUT_FRACTION = 0.2
RANDOM_EVAL_SAMPLES = 64
SPARSE_EXPORT_MIN_SPARSITY = 0.3  # below this the sparse format cannot win, so it is not tried

Progress = Callable[[str, int, int], None]


@dataclass
class ConversionResult:
    path: Path
    report_path: Path
    report: Report
    exports: dict[str, Any] = field(default_factory=dict)  # the target's files: {"mcu": McuExport, ...}
    budget: Any = None  # accuracy-budget mode's search (search.budget.BudgetResult)


def report_path_for(output: Path) -> Path:
    return output.with_name(output.stem + ".report.json")


def convert_keras(source: Any, output: str | os.PathLike, recipe: Recipe | None = None, *,
                  finetune_data: DataSource | None = None, calib_data: DataSource | None = None,
                  eval_data: DataSource | None = None, force: bool = False,
                  progress: Progress | None = None, verbose: bool = False,
                  custom_objects: dict | None = None, metadata: MetadataSpec | None = None) -> ConversionResult:
    """Compress and convert a Keras model to ``output`` (.tflite) with a report beside it.

    Image classifiers also get standard TFLite metadata (``metadata`` overrides
    the defaults: name from the source, labels from an image folder); the input normalisation only
    when known (``metadata.mean/std``, the model's Rescaling/Normalization layers, an image folder).
    """
    recipe = recipe or Recipe()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    source_path = source if isinstance(source, (str, os.PathLike)) else None
    check_supported(Request(recipe, finetune=finetune_data is not None), "keras")
    check_calibration(recipe, calib_data, finetune_data)
    output = check_output_path(output, [source_path] if source_path else [], force)

    load_notes: list[str] = []
    model = load_keras_model(source, custom_objects, load_notes)
    teacher = load_keras_model(model)  # an untouched copy: distillation teacher and reference
    if len(model.inputs) != 1 and any(d is not None for d in (finetune_data, calib_data, eval_data)):
        raise DataError(f"data for models with {len(model.inputs)} inputs is not supported yet; "
                        "convert without data")
    check_vocab_fits(metadata, [(i.name, i.dtype, None) for i in model.inputs])
    input_shape = tuple(model.inputs[0].shape[1:])
    known, notes = keras_normalisation(teacher, metadata)
    tune, calib, evaluation, data_notes = datasets(input_shape, finetune_data, calib_data, eval_data, pixels=known)
    notes = load_notes + notes + data_notes
    check_folder_labels(tune or calib or evaluation, metadata, tuple(model.outputs[0].shape))
    if tune is not None and not (recipe.compresses_weights or recipe.quantize.qat or recipe.removes_channels
                                 or recipe.factorizes):
        notes.append("fine-tuning data given but the recipe changes no weights or layers and asks for no QAT; "
                     "not fine-tuned")
    layer_names = [layer.name for layer in model.layers]
    recipe.check_overrides(layer_names, [type(layer).__name__ for layer in model.layers])
    float_layers = [layer.name for layer in model.layers  # mixed precision: checked before any work
                    if (plan := recipe.plan_for(layer.name, type(layer).__name__)) and plan.precision == "float"]
    timings["load"] = time.perf_counter() - started

    mark = time.perf_counter()
    baseline_bytes = to_tflite(teacher, QuantizeSettings(mode="none"))
    timings["float_baseline"] = time.perf_counter() - mark

    mark = time.perf_counter()
    # techniques that rewrite layers run first; pruning and clustering work on what is left
    model, graph_records = rewrite_graph(model, recipe, "keras")
    if graph_records and tune is not None:
        finetune(model, teacher, tune, recipe.finetune, [], verbose, step=" + ".join(graph_records))
        for record in graph_records.values():
            record.fine_tuned = True
    model, records = apply_passes(model, teacher, recipe, tune, verbose)
    records = {**graph_records, **records}
    timings["compress"] = time.perf_counter() - mark
    weight_layers = {layer.name for layer in model.layers if kernel_weights(layer)}
    all_clustered = bool(weight_layers) and weight_layers <= set(records["cluster"].layers)
    if recipe.quantize.qat:
        from .techniques.qat.keras import quantization_aware_training

        mark = time.perf_counter()
        model, records["qat"] = quantization_aware_training(model, teacher, tune, recipe, records, verbose)
        timings["qat"] = time.perf_counter() - mark

    mark = time.perf_counter()
    calibration = calib.x if calib is not None else None
    changed = bool(graph_records) or any(r.layers for name, r in records.items() if name != "qat")
    float_reference, search = quantization_checks(
        model, recipe, baseline_bytes, changed and not recipe.quantize.qat, calib, calibration, [input_shape],
        {layer.name: kernel_weights(layer)[0].numpy() for layer, within in leaf_layers(model)
         if kernel_weights(layer) and not {layer.name, *within} & set(float_layers)})
    # by weights too: the op that writes the model's output is named after the output, not the layer
    exported = {layer.name: kernel_weights(layer) for layer in model.layers}
    float_weights = {name: exported[name][0].numpy() if exported.get(name) else None for name in float_layers}
    from .techniques.adaround_keras import maybe_round
    from .techniques.bias_correction_keras import maybe_correct

    per_channel = not all_clustered if recipe.quantize.per_channel == "auto" else recipe.quantize.per_channel
    rounded = maybe_round(model, recipe.quantize, calibration, notes)  # adaround, with its own bias correction
    model = rounded if rounded is not None else maybe_correct(model, recipe.quantize, calibration, per_channel,
                                                              float_layers, notes)
    tflite_bytes, export_notes = export_tflite(model, recipe, calibration, all_clustered, progress, float_weights,
                                               precision_search=search)
    notes += export_notes
    source_sha256 = _source_hash(source_path, teacher)
    tflite_bytes = embed_metadata(tflite_bytes, build_info(source_sha256, recipe, calib, calibration),
                                  metadata, Path(source_path).stem if source_path else "model",
                                  tune or calib or evaluation, notes, (known, (tune, calib, evaluation)))
    timings["export"] = time.perf_counter() - mark

    mark = time.perf_counter()
    reference = teacher.predict(evaluation.x, batch_size=256, verbose=0)
    fidelity = compare(reference, run_tflite(tflite_bytes, evaluation.x), evaluation.y, evaluation.source)
    float_fidelity = compare(reference, run_tflite(baseline_bytes, evaluation.x), evaluation.y,
                             evaluation.source)
    layer_errors = quantized_layer_report(recipe.quantize.mode, tflite_bytes, float_reference, evaluation.x,
                                          evaluation.source, {layer.name: kernel_weights(layer)[0].numpy()
                                                              if kernel_weights(layer) else None
                                                              for layer in model.layers})
    timings["verify"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started

    report = Report(
        source=str(source_path) if source_path else f"<in-memory {type(source).__name__}>",
        source_sha256=source_sha256, output=str(output),
        output_sha256=hashlib.sha256(tflite_bytes).hexdigest(), recipe=recipe.to_dict(),
        baseline=analyse(baseline_bytes, layer_names), compressed=analyse(tflite_bytes, layer_names),
        passes=records, fidelity=fidelity, float_fidelity=float_fidelity,
        timings={k: round(v, 3) for k, v in timings.items()}, notes=notes, layer_errors=layer_errors,
        mixed_precision=search.record if search else None,
        warnings=fidelity_warnings(fidelity.cosine, fidelity.top1_agreement, layer_errors))
    return write_result(output, tflite_bytes, report)


def quantization_checks(model, recipe: Recipe, baseline_bytes: bytes, changed: bool, calib: Dataset | None,
                        calibration, input_shapes: list[tuple], candidates, traced: bool = False):
    """The float .tflite that quantized layers are compared with, and the automatic mixed precision search when
    the recipe sets a fidelity target. The reference is the source's float file (so the per-layer table also
    shows what pruning or clustering lost), except under a search, which measures quantization alone against
    the compressed model's float file."""
    from .search.mixed_precision import PrecisionSearch
    from .targets.tflite.convert import representative_samples
    from .verify.layers import LAYER_REPORT_MODES

    if recipe.quantize.mode not in LAYER_REPORT_MODES:
        return None, None
    if not recipe.quantize.searches_precision:  # the report compares with the source's float file: no extra work
        return baseline_bytes, None
    reference = to_tflite(model, QuantizeSettings(mode="none"), traced=traced) if changed else baseline_bytes
    inputs = representative_samples(calibration, recipe.quantize, input_shapes)[0]
    return reference, PrecisionSearch(reference, inputs, candidates,
                                      calib.source if calib is not None else "random calibration inputs")


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


def write_result(output: Path, tflite_bytes: bytes, report: Report) -> ConversionResult:
    """The model, then its report, each written atomically."""
    report_path = report_path_for(output)
    atomic_write(output, tflite_bytes)
    atomic_write(report_path, json.dumps(report.to_dict(), indent=2).encode())
    return ConversionResult(output, report_path, report)


def keras_normalisation(model, metadata: MetadataSpec | None) -> tuple[Normalisation | None, list[str]]:
    """The input normalisation known before the data is loaded (``metadata``'s, checked against the input, or
    the model's own Rescaling/Normalization layers'), and notes for the report."""
    from .targets.tflite import normalisation

    given = normalisation.given(metadata, [tuple(i.shape) for i in model.inputs])
    return normalisation.choose(given, *normalisation.keras_normalisation(model))


def embed_metadata(tflite_bytes: bytes, provenance: bytes, spec: MetadataSpec | None, name: str,
                   data: Dataset | None, notes: list[str],
                   normalisation: tuple[Normalisation | None, Sequence[Dataset | None]] = (None, ())) -> bytes:
    """Build provenance for every model, and standard TFLite metadata for image classifiers.

    ``normalisation``: (what is known before the data, the (fine-tune, calibration, evaluation) sets); an
    image folder among the sets makes it known, array data are checked against it.
    """
    from .targets.tflite import normalisation as norms

    known, sets = normalisation
    norm = norms.with_data(known, sets)
    buffers = {BUILD_INFO_NAME: provenance}
    files = None
    standard, note = _standard_metadata(tflite_bytes, spec, name, data, norm)
    if standard is not None and norm is not None:
        notes += [n for n in (norms.range_note(norm, d, what) for d, what in
                              zip(sets, ("fine-tuning", "calibration", "evaluation"))) if n][:1]
    if standard is not None:
        buffers[METADATA_NAME], files = standard
    if note:
        notes.append(note)
    return populate(tflite_bytes, buffers, files)


def apply_passes(model, teacher, recipe: Recipe, tune: Dataset | None, verbose: bool
                 ) -> tuple[Any, dict[str, PassRecord]]:
    """Run every registered weight technique the recipe asks for, fine-tuning each when data is given."""
    records: dict[str, PassRecord] = {}
    for technique in in_stage(WEIGHTS):
        name, compression = technique.key, technique.backend("keras")()
        targets, record = compression.select(model, recipe)
        records[name] = record
        if not targets:
            continue
        if tune is not None:
            steps = recipe.finetune.epochs * steps_per_epoch(tune, recipe.finetune)
            wrapped = compression.wrap(model, targets, steps, records)
            record.fine_tuned = True
            try:
                finetune(wrapped, teacher, tune, recipe.finetune, compression.callbacks(), verbose, step=name)
            except ValueError as exc:
                raise ConversionError(f"fine-tuning for {name} failed: {first_line(exc)}") from None
            model = compression.strip(wrapped)
        else:
            by_name = {layer.name: layer for layer in model.layers}
            for layer_name, settings in targets.items():
                compression.one_shot(by_name[layer_name], settings, records)
        by_name = {layer.name: layer for layer in model.layers}
        record.layers = {n: compression.measure(by_name[n], s) for n, s in targets.items()}
    return model, records


def check_vocab_fits(metadata: MetadataSpec | None, inputs: Sequence[tuple[str, Any, int | None]]) -> None:
    """With ``--vocab``: refuse, before any work, a model with no token-id input or too few embedding rows.

    ``inputs``: (name, dtype, embedding rows its ids index or None)."""
    if metadata is not None and metadata.vocab is not None:
        from .targets.tflite.text_metadata import check_token_inputs

        check_token_inputs(metadata.vocab, [(name, np.dtype(getattr(dtype, "name", dtype)).name, rows)
                                            for name, dtype, rows in inputs])


def check_folder_labels(data: Dataset | None, metadata: MetadataSpec | None, output_shape: tuple) -> None:
    """An image folder's sub-folders become the metadata's labels: refuse, before any work, a folder whose
    class count is not the model's (it used to fail after the conversion, when the metadata was written)."""
    if data is None or not data.class_names or (metadata is not None and metadata.labels):
        return
    if len(output_shape) == 2 and output_shape[-1] and output_shape[-1] != len(data.class_names):
        raise LabelsError(f"the model scores {output_shape[-1]} classes but the image folder {data.source} has "
                          f"{len(data.class_names)} class sub-folders, whose names would be its labels; give a "
                          "folder with one sub-folder per class, or --labels FILE")


def datasets(input_shape, finetune_data, calib_data, eval_data, channels_first: bool = False,
             pixels: Normalisation | None = None, specs: Sequence[InputSpec] | None = None):
    """(fine-tune, calibration, evaluation) sets; evaluation never overlaps the others.

    ``pixels``: the model's known input normalisation, which image folders load with (default: [0, 1]).
    ``specs`` (PyTorch/ONNX): every input's name, shape and dtype; data is then keyed by input name
    and, without data, drawn valid per input (token ids below the vocabulary size, masks of ones).
    """
    from .targets.tflite.normalisation import FOLDER

    notes = []
    pixels = pixels or FOLDER
    if specs is not None:
        load = functools.partial(load_inputs, specs=specs, channels_first=channels_first,
                                 pixels=(pixels.mean, pixels.std))
    else:
        load = functools.partial(load_data, input_shape=input_shape, channels_first=channels_first,
                                 pixels=(pixels.mean, pixels.std))
    tune = load(finetune_data, what="fine-tuning") if finetune_data is not None else None
    calib = load(calib_data, what="calibration") if calib_data is not None else None
    evaluation = load(eval_data, what="evaluation") if eval_data is not None else None
    if evaluation is None:
        pool_name, pool = ("fine-tuning", tune) if tune is not None else ("calibration", calib)
        if pool is not None and len(pool) >= 10:
            train_part, evaluation = pool.split(HELD_OUT_FRACTION)
            notes.append(f"no --eval data: {len(evaluation)} samples of the {pool_name} data were "
                         "held out for the fidelity check and not used otherwise")
            if tune is not None:
                tune = train_part
                calib = calib or train_part
            else:
                calib = train_part
        else:
            if specs is not None and any(s.integer for s in specs):
                evaluation = Dataset(random_inputs(specs, RANDOM_EVAL_SAMPLES), None, "random valid inputs")
                notes.append("no data given: fidelity measured on random inputs (floats in [0, 1), token ids "
                             "below each embedding table's size, other integer inputs all ones)")
            elif specs is not None and len(specs) > 1:
                evaluation = Dataset(random_inputs(specs, RANDOM_EVAL_SAMPLES), None, "random uniform inputs")
                notes.append("no data given: fidelity measured on random inputs in [0, 1)")
            else:
                shape = tuple(d or 1 for d in input_shape)
                x = np.random.default_rng(0).random((RANDOM_EVAL_SAMPLES, *shape), dtype=np.float32)
                span = "[0, 1)"
                if pixels is not FOLDER and len(shape) == 3:  # random images as the model takes them: 0..255 normalised
                    mean, std = (np.asarray(v, np.float32).reshape((-1, 1, 1) if channels_first else (-1,))
                                 for v in (pixels.mean, pixels.std))
                    x = ((x * 255.0 - mean) / std).astype(np.float32)
                    span = f"[{x.min():.3g}, {x.max():.3g}] (random pixels, normalised as {pixels.describe()})"
                evaluation = Dataset(x, None, "random uniform inputs")
                notes.append(f"no data given: fidelity measured on random inputs in {span}")
    if calib is None and tune is not None:
        calib = tune
    return tune, calib, evaluation, notes


def export_tflite(model, recipe: Recipe, calibration, all_clustered: bool, progress,
                  float_layers: Sequence[str] | Mapping[str, np.ndarray] = (),
                  traced: bool = False, float_bytes: bytes | None = None, allow_flex: bool = False,
                  precision_search=None) -> tuple[bytes, list[str]]:
    """Convert, choosing per-channel scales and TFLite's sparse format by what they measure.

    ``traced``: convert a traced function of the model (onnx2tf's models; see ``to_tflite``).
    ``float_bytes``: the model already converted in float32, reused when the recipe quantizes nothing
    (a 90 MB BERT takes ~30 s per conversion).
    ``precision_search`` (a ``search.mixed_precision.PrecisionSearch``) keeps layers float until the recipe's
    fidelity target holds."""
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
        from .techniques.bias_correction_keras import has_corrections, uncorrected

        # Calibrate once and re-quantize at each step, unless layers kept float must get their uncorrected
        # biases back: the calibrated model holds the weights it was calibrated with.
        calibrated = None if has_corrections(model) else {}
        dense = precision_search.run(  # layers kept float lose their int8 bias correction
            dense, lambda layers: uncorrected(model, layers, lambda: convert(sparse=False, float_layers=layers,
                                                                            calibrated=calibrated)),
            float_layers, recipe.quantize, progress)
        record = precision_search.record
        notes.append(f"automatic mixed precision ({record.target}): " + (
            f"{len(record.kept)} layer(s) kept float32 ({', '.join(record.kept)}), +{record.size_cost:,} bytes"
            + ("" if record.latency_cost_ms is None else f", {record.latency_cost_ms:+.2f} ms")
            if record.kept else "every layer int8 already meets it") + ("" if record.met else "; target NOT met"))
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


def _standard_metadata(tflite_bytes: bytes, spec: MetadataSpec | None, name: str, data: Dataset | None,
                       norm: Normalisation | None):
    """(TFLITE_METADATA buffer, files) for an image classifier, or None, and a note for the report."""
    from device_runtime.tflite_format import read_model

    from .targets.tflite.normalisation import unknown_note

    model = read_model(tflite_bytes)
    if spec is not None and spec.vocab is not None:
        written = standard_metadata(model, spec)
        return written, (f"standard TFLite metadata written: text model, BERT tokenizer ({spec.vocab.describe()}, "
                         f"from {spec.vocab.source})" + (f", {len(spec.labels)} labels" if spec.labels else ""))
    sg = model.main
    if any(sg.tensors[i].dtype_name in ("int32", "int64") for i in sg.inputs):
        return None, ("no tokenizer vocabulary embedded (token-id input): Model.embed_text/classify_text need one; "
                      "convert with --vocab vocab.txt, or sdk metadata add OUT -o OUT2 --vocab vocab.txt")
    shape = sg.tensors[sg.inputs[0]].shape
    if len(sg.inputs) != 1 or len(sg.outputs) != 1 or len(shape) != 4 or shape[-1] not in (1, 3):
        return None, None
    scores = sg.tensors[sg.outputs[0]].shape
    if not (len(scores) >= 2 and all(d == 1 for d in scores[1:-1])):  # also with --labels/--mean: no guess
        return None, (f"standard TFLite metadata not written: the output {tuple(scores)} is not one score per "
                      "class, so the model is no image classifier; describe it with sdk metadata add --task")
    if spec is None:
        spec = MetadataSpec(name=name, labels=data.class_names if data is not None else ())
    # One channel can only be grayscale, three only RGB: the input shape decides.
    spec = dataclasses.replace(spec, color_space="GRAYSCALE" if shape[-1] == 1 else "RGB",
                               mean=norm.mean if norm else None, std=norm.std if norm else None)
    try:
        written = standard_metadata(model, spec)
    except ConversionError as exc:  # the schema module is missing: convert anyway, and say so
        return None, f"standard TFLite metadata not written: {exc}"
    described = f"input {norm.describe()} (from {norm.source})" if norm else "no input normalisation"
    return written, (f"standard TFLite metadata written: image classifier, {described}, {len(spec.labels)} labels, "
                     f"version {spec.version}" + ("" if norm else f"; {unknown_note()}"))


def build_info(source_sha256: str, recipe: Recipe, calib: Dataset | None, calibration: np.ndarray | None,
               io_order: dict[str, list[str]] | None = None) -> bytes:
    """Provenance and the calibration inputs' per-channel statistics, embedded in the model.

    ``calibration`` is ``calib``'s inputs in the .tflite's layout (channels last); ``io_order``
    ({"input_order": [...], "output_order": [...]}) lets the device runtime restore the source's order.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        sdk_version = version("edge-deploy-sdk")
    except PackageNotFoundError:
        sdk_version = "unknown"
    recipe_json = json.dumps(recipe.to_dict(), sort_keys=True)
    stats = None
    if calibration is not None:  # in the .tflite's layout: channels last, grouped as the monitor groups them
        channels = channel_rows(calibration)[0].astype(np.float64)
        stats = {"mean": channels.mean(axis=0).tolist(), "std": channels.std(axis=0).tolist(),
                 "samples": len(calibration), "data": calib.source}
    return json.dumps({"format": "edge-deploy-build/1", "sdk_version": sdk_version,
                       "source_sha256": source_sha256,
                       "recipe_sha256": hashlib.sha256(recipe_json.encode()).hexdigest(),
                       "recipe": recipe.to_dict(), "input_stats": stats, **(io_order or {})}).encode()


def _source_hash(path, model) -> str:
    digest = hashlib.sha256()
    if path is not None and Path(path).is_file():
        digest.update(Path(path).read_bytes())
    elif path is not None:
        for file in sorted(Path(path).rglob("*")):
            if file.is_file():
                digest.update(file.relative_to(path).as_posix().encode())
                digest.update(file.read_bytes())
    else:
        for weight in model.get_weights():
            digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()
