"""The Keras route: Keras 3 and tf_keras sources, compressed as tf_keras layers (tfmot inside), converted as is."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..capabilities import Request, check_supported
from ..data import datasets
from ..errors import ConversionError, DataError, UserInputError, first_line
from ..recipe import Recipe
from ..search.weight_effect import keras_ranking
from ..sources.keras import load_keras_model
from ..sources.keras_nested import open_nested
from ..targets.tflite.embed import check_folder_labels, check_vocab_fits
from ..targets.tflite.metadata import MetadataSpec
from ..targets.tflite.normalisation import Normalisation
from ..techniques.base import WEIGHTS, PassRecord, kernel_weights, leaf_layers
from ..techniques.registry import in_stage, rewrite_graph
from ..training.keras import finetune, steps_per_epoch
from ..verify.analysis import ModelStats, analyse
from ..verify.fidelity import compare, run_tflite
from ..verify.layers import quantized_layer_report
from .base import Conversion, ConvertOptions, Lowered, Route, Verified

TORCH_ONLY_OPTIONS = ("example_input", "input_shapes", "weights", "keep_nchw", "keep_intermediates", "input_dtypes",
                      "allow_flex")


class KerasRoute(Route):
    framework = "keras"
    lowering_step = "prepare"

    def __init__(self, source: Any, options: ConvertOptions):
        super().__init__(source, options)
        self.path = source if isinstance(source, (str, os.PathLike)) else None
        self.model = self.teacher = None
        self.float_layers: list[str] = []

    @property
    def source_files(self) -> list[Path]:
        return [Path(self.path)] if self.path is not None else []

    @property
    def description(self) -> str:
        return str(self.path) if self.path is not None else f"<in-memory {type(self.source).__name__}>"

    def check(self, recipe: Recipe) -> None:
        refuse_torch_options({name: getattr(self.options, name) for name in TORCH_ONLY_OPTIONS})
        check_supported(Request(recipe, finetune=self.options.finetune_data is not None), self.framework)

    def load(self, run: Conversion) -> None:
        options = self.options
        model = load_keras_model(self.source, options.custom_objects, run.notes)
        self.model, self.teacher = model, load_keras_model(model)  # an untouched copy: teacher and reference
        if len(model.inputs) != 1 and any(d is not None for d in (options.finetune_data, options.calib_data,
                                                                  options.eval_data)):
            raise DataError(f"data for models with {len(model.inputs)} inputs is not supported yet; "
                            "convert without data")
        check_vocab_fits(options.metadata, [(i.name, i.dtype, None) for i in model.inputs])
        self.input_shape = tuple(model.inputs[0].shape[1:])
        run.known, notes = keras_normalisation(self.teacher, options.metadata)
        run.tune, run.calib, run.evaluation, data_notes = datasets(
            self.input_shape, options.finetune_data, options.calib_data, options.eval_data, pixels=run.known)
        run.notes += notes + data_notes
        check_folder_labels(run.any_data, options.metadata, tuple(model.outputs[0].shape))
        recipe = run.recipe
        if run.tune is not None and not (recipe.compresses_weights or recipe.quantize.qat or recipe.removes_channels
                                         or recipe.factorizes):
            run.notes.append("fine-tuning data given but the recipe changes no weights or layers and asks for no "
                             "QAT; not fine-tuned")
        # nested models opened: their layers reachable by techniques and by name (the recipe's to_dict unchanged)
        self.model, run.recipe = model, recipe = open_nested(model, recipe, run.notes)
        self.layer_names = [layer.name for layer in model.layers]
        recipe.check_overrides(self.layer_names, [type(layer).__name__ for layer in model.layers])
        self.float_layers = [layer.name for layer in model.layers  # mixed precision: checked before any work
                             if (plan := recipe.plan_for(layer.name, type(layer).__name__))
                             and plan.precision == "float"]

    def compress(self, run: Conversion) -> dict[str, PassRecord]:
        recipe, tune, verbose = run.recipe, run.tune, self.options.verbose
        # techniques that rewrite layers run first; pruning and clustering work on what is left
        model, graph_records = rewrite_graph(self.model, recipe, self.framework)
        if graph_records and tune is not None:
            finetune(model, self.teacher, tune, recipe.finetune, [], verbose, step=" + ".join(graph_records))
            for record in graph_records.values():
                record.fine_tuned = True
        model, records = apply_passes(model, self.teacher, recipe, tune, verbose)
        records = {**graph_records, **records}
        self.changed = bool(graph_records) or any(r.layers for r in records.values())
        if recipe.quantize.qat:
            from ..techniques.qat.keras import quantization_aware_training

            model, records["qat"] = quantization_aware_training(model, self.teacher, tune, recipe, records, verbose)
        self.model = model
        return records

    def lower(self, run: Conversion, records: dict[str, PassRecord]) -> Lowered:
        from ..techniques.adaround_keras import maybe_round
        from ..techniques.bias_correction_keras import has_corrections, maybe_correct, uncorrected

        model, recipe = self.model, run.recipe
        weight_layers = {layer.name for layer in model.layers if kernel_weights(layer)}
        all_clustered = bool(weight_layers) and weight_layers <= set(records["cluster"].layers)
        calibration = run.calib.x if run.calib is not None else None
        # by weights too: the op that writes the model's output is named after the output, not the layer
        exported = {layer.name: kernel_weights(layer) for layer in model.layers}
        float_weights = {name: exported[name][0].numpy() if exported.get(name) else None
                         for name in self.float_layers}
        candidates = {layer.name: kernel_weights(layer)[0].numpy() for layer, within in leaf_layers(model)
                      if kernel_weights(layer) and not {layer.name, *within} & set(self.float_layers)}
        per_channel = not all_clustered if recipe.quantize.per_channel == "auto" else recipe.quantize.per_channel
        rounded = maybe_round(model, recipe.quantize, calibration, run.notes)  # adaround, with its bias correction
        quantizable = rounded if rounded is not None else \
            maybe_correct(model, recipe.quantize, calibration, per_channel, self.float_layers, run.notes)
        self.quantizable = quantizable
        return Lowered(
            float_model=self.teacher, plain=model, quantizable=quantizable, calibration=calibration,
            search_samples=calibration, search_input_shapes=[self.input_shape], candidates=candidates,
            float_layers=float_weights, all_clustered=all_clustered,
            changed=self.changed and not recipe.quantize.qat, stats_input=calibration,
            with_source_biases=(lambda layers, work: uncorrected(quantizable, layers, work))
            if has_corrections(quantizable) else None)

    def rank_layers(self, search: Any, run: Conversion, progress) -> None:
        """Rank by each layer's own error (its weights alone in int8), measured once on the tf_keras model."""
        search.ranking = keras_ranking(self.quantizable, search.inputs, search.candidates, progress)

    def verify(self, run: Conversion, lowered: Lowered, tflite_bytes: bytes, baseline_bytes: bytes,
               float_reference: bytes | None) -> Verified:
        evaluation = run.evaluation
        reference = self.teacher.predict(evaluation.x, batch_size=256, verbose=0)
        fidelity = compare(reference, run_tflite(tflite_bytes, evaluation.x), evaluation.y, evaluation.source)
        float_fidelity = compare(reference, run_tflite(baseline_bytes, evaluation.x), evaluation.y,
                                 evaluation.source)
        layer_errors = quantized_layer_report(run.recipe.quantize.mode, tflite_bytes, float_reference, evaluation.x,
                                              evaluation.source, {layer.name: kernel_weights(layer)[0].numpy()
                                                                  if kernel_weights(layer) else None
                                                                  for layer in self.model.layers})
        return Verified(fidelity, float_fidelity, layer_errors)

    def analyse(self, baseline_bytes: bytes, tflite_bytes: bytes) -> tuple[ModelStats, ModelStats]:
        return analyse(baseline_bytes, self.layer_names), analyse(tflite_bytes, self.layer_names)

    def source_sha256(self) -> str:
        digest = hashlib.sha256()
        path = self.path
        if path is not None and Path(path).is_file():
            digest.update(Path(path).read_bytes())
        elif path is not None:
            for file in sorted(Path(path).rglob("*")):
                if file.is_file():
                    digest.update(file.relative_to(path).as_posix().encode())
                    digest.update(file.read_bytes())
        else:
            for weight in self.teacher.get_weights():
                digest.update(np.ascontiguousarray(weight).tobytes())
        return digest.hexdigest()


def torch_options_given(options: dict[str, Any]) -> dict[str, Any]:
    """The options of ``options`` that were given (an array is given, whatever its values; False, None and no
    input shapes are not)."""
    return {name: value for name, value in options.items() if value is not None and value is not False
            and not (name == "input_shapes" and not value)}


def refuse_torch_options(options: dict[str, Any]) -> None:
    """A Keras source has its own input shapes and layout: refuse the PyTorch/ONNX-only options given."""
    given = torch_options_given(options)
    if given:
        raise UserInputError(f"{', '.join(given)} apply to PyTorch and ONNX sources only; a Keras model "
                             "has its own input shapes and layout")


def keras_normalisation(model, metadata: MetadataSpec | None) -> tuple[Normalisation | None, list[str]]:
    """The input normalisation known before the data is loaded (``metadata``'s, checked against the input, or
    the model's own Rescaling/Normalization layers'), and notes for the report."""
    from ..targets.tflite import normalisation

    given = normalisation.given(metadata, [tuple(i.shape) for i in model.inputs])
    return normalisation.choose(given, *normalisation.keras_normalisation(model))


def apply_passes(model, teacher, recipe: Recipe, tune, verbose: bool) -> tuple[Any, dict[str, PassRecord]]:
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
